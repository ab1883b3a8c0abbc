import AsyncHTTPClient
import Foundation
import GitStore
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Reconciler
import SpecModel
import StateStore

/// `gantry agent`: runs beside the workloads, with a driver and the secret store, and takes its
/// orders from the control plane as signed plans. Each round it fetches the plans after the last
/// one it accepted, judges each (signature by the control plane's key, sequence, age), applies
/// the good ones, and reports on every one; it supervises what runs and sends its health. When
/// the control plane cannot be reached, what runs keeps running, the kill switches it last
/// received stay enforced (they are kept on disk), and reports wait to be sent.
public final class DataPlaneAgent: @unchecked Sendable {
    public struct Options: Sendable {
        /// `http(s)://host:port` of the control plane's API.
        public var control: String
        public var token: String
        public var interval: TimeInterval = 1
        public var healthInterval: TimeInterval = 5
        /// PEM certificate authorities trusted for an https control plane (besides the system's).
        public var certificateAuthority: [UInt8]?
        public init(control: String, token: String) {
            self.control = control.hasSuffix("/") ? String(control.dropLast()) : control
            self.token = token
        }
    }

    /// What the agent keeps on disk (no secret: plans name secrets, the agent's store holds them).
    struct Persisted: Codable {
        var lastSequence = 0
        var switches: [String: String] = [:]
        /// Each environment it runs, with the sequence of the plan that runs.
        var environments: [String: Int] = [:]
    }

    let options: Options
    let driver: any Driver
    let verifier: PlanVerifier
    let stateFile: URL
    let logger: Logger
    let http: HTTPClient
    /// Freezes (true) or thaws an environment's processes; the composition root wires the local driver.
    public var freeze: ((String, Bool) -> Void)?
    /// Told of the kill switches in force (name → reason) at start and whenever they change.
    public var switchesChanged: (([String: String]) -> Void)?
    /// Masks secret values in what is reported (errors may quote a service's output).
    public var redact: (String) -> String = { $0 }
    /// The replicas that run now, per environment and service (for the health report).
    public var replicas: ((String) -> [String: Int])?
    /// The agent's own state DB: what runs here is recorded in it (its router and `gantry status` read it).
    public var store: StateStore?
    /// The versions of a spec's secrets in this machine's store: one that changes is applied again.
    public var secretVersions: ((EnvironmentSpec) -> [String: String])?

    private let lock = NSLock()
    private var persisted: Persisted
    private var pending: [AgentReport] = []
    private var events: [DriverEvent] = []
    private var lastHealth = Date.distantPast
    private var reachable: Bool?
    /// The plan that runs each environment (kept on disk too), and the secret versions it ran with.
    private var running: [String: Plan] = [:]
    private var appliedVersions: [String: [String: String]] = [:]
    let plansDirectory: URL

