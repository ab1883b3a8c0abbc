import Audit
import Foundation
import Logging
import SpecModel
import StateStore

/// Lifetime and cost while environments run: idle sleep and wake on request, TTL, the spend
/// ledger, budget alerts and pauses, and autoscaling from the router's in-flight counts.
///
/// `tick` runs on the reconcile loop once a pass (idle timers, TTLs, accrual, budgets); the
/// router calls `requestStarted`/`requestEnded` and `ensureServing` from its threads; a scaler
/// thread of its own follows in-flight requests. Sleep, wake and scale run on worker threads; the
/// driver keeps one operation per environment at a time.
public final class LifecycleController: @unchecked Sendable {
    public struct Options: Sendable {
        /// The ledger is written at least this often (and on every change of what runs).
        public var accrualInterval = 60.0
        /// Replicas go down only to the highest count wanted during this window.
        public var stabilizationWindow = 60.0
        /// How often the scaler looks at in-flight requests.
        public var scaleInterval = 0.25
        /// A request waits this long for its environment to wake, then gets a 503.
        public var holdTimeout = 30.0
        /// Requests held at once per environment while it wakes; beyond, a 503 at once.
        public var maxHeld = 64
        /// Seconds before a TTL runs out when a warning is recorded.
        public var ttlWarnings: [Double] = [86_400, 3_600]
        public init() {}
    }

    /// A preview whose TTL ran out, for the reconciler to tear down.
    public struct Expiry: Sendable, Equatable {
        public let environment: String
        public let reason: String
    }

    let state: StateStore
    let driver: any LifecycleDriver
    let audit: AuditLog
    let logger: Logger
    public let options: Options
    public var clock: @Sendable () -> Date

    private let lock = NSLock()
    /// The last request seen through the router, per environment.
    private var lastRequest: [String: Date] = [:]
    /// Requests under way per environment and service, and the most at once since the scaler last looked.
    private var inFlight: [String: [String: Int]] = [:]
    private var peak: [String: [String: Int]] = [:]
    /// When each environment was last woken or applied (idle time counts from the later of this and its last request).
    private var awakeSince: [String: Date] = [:]
    /// Wakes and scale-ups under way, by environment (a request waits for the one that runs).
    private var wakes: [String: Ticket] = [:]
    private var held: [String: Int] = [:]
    /// Sleeps and scalings under way (never two at once for an environment).
    private var working: Set<String> = []
    /// Environments, and "environment/service"s, being stopped: their requests wait.
    private var stopping: Set<String> = []
    /// Replica counts wanted by the scaler over the stabilization window, per "environment/service".
    private var wanted: [String: [(at: Date, count: Int)]] = [:]
    /// The autoscaled services of awake environments (refreshed each tick).
    private var scaled: [(environment: String, service: Service)] = []
    private var lastAccrual: Date?
    /// What runs, or its pricing, changed: the meters are written at the next tick.
    private var dirty = true
    /// Applied specs decoded, by environment, with the fingerprint they were decoded at.
    private var specs: [String: (fingerprint: String?, spec: EnvironmentSpec)] = [:]
    private var settings = Settings()
    private var started = Date()
    private var stopped = false
    /// Records are written off the threads that decide them (a wake answers before its record is signed).
    private let recorder = DispatchQueue(label: "gantry.lifecycle.records")
    /// Environments under a kill switch are not woken, put to sleep or scaled (the reconciler's board).
    public var killSwitches = KillSwitchBoard()
    /// Whether an environment runs on this controller's driver (the local one): idle sleep and
    /// autoscaling act only there; one on a cluster or the data plane is scaled there, and only
    /// expires here (a teardown).
    public var runsHere: @Sendable (String) -> Bool = { _ in true }

    public init(state: StateStore, driver: any LifecycleDriver, audit: AuditLog, logger: Logger, options: Options = Options(),
                clock: @escaping @Sendable () -> Date = { Date() }) {
        self.state = state
        self.driver = driver
        self.audit = audit
        self.logger = logger
        self.options = options
        self.clock = clock
        started = clock()
    }

    // MARK: The router's side

