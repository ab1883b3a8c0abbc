import Crypto
import Foundation
import GitStore
import Reconciler
import SpecLoading
import SpecModel
import StateStore
#if canImport(Glibc)
import Glibc
#endif

extension LocalDriver {
    // MARK: Apply

    public func apply(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> ApplyOutcome {
        try Self.checkName(environment.name)
        for database in environment.spec.databases { if let source = database.cloneFrom { try Self.checkName(source) } }
        for service in environment.spec.services where service.command.isEmpty {
            throw RevisionError("service \(service.name) has an image but no command: the local driver runs commands; give it one, or put the environment on the kubernetes driver (gantry.yaml's drivers)")
        }
        return try operating(on: environment.name) { try converge(environment, progress: progress) }
    }

    /// Runs `body` with `environment` marked busy (supervision does not restart its processes meanwhile).
    /// Operations of one environment (apply, teardown, sleep, wake, scale) run one at a time.
    func operating<T>(on environment: String, _ body: () throws -> T) rethrows -> T {
        let lock = shared.withLock { () -> NSLock in
            if let known = operationLocks[environment] { return known }
            let made = NSLock()
            operationLocks[environment] = made
            return made
        }
        lock.lock()
        defer { lock.unlock() }
        shared.withLock { _ = busy.insert(environment) }
        defer { shared.withLock { _ = busy.remove(environment) } }
        return try body()
    }

    /// What an environment's units may use together: each service replica (at most its autoscale
    /// maximum) what it states or the default, each cache the default, and the default once more
    /// for its jobs, seeds and `gantry exec`.
    static func environmentMemory(_ spec: EnvironmentSpec, defaultMemory: Int) -> Int {
        let services = spec.services.reduce(0) { total, service in
            total + (service.resources.memory ?? defaultMemory) * max(service.replicas, service.autoscale?.max ?? 0, 1)
        }
        return services + spec.caches.count * defaultMemory + defaultMemory
    }

    private func converge(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> ApplyOutcome {
        var outcome = ApplyOutcome()
        let user = try shared.withLock {
            domain = environment.domain
            try prepareEnvironmentDirectory(environment.name)
            return try self.user(of: environment.name)
        }
        cgroups.limitEnvironment(environment.name, memory: Self.environmentMemory(environment.spec, defaultMemory: options.defaultMemory))
        outcome.changes += try applySQLite(environment, progress: progress)
        outcome.changes += try applyPostgres(environment, progress: progress)
        outcome.changes += try runCreateJobs(environment, progress: progress)
        var records = Dictionary(uniqueKeysWithValues: try state.services(of: environment.name).map { ($0.name, $0) })
        // How many replicas each service runs: the spec's, or for an autoscaled one what runs now
        // (within its range, at least one: a new revision is started and checked).
        var counts: [String: Int] = [:]
        for service in environment.spec.services where service.replicas > 0 || service.autoscale != nil {
            let running = records.values.filter { Self.serviceName(ofUnit: $0.name) == service.name && $0.phase != Self.sleepingPhase }.count
            counts[service.name] = service.autoscale.map { scale in min(max(running == 0 ? CostModel.initialReplicas(service) : running, scale.min, 1), scale.max) }
                ?? service.replicas
        }
        // Ports first: every service's URL must be known before any command is interpolated.
        let units = environment.spec.caches.map { Self.cacheRecordName($0.name) }
            + environment.spec.services.flatMap { service in (0..<(counts[service.name] ?? 0)).map { Self.unit(service.name, replica: $0) } }
        try addRecords(units, of: environment.name, to: &records)
        let ports = records.mapValues(\.port)
        // Caches first: services connect to them as they start.
        outcome.changes += try applyCaches(environment, records: &records, progress: progress)
        for service in environment.spec.services where (counts[service.name] ?? 0) > 0 {
          for replica in 0..<counts[service.name]! {
            var record = records[Self.unit(service.name, replica: replica)]!
            let resolved = try resolve(service, spec: environment.spec, domain: environment.domain, ports: ports)
            let tree = try service.source.flatMap { try environment.source.objectID(at: $0) }
            // Secrets enter the fingerprint by version, never by value: a rotation restarts the service.
            let fingerprint = Self.fingerprint(try resolve(service, spec: environment.spec, domain: environment.domain, ports: ports,
                                                           secretVersions: true), tree: tree)
            // The same revision running and found healthy is left alone; one that never passed its
            // health check (a failed attempt's process, or one a killed Gantry was waiting for) is
            // started again and checked again, never taken as applied.
            if record.fingerprint == fingerprint, record.phase == "Running", let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) {
                continue
            }
            let change = replica > 0 ? nil : record.pid == nil ? "+service \(service.name)" : "~service \(service.name)"
            if let pid = record.pid {
                progress("stopping the previous revision of \(record.name)")
                ProcessControl.stopGroup(pid, grace: options.stopGrace)
            }
            // Whatever the previous revision left in its group (a detached child holding the port) goes too.
            cgroups.kill(environment.name, unit: record.name, remove: false)
            if replica > 0 {
                // Replicas run in the first one's working directory, as it is now.
                record.workdir = records[service.name]!.workdir
            } else {
                let previousWorkdir = record.workdir
                let workdir = root.appendingPathComponent(environment.name)
                    .appendingPathComponent("\(service.name)-\(environment.commit.short)-\(fingerprint.prefix(8))")
                progress("materializing \(service.source ?? "(no source)") for service \(service.name)")
                try? FileManager.default.removeItem(at: workdir)
                if let source = service.source {
                    try environment.source.materialize(source, into: workdir)
                }
                try handOver(workdir, to: user)
                if let previousWorkdir, previousWorkdir != workdir.path { try? FileManager.default.removeItem(atPath: previousWorkdir) }
                record.workdir = workdir.path
            }
            record.fingerprint = fingerprint
            record.phase = "Starting"
            record.restarts = 0
            try start(&record, resolved: resolved, limits: service.resources, progress: progress)
            try waitHealthy(&record, service: service, progress: progress)
            records[record.name] = record
            if let change { outcome.changes.append(change) }
          }
        }
        for record in records.values where !units.contains(record.name) {
            let isReplica = Self.serviceName(ofUnit: record.name) != record.name
            progress("stopping removed \(isReplica ? "replica" : "service") \(record.name)")
            if let pid = record.pid { ProcessControl.stopGroup(pid, grace: options.stopGrace) }
            cgroups.kill(environment.name, unit: record.name, remove: true)
            // (A replica's directory is its service's.)
            if let workdir = record.workdir,
               !records.values.contains(where: { $0.name != record.name && units.contains($0.name) && $0.workdir == workdir }) {
                try? FileManager.default.removeItem(atPath: workdir)
            }
            try state.deleteService(environment: environment.name, name: record.name)
            if !isReplica { outcome.changes.append("-service \(record.name)") }
        }
        return outcome
    }

    /// Records, each with a free port of its own, for the `units` that have none in `records`.
    func addRecords(_ units: [String], of environment: String, to records: inout [String: ServiceRecord]) throws {
        try shared.withLock {
            var taken = try state.allocatedPorts()
            for unit in units where records[unit] == nil {
                let port = try ProcessControl.freePort(excluding: taken)
                taken.insert(port)
                let record = ServiceRecord(environment: environment, name: unit, port: port)
                try state.save(record)
                records[unit] = record
            }
        }
    }

    /// The record (and control group, and log) name of a service's replica: the service's own
    /// name for the first, `NAME_K` for the others (`_` is in no service name).
    static func unit(_ service: String, replica: Int) -> String { replica == 0 ? service : "\(service)_\(replica)" }

    /// The service a unit runs a replica of (a service's and a cache's own name for themselves).
    public static func serviceName(ofUnit unit: String) -> String {
        unit.hasPrefix("redis:") ? unit : String(unit.prefix { $0 != "_" })
    }

    /// The phase of a service's first replica while it sleeps (its port kept, no process).
    public static let sleepingPhase = "Sleeping"

    struct ResolvedService {
        let command: [String]
        let environment: [String: String]
    }

    /// The service's command and environment with every reference substituted; with
    /// `secretVersions`, secrets stand as their version (for fingerprints), not their value.
    func resolve(_ service: Service, spec: EnvironmentSpec, domain: String, ports: [String: Int],
                 secretVersions: Bool = false) throws -> ResolvedService {
        let secrets = self.secrets
        var missing: [String] = []
        let resolver = Interpolation.resolver(spec: spec, domain: domain, ports: ports) { reference in
            if reference.hasPrefix("databases."), reference.hasSuffix(".url") {
                let database = String(reference.dropFirst("databases.".count).dropLast(".url".count))
                guard let engine = spec.databases.first(where: { $0.name == database })?.engine else { return nil }
                if engine == "sqlite" { return "sqlite://" + self.sqlitePath(environment: spec.name, database: database) }
                if secretVersions {
                    return (try? self.postgresPassword(environment: spec.name, database: database)).map { "postgres:\(database):\($0.version)" }
                }
                return try? self.postgresURL(environment: spec.name, database: database)
            }
            if reference.hasPrefix("caches."), reference.hasSuffix(".url") {
                let cache = String(reference.dropFirst("caches.".count).dropLast(".url".count))
                guard let port = ports[Self.cacheRecordName(cache)] else { return nil }
                if secretVersions {
                    return (try? self.cachePassword(cache, environment: spec.name)).map { "redis:\(port):\($0.version)" }
                }
                return try? self.cacheURL(cache, environment: spec.name, port: port)
            }
            guard reference.hasPrefix("secrets.") else { return nil }
            let name = String(reference.dropFirst("secrets.".count))
            guard let found = (try? secrets?.resolve(name, for: spec)).flatMap({ $0 }) else {
                missing.append(name)
                return ""
            }
            return secretVersions ? "secret:\(name):\(found.version)" : String(decoding: found.value, as: UTF8.self)
        }
        let resolved = try Interpolation.resolve(service, resolver)
        if !missing.isEmpty {
            throw ProcessControl.SpawnError(description: "secret \(missing.joined(separator: ", ")) is not set for \(spec.name) (gantry secret set NAME --env \(spec.name), or --class \(spec.class.rawValue))")
        }
        return ResolvedService(command: resolved.command,
                               environment: Dictionary(resolved.env.map { ($0.name, $0.value) }, uniquingKeysWith: { $1 }))
    }

    static func fingerprint(_ resolved: ResolvedService, tree: ObjectID?) -> String {
        var text = resolved.command.joined(separator: "\u{0}") + "\n" + (tree?.hex ?? "-")
        for (key, value) in resolved.environment.sorted(by: { $0.key < $1.key }) { text += "\n\(key)=\(value)" }
        return SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    func start(_ record: inout ServiceRecord, resolved: ResolvedService, input: Data? = nil, limits: Resources = Resources(),
               progress: (String) -> Void) throws {
        let log = logPath(record.environment, record.name)
        try FileManager.default.createDirectory(at: log.deletingLastPathComponent(), withIntermediateDirectories: true)
        // The environment's own user, at home in its working directory (nil: Gantry's user, or the host's servers).
        let user = record.environment == Self.hostEnvironment ? nil : try user(of: record.environment)
        if let user, let workdir = record.workdir {
            // The working directory must be the user's it runs as (a uid can change when its claim
            // was lost): handed over again when it is not.
            var info = stat()
            if stat(workdir, &info) == 0, info.st_uid != user { try handOver(URL(fileURLWithPath: workdir), to: user) }
        }
        let variables = processVariables(record, resolved: resolved, user: user, unit: record.name)
        progress("starting service \(record.name) on port \(record.port)")
        // Record the intent before the process exists: a crash right after spawn leaves a marked
        // process that `recover` finds and stops, never an unknown one.
        record.pid = nil
        record.pidStart = nil
        try state.save(record)
        // The service's own control group, joined before its code runs (none for the host's servers).
        let joins = record.environment == Self.hostEnvironment ? []
            : try cgroups.prepare(record.environment, unit: record.name, memory: limits.memory, cpu: limits.cpu, keepFrozen: isKilled(record.environment))
        // And its network, entered before it drops to its user.
        let network = try network(of: record.environment, user: user)
        let pid = try ProcessControl.spawn(ControlGroups.joining(joins, Networks.entering(network, Self.asUser(user, resolved.command))),
                                           directory: record.workdir!,
                                           environment: variables, logPath: log.path, input: input)
        record.pid = pid
        record.pidStart = ProcessControl.identity(of: pid)?.start
        try state.save(record)
    }

    /// The variables a service's process starts with (and a command exec'd in its context):
    /// a few of Gantry's own, the service's resolved `env`, `PORT`, the router, and the mark that
    /// names the process's environment and `unit`.
    func processVariables(_ record: ServiceRecord, resolved: ResolvedService, user: uid_t?, unit: String) -> [String: String] {
        var variables: [String: String] = [:]
        let inherited = ProcessInfo.processInfo.environment
        for key in ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"] { variables[key] = inherited[key] }
        variables["PATH"] = variables["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        variables.merge(resolved.environment) { $1 }
        variables["PORT"] = String(record.port)
        if user != nil {
            variables["HOME"] = record.workdir
            variables["USER"] = nil
            variables["PATH"] = Self.searchablePath(variables["PATH"] ?? "")
        }
        // Where the environment reaches routes (other environments): the router, at the gateway
        // from a network of its own (give the route's host name in the Host header).
        if let routerPort, record.environment != Self.hostEnvironment {
            variables["GANTRY_ROUTER"] = "http://\(isolatesNetwork ? Networks.gateway : "127.0.0.1"):\(routerPort)"
        }
        // The way out: the egress proxy at the gateway (only from a network of its own, where
        // nothing else leads outside). Local addresses go direct.
        if let egressPort, isolatesNetwork, record.environment != Self.hostEnvironment {
            let proxy = "http://\(Networks.gateway):\(egressPort)"
            for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] { variables[name] = proxy }
            for name in ["NO_PROXY", "no_proxy"] { variables[name] = "localhost,127.0.0.1,::1,\(Networks.gateway)" }
        }
        variables["GANTRY_ENVIRONMENT"] = record.environment
        variables["GANTRY_SERVICE"] = record.name
        variables[Self.markVariable] = "\(instance):\(record.environment):\(unit)"
        return variables
    }

    func waitHealthy(_ record: inout ServiceRecord, service: Service, progress: (String) -> Void) throws {
        let started = Date()
        let deadline = started.addingTimeInterval(options.startTimeout)
        var last = "not checked yet"
        let host = Self.address(of: record.environment, in: state)
        progress("waiting for service \(service.name) to become healthy")
        while Date() < deadline {
            guard let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) else {
                record.phase = "Failed"
                record.lastExit = "exited during start"
                try state.save(record)
                throw ProcessControl.SpawnError(description: "service \(service.name) exited during start; \(outputPointer(record.environment, "\(record.name).log"))")
            }
            if let path = service.health?.http {
                let result = HTTPProbe.get(host: host, port: record.port, path: path, timeout: min(service.health?.timeout ?? 5, 2))
                if result.isHealthy { break }
                last = "GET \(path) → \(result.summary)"
            } else if HTTPProbe.canConnect(host: host, port: record.port) || Date() >= started.addingTimeInterval(options.settleTime) {
                // Without an HTTP check: listening on PORT, or still alive after the settle time.
                break
            } else {
                last = "not listening on port \(record.port) yet"
            }
            usleep(20_000)
        }
        guard Date() < deadline else {
            record.phase = "Unhealthy"
            try state.save(record)
            throw ProcessControl.SpawnError(description: "service \(service.name) did not become healthy within \(Int(options.startTimeout))s (\(last)); \(outputPointer(record.environment, "\(record.name).log"))")
        }
        record.phase = "Running"
        try state.save(record)
    }

    /// Where a unit's output is, for a message. What an environment's code prints is never put in
    /// a message (messages reach the state DB, the audit notes and every reader of the repository;
    /// a secret printed in any encoding would go with it): `gantry status --env` reads the file.
    func outputPointer(_ environment: String, _ file: String) -> String {
        "its output is in envs/\(environment)/logs/\(file) (`gantry status --env \(environment)` shows the last lines, secrets masked)"
    }

    /// The last lines of every log of an environment (services, caches, jobs), for `gantry status --env`.
    public static func recentOutput(stateDirectory: URL, environment: String, lines: Int = 10) -> [(file: String, lines: [String])] {
        guard isSafeName(environment) else { return [] }
        let directory = logDirectory(stateDirectory: stateDirectory, environment: environment)
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".log") }.sorted()
        return files.map { file in
            let text = Self.lastBytes(of: directory.appendingPathComponent(file).path, count: min(max(16 << 10, lines * 512), 1 << 20))
            return (file, text.split(separator: "\n").suffix(lines).map(String.init))
        }
    }

    /// Where an environment's logs are (services `NAME.log`, caches, jobs).
    public static func logDirectory(stateDirectory: URL, environment: String) -> URL {
        stateDirectory.appendingPathComponent("envs").appendingPathComponent(isSafeName(environment) ? environment : "-").appendingPathComponent("logs")
    }

    /// At most the last `count` bytes of a file, as text.
    static func lastBytes(of path: String, count: Int) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: size > UInt64(count) ? size - UInt64(count) : 0)
        return String(decoding: (try? handle.readToEnd()) ?? Data(), as: UTF8.self)
    }

    func tail(_ record: ServiceRecord, lines: Int = 10) -> String {
        let text = (try? String(contentsOf: logPath(record.environment, record.name), encoding: .utf8)) ?? ""
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines + 1).joined(separator: "\n")
    }
}