    public init(options: Options, driver: any Driver, verifier: PlanVerifier, stateDirectory: URL, logger: Logger) throws {
        self.options = options
        self.driver = driver
        self.verifier = verifier
        self.logger = logger
        stateFile = stateDirectory.appendingPathComponent("agent.json")
        plansDirectory = stateDirectory.appendingPathComponent("plans")
        try FileManager.default.createDirectory(at: plansDirectory, withIntermediateDirectories: true)
        for file in (try? FileManager.default.contentsOfDirectory(at: plansDirectory, includingPropertiesForKeys: nil)) ?? [] {
            guard let data = FileManager.default.contents(atPath: file.path), let plan = try? Plan.decode(data) else { continue }
            running[plan.environment] = plan
        }
        if let data = FileManager.default.contents(atPath: stateFile.path) {
            persisted = try JSONDecoder().decode(Persisted.self, from: data)
        } else {
            persisted = Persisted()
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca = options.certificateAuthority {
            tls.additionalTrustRoots = [.certificates(try NIOSSLCertificate.fromPEMBytes(ca))]
        }
        http = HTTPClient(eventLoopGroupProvider: .singleton,
                          configuration: HTTPClient.Configuration(tlsConfiguration: tls, timeout: .init(connect: .seconds(2), read: .seconds(30))))
    }

    deinit {
        let http = self.http
        http.shutdown(queue: .global()) { _ in withExtendedLifetime(http) {} }
    }

    /// The sequence of the last plan accepted.
    public var lastSequence: Int { lock.withLock { persisted.lastSequence } }
    /// The kill switches in force.
    public var switches: [String: String] { lock.withLock { persisted.switches } }
    /// Reports not yet delivered.
    public var pendingReports: Int { lock.withLock { pending.count } }

    func save() throws {
        let data = try lock.withLock { try JSONEncoder().encode(persisted) }
        let temporary = stateFile.appendingPathExtension("tmp")
        try data.write(to: temporary)
        _ = rename(temporary.path, stateFile.path)
    }

    /// At start: adopt what survived, enforce the kill switches kept on disk before anything else.
    public func start() {
        let (switches, running) = lock.withLock { (persisted.switches, Set(persisted.environments.keys)) }
        switchesChanged?(switches)
        for name in switches.keys { freeze?(name, true) }
        for event in driver.recover(desired: running) { note(event) }
    }

    /// Rounds until `stop` says so.
    public func run(until stop: () -> Bool) {
        start()
        while !stop() {
            round()
            Thread.sleep(forTimeInterval: options.interval)
        }
    }

    /// One round: plans, supervision, the kill switches enforced again, reports and health.
    public func round() {
        // (Before anything that waits on the network: anything that started under a switch, by
        // whatever means, is frozen again.)
        for name in switches.keys { freeze?(name, true) }
        if let envelopes = fetch() {
            for envelope in envelopes { handle(envelope) }
        }
        let held = switches
        for event in driver.supervise(correct: true) where held[event.environment] == nil { note(event) }
        rotateSecrets()
        deliver()
    }

    func note(_ event: DriverEvent) {
        lock.withLock {
            events.append(event)
            if events.count > 200 { events.removeFirst(events.count - 200) }
        }
    }

    // MARK: Plans

    /// The plans after the last accepted one; nil when the control plane cannot be reached.
    func fetch() -> [PlanEnvelope]? {
        let after = lastSequence
        guard let (status, body) = request("GET", "/v1/dataplane/plans?after=\(after)", body: nil) else { return nil }
        guard status == 200 else {
            logger.error("the control plane refused the plans request", metadata: ["status": "\(status)", "body": "\(String(decoding: body.prefix(300), as: UTF8.self))"])
            return nil
        }
        struct Page: Decodable { var plans: [PlanEnvelope] }
        guard let page = try? JSONDecoder().decode(Page.self, from: body) else {
            logger.error("the control plane's plans cannot be read")
            return nil
        }
        return page.plans
    }

    /// Judges one plan and carries it out; every plan gets a report.
    func handle(_ envelope: PlanEnvelope) {
        let plan: Plan
        do {
            plan = try verifier.verify(envelope, after: lastSequence)
        } catch let refusal as PlanRefusal {
            let claimed = Data(base64Encoded: envelope.plan).flatMap { try? Plan.decode($0) }
            logger.error("plan refused", metadata: ["sequence": "\(claimed?.sequence ?? 0)", "why": "\(refusal)"])
            // A plan the control plane signed (stale, replayed) is reported under its sequence: the
            // control plane then knows that plan did not run. What nobody signed (tampered, forged,
            // malformed) claims nothing the control plane should believe: it goes into the health
            // report's events, and its sequence stands for no plan.
            if let sequence = refusal.signedSequence {
                var report = AgentReport(sequence: sequence, environment: "", ok: false)
                report.refused = "\(refusal.kind.rawValue): \(refusal.description)"
                report.error = "refused by the data plane: \(refusal.description)"
                queue(report)
                // Past a plan the control plane signed and that can never be carried out (stale, say):
                // the next page holds what comes after it (the control plane sends what is still
                // wanted again, fresh), so a backlog of old plans cannot wedge the agent.
                if refusal.kind != .replayed {
                    lock.withLock { persisted.lastSequence = max(persisted.lastSequence, sequence) }
                    do { try save() } catch { logger.error("could not keep the agent's state", metadata: ["error": "\(error)"]) }
                }
            } else {
                note(DriverEvent(environment: "", kind: "plan-refused", message: "\(refusal.kind.rawValue): \(refusal.description)"))
            }
            _ = claimed
            return
        } catch {
            return
        }
        var report = AgentReport(sequence: plan.sequence, environment: plan.environment, ok: true)
        do {
            report.changes = try carryOut(plan)
        } catch {
            report.ok = false
            report.error = redact("\(error)")
        }
        report.changes = report.changes.map(redact)
        if report.ok { record(plan) }
        if report.ok, plan.action != .switches { keep(plan) }
        lock.withLock {
            persisted.lastSequence = max(persisted.lastSequence, plan.sequence)
            if plan.action == .apply, report.ok { persisted.environments[plan.environment] = plan.sequence }
            if plan.action == .destroy, report.ok { persisted.environments[plan.environment] = nil }
        }
        do { try save() } catch { logger.error("could not keep the agent's state", metadata: ["error": "\(error)"]) }
        queue(report)
    }

    func carryOut(_ plan: Plan) throws -> [String] {
        switch plan.action {
        case .switches:
            let now = plan.killSwitches ?? [:]
            let before = lock.withLock {
                defer { persisted.switches = now }
                return persisted.switches
            }
            try save()
            switchesChanged?(now)
            for name in now.keys { freeze?(name, true) }
            for name in before.keys where now[name] == nil { freeze?(name, false) }
            return now.isEmpty ? ["no kill switch in force"] : now.sorted { $0.key < $1.key }.map { "\($0.key) held: \($0.value)" }
        case .apply:
            if let why = switches[plan.environment] {
                throw AgentError(description: "held by the kill switch (\(why)); it is applied once the switch is lifted")
            }
            guard let spec = plan.spec, let commit = plan.commit.flatMap(ObjectID.init(hex:)) else {
                throw AgentError(description: "plan \(plan.sequence) has no spec or commit")
            }
            let environment = PlannedEnvironment(name: plan.environment, branch: plan.branch ?? "", commit: commit, spec: spec,
                                                 fingerprint: plan.fingerprint ?? "", domain: plan.domain ?? "localhost",
                                                 source: PlanSnapshot(plan))
            return try driver.apply(environment) { step in logger.info("applying plan \(plan.sequence) to \(plan.environment): \(step)") }.changes
        case .destroy:
            if let why = switches[plan.environment] {
                throw AgentError(description: "held by the kill switch (\(why)); it is torn down once the switch is lifted")
            }
            return try driver.destroy(environment: plan.environment, sources: nil) { step in logger.info("tearing down \(plan.environment): \(step)") }
        }
    }

    /// Keeps the plan that now runs its environment (none after a teardown), on disk too.
    func keep(_ plan: Plan) {
        let file = plansDirectory.appendingPathComponent(plan.environment + ".json")
        guard PlanSnapshot.isInside(plan.environment), !plan.environment.contains("/") else { return }
        if plan.action == .destroy {
            lock.withLock {
                running[plan.environment] = nil
                appliedVersions[plan.environment] = nil
            }
            try? FileManager.default.removeItem(at: file)
            return
        }
        let versions = plan.spec.flatMap { secretVersions?($0) }
        lock.withLock {
            running[plan.environment] = plan
            appliedVersions[plan.environment] = versions
        }
        do { try plan.canonical().write(to: file, options: .atomic) } catch {
            logger.error("could not keep plan \(plan.sequence) on disk", metadata: ["error": "\(error)"])
        }
    }

    /// Applies again, here, what uses a secret whose value changed in this machine's store (the
    /// control plane cannot know: it never holds them).
    func rotateSecrets() {
        guard let secretVersions else { return }
        let (plans, held) = lock.withLock { (running, persisted.switches) }
        for (name, plan) in plans.sorted(by: { $0.key < $1.key }) where held[name] == nil {
            guard let spec = plan.spec, !spec.secrets.isEmpty, let commit = plan.commit.flatMap(ObjectID.init(hex:)) else { continue }
            let now = secretVersions(spec)
            let before: [String: String]? = lock.withLock { appliedVersions[name] }
            guard before != now else { continue }
            lock.withLock { appliedVersions[name] = now }
            let environment = PlannedEnvironment(name: name, branch: plan.branch ?? "", commit: commit, spec: spec, fingerprint: plan.fingerprint ?? "",
                                                 domain: plan.domain ?? "localhost", source: PlanSnapshot(plan))
            do {
                let changes = try driver.apply(environment) { step in logger.info("rotating secrets of \(name): \(step)") }.changes
                if !changes.isEmpty {
                    note(DriverEvent(environment: name, kind: "secret-rotated", message: redact(changes.joined(separator: ", "))))
                }
            } catch {
                note(DriverEvent(environment: name, kind: "rotation-failed", message: redact("\(error)")))
            }
        }
    }

    /// Keeps what runs here in the agent's state DB, as the control plane keeps it in its own.
    func record(_ plan: Plan) {
        guard let store, plan.action != .switches else { return }
        do {
            let existing = try store.environment(plan.environment)
            if plan.action == .destroy {
                guard var record = existing else { return }
                record.destroyedAt = Date()
                record.updatedAt = Date()
                try store.save(record)
                return
            }
            guard let spec = plan.spec, let commit = plan.commit else { return }
            var record = existing ?? EnvironmentRecord(name: plan.environment, branch: plan.branch ?? "", commit: commit,
                                                       envClass: spec.class.rawValue, team: spec.team)
            record.branch = plan.branch ?? record.branch
            record.commit = commit
            record.appliedCommit = commit
            record.envClass = spec.class.rawValue
            record.team = spec.team
            record.domain = plan.domain
            record.fingerprint = plan.fingerprint
            record.specJSON = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
            record.conditions = []
            record.message = nil
            record.destroyedAt = nil
            record.updatedAt = Date()
            try store.save(record)
        } catch {
            logger.error("could not record \(plan.environment) in the agent's state DB", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Reports

    func queue(_ report: AgentReport) {
        lock.withLock {
            pending.append(report)
            // (A control plane away for long: the oldest reports go first; it retries what it misses.)
            if pending.count > 1000 { pending.removeFirst(pending.count - 1000) }
        }
    }

    /// Sends what waits (and the health, every `healthInterval`).
    func deliver() {
        let (reports, events, healthDue) = lock.withLock { (pending, self.events, Date().timeIntervalSince(lastHealth) >= options.healthInterval) }
        guard !reports.isEmpty || healthDue else { return }
        var health: [String: Any] = ["lastSequence": lastSequence, "switches": switches]
        var environments: [String: Any] = [:]
        for name in lock.withLock({ persisted.environments.keys.sorted() }) { environments[name] = replicas?(name) ?? [:] }
        health["environments"] = environments
        health["events"] = events.map { ["environment": $0.environment, "kind": $0.kind, "message": redact($0.message)] }
        let encoder = JSONEncoder()
        guard let reportData = try? encoder.encode(reports),
              let reportObjects = try? JSONSerialization.jsonObject(with: reportData),
              let body = try? JSONSerialization.data(withJSONObject: ["reports": reportObjects, "health": health], options: [.sortedKeys]) else { return }
        guard let (status, answer) = request("POST", "/v1/dataplane/reports", body: body) else { return }
        guard status == 200 else {
            logger.error("the control plane refused the reports", metadata: ["status": "\(status)", "body": "\(String(decoding: answer.prefix(300), as: UTF8.self))"])
            return
        }
        lock.withLock {
            pending.removeFirst(min(reports.count, pending.count))
            self.events.removeFirst(min(events.count, self.events.count))
            lastHealth = Date()
        }
    }

    /// One request to the control plane; nil when it cannot be reached.
    func request(_ method: String, _ path: String, body: Data?) -> (Int, Data)? {
        do {
            var request = try HTTPClient.Request(url: options.control + path, method: HTTPMethod(rawValue: method))
            request.headers.add(name: "Authorization", value: "Bearer \(options.token)")
            request.headers.add(name: "Content-Type", value: "application/json")
            if let body { request.body = .bytes(body) }
            let response = try http.execute(request: request, deadline: .now() + .seconds(30)).wait()
            if reachable != true {
                logger.notice("the control plane answers at \(options.control)")
                reachable = true
            }
            return (Int(response.status.code), response.body.map { Data($0.readableBytesView) } ?? Data())
        } catch {
            if reachable != false {
                logger.warning("the control plane cannot be reached; what runs keeps running and the kill switches stay enforced",
                               metadata: ["control": "\(options.control)", "error": "\(error)"])
                reachable = false
            }
            return nil
        }
    }
}
