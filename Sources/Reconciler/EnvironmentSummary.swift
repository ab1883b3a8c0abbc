import Audit
import Foundation
import SpecLoading
import StateStore

/// One service of an environment as it is now (read from the driver's records and the host, never
/// stored): a process that is gone shows as `Stopped` whatever was recorded.
public struct ServiceObservation: Sendable, Equatable {
    public let name: String
    public let phase: String
    /// Reaches the service directly (its environment's address and port).
    public let url: String
    public let restarts: Int
    /// How its last process ended, when one did.
    public let lastExit: String?
    /// Processes that run it now (0 while it sleeps).
    public let replicas: Int

    public init(name: String, phase: String, url: String, restarts: Int, lastExit: String?, replicas: Int = 1) {
        self.name = name
        self.phase = phase
        self.url = url
        self.restarts = restarts
        self.lastExit = lastExit
        self.replicas = replicas
    }
}

/// Whatever runs environments says how their services are now (the local driver reads its records
/// and `/proc`; another driver asks its platform).
public protocol EnvironmentObserver {
    func services(of environment: String) throws -> [ServiceObservation]
}

/// What is known of one environment, as `gantry status`, `gantry diagnose` and the API show it:
/// the stored record (its phase derived from its conditions, `EnvironmentRecord.derivedPhase`),
/// what is observed now, and what would move it on. The one place these are put together: a
/// command only chooses how to print it.
public struct EnvironmentSummary: Sendable {
    public struct Route: Sendable, Equatable {
        public let name: String
        /// Through the router; nil when no router runs (`gantry run --no-router`).
        public let url: String?
    }

    public let record: EnvironmentRecord
    public let services: [ServiceObservation]
    public let routes: [Route]
    /// The stored conditions, plus `Unhealthy` when the environment runs and a service does not.
    public let conditions: [Condition]
    /// Why it sleeps (idle, asked, paused by a budget); nil while awake.
    public let sleep: LifecycleState?
    /// The kill switch that cuts it off and freezes it (a switch of the state DB); nil: none.
    public let killSwitch: String?

    public var name: String { record.name }
    /// The stored phase, or Sleeping for a running environment whose services were put to sleep.
    public var phase: EnvironmentPhase { record.phase == .running && sleep != nil ? .sleeping : record.phase }

    /// `routerPort`: where the router listens, nil when none runs.
    public init(_ record: EnvironmentRecord, services: [ServiceObservation], routerPort: Int?, sleep: LifecycleState? = nil,
                killSwitch: String? = nil) {
        self.record = record
        self.services = services
        self.killSwitch = record.phase == .destroyed ? nil : killSwitch
        self.sleep = record.phase == .running ? sleep : nil
        let domain = record.domain ?? "localhost"
        routes = (record.appliedSpec?.routes ?? []).map { route in
            Route(name: route.name, url: routerPort.map { "http://\(route.name).\(record.name).\(domain):\($0)" })
        }
        var conditions = record.conditions
        if record.phase == .running, self.sleep == nil, services.contains(where: { $0.phase != "Running" && $0.phase != "Sleeping" }) {
            conditions.append(.unhealthy)
        }
        self.conditions = conditions
    }

    /// Every environment (destroyed ones too when asked), or only the one named `only`.
    public static func read(_ store: StateStore, observer: some EnvironmentObserver, routerPort: Int?,
                            includeDestroyed: Bool = false, only: String? = nil) throws -> [EnvironmentSummary] {
        let records = try only.map { name in try store.environment(name).map { [$0] } ?? [] }
            ?? store.environments(includeDestroyed: includeDestroyed)
        let sleeping = try store.lifecycleStates()
        let killed = KillSwitchBoard.coverage(switches: try store.killSwitches(), onMain: false, environments: records.map { ($0.name, $0.team) })
        return try records.map {
            EnvironmentSummary($0, services: try observer.services(of: $0.name), routerPort: routerPort, sleep: sleeping[$0.name], killSwitch: killed[$0.name])
        }
    }

