import Audit
import Foundation
import Gateway
import LocalDriver
import Logging
import Reconciler
import SpecModel
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// Keeps the egress proxy and the kill switch in step with governance, the environments, the
/// secrets and the switches in the state DB: after every pass, every second, and at once when
/// `gantry kill` or the API signals (SIGUSR2). Freezes what a switch covers and thaws what it no
/// longer covers; writes `kill-switch`, `egress-denied` and `dlp-blocked` records.
final class EgressControl: @unchecked Sendable {
    let store: StateStore
    let driver: LocalDriver
    /// What a kill switch does to an environment on a cluster (nil: no cluster).
    var clusterKill: ((String, Bool) -> Void)?
    let board: KillSwitchBoard
    let secrets: SecretStore
    let lifecycle: LifecycleController
    let logger: Logger
    let pinned: [String: [IPAddress]]
    let pinnedPorts: [String: Int]
    var proxy: EgressProxy?
    /// Wakes the reconcile loop (a lifted switch's held applies go at once).
    var wakeLoop: (@Sendable () -> Void)?

    private let lock = NSLock()
    private var settings = Settings()
    /// Whether a pass told the protected revision's settings yet (until then its kill switch is
    /// the one the state DB remembers from the last run).
    private var governedOnce = false
    private var covered: [String: String] = [:]
    /// The last DLP scanner and the secrets it was built for.
    private var dlp: (key: [String], scanner: DLPScanner)?
    /// Specs being applied, by environment (they hold until the apply ends).
    private var pending: [String: EnvironmentSpec] = [:]
    private var started = false
    /// Records of denials and DLP blocks: at most one per key per interval, and at most
    /// `recordsPerMinute` per environment and kind (the rest counted, and said in the next one):
    /// an environment asking for a thousand names cannot flood the notes.
    private var lastRecord: [String: (at: Date, suppressed: Int)] = [:]
    private var windows: [String: (start: Date, written: Int, suppressed: Int)] = [:]
    /// Records written per environment and kind today (at most `recordsPerDay`).
    private var daily: [String: (day: Int, written: Int)] = [:]
    static let recordsPerDay = 300
    static let deniedRecordInterval: TimeInterval = 60
    static let dlpRecordInterval: TimeInterval = 10
    static let recordsPerMinute = 20
    private let refreshQueue = DispatchQueue(label: "gantry.egress.refresh")
    private var signalSource: DispatchSourceSignal?

    init(store: StateStore, driver: LocalDriver, board: KillSwitchBoard, secrets: SecretStore, lifecycle: LifecycleController,
         logger: Logger, pins: (addresses: [String: [IPAddress]], ports: [String: Int])) {
        self.store = store
        self.driver = driver
        self.board = board
        self.secrets = secrets
        self.lifecycle = lifecycle
        self.logger = logger
        self.pinned = pins.addresses
        self.pinnedPorts = pins.ports
    }

    /// The hooks the proxy calls: the service behind a connection, and each event.
    var hooks: EgressHooks {
        EgressHooks(identify: { [driver] in driver.service(connectedFrom: $0, port: $1) },
                    event: { [weak self] in self?.record($0) },
                    caller: { [weak self] in self?.caller(at: $0) })
    }

    /// A revision is about to be applied: its lists hold from now (its services may call out as
    /// they start), and until the apply ends whatever the state DB says ran before.
    func willApply(_ environment: String, _ spec: EnvironmentSpec) {
        lock.withLock { pending[environment] = spec }
        if let address = driver.environmentAddresses().first(where: { $0.value == environment })?.key {
            proxy?.setCaller(EgressCaller(environment: environment, grants: grants(spec), killed: board.reason(for: environment)), at: address)
        }
    }

    /// The caller at an address the proxy's snapshot does not know yet (an environment whose
    /// network was made since the last refresh).
    func caller(at address: String) -> EgressCaller? {
        guard let environment = driver.environmentAddresses()[address] else { return nil }
        let spec = lock.withLock { pending[environment] } ?? (try? store.environment(environment))??.appliedSpec
        return EgressCaller(environment: environment, grants: spec.map(grants) ?? EgressGrants(), killed: board.reason(for: environment))
    }

    /// Starts following: a refresh now, then on SIGUSR2 and every second (once: a second call
    /// only refreshes).
    func start() {
        guard !lock.withLock({ started }) else { return refreshQueue.sync { refreshNow() } }
        signal(SIGUSR2, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGUSR2, queue: refreshQueue)
        source.setEventHandler { [weak self] in self?.refreshNow() }
        source.resume()
        signalSource = source
        lock.withLock { started = true }
        // The first one before anything else runs: a restart must not thaw what a switch froze.
        refreshQueue.sync { refreshNow() }
        Thread.detachNewThread { [weak self] in
            while let self, self.lock.withLock({ self.started }) {
                usleep(1_000_000)
                self.refresh()
            }
        }
    }