    /// Counts a request in; true when it must wait (`ensureServing`) before it is forwarded:
    /// its service or environment is being stopped.
    @discardableResult
    public func requestStarted(environment: String, service: String) -> Bool {
        let now = clock()
        return lock.withLock {
            lastRequest[environment] = now
            let count = (inFlight[environment]?[service] ?? 0) + 1
            inFlight[environment, default: [:]][service] = count
            peak[environment, default: [:]][service] = max(peak[environment]?[service] ?? 0, count)
            return stopping.contains(environment) || stopping.contains("\(environment)/\(service)")
        }
    }

    /// Requests forwarded to each replica's port and not yet answered (set by the router's owner),
    /// so a replica going away finishes them first.
    public var portInFlight: @Sendable (Int) -> Int = { _ in 0 }
    /// How long a replica going away waits for the requests it serves.
    public var drainSeconds = 30.0

    func drain(_ port: Int) {
        let deadline = Date().addingTimeInterval(drainSeconds)
        while portInFlight(port) > 0, Date() < deadline { usleep(10_000) }
    }

    /// Marks an environment (or "environment/service") as being stopped, when nothing is in
    /// flight for it (`ifIdle`) — checked and marked at once, so a request either came first (and
    /// the stop is not made) or waits for the stop and then wakes it.
    private func beginStop(_ key: String, ifIdle: Bool) -> Bool {
        lock.withLock {
            let parts = key.split(separator: "/", maxSplits: 1).map(String.init)
            let counts = inFlight[parts[0]] ?? [:]
            let busy = parts.count == 2 ? (counts[parts[1]] ?? 0) > 0 : counts.values.contains { $0 > 0 }
            if ifIdle && busy { return false }
            stopping.insert(key)
            return true
        }
    }

    private func endStop(_ key: String) { _ = lock.withLock { stopping.remove(key) } }

    public func requestEnded(environment: String, service: String) {
        let now = clock()
        lock.withLock {
            lastRequest[environment] = now
            inFlight[environment, default: [:]][service] = max(0, (inFlight[environment]?[service] ?? 1) - 1)
        }
    }

    /// Makes the environment's service serve before a request is forwarded: a sleeping
    /// environment is woken, a service scaled to 0 gets a replica. Blocks until it serves (nil)
    /// or the hold runs out, too many requests wait, or it may not wake (the reason, for a 503).
    public func ensureServing(environment: String, service: String) -> String? {
        // A stop under way finishes first; then the environment is woken (or the service started) again.
        let waitUntil = Date().addingTimeInterval(options.holdTimeout)
        while Date() < waitUntil, lock.withLock({ stopping.contains(environment) || stopping.contains("\(environment)/\(service)") }) {
            usleep(10_000)
        }
        if let why = killSwitches.reason(for: environment) { return "\(environment) is stopped by the \(why)" }
        let sleep = try? state.lifecycleState(of: environment)
        if let sleep, sleep.state == .paused {
            return "\(environment) is paused: \(sleep.reason). It wakes when the period rolls over or the budget is raised on the protected branch"
        }
        let asleep = sleep != nil
        let replicas = driver.replicas(of: environment)[service] ?? 0
        guard asleep || replicas == 0 else { return nil }
        let (ticket, admitted) = lock.withLock { () -> (Ticket?, Bool) in
            guard held[environment, default: 0] < options.maxHeld else { return (nil, false) }
            held[environment, default: 0] += 1
            if let running = wakes[environment] { return (running, true) }
            let made = Ticket()
            wakes[environment] = made
            Thread.detachNewThread { [self] in
                let problem = asleep ? wake(environment, actor: "gantry", reason: "a request through the router")
                                     : scaleFromZero(environment, service: service)
                lock.withLock { wakes[environment] = nil }
                made.finish(problem)
            }
            return (made, true)
        }
        guard admitted, let ticket else {
            return "\(environment) is waking and \(options.maxHeld) requests already wait for it; retry in a few seconds"
        }
        defer { lock.withLock { held[environment, default: 1] -= 1 } }
        guard let outcome = ticket.wait(seconds: options.holdTimeout) else {
            return "\(environment) did not wake within \(Int(options.holdTimeout))s; retry in a few seconds"
        }
        return outcome
    }