    /// What would move the environment on, one line per condition that holds (nothing for a
    /// healthy running or destroyed environment).
    public var nextSteps: [String] {
        let commit = String(record.commit.prefix(12))
        let asleep: [String] = sleep.map { sleep in
            sleep.state == .paused
                ? ["paused: \(sleep.reason); it stays asleep until the period rolls over or the budget is raised on the protected branch, then a request or `gantry wake \(record.name)` wakes it"]
                : ["asleep: \(sleep.reason); a request through the router, or `gantry wake \(record.name)`, wakes it"]
        } ?? []
        let frozen = killSwitch.map { ["frozen by the \($0): no connection leaves it and its processes are stopped; a human with a role lifts it (`gantry kill --env \(record.name) --off --key KEY`)"] } ?? []
        return frozen + asleep + conditions.map { condition in
            switch condition {
            case .specInvalid:
                return "fix the environment file and push: `gantry validate --ref \(record.branch)` names the file, line and column of each problem"
            case .admissionDenied:
                return "`gantry explain \(commit)` gives every rule's result and what would satisfy it; push a commit that satisfies them"
            case .secretMissing:
                return "store the missing secret (`gantry secret set NAME --env \(record.name)`, the value on standard input): the next pass judges the commit again"
            case .approvalPending:
                return "a human with the approving role signs an approval: `gantry approve \(commit) --key KEY` (`gantry explain \(commit)` says whose)"
            case .applyFailed:
                if let next = record.nextAttemptAt {
                    return "the apply is retried at \(ISO8601DateFormatter().string(from: next)) (attempt \(record.attempts + 1)); `gantry status --env \(record.name)` shows the services' last log lines; a new commit is applied at once"
                }
                return "not retried until a new commit changes the environment: fix the cause (`gantry status --env \(record.name)` shows the last log lines) and push"
            case .applying:
                return "wait: the revision is being applied"
            case .destroying:
                return "wait: the teardown is under way (tried again every pass until it completes)"
            case .unhealthy:
                let down = services.filter { $0.phase != "Running" }.map { "\($0.name) (\($0.phase))" }
                return "not serving: \(down.joined(separator: ", ")); Gantry restarts a crashed service with backoff; `gantry status --env \(record.name)` shows its last log lines"
            }
        }
    }

    /// The form `gantry status --json` prints for an environment (FORMATS.md section 3).
    public var plain: PlainValue {
        let services: [PlainValue] = self.services.map {
            .map([("name", .string($0.name)), ("phase", .string($0.phase)), ("url", .string($0.url)), ("restarts", .int($0.restarts)),
                  ("lastExit", $0.lastExit.map { .string($0) } ?? .null), ("replicas", .int($0.replicas))])
        }
        let routes: [PlainValue] = self.routes.map { .map([("name", .string($0.name)), ("url", $0.url.map { .string($0) } ?? .null)]) }
        return .map([
            ("name", .string(record.name)), ("branch", .string(record.branch)), ("commit", .string(record.commit)),
            ("class", .string(record.envClass)), ("team", record.team.map { .string($0) } ?? .null),
            ("phase", .string(phase.rawValue)), ("services", .list(services)), ("routes", .list(routes)),
            ("sleep", sleep.map { .map([("state", .string($0.state.rawValue)), ("reason", .string($0.reason)),
                                         ("since", .string(ISO8601DateFormatter().string(from: $0.since)))]) } ?? .null),
            ("killSwitch", killSwitch.map { .string($0) } ?? .null),
            ("conditions", .list(conditions.map { .string($0.rawValue) })),
            ("appliedCommit", record.appliedCommit.map { .string($0) } ?? .null),
            ("message", record.message.map { .string($0) } ?? .null),
            ("attempts", .int(record.attempts)),
            ("nextAttemptAt", record.nextAttemptAt.map { .string(ISO8601DateFormatter().string(from: $0)) } ?? .null),
            ("next", .list(nextSteps.map { .string($0) })),
        ])
    }
}

extension AuditRecord {
    /// A record as `gantry audit log --json` and the API show it: `rule` and `change` as lists,
    /// other repeated fields joined by line breaks.
    public func plain(note: String) -> PlainValue {
        var out: [(key: String, value: PlainValue)] = [("seq", .int(seq)), ("event", .string(event)), ("at", .string(at)), ("note", .string(note))]
        var grouped: [(String, [String])] = []
        for field in fields {
            if let index = grouped.firstIndex(where: { $0.0 == field.key }) { grouped[index].1.append(field.value) } else { grouped.append((field.key, [field.value])) }
        }
        for (key, values) in grouped {
            out.append((key, key == "rule" || key == "change" ? .list(values.map { .string($0) }) : .string(values.joined(separator: "\n"))))
        }
        out.append(("prev", .string(prev)))
        return .map(out)
    }
}
