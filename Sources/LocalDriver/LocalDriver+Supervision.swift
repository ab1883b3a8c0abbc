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
    // MARK: Destroy

    public func destroy(environment name: String, sources: (any SourceStore)?, progress: (String) -> Void) throws -> [String] {
        // Never a path outside envs/: a name that is not a DNS-1123 label names nothing of ours.
        guard Self.isSafeName(name) else { return ["nothing removed: '\(name)' is not an environment name Gantry creates"] }
        return try operating(on: name) { try tearDown(name, sources: sources, progress: progress) }
    }

    /// Whether anything of `name` is here besides services: its directory, a uid, a database, a network.
    private func holdsAnything(_ name: String) throws -> Bool {
        try FileManager.default.fileExists(atPath: root.appendingPathComponent(name).path)
            || !state.allocations(Self.uidAllocation, of: name).isEmpty || !state.allocations(Self.databaseAllocation, of: name).isEmpty
            || !state.allocations(Self.networkAllocation, of: name).isEmpty
    }

    public func holds(environment name: String) -> Bool {
        guard Self.isSafeName(name) else { return false }
        return (try? !state.services(of: name).isEmpty || holdsAnything(name)) ?? true
    }

    private func tearDown(_ name: String, sources: (any SourceStore)?, progress: (String) -> Void) throws -> [String] {
        var problems: [String] = []
        // Never applied (no service, no directory, nothing allocated): nothing of it can run, and
        // the scans of /proc below are skipped (a pass may tear down thousands of such previews).
        let services = try state.services(of: name)
        if services.isEmpty, !(try holdsAnything(name)) {
            try? secrets?.forgetCredentials(of: name)
            return []
        }
        for record in services {
            if let pid = record.pid {
                progress("stopping service \(record.name)")
                ProcessControl.stopGroup(pid, grace: options.stopGrace)
            }
            try state.deleteService(environment: name, name: record.name)
        }
        for (pid, _) in ProcessControl.processes(markedWith: Self.markVariable, prefix: "\(instance):\(name):") {
            ProcessControl.stopGroup(pid, grace: options.stopGrace)
        }
        problems += runDestroyJobs(name, sources: sources, progress: progress)
        // Whatever the environment still runs (a detached grandchild, a job's leftover) goes too:
        // its control group frozen and emptied, then every process of its user.
        progress("stopping every remaining process of \(name)")
        let survivors = cgroups.kill(name, remove: true)
        if !survivors.isEmpty { problems.append("processes \(survivors.map(String.init).joined(separator: ", ")) of \(name) survived SIGKILL in its control group") }
        problems += stopEveryProcess(of: name)
        removeNetwork(of: name)
        problems += dropPostgres(environment: name)
        do { try secrets?.forgetCredentials(of: name) } catch { problems.append("could not remove cache passwords: \(error)") }
        progress("removing working directories")
        let directory = root.appendingPathComponent(name)
        if FileManager.default.fileExists(atPath: directory.path) {
            do {
                try FileManager.default.removeItem(at: directory)
            } catch {
                // Everything that runs is stopped; a directory left behind is reported, not fatal.
                progress("could not remove \(directory.path): \(error)")
                logger.warning("could not remove a working directory", metadata: ["gantry.env": "\(name)", "error": "\(error)"])
                problems.append("could not remove \(directory.path): \(error)")
            }
        }
        if !FileManager.default.fileExists(atPath: directory.path) {
            // The uid stays recorded (never handed to another environment); its files are gone.
            for uid in (try? state.allocations(Self.uidAllocation, of: name)) ?? [] {
                try? state.release(Self.uidAllocation, uid)
                if let id = uid_t(uid), ProcessControl.processes(ownedBy: id).isEmpty {
                    // Its files in /tmp, /dev/shm... go before another environment may get the uid.
                    Self.scrubSharedFiles(of: id)
                    releaseUID(id, of: name)
                }
            }
        }
        return problems
    }

    // MARK: Recovery and supervision

    public func recover(desired: Set<String>) -> [DriverEvent] {
        var events: [DriverEvent] = []
        // A Gantry killed in the middle of stopping a group leaves it frozen: what is adopted runs again.
        // (Not one a kill switch froze: it stays frozen until the switch is lifted.)
        for environment in desired where !isKilled(environment) {
            cgroups.thaw(environment)
            for record in (try? state.services(of: environment)) ?? [] { cgroups.thaw(environment, unit: record.name) }
        }
        let records = (try? state.allServices()) ?? []
        let known = Dictionary(records.compactMap { record in record.pid.map { ($0, record) } }, uniquingKeysWith: { a, _ in a })
        // One scan of /proc for every Gantry's marked processes: this instance's are adopted or
        // stopped; any whose working directory is gone is stopped below.
        let marked = ProcessControl.processes(markedWith: Self.markVariable, prefix: "")
        var handled = Set<pid_t>()
        var leftovers: [pid_t] = []
        for (pid, mark) in marked where mark.hasPrefix("\(instance):") {
            handled.insert(pid)
            let parts = mark.split(separator: ":")
            guard parts.count == 3 else { continue }
            let environment = String(parts[1])
            // Only group leaders are ours to judge; their children go with the group.
            guard getpgid(pid) == pid else { continue }
            if let record = known[pid], record.pidStart == ProcessControl.identity(of: pid)?.start,
               desired.contains(environment) || environment == Self.hostEnvironment {
                events.append(DriverEvent(environment: environment, kind: "adopted", message: "adopted service \(record.name) (pid \(pid)) after a restart"))
                continue
            }
            // (Stopped together below: one grace period for all of them.)
            leftovers.append(pid)
            events.append(DriverEvent(environment: environment, kind: "orphan-stopped",
                                      message: "stopped unrecorded process \(pid) of service \(parts[2]) left by an earlier run"))
        }
        ProcessControl.stopGroups(leftovers, grace: options.stopGrace)
        // A Gantry-marked process whose working directory is gone belongs to a state directory
        // deleted without a teardown (its services, its PostgreSQL): nobody would ever stop it.
        for (pid, mark) in marked where !handled.contains(pid) && getpgid(pid) == pid {
            guard let directory = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd"),
                  directory.hasSuffix(" (deleted)") else { continue }
            // (Nothing waits for it: SIGKILL at once, to its group too.)
            ProcessControl.killGroup(pid)
            events.append(DriverEvent(environment: Self.hostEnvironment, kind: "orphan-stopped",
                                      message: "stopped process \(pid) (\(mark)): its working directory \(directory) is gone"))
        }
        // Groups a killed Gantry left empty go (a running environment's groups hold its processes).
        cgroups.removeEmptyEnvironments()
        return events
    }

    public func supervise(correct: Bool = true) -> [DriverEvent] {
        var events: [DriverEvent] = []
        let listing = listPostgresDatabases()
        (postgresDatabases, postgresUnlisted) = (listing.databases, listing.unlisted)
        if let why = listing.unlisted {
            logger.warning("PostgreSQL runs but its databases could not be listed; their drift is not judged this pass", metadata: ["error": "\(why)"])
        }
        refreshNetworkRules()
        let now = Date()
        events += retryFailedDrops(now: now)
        for listed in (try? state.allServices()) ?? [] {
            rotateLog(logPath(listed.environment, listed.name))
            // Checked and restarted under `shared`: an apply or teardown that starts meanwhile waits,
            // and one under way (busy) owns the environment's processes.
            if let event = shared.withLock({ superviseService(listed, correct: correct, now: now) }) { events.append(event) }
        }
        return events
    }

    /// Restarts one service found not running (or reports it with `correct` false); nil when it runs.
    private func superviseService(_ listed: ServiceRecord, correct: Bool, now: Date) -> DriverEvent? {
        guard !busy.contains(listed.environment), killSwitches?.reason(for: listed.environment) == nil,
              var record = ((try? state.services(of: listed.environment)) ?? []).first(where: { $0.name == listed.name }) else { return nil }
        guard record.phase == "Running" || record.phase == "Restarting" || record.phase == "Starting" else { return nil }
        if let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) { return nil }
        let key = "\(record.environment)/\(record.name)"
        guard correct else {
            return DriverEvent(environment: record.environment, kind: "drift-detected",
                               message: "\(record.name) is not running (pid \(record.pid.map(String.init) ?? "none")); not restarted (--detect-only)")
        }
        if let next = nextRestart[key], next > now { return nil }
        if record.environment == Self.hostEnvironment {
            guard record.name == Self.postgresRecord else { return nil }
            nextRestart[key] = now.addingTimeInterval(min(options.restartBackoff * 2, options.maxRestartBackoff))
            do {
                _ = try ensurePostgres { _ in }
                return DriverEvent(environment: record.environment, kind: "restarted", message: "PostgreSQL had stopped; restarted it")
            } catch {
                return DriverEvent(environment: record.environment, kind: "restart-failed", message: "PostgreSQL could not be restarted: \(error)")
            }
        }
        let cache = record.name.hasPrefix("redis:") ? String(record.name.dropFirst("redis:".count)) : nil
        guard let spec = (try? state.environment(record.environment))??.appliedSpec,
              cache != nil || spec.service(named: Self.serviceName(ofUnit: record.name)) != nil, let workdir = record.workdir,
              FileManager.default.fileExists(atPath: workdir) else {
            return nil
        }
        record.restarts += 1
        record.lastExit = "exited unexpectedly"
        // The first restart is immediate; the next waits base·2, then base·4, ... up to the cap.
        let delay = min(options.restartBackoff * pow(2.0, Double(record.restarts)), options.maxRestartBackoff)
        nextRestart[key] = now.addingTimeInterval(delay)
        do {
            record.phase = "Restarting"
            if let cache {
                try startCache(&record, cache: cache) { _ in }
            } else {
                let ports = Dictionary(uniqueKeysWithValues: try state.services(of: record.environment).map { ($0.name, $0.port) })
                let service = spec.service(named: Self.serviceName(ofUnit: record.name))!
                // What the crashed process left in its group (a child holding the port) goes first.
                cgroups.kill(record.environment, unit: record.name, remove: false)
                try start(&record, resolved: try resolve(service, spec: spec, domain: domain, ports: ports), limits: service.resources) { _ in }
            }
            record.phase = "Running"
            try state.save(record)
            return DriverEvent(environment: record.environment, kind: "restarted",
                               message: "\(record.name.hasPrefix("redis:") ? "cache \(record.name.dropFirst(6))" : "service \(record.name)") was not running (pid \(record.pid.map(String.init) ?? "none") gone); restarted it (restart \(record.restarts), next backoff \(Int(delay))s)")
        } catch {
            return DriverEvent(environment: record.environment, kind: "restart-failed",
                               message: "service \(record.name) could not be restarted: \(error)")
        }
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
        // A ready copy being made finishes first (the server stops below with the rest).
        _ = spareRefill.wait(timeout: .now() + 30)
        let records = (try? state.allServices()) ?? []
        for record in records {
            if let pid = record.pid { ProcessControl.stopGroup(pid, grace: options.stopGrace) }
        }
        // Everything the environments started goes with them; Gantry's groups are removed when empty.
        for environment in Set(records.map(\.environment)) where environment != Self.hostEnvironment {
            cgroups.kill(environment, remove: true)
            // Nothing runs in its network any more: it is made again when its services start.
            removeNetwork(of: environment, keepingAddress: true)
        }
        // No network of this Gantry is left: its host table goes too (made again when one is).
        networks.removeHostTable()
        shared.withLock { refreshedPorts = nil }
        cgroups.removeEmpty()
    }
}

extension LocalDriver {
    public func drift(_ environment: PlannedEnvironment) -> [String] {
        guard Self.isSafeName(environment.name) else { return [] }
        var found: [String] = []
        for database in environment.spec.databases {
            switch database.engine {
            case "sqlite":
                // (As the apply sees it: whatever the environment put at the path — a link, say — is its own.)
                if !Self.exists(sqlitePath(environment: environment.name, database: database.name)) {
                    found.append("database \(database.name) (sqlite) is missing")
                }
            case "postgres":
                let name = Self.postgresName(environment: environment.name, database: database.name)
                guard let existing = postgresDatabases else {
                    // (Running but not listed: nothing can be said of its databases this pass.)
                    if postgresUnlisted != nil { continue }
                    found.append("database \(database.name) (postgres) is unreachable: the server is not running")
                    continue
                }
                if !existing.contains(name) { found.append("database \(database.name) (postgres \(name)) was dropped") }
            default:
                continue
            }
        }
        return found
    }
}