    // MARK: Sleep and wake

    /// Wakes a sleeping environment (a request, `gantry wake`, the API): its services start, the
    /// idle timer starts again, a `woke` record. Nil when it serves, else why not.
    @discardableResult
    public func wake(_ environment: String, actor: String, reason: String) -> String? {
        guard let record = try? state.environment(environment), Self.runs(record) else {
            return "\(environment) does not run (nothing to wake)"
        }
        if let why = killSwitches.reason(for: environment) { return "\(environment) is stopped by the \(why): it wakes once a human with a role lifts it" }
        let was = try? state.lifecycleState(of: environment)
        if let was, was.state == .paused {
            return "\(environment) is paused: \(was.reason). It wakes when the period rolls over or the budget is raised on the protected branch"
        }
        guard lock.withLock({ working.insert(environment).inserted }) else { return "\(environment) is being put to sleep or scaled; retry" }
        defer { lock.withLock { _ = working.remove(environment) } }
        let began = clock()
        do {
            try driver.wake(environment: environment)
        } catch {
            logger.error("could not wake", metadata: ["gantry.env": "\(environment)", "error": "\(error)"])
            return "\(environment) could not be woken: \(error)"
        }
        try? state.setLifecycleState(environment, nil)
        let now = clock()
        lock.withLock { awakeSince[environment] = now; lastRequest[environment] = now }
        meter(now: now, force: true)
        let took = String(format: "%.0f ms", now.timeIntervalSince(began) * 1000)
        note(environment, "woke", "woke (\(reason); \(took))")
        logger.info("woke", metadata: ["gantry.env": "\(environment)", "reason": "\(reason)", "took": "\(took)"])
        writeRecord(.woke, record, actor: actor, [("reason", reason), ("slept-since", was.map { AuditRecord.timestamp($0.since) } ?? "unknown")])
        return nil
    }

    /// Puts an environment to sleep (idle, `gantry sleep`, a budget): its service processes stop,
    /// its data stays. `paused` keeps requests from waking it (a spent budget).
    @discardableResult
    public func sleep(_ environment: String, actor: String, reason: String, paused: Bool = false, ifIdle: Bool = false,
                      event: AuditEvent = .slept, fields: [(String, String)] = [], restore: Bool = false) -> String? {
        guard let record = try? state.environment(environment), Self.runs(record) else {
            return "\(environment) does not run (nothing to put to sleep)"
        }
        if let why = killSwitches.reason(for: environment) { return "\(environment) is frozen by the \(why); it is not put to sleep meanwhile" }
        guard lock.withLock({ working.insert(environment).inserted }) else { return "\(environment) is being scaled or put to sleep already" }
        defer { lock.withLock { _ = working.remove(environment) } }
        // (Idle: only if no request came meanwhile; the requests that come now wait, then wake it.)
        guard beginStop(environment, ifIdle: ifIdle) else { return "\(environment) has requests in flight" }
        defer { endStop(environment) }
        do {
            try driver.sleep(environment: environment)
        } catch {
            logger.error("could not put to sleep", metadata: ["gantry.env": "\(environment)", "error": "\(error)"])
            return "\(environment) could not be put to sleep: \(error)"
        }
        let now = clock()
        if restore {
            // Put back to sleep (its state kept): history only.
            meter(now: now, force: true)
            note(environment, "stopped", "was asleep, yet its processes ran: stopped again (\(reason))")
            return nil
        }
        try? state.setLifecycleState(environment, LifecycleState(environment: environment, state: paused ? .paused : .sleeping,
                                                                 reason: reason, since: now))
        meter(now: now, force: true)
        note(environment, paused ? "budget-paused" : "slept", reason)
        logger.notice("\(paused ? "paused" : "asleep"): \(reason)", metadata: ["gantry.env": "\(environment)"])
        writeRecord(event, record, actor: actor, [("reason", reason)] + fields)
        return nil
    }

    /// An environment was applied (its services run its new revision): awake, idle timer from now.
    /// The meters are written at the loop's next tick (a burst of applies writes them once, not
    /// once per apply).
    public func applied(_ environment: String) {
        if (try? state.lifecycleState(of: environment)) != nil { try? state.setLifecycleState(environment, nil) }
        let now = clock()
        lock.withLock { awakeSince[environment] = now; dirty = true }
    }

