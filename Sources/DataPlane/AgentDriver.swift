import Audit
import Foundation
import Logging
import Reconciler
import SpecModel
import StateStore

/// The control plane's side of a data plane: environments gantry.yaml puts on `agent` run where
/// `gantry agent` runs (the customer's machines). Each apply or teardown becomes a signed plan in
/// the state DB, which the agent fetches; the operation ends when the agent reports on it (or
/// after `timeout`: then it is retried). Plans hold specs and files, never a secret's value: the
/// agent resolves secrets from its own store. Kill switches that cover the agent's environments
/// go to it as plans too, and it keeps enforcing them on its own.
public final class AgentDriver: Driver, @unchecked Sendable {
    public static let name = "agent"

    let state: StateStore
    let key: SigningKey
    let logger: Logger
    public var timeout: TimeInterval

    private let lock = NSLock()
    private var publishedSwitches: [String: String]?
    private var publishedAt = Date.distantPast
    /// How long the agent may take to show (in its health) the switches last sent before they
    /// are sent again in a fresh plan (one it refused as stale, one lost or reordered on the way).
    public var switchesResend: TimeInterval = 10

    public init(state: StateStore, key: SigningKey, logger: Logger, timeout: TimeInterval = 300) {
        self.state = state
        self.key = key
        self.logger = logger
        self.timeout = timeout
    }

    /// Issues a plan (signed) and returns its sequence number.
    @discardableResult
    func issue(_ action: Plan.Action, environment: String, fill: (inout Plan) throws -> Void = { _ in }) throws -> Int {
        try state.issuePlan(environment: environment, action: action.rawValue) { sequence in
            var plan = Plan(sequence: sequence, issuedAt: Date(), action: action, environment: environment)
            try fill(&plan)
            return try PlanEnvelope.seal(plan, key: key).json()
        }
    }

    /// Waits for the agent's report on plan `sequence`.
    func awaitReport(_ sequence: Int, environment: String, progress: (String) -> Void) throws -> AgentReport {
        progress("plan \(sequence) issued; waiting for the data plane to apply it")
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let stored = try state.report(of: sequence) {
                guard let report = try? JSONDecoder().decode(AgentReport.self, from: Data(stored.body.utf8)) else {
                    throw AgentError(description: "the data plane's report on plan \(sequence) cannot be read")
                }
                return report
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let seen = (try? state.dataPlaneHealth())?.map { "last heard from \(Int(Date().timeIntervalSince($0.receivedAt))) s ago" } ?? "never heard from"
        throw AgentError(description: "the data plane did not report on plan \(sequence) for \(environment) within \(Int(timeout)) s (\(seen)): is `gantry agent` running and reaching this control plane?")
    }

    public func apply(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> ApplyOutcome {
        let spec = environment.spec
        // What the local driver under the agent reads: the services' sources, the seeds, and the
        // whole revision when jobs run (they run in a checkout of it).
        let paths = spec.jobs.isEmpty ? spec.services.compactMap(\.source) + spec.databases.compactMap(\.seed) : [""]
        let files = try PlanSnapshot.files(of: environment.source, paths: paths)
        var objects: [String: String] = [:]
        for path in spec.services.compactMap(\.source) { objects[path] = try environment.source.objectID(at: path)?.hex }
        // Held by the data plane from the moment a plan may run there (kept apart from the plans,
        // which are pruned).
        try state.setInventory(["environment"], of: environment.name, driver: Self.name)
        let sequence = try issue(.apply, environment: environment.name) { plan in
            plan.branch = environment.branch
            plan.commit = environment.commit.hex
            plan.fingerprint = environment.fingerprint
            plan.domain = environment.domain
            plan.spec = spec
            plan.files = files
            plan.objects = objects
        }
        let report = try awaitReport(sequence, environment: environment.name, progress: progress)
        guard report.ok else { throw AgentError(description: "the data plane could not apply plan \(sequence): \(report.error ?? "no reason given")") }
        return ApplyOutcome(changes: report.changes)
    }

    public func destroy(environment name: String, sources: (any SourceStore)?, progress: (String) -> Void) throws -> [String] {
        let sequence = try issue(.destroy, environment: name)
        let report = try awaitReport(sequence, environment: name, progress: progress)
        guard report.ok else { throw AgentError(description: "the data plane could not tear down \(name) (plan \(sequence)): \(report.error ?? "no reason given")") }
        try state.setInventory([], of: name, driver: Self.name)
        return report.changes
    }

    /// Whether the data plane runs (or may run) `name`: from its first apply plan until a teardown it reported.
    public func holds(environment name: String) -> Bool {
        (try? !state.inventory(of: name, driver: Self.name).isEmpty) ?? true
    }

    /// The agent supervises what it runs; the control plane sends it the kill switches that
    /// cover its environments whenever they change.
    public func supervise(correct: Bool) -> [DriverEvent] {
        // (From the state DB, not from what this process has loaded: a control plane that just
        // started must not send "no switch" while one is on.)
        guard let environments = try? state.environments(), let stored = try? state.killSwitches() else { return [] }
        let ours = environments.filter { $0.destroyedAt == nil && holds(environment: $0.name) }
        // (The team of the revision that runs, as the local driver's switches see it.)
        let now = KillSwitchBoard.coverage(switches: stored, onMain: false, environments: ours.map { ($0.name, $0.appliedSpec?.team ?? $0.team) })
        // What the agent says it enforces, from its last health report after the last send.
        let enforced: Set<String>? = {
            guard let health = try? state.dataPlaneHealth(), health.receivedAt > lock.withLock({ publishedAt }),
                  let object = (try? JSONSerialization.jsonObject(with: Data(health.body.utf8))) as? [String: Any],
                  let switches = object["switches"] as? [String: Any] else { return nil }
            return Set(switches.keys)
        }()
        let send: Bool = lock.withLock {
            let changed = publishedSwitches != now
            // (Only an agent heard from since says what it enforces: one that is away gets the
            // switches again once it reports.)
            let unconfirmed = enforced.map { $0 != Set(now.keys) } ?? false
            guard changed || (unconfirmed && Date().timeIntervalSince(publishedAt) >= switchesResend) else { return false }
            // (Not confirmed in time: sent again, fresh; a stale, lost or reordered plan is replaced.)
            publishedSwitches = now
            publishedAt = Date()
            return true
        }
        guard send else { return [] }
        do {
            try issue(.switches, environment: "") { $0.killSwitches = now }
        } catch {
            lock.withLock { publishedSwitches = nil }
            logger.error("could not send the kill switches to the data plane", metadata: ["error": "\(error)"])
        }
        return []
    }

    public func recover(desired: Set<String>) -> [DriverEvent] { [] }
    public func drift(_ environment: PlannedEnvironment) -> [String] { [] }
    public func checksDrift(_ environment: PlannedEnvironment) -> Bool { false }
    /// The agent keeps the secrets, and applies again what uses one that changed there.
    public func followsSecretRotation(_ environment: PlannedEnvironment) -> Bool { false }
    public func shutdown() {}
}

/// The agent's report on one plan.
public struct AgentReport: Codable, Sendable {
    public var sequence: Int
    public var environment: String
    public var ok: Bool
    public var changes: [String] = []
    public var error: String?
    /// Set when the plan was refused (tampered, replayed, stale...).
    public var refused: String?

    public init(sequence: Int, environment: String, ok: Bool) {
        self.sequence = sequence
        self.environment = environment
        self.ok = ok
    }
}

public struct AgentError: Error, CustomStringConvertible {
    public let description: String
}
