import Crypto
import Foundation
import GitStore
import Logging
import Reconciler
import SpecLoading
import SpecModel
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// The embedded default driver: each service of each environment is a supervised local process in
/// its own working directory and process group, on its own loopback port.
///
/// Everything needed to find a process again is in the state DB (pid and start time), and every
/// process carries `GANTRY_MARK=<instance>:<environment>:<service>` in its environment, so after a
/// `kill -9` of Gantry a restart adopts the survivors and stops any process nobody recorded.
public final class LocalDriver: Driver, @unchecked Sendable {
    public struct Options: Sendable {
        /// Seconds a new process has to pass its health check.
        public var startTimeout = 30.0
        /// Seconds a service without an HTTP health check must stay up (unless it listens on PORT sooner).
        public var settleTime = 2.0
        /// Seconds between SIGTERM and SIGKILL when stopping.
        public var stopGrace = 5.0
        /// A log file is rotated past this size; `keptLogs` old files are kept.
        public var maxLogBytes = 10 << 20
        public var keptLogs = 3
        public init() {}
    }

    let root: URL
    let state: StateStore
    let logger: Logger
    let options: Options
    /// Identifies this state directory in `GANTRY_MARK`.
    let instance: String
    /// Crash-restart backoff: next allowed restart time per "env/service".
    var nextRestart: [String: Date] = [:]
    /// The routing domain of the last applied revision, for `${env.domain}` on a crash restart.
    var domain = "localhost"

    public init(stateDirectory: URL, state: StateStore, logger: Logger, options: Options = Options()) {
        self.root = stateDirectory.appendingPathComponent("envs")
        self.state = state
        self.logger = logger
        self.options = options
        let digest = SHA256.hash(data: Data(stateDirectory.standardizedFileURL.path.utf8))
        self.instance = digest.prefix(6).map { String(format: "%02x", $0) }.joined()
    }

    static let markVariable = "GANTRY_MARK"

    func logPath(_ environment: String, _ service: String) -> URL {
        root.appendingPathComponent(environment).appendingPathComponent("logs").appendingPathComponent("\(service).log")
    }

    /// The phase to show for a service: its recorded phase, or `Stopped` when its process is gone
    /// (Gantry stopped with `--stop-on-exit`, or not yet restarted after a crash).
    public static func observedPhase(of record: ServiceRecord) -> String {
        guard let pid = record.pid else { return record.phase }
        return ProcessControl.isAlive(pid, start: record.pidStart) ? record.phase : "Stopped"
    }

    // MARK: Apply

    public func apply(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> ApplyOutcome {
        var outcome = ApplyOutcome()
        domain = environment.domain
        let unsupported = environment.spec.databases.map { "database \($0.name) (\($0.engine))" }
            + environment.spec.caches.map { "cache \($0.name) (\($0.engine))" }
            + environment.spec.secrets.map { "secret \($0)" }
        if !unsupported.isEmpty {
            throw ProcessControl.SpawnError(description: "the local driver does not provide \(unsupported.joined(separator: ", ")) yet")
        }
        var records = Dictionary(uniqueKeysWithValues: try state.services(of: environment.name).map { ($0.name, $0) })
        // Ports first: every service's URL must be known before any command is interpolated.
        var taken = try state.allocatedPorts()
        for service in environment.spec.services where service.replicas > 0 && records[service.name] == nil {
            let port = try ProcessControl.freePort(excluding: taken)
            taken.insert(port)
            let record = ServiceRecord(environment: environment.name, name: service.name, port: port)
            try state.save(record)
            records[service.name] = record
        }
        let ports = records.mapValues(\.port)
        for service in environment.spec.services where service.replicas > 0 {
            var record = records[service.name]!
            let resolved = try resolve(service, spec: environment.spec, domain: environment.domain, ports: ports)
            let tree = try service.source.flatMap { try environment.repository.objectID(at: $0, in: environment.commit) }
            let fingerprint = Self.fingerprint(resolved, tree: tree)
            if record.fingerprint == fingerprint, let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) {
                continue
            }
            let change = record.pid == nil ? "+service \(service.name)" : "~service \(service.name)"
            if let pid = record.pid {
                progress("stopping the previous revision of service \(service.name)")
                ProcessControl.stopGroup(pid, grace: options.stopGrace)
            }
            let previousWorkdir = record.workdir
            let workdir = root.appendingPathComponent(environment.name)
                .appendingPathComponent("\(service.name)-\(environment.commit.short)-\(fingerprint.prefix(8))")
            progress("materializing \(service.source ?? "(no source)") for service \(service.name)")
            try? FileManager.default.removeItem(at: workdir)
            if let source = service.source {
                try environment.repository.materialize(source, at: environment.commit, into: workdir)
            } else {
                try FileManager.default.createDirectory(at: workdir, withIntermediateDirectories: true)
            }
            if let previousWorkdir, previousWorkdir != workdir.path { try? FileManager.default.removeItem(atPath: previousWorkdir) }
            record.workdir = workdir.path
            record.fingerprint = fingerprint
            record.phase = "Starting"
            record.restarts = 0
            try start(&record, resolved: resolved, progress: progress)
            try waitHealthy(&record, service: service, progress: progress)
            outcome.changes.append(change)
        }
        for record in records.values where environment.spec.service(named: record.name).map({ $0.replicas == 0 }) ?? true {
            progress("stopping removed service \(record.name)")
            if let pid = record.pid { ProcessControl.stopGroup(pid, grace: options.stopGrace) }
            if let workdir = record.workdir { try? FileManager.default.removeItem(atPath: workdir) }
            try state.deleteService(environment: environment.name, name: record.name)
            outcome.changes.append("-service \(record.name)")
        }
        return outcome
    }