    /// An environment was torn down: nothing of it is kept.
    public func forget(_ environment: String) {
        try? state.setLifecycleState(environment, nil)
        lock.withLock {
            awakeSince[environment] = nil; lastRequest[environment] = nil; inFlight[environment] = nil; peak[environment] = nil
            wanted = wanted.filter { !$0.key.hasPrefix(environment + "/") }
            specs[environment] = nil
            dirty = true
        }
    }

    // MARK: Once a pass

    /// Idle sleep, `gantry sleep|wake` requests, TTL warnings and expiries, the ledger and the
    /// budgets, with the governance of the last admitted protected revision (`revision`: where
    /// records about a team or agent go). Returns the previews whose TTL ran out.
    public func tick(settings: Settings, revision: String) -> [Expiry] {
        let now = clock()
        lock.withLock {
            if self.settings.pricing != settings.pricing { dirty = true }
            self.settings = settings
        }
        // (Failed, or waiting for approval, its applied revision still runs: its TTL, idle time and budget count.)
        let records = ((try? state.environments()) ?? []).filter(Self.runs)
        let sleeping = (try? state.lifecycleStates()) ?? [:]
        takeRequests()
        var autoscaled: [(String, Service)] = []
        var expired: [Expiry] = []
        let killed = killSwitches.all
        for record in records {
            guard let spec = appliedSpec(record) else { continue }
            // Frozen by a kill switch: nothing starts, stops or expires meanwhile.
            if killed[record.name] != nil { continue }
            let here = runsHere(record.name)
            if sleeping[record.name] == nil, here { autoscaled += spec.services.filter { $0.autoscale != nil }.map { (record.name, $0) } }
            // Asleep, yet something of it runs (nothing of Gantry's starts it then, an apply aside:
            // a new revision wakes it): stopped again.
            if let asleep = sleeping[record.name], !record.conditions.contains(.applying),
               driver.replicas(of: record.name).values.contains(where: { $0 > 0 }),
               lock.withLock({ !working.contains(record.name) && wakes[record.name] == nil }) {
                logger.warning("asleep but running: stopped again", metadata: ["gantry.env": "\(record.name)"])
                background {
                    self.sleep(record.name, actor: "gantry", reason: asleep.reason, paused: asleep.state == .paused,
                               event: asleep.state == .paused ? .budgetPaused : .slept, restore: true)
                }
            }
            if let expiry = checkTTL(record, spec: spec, settings: settings, now: now) { expired.append(expiry); continue }
            if sleeping[record.name] == nil, here, let idle = Self.idleLimit(spec, settings: settings) {
                let (last, busy) = lock.withLock { () -> (Date, Bool) in
                    let since = [lastRequest[record.name], awakeSince[record.name], started].compactMap { $0 }.max()!
                    return (since, (inFlight[record.name] ?? [:]).values.contains { $0 > 0 } || wakes[record.name] != nil)
                }
                if !busy, now.timeIntervalSince(last) >= idle {
                    let reason = "idle: no request through the router for \(Self.duration(now.timeIntervalSince(last))) (idleSleepAfter \(Self.duration(idle)))"
                    background { self.sleep(record.name, actor: "gantry", reason: reason, ifIdle: true) }
                }
            }
        }
        lock.withLock { scaled = autoscaled }
        // Budgets are judged each time the ledger is written (at least every `accrualInterval`).
        if meter(now: now, force: false) {
            budgets(settings: settings, revision: revision, records: records, sleeping: sleeping, now: now)
        }
        return expired
    }

    /// The applied spec, decoded once per revision (every tick reads every running environment's).
    func appliedSpec(_ record: EnvironmentRecord) -> EnvironmentSpec? {
        if let known = lock.withLock({ specs[record.name] }), known.fingerprint == record.fingerprint { return known.spec }
        guard let spec = record.appliedSpec else { return nil }
        lock.withLock { specs[record.name] = (record.fingerprint, spec) }
        return spec
    }