    func stop() {
        lock.withLock { started = false }
        signalSource?.cancel()
    }

    /// The settings of the last admitted protected revision (each pass).
    func governed(_ new: Settings) {
        let changed = lock.withLock { () -> Bool in
            defer { settings = new; governedOnce = true }
            return settings != new || !governedOnce
        }
        if changed { refresh() }
    }

    func refresh() { refreshQueue.async { [weak self] in self?.refreshNow() } }

    /// One whole step: who is covered, frozen or thawed, what the proxy decides with, and the
    /// generation the commands wait for.
    private func refreshNow() {
        let (settings, governed) = lock.withLock { (self.settings, governedOnce) }
        // gantry.yaml's switch is kept in the state DB too (scope all, name gantry.yaml): status
        // shows it, and a restart holds it before its first pass has read the protected branch.
        if governed, let main = try? store.killSwitches().contains(where: { $0.scope == .all && $0.name == Self.mainSwitch }), main != settings.killSwitch {
            _ = try? store.setKillSwitch(.all, name: Self.mainSwitch, on: settings.killSwitch, actor: "protected branch",
                                         reason: "killSwitch: true in gantry.yaml on the protected branch")
        }
        guard let records = try? store.environments().filter({ $0.phase != .destroyed }),
              let every = try? store.killSwitches(lifted: true), let generations = try? store.killGenerations() else { return }
        let switches = every.filter(\.on)
        let now = KillSwitchBoard.coverage(switches: switches, onMain: settings.killSwitch,
                                           environments: records.map { ($0.name, $0.appliedSpec?.team ?? $0.team) })
        let before = lock.withLock { covered }
        // The board first (nothing starts what is about to be frozen), then the proxy (open
        // tunnels cut), then the processes.
        board.set(now, switches: switches, onMain: settings.killSwitch)
        // Frozen first (nothing sends any more), then every connection cut.
        var frozen: [String: Bool] = [:]
        for (name, _) in now where before[name] == nil || !driver.isFrozen(name) {
            frozen[name] = driver.setFrozen(name, true)
            if before[name] != nil, frozen[name] == true { logger.warning("kill switch: \(name) was running again; frozen", metadata: ["gantry.env": "\(name)"]) }
        }
        // On a cluster: cut off and scaled to 0 (asserted again while on; the driver throttles).
        for (name, _) in now { clusterKill?(name, true) }
        let open = proxy?.update(snapshot(settings: settings, records: records, covered: now)) ?? 0
        for (name, reason) in now where before[name] == nil {
            let frozen = frozen[name] ?? false
            logger.warning("kill switch: \(name) cut off and frozen", metadata: ["gantry.env": "\(name)", "reason": "\(reason)"])
            let actor = Self.actor(switches: switches, environment: name, records: records)
            lifecycle.record(.killSwitch, environment: name, actor: actor, history: "kill switch on: \(reason)",
                             [("state", "on"), ("reason", reason), ("processes", frozen ? "frozen" : "none running")])
        }
        var released = false
        for (name, reason) in before where now[name] == nil {
            if records.contains(where: { $0.name == name }) {
                driver.setFrozen(name, false)
                clusterKill?(name, false)
            }
            // An apply or teardown the switch held is tried at the next pass, not after its backoff.
            if var record = try? store.environment(name), record.conditions.contains(.applyFailed),
               record.message?.contains("held by the kill switch") == true {
                record.nextAttemptAt = Date()
                try? store.save(record)
                released = true
            }
            logger.notice("kill switch lifted: \(name) runs again", metadata: ["gantry.env": "\(name)"])
            let team = records.first { $0.name == name }.flatMap { $0.appliedSpec?.team ?? $0.team }
            let lifter = settings.killSwitch ? nil : every.last { !$0.on && $0.covers(environment: name, team: team) }
            lifecycle.record(.killSwitch, environment: name, actor: lifter?.actor ?? "protected branch", history: "kill switch off (was: \(reason))",
                             [("state", "off"), ("was", reason)] + (lifter.map { [("note", $0.reason)] } ?? []))
        }
        if released { wakeLoop?() }
        lock.withLock { covered = now }
        // Applied once every connection of the covered environments is closed (else the next refresh tries again).
        if open == 0 { try? store.markKillApplied(generations.requested) } else {
            logger.error("kill switch: \(open) connections are not closed yet; trying again")
        }
    }