    struct ResolvedService {
        let command: [String]
        let environment: [String: String]
    }

    func resolve(_ service: Service, spec: EnvironmentSpec, domain: String, ports: [String: Int]) throws -> ResolvedService {
        let resolved = try Interpolation.resolve(service, Interpolation.resolver(spec: spec, domain: domain, ports: ports))
        return ResolvedService(command: resolved.command,
                               environment: Dictionary(resolved.env.map { ($0.name, $0.value) }, uniquingKeysWith: { $1 }))
    }

    static func fingerprint(_ resolved: ResolvedService, tree: ObjectID?) -> String {
        var text = resolved.command.joined(separator: "\u{0}") + "\n" + (tree?.hex ?? "-")
        for (key, value) in resolved.environment.sorted(by: { $0.key < $1.key }) { text += "\n\(key)=\(value)" }
        return SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    func start(_ record: inout ServiceRecord, resolved: ResolvedService, progress: (String) -> Void) throws {
        let log = logPath(record.environment, record.name)
        try FileManager.default.createDirectory(at: log.deletingLastPathComponent(), withIntermediateDirectories: true)
        var variables: [String: String] = [:]
        let inherited = ProcessInfo.processInfo.environment
        for key in ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"] { variables[key] = inherited[key] }
        variables["PATH"] = variables["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        variables.merge(resolved.environment) { $1 }
        variables["PORT"] = String(record.port)
        variables["GANTRY_ENVIRONMENT"] = record.environment
        variables["GANTRY_SERVICE"] = record.name
        variables[Self.markVariable] = "\(instance):\(record.environment):\(record.name)"
        progress("starting service \(record.name) on port \(record.port)")
        // Record the intent before the process exists: a crash right after spawn leaves a marked
        // process that `recover` finds and stops, never an unknown one.
        record.pid = nil
        record.pidStart = nil
        try state.save(record)
        let pid = try ProcessControl.spawn(resolved.command, directory: record.workdir!, environment: variables, logPath: log.path)
        record.pid = pid
        record.pidStart = ProcessControl.identity(of: pid)?.start
        try state.save(record)
    }

    func waitHealthy(_ record: inout ServiceRecord, service: Service, progress: (String) -> Void) throws {
        let started = Date()
        let deadline = started.addingTimeInterval(options.startTimeout)
        var last = "not checked yet"
        progress("waiting for service \(service.name) to become healthy")
        while Date() < deadline {
            guard let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) else {
                record.phase = "Failed"
                record.lastExit = "exited during start"
                try state.save(record)
                throw ProcessControl.SpawnError(description: "service \(service.name) exited during start; last log lines:\n\(tail(record))")
            }
            if let path = service.health?.http {
                let result = HTTPProbe.get(port: record.port, path: path, timeout: min(service.health?.timeout ?? 5, 2))
                if result.isHealthy { break }
                last = "GET \(path) → \(result.summary)"
            } else if HTTPProbe.canConnect(port: record.port) || Date() >= started.addingTimeInterval(options.settleTime) {
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
            throw ProcessControl.SpawnError(description: "service \(service.name) did not become healthy within \(Int(options.startTimeout))s (\(last)); last log lines:\n\(tail(record))")
        }
        record.phase = "Running"
        try state.save(record)
    }

    func tail(_ record: ServiceRecord, lines: Int = 10) -> String {
        let text = (try? String(contentsOf: logPath(record.environment, record.name), encoding: .utf8)) ?? ""
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines + 1).joined(separator: "\n")
    }

    // MARK: Destroy

    public func destroy(environment name: String, progress: (String) -> Void) throws {
        for record in try state.services(of: name) {
            if let pid = record.pid {
                progress("stopping service \(record.name)")
                ProcessControl.stopGroup(pid, grace: options.stopGrace)
            }
            try state.deleteService(environment: name, name: record.name)
        }
        for (pid, _) in ProcessControl.processes(markedWith: Self.markVariable, prefix: "\(instance):\(name):") {
            ProcessControl.stopGroup(pid, grace: options.stopGrace)
        }
        progress("removing working directories")
        let directory = root.appendingPathComponent(name)
        if FileManager.default.fileExists(atPath: directory.path) {
            do {
                try FileManager.default.removeItem(at: directory)
            } catch {
                // Everything that runs is stopped; a directory left behind is reported, not fatal.
                progress("could not remove \(directory.path): \(error)")
                logger.warning("could not remove a working directory", metadata: ["gantry.env": "\(name)", "error": "\(error)"])
            }
        }
    }

    // MARK: Recovery and supervision

    public func recover(desired: Set<String>) -> [DriverEvent] {
        var events: [DriverEvent] = []
        let records = (try? state.allServices()) ?? []
        let known = Dictionary(records.compactMap { record in record.pid.map { ($0, record) } }, uniquingKeysWith: { a, _ in a })
        for (pid, mark) in ProcessControl.processes(markedWith: Self.markVariable, prefix: "\(instance):") {
            let parts = mark.split(separator: ":")
            guard parts.count == 3 else { continue }
            let environment = String(parts[1])
            // Only group leaders are ours to judge; their children go with the group.
            guard getpgid(pid) == pid else { continue }
            if let record = known[pid], record.pidStart == ProcessControl.identity(of: pid)?.start, desired.contains(environment) {
                events.append(DriverEvent(environment: environment, kind: "adopted", message: "adopted service \(record.name) (pid \(pid)) after a restart"))
                continue
            }
            ProcessControl.stopGroup(pid, grace: options.stopGrace)
            events.append(DriverEvent(environment: environment, kind: "orphan-stopped",
                                      message: "stopped unrecorded process \(pid) of service \(parts[2]) left by an earlier run"))
        }
        return events
    }

    public func supervise() -> [DriverEvent] {
        var events: [DriverEvent] = []
        let now = Date()
        for var record in (try? state.allServices()) ?? [] {
            rotateLog(logPath(record.environment, record.name))
            guard record.phase == "Running" || record.phase == "Restarting" || record.phase == "Starting" else { continue }
            if let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) { continue }
            let key = "\(record.environment)/\(record.name)"
            if let next = nextRestart[key], next > now { continue }
            guard let environment = try? state.environment(record.environment), let json = environment.specJSON,
                  let spec = try? JSONDecoder().decode(EnvironmentSpec.self, from: Data(json.utf8)),
                  let service = spec.service(named: record.name), let workdir = record.workdir,
                  FileManager.default.fileExists(atPath: workdir) else {
                continue
            }
            record.restarts += 1
            record.lastExit = "exited unexpectedly"
            let delay = min(pow(2.0, Double(record.restarts - 1)), 60)
            nextRestart[key] = now.addingTimeInterval(delay)
            do {
                let ports = Dictionary(uniqueKeysWithValues: try state.services(of: record.environment).map { ($0.name, $0.port) })
                let resolved = try resolve(service, spec: spec, domain: domain, ports: ports)
                record.phase = "Restarting"
                try start(&record, resolved: resolved) { _ in }
                record.phase = "Running"
                try state.save(record)
                events.append(DriverEvent(environment: record.environment, kind: "restarted",
                                          message: "service \(record.name) had stopped; restarted it (restart \(record.restarts), next backoff \(Int(delay))s)"))
            } catch {
                events.append(DriverEvent(environment: record.environment, kind: "restart-failed",
                                          message: "service \(record.name) could not be restarted: \(error)"))
            }
        }
        return events
    }

    func rotateLog(_ path: URL) {
        guard let size = (try? FileManager.default.attributesOfItem(atPath: path.path))?[.size] as? Int,
              size > options.maxLogBytes else { return }
        let manager = FileManager.default
        for index in stride(from: options.keptLogs - 1, through: 1, by: -1) {
            let from = path.path + ".\(index)", to = path.path + ".\(index + 1)"
            try? manager.removeItem(atPath: to)
            try? manager.moveItem(atPath: from, toPath: to)
        }
        try? manager.removeItem(atPath: path.path + ".1")
        try? manager.copyItem(atPath: path.path, toPath: path.path + ".1")
        // The process appends (O_APPEND), so it goes on writing at the new end.
        truncate(path.path, 0)
    }

    public func shutdown() {
        for record in (try? state.allServices()) ?? [] {
            if let pid = record.pid { ProcessControl.stopGroup(pid, grace: options.stopGrace) }
        }
    }
}