    /// Whether a revision of it runs (applied, not destroyed nor being torn down).
    static func runs(_ record: EnvironmentRecord) -> Bool {
        record.appliedCommit != nil && record.phase != .destroyed && !record.conditions.contains(.destroying)
    }

    /// `gantry sleep|wake` and the API's, done off the loop.
    private func takeRequests() {
        for request in (try? state.takeLifecycleRequests()) ?? [] {
            let actor = request.actor
            switch request.action {
            case "sleep": background { self.sleep(request.environment, actor: actor, reason: "asked by \(actor)") }
            case "wake": background { self.wake(request.environment, actor: actor, reason: "asked by \(actor)") }
            default: logger.warning("unknown lifecycle request ignored", metadata: ["action": "\(request.action)"])
            }
        }
    }

    /// How long the environment may go without a request before it sleeps: its spec's
    /// `lifecycle.idleSleepAfter`, else for a preview `previews.idleSleepAfter`. Production
    /// sleeps only when its own spec says so.
    static func idleLimit(_ spec: EnvironmentSpec, settings: Settings) -> Double? {
        guard spec.class == .preview else { return spec.lifecycle.idleSleepAfter }
        return Self.smaller(spec.lifecycle.idleSleepAfter, settings.previews.idleSleepAfter)
    }

    /// A preview's limit: the smaller of its spec's and `previews`' (an agent's file never
    /// lengthens what the protected branch sets).
    static func smaller(_ own: Double?, _ governed: Double?) -> Double? {
        switch (own, governed) {
        case let (own?, governed?): return min(own, governed)
        default: return own ?? governed
        }
    }

    /// A preview whose branch brought no new commit for its TTL expires; a warning is recorded
    /// once at each of `ttlWarnings` before.
    private func checkTTL(_ record: EnvironmentRecord, spec: EnvironmentSpec, settings: Settings, now: Date) -> Expiry? {
        guard spec.class == .preview, let ttl = Self.smaller(spec.lifecycle.ttl, settings.previews.ttl) else { return nil }
        let base = record.lastCommitAt ?? record.createdAt
        let left = base.addingTimeInterval(ttl).timeIntervalSince(now)
        if left <= 0 {
            return Expiry(environment: record.name,
                          reason: "its branch \(record.branch) brought no new commit for \(Self.duration(now.timeIntervalSince(base))) (ttl \(Self.duration(ttl))); a new commit brings it back")
        }
        for warning in options.ttlWarnings.sorted(by: >) where ttl > warning && left <= warning {
            let key = "ttl-warning:\(record.name):\(Int(base.timeIntervalSince1970)):\(Int(warning))"
            guard (try? state.markOnce(key, at: now)) == true else { continue }
            let message = "\(record.name) expires in \(Self.duration(left)) (ttl \(Self.duration(ttl)) since the last commit of \(record.branch)); push a commit to keep it"
            logger.warning("\(message)", metadata: ["gantry.env": "\(record.name)"])
            note(record.name, "ttl-warning", message)
            writeRecord(.ttlWarning, record, actor: "gantry", [("reason", message), ("expires", AuditRecord.timestamp(base.addingTimeInterval(ttl)))])
        }
        return nil
    }

    // MARK: Spend