    static let mainSwitch = "gantry.yaml"

    /// Who turned on the switch that covers `environment` (gantry.yaml's: the protected branch).
    static func actor(switches: [KillSwitch], environment: String, records: [EnvironmentRecord]) -> String {
        let team = records.first { $0.name == environment }.flatMap { $0.appliedSpec?.team ?? $0.team }
        return switches.first { $0.covers(environment: environment, team: team) }?.actor ?? "protected branch"
    }

    /// What the proxy decides with now.
    func snapshot(settings: Settings, records: [EnvironmentRecord], covered: [String: String]) -> EgressSnapshot {
        let host = HostInterfaces.read()
        let policy = EgressPolicy(defaultAllows: settings.egress.default == "allow",
                                  allow: settings.egress.allow.compactMap { try? HostPattern.parse($0).get() },
                                  deny: settings.egress.deny.compactMap { try? HostPattern.parse($0).get() },
                                  pinned: pinned, pinnedPorts: pinnedPorts, hostAddresses: host.addresses, hostNetworks: host.loopbackNetworks)
        var callers: [String: EgressCaller] = [:]
        let byName = Dictionary(records.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let applying = lock.withLock { () -> [String: EnvironmentSpec] in
            pending = pending.filter { byName[$0.key]?.conditions.contains(.applying) ?? false }
            return pending
        }
        for (address, name) in driver.environmentAddresses() {
            let spec = applying[name] ?? byName[name]?.appliedSpec
            callers[address] = EgressCaller(environment: name, grants: spec.map(grants) ?? EgressGrants(), killed: covered[name])
        }
        return EgressSnapshot(policy: policy, callers: callers, dlp: scanner())
    }

    /// The DLP scanner for the secrets stored now: built again only when they changed (each
    /// refresh, every second, would otherwise compile its patterns anew).
    private func scanner() -> DLPScanner {
        let values = ((try? secrets.allValues()) ?? []).compactMap { name, value in String(data: value, encoding: .utf8).map { (name: name, value: $0) } }
        let key = values.map { $0.name + "\u{0}" + $0.value }.sorted()
        return lock.withLock {
            if let cached = dlp, cached.key == key { return cached.scanner }
            let made = DLPScanner(secrets: values)
            dlp = (key, made)
            return made
        }
    }

    /// An environment's lists and injections, with the secrets of its injections resolved.
    func grants(_ spec: EnvironmentSpec) -> EgressGrants {
        var grants = EgressGrants()
        grants.environment = (spec.egress ?? []).compactMap { try? HostPattern.parse($0).get() }
        for service in spec.services {
            grants.services[service.name] = service.egress.compactMap { try? HostPattern.parse($0).get() }
        }
        let lists = [("", spec.egressInject ?? [])] + spec.services.map { ($0.name, $0.egressInject ?? []) }
        for (owner, injections) in lists where !injections.isEmpty {
            grants.injections[owner] = injections.compactMap { inject in
                guard let host = try? HostPattern.parse(inject.host).get() else { return nil }
                var headers: [(name: String, value: String)] = []
                for header in inject.headers {
                    guard let value = resolve(header.value, spec: spec) else {
                        logger.warning("an injected header names a secret that is not set: not injected", metadata: ["gantry.env": "\(spec.name)", "host": "\(inject.host)", "header": "\(header.name)"])
                        return nil
                    }
                    headers.append((header.name, value))
                }
                return EgressInjection(host: host, headers: headers, tls: inject.tls)
            }
        }
        return grants
    }

    /// `${secrets.NAME}` replaced by the secret's value as the environment sees it; nil when one
    /// is missing or its value could break the header (a line break).
    func resolve(_ template: String, spec: EnvironmentSpec) -> String? {
        var result = "", rest = Substring(template)
        while let open = rest.range(of: "${secrets.") {
            guard let close = rest[open.upperBound...].firstIndex(of: "}") else { return nil }
            result += rest[..<open.lowerBound]
            let name = String(rest[open.upperBound..<close])
            guard let found = try? secrets.lookup(name, environment: spec.name, class: spec.class.rawValue, team: spec.team),
                  let value = String(data: found.value, encoding: .utf8), !value.contains(where: { $0.isNewline || $0 == "\0" }) else { return nil }
            result += value
            rest = rest[rest.index(after: close)...]
        }
        return result + rest
    }

    /// A proxy event: a history line and, within the rate limits, a signed record.
    func record(_ event: EgressEvent) {
        let interval: TimeInterval
        let auditEvent: AuditEvent
        switch event.kind {
        case .allowed, .killed: return
        case .denied: (interval, auditEvent) = (Self.deniedRecordInterval, .egressDenied)
        case .dlpBlocked: (interval, auditEvent) = (Self.dlpRecordInterval, .dlpBlocked)
        }
        let key = "\(event.kind.rawValue)|\(event.environment)|\(event.service ?? "")|\(event.host)|\(event.rule)"
        let window = "\(event.kind.rawValue)|\(event.environment)"
        let now = Date()
        let suppressed = lock.withLock { () -> (same: Int, others: Int)? in
            if lastRecord.count > 10_000 { lastRecord = lastRecord.filter { now.timeIntervalSince($0.value.at) < interval } }
            var budget = windows[window] ?? (now, 0, 0)
            if now.timeIntervalSince(budget.start) >= 60 { budget = (now, 0, budget.suppressed) }
            defer { windows[window] = budget }
            if let last = lastRecord[key], now.timeIntervalSince(last.at) < interval {
                lastRecord[key] = (last.at, last.suppressed + 1)
                return nil
            }
            let day = Int(now.timeIntervalSince1970 / 86_400)
            var today: (day: Int, written: Int) = daily[window].flatMap { $0.day == day ? $0 : nil } ?? (day, 0)
            guard budget.written < Self.recordsPerMinute, today.written < Self.recordsPerDay else {
                budget.suppressed += 1
                return nil
            }
            budget.written += 1
            today.written += 1
            daily[window] = today
            let counts = (lastRecord[key]?.suppressed ?? 0, budget.suppressed)
            budget.suppressed = 0
            lastRecord[key] = (now, 0)
            return counts
        }
        guard let suppressed else { return }
        // (The full name goes to Gantry's log only: see RecordedHost.)
        let shown = RecordedHost.shown(event.host)
        logger.warning("egress \(event.kind.rawValue): \(event.host):\(event.port)", metadata: [
            "gantry.env": "\(event.environment)", "service": "\(event.service ?? "unknown")", "rule": "\(event.rule)", "reason": "\(event.reason)",
            "host-digest": "\(shown.digest ?? "none")"])
        var fields: [(String, String)] = [("host", shown.host), ("port", String(event.port)), ("service", event.service ?? "unknown"), ("rule", event.rule)]
        if let digest = shown.digest { fields.append(("host-digest", "\(digest) (the full name is in Gantry's log)")) }
        if event.kind == .denied { fields.append(("reason", RecordedHost.bounded(event.reason, host: event.host))) }
        if suppressed.same > 0 { fields.append(("repeats", "\(suppressed.same) more since the last record")) }
        if suppressed.others > 0 { fields.append(("unrecorded", "\(suppressed.others) more of this environment over the limits of \(Self.recordsPerMinute) records a minute and \(Self.recordsPerDay) a day (the proxy's counters have them all)")) }
        lifecycle.record(auditEvent, environment: event.environment, actor: "gantry",
                         history: "\(event.kind.rawValue) \(shown.host):\(event.port) (\(event.rule))", fields)
    }

    /// `--egress-resolve HOST[:PORT]=ADDRESS` pins. A pin to an internal address names its port:
    /// it opens that one (an environment listing the host must not reach everything else there).
    static func pins(_ values: [String]) throws -> (addresses: [String: [IPAddress]], ports: [String: Int]) {
        var addresses: [String: [IPAddress]] = [:], ports: [String: Int] = [:]
        for value in values {
            let parts = value.split(separator: "=", maxSplits: 1).map(String.init)
            let target = parts.first ?? ""
            var name = target, port: Int?
            if let colon = target.lastIndex(of: ":"), let number = Int(target[target.index(after: colon)...]) {
                name = String(target[..<colon])
                port = number
            }
            guard parts.count == 2, let host = HostName.normalize(name), let address = IPAddress(parts[1]), port.map({ (1...65535).contains($0) }) ?? true else {
                throw Failure("--egress-resolve '\(value)' must be HOST[:PORT]=ADDRESS (api.example.com:8443=127.0.0.1)")
            }
            if address.internalKind != nil && port == nil {
                throw Failure("--egress-resolve '\(value)' pins an internal address (\(address.internalKind!)): name the one port it opens, HOST:PORT=ADDRESS")
            }
            addresses[host, default: []].append(address)
            if let port { ports[host] = port }
        }
        return (addresses, ports)
    }
}