    /// Writes the ledger when what runs changed or `accrualInterval` passed (`force`: now).
    /// True when it wrote.
    @discardableResult
    func meter(now: Date, force: Bool) -> Bool {
        // What runs changes through this controller's hooks (applied, forget, sleep, wake, scale),
        // which force a write; otherwise the meters are accrued every `accrualInterval`.
        let due = lock.withLock { dirty || (lastAccrual.map { now.timeIntervalSince($0) >= options.accrualInterval } ?? true) }
        guard force || due else { return false }
        let pricing = lock.withLock { settings.pricing }
        var current: [Meter] = []
        for record in (try? state.environments()) ?? [] where record.appliedCommit != nil && record.phase != .destroyed {
            guard let spec = appliedSpec(record) else { continue }
            // What runs is charged, whatever the environment's lifecycle state says.
            var running = driver.replicas(of: record.name)
            for service in spec.services where running[service.name] == nil { running[service.name] = 0 }
            let cost = CostModel.breakdown(spec, pricing: pricing, running: running)
            current.append(Meter(environment: record.name, since: now, hourly: cost.hourly, team: record.team, agent: record.agent,
                                 onBehalfOf: record.onBehalfOf, envClass: record.envClass))
        }
        do {
            try state.accrue(until: now, current: current)
            lock.withLock { lastAccrual = now; dirty = false }
            return true
        } catch {
            logger.error("could not write the spend ledger; retried next pass", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Alerts at `alertAt` and at 100% of each budget, once per period; at 100% the scope's
    /// previews are paused (production is only alerted); a paused preview whose budgets allow
    /// it again (a new period, a raised budget) may be woken again.
    private func budgets(settings: Settings, revision: String, records: [EnvironmentRecord], sleeping: [String: LifecycleState], now: Date) {
        guard let spending = try? Spending.load(state, now: now) else { return }
        let statuses = spending.statuses(settings.budgets)
        var spent: [String] = []
        for status in statuses {
            for threshold in Set([settings.budgets.alertAt, 1.0]).sorted() where status.fraction >= threshold {
                let key = "budget-alert:\(status.scope):\(status.name):\(status.period.rawValue):\(status.label):\(threshold)"
                guard (try? state.markOnce(key, at: now)) == true else { continue }
                let message = "\(status.title) is at \(Int((status.fraction * 100).rounded()))%: spent \(CostModel.format(status.spent)) of \(CostModel.format(status.limit)) (projected \(CostModel.format(status.projected)) by the period's end)"
                logger.warning("\(message)")
                recordScoped(.budgetAlert, revision: revision, [
                    ("scope", status.scope), ("name", status.name), ("period", status.period.rawValue), ("period-label", status.label),
                    ("threshold", String(threshold)), ("limit", CostModel.format(status.limit)), ("spent", CostModel.format(status.spent)),
                    ("projected", CostModel.format(status.projected)), ("reason", message),
                ] + status.top.map { ("top", "\($0.environment) \(CostModel.format($0.amount))") })
            }
            guard status.exhausted else { continue }
            spent.append("\(status.scope):\(status.name)")
            for record in records where record.envClass == EnvironmentClass.preview.rawValue && sleeping[record.name]?.state != .paused
                && (status.scope == "team" ? record.team == status.name : record.agent == status.name) {
                let reason = "the \(status.title) budget is spent (\(CostModel.format(status.spent)) of \(CostModel.format(status.limit)))"
                background {
                    self.sleep(record.name, actor: "gantry", reason: reason, paused: true, event: .budgetPaused,
                               fields: [("scope", status.scope), ("name", status.name), ("period", status.period.rawValue), ("period-label", status.label)])
                }
            }
        }
        for (name, sleep) in sleeping where sleep.state == .paused {
            guard let record = records.first(where: { $0.name == name }) else { continue }
            let scopes = ["team:\(record.team ?? "")", "agent:\(record.agent ?? "")"]
            if !scopes.contains(where: spent.contains) {
                try? state.setLifecycleState(name, LifecycleState(environment: name, state: .sleeping,
                                                                  reason: "was paused by a budget that allows it again; a request wakes it", since: sleep.since))
                note(name, "budget-resumed", "its budgets allow it again: a request or `gantry wake` wakes it")
            }
        }
    }

    // MARK: Autoscaling

    /// Starts the scaler thread (stopped by `stop`).
    public func start() {
        let thread = Thread { [self] in
            while !lock.withLock({ stopped }) {
                scaleStep(now: clock())
                Thread.sleep(forTimeInterval: options.scaleInterval)
            }
        }
        thread.name = "gantry.autoscaler"
        thread.start()
    }

    public func stop() { lock.withLock { stopped = true } }

    /// One look at in-flight requests: up at once (at most doubling), down only to the most
    /// wanted within the stabilization window; `min: 0` lets an idle service sleep.
    public func scaleStep(now: Date) {
        let services = lock.withLock { scaled }
        let killed = killSwitches.all
        for (environment, service) in services where killed[environment] == nil {
            guard let scale = service.autoscale else { continue }
            let key = "\(environment)/\(service.name)"
            let (observed, busy) = lock.withLock { () -> (Int, Bool) in
                let seen = max(peak[environment]?[service.name] ?? 0, inFlight[environment]?[service.name] ?? 0)
                peak[environment]?[service.name] = inFlight[environment]?[service.name] ?? 0
                return (seen, working.contains(environment) || wakes[environment] != nil)
            }
            guard !busy else { continue }
            let current = driver.replicas(of: environment)[service.name] ?? 0
            let want = Autoscaler.wanted(inFlight: observed, target: scale.targetConcurrency, min: scale.min, max: scale.max)
            let recent = lock.withLock { () -> [(at: Date, count: Int)] in
                let kept = (wanted[key] ?? []).filter { now.timeIntervalSince($0.at) < options.stabilizationWindow } + [(now, want)]
                wanted[key] = kept
                return kept
            }
            let windowFull = recent.first.map { now.timeIntervalSince($0.at) >= options.stabilizationWindow * 0.9 } ?? false
                || lock.withLock({ now.timeIntervalSince(started) >= options.stabilizationWindow })
            guard let next = Autoscaler.next(current: current, want: want, recent: recent.map(\.count), windowFull: windowFull,
                                             min: scale.min, max: scale.max) else { continue }
            guard lock.withLock({ working.insert(environment).inserted }) else { continue }
            let reason = "\(observed) request\(observed == 1 ? "" : "s") in flight, target \(CostModel.format(scale.targetConcurrency)) per replica"
            background { [self] in
                defer { lock.withLock { _ = working.remove(environment) } }
                // To zero only with nothing in flight; the requests that come meanwhile wait, then start it again.
                let key = "\(environment)/\(service.name)"
                if next == 0 {
                    guard beginStop(key, ifIdle: true) else { return }
                }
                defer { if next == 0 { endStop(key) } }
                do {
                    try driver.scale(environment: environment, service: service.name, replicas: next) { self.drain($0) }
                } catch {
                    logger.error("could not scale", metadata: ["gantry.env": "\(environment)", "service": "\(service.name)", "error": "\(error)"])
                    return
                }
                scaledTo(environment, service: service.name, from: current, to: next, max: scale.max, reason: reason)
            }
        }
    }

    private func scaleFromZero(_ environment: String, service: String) -> String? {
        guard lock.withLock({ working.insert(environment).inserted }) else {
            // A scaling under way: wait for it, then look again.
            let deadline = Date().addingTimeInterval(options.holdTimeout)
            while Date() < deadline, lock.withLock({ working.contains(environment) }) { usleep(10_000) }
            return (driver.replicas(of: environment)[service] ?? 0) > 0 ? nil : "\(environment)'s service \(service) could not be started"
        }
        defer { lock.withLock { _ = working.remove(environment) } }
        do {
            try driver.scale(environment: environment, service: service, replicas: 1) { self.drain($0) }
        } catch {
            return "\(environment)'s service \(service) could not be started: \(error)"
        }
        scaledTo(environment, service: service, from: 0, to: 1, max: nil, reason: "a request through the router")
        return nil
    }

    private func scaledTo(_ environment: String, service: String, from: Int, to: Int, max: Int?, reason: String) {
        let now = clock()
        meter(now: now, force: true)
        let message = "\(service): \(from) → \(to) replica\(to == 1 ? "" : "s") (\(reason))"
        note(environment, "scaled", message)
        logger.info("scaled \(message)", metadata: ["gantry.env": "\(environment)"])
        if let max, to == max, from < max, let record = try? state.environment(environment) {
            writeRecord(.scaled, record, actor: "gantry", [("service", service), ("replicas", "\(to)"), ("reason", "\(reason); at its autoscale max \(max)")])
        }
    }

    // MARK: Records

    /// A signed record about `environment` (on the commit it runs) and a line in its history,
    /// for what other parts of Gantry decide about it (the egress proxy, the kill switch).
    public func record(_ event: AuditEvent, environment: String, actor: String, history: String, _ fields: [(String, String)]) {
        note(environment, event.rawValue, history)
        guard let record = try? state.environment(environment) else { return }
        writeRecord(event, record, actor: actor, fields)
    }

    private func note(_ environment: String, _ kind: String, _ message: String) {
        try? state.record(EventRecord(environment: environment, kind: kind, message: message, at: clock()))
    }

    /// A record about an environment, on the commit it runs.
    private func writeRecord(_ event: AuditEvent, _ environment: EnvironmentRecord, actor: String, _ fields: [(String, String)]) {
        let commit = environment.appliedCommit ?? environment.commit
        let base: [(String, String)] = [("environment", environment.name), ("branch", environment.branch), ("commit", commit),
                                        ("actor", actor), ("actor-kind", actor == "gantry" ? "system" : "unknown")]
        append(AuditEntry(event: event, commit: commit, fields: (base + fields).map { (key: $0.0, value: $0.1) }))
    }

    /// A record about a team or an agent, on the protected revision whose budgets were applied.
    private func recordScoped(_ event: AuditEvent, revision: String, _ fields: [(String, String)]) {
        append(AuditEntry(event: event, commit: revision,
                          fields: ([("commit", revision), ("actor", "gantry"), ("actor-kind", "system")] + fields).map { (key: $0.0, value: $0.1) }))
    }

    private func append(_ entry: AuditEntry) {
        let audit = self.audit, logger = self.logger
        recorder.async {
            do { _ = try audit.append([entry]) } catch {
                logger.error("could not write a lifecycle record", metadata: ["event": "\(entry.event.rawValue)", "error": "\(error)"])
            }
        }
    }

    /// Writes the meters if what runs changed since, and waits until every record decided so far
    /// is written (`gantry run --once`, shutdown, tests).
    public func flush() {
        meter(now: clock(), force: false)
        recorder.sync {}
    }

    private func background(_ work: @escaping @Sendable () -> Void) {
        Thread.detachNewThread { work() }
    }

    static func duration(_ seconds: Double) -> String {
        let value = Int(seconds.rounded())
        if value >= 86_400 && value % 3600 == 0 { return "\(value / 3600)h" }
        if value >= 3600 { return "\(value / 3600)h\(value % 3600 / 60 > 0 ? "\(value % 3600 / 60)m" : "")" }
        if value >= 60 { return "\(value / 60)m\(value % 60 > 0 ? "\(value % 60)s" : "")" }
        return "\(value)s"
    }

    /// Something to wait for with a time limit, finished once with an outcome.
    final class Ticket: @unchecked Sendable {
        private let condition = NSCondition()
        private var done = false
        private var outcome: String?

        func finish(_ value: String?) {
            condition.withLock {
                outcome = value
                done = true
                condition.broadcast()
            }
        }

        /// The outcome (nil inside: it serves), or nil when the time ran out first.
        func wait(seconds: Double) -> String?? {
            let deadline = Date().addingTimeInterval(seconds)
            return condition.withLock {
                while !done { if !condition.wait(until: deadline) { return done ? .some(outcome) : nil } }
                return .some(outcome)
            }
        }
    }
}

/// The replica arithmetic of autoscaling, apart from any clock or driver.
public enum Autoscaler {
    /// Replicas for `inFlight` requests at `target` per replica, within `min`…`max`.
    public static func wanted(inFlight: Int, target: Double, min: Int, max: Int) -> Int {
        // (Clamped as a Double: a tiny target must never overflow the conversion.)
        let raw = target > 0 ? (Double(inFlight) / target).rounded(.up) : Double(max)
        return Swift.min(Swift.max(Int(Swift.min(Swift.max(raw, 0), Double(max))), min), max)
    }

    /// The next replica count, or nil to stay: up at once to what is wanted, at most doubling
    /// (from 0, to 1); down, once the window is full, only to the most wanted within it.
    public static func next(current: Int, want: Int, recent: [Int], windowFull: Bool, min: Int, max: Int) -> Int? {
        // Above its max (lowered by a new revision): down to it at once.
        if current > max { return max }
        if want > current { return Swift.min(want, Swift.max(current * 2, 1), max) }
        guard windowFull else { return nil }
        let floor = Swift.min(Swift.max(recent.max() ?? want, min), max)
        return floor < current ? floor : nil
    }
}
