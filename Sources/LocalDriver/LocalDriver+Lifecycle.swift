import Foundation
import Reconciler
import SpecModel
import StateStore
#if canImport(Glibc)
import Glibc
#endif

extension LocalDriver: LifecycleDriver {
    /// Stops every service process of the environment: each unit's control group frozen, then
    /// killed (without control groups, its process group stopped). Databases, caches, working
    /// directories and ports stay; the first replica's record says Sleeping, the others go.
    public func sleep(environment name: String) throws {
        try Self.checkName(name)
        try operating(on: name) {
            for record in try state.services(of: name) where !record.name.hasPrefix("redis:") {
                try stopUnit(record, keep: Self.serviceName(ofUnit: record.name) == record.name)
            }
        }
    }

    /// Starts the services of a sleeping environment again (the first replica of each, or the
    /// spec's count for a service that is not autoscaled) and waits until they are healthy.
    public func wake(environment name: String) throws {
        try Self.checkName(name)
        try operating(on: name) {
            guard let spec = try state.environment(name)?.appliedSpec else {
                throw LocalDriverError("\(name) runs no revision: nothing to wake")
            }
            var started: [(ServiceRecord, Service)] = []
            for service in spec.services {
                let count = service.autoscale == nil ? service.replicas : 1
                started += try startReplicas(of: service, spec: spec, upTo: count)
            }
            try waitAll(started)
        }
    }

    /// Runs `replicas` processes of the service: new ones started (and checked healthy), extra
    /// ones stopped; at 0 the first replica sleeps until a request wakes it.
    public func scale(environment name: String, service serviceName: String, replicas: Int, drain: (Int) -> Void) throws {
        try Self.checkName(name)
        try operating(on: name) {
            guard let spec = try state.environment(name)?.appliedSpec, let service = spec.service(named: serviceName) else {
                throw LocalDriverError("\(name) runs no service \(serviceName)")
            }
            // Never more than the revision that runs allows (the scaler may hold an older one's max).
            let replicas = min(replicas, service.autoscale?.max ?? max(service.replicas, 1))
            let records = try state.services(of: name).filter { Self.serviceName(ofUnit: $0.name) == serviceName }
            let going = records.filter { Self.replicaIndex($0.name) >= replicas }
            // Out of routing first, then what they serve finishes, then they stop.
            for var record in going where record.phase == "Running" {
                record.phase = "Draining"
                try state.save(record)
            }
            for record in going { drain(record.port) }
            for record in going where Self.replicaIndex(record.name) > 0 { try stopUnit(record, keep: false) }
            if replicas == 0, let first = records.first(where: { $0.name == serviceName }) {
                try stopUnit(first, keep: true)
                return
            }
            try waitAll(try startReplicas(of: service, spec: spec, upTo: replicas))
        }
    }

    /// The replicas that run now, per service (a sleeping service 0).
    public func replicas(of environment: String) -> [String: Int] {
        var counts: [String: Int] = [:]
        for record in (try? state.services(of: environment)) ?? [] where !record.name.hasPrefix("redis:") {
            let service = Self.serviceName(ofUnit: record.name)
            counts[service, default: 0] += record.phase == Self.sleepingPhase || record.pid == nil ? 0 : 1
        }
        return counts
    }

    /// The ports of the service's replicas that run and answer, for the router.
    public static func backends(of environment: String, service: String, in records: [ServiceRecord]) -> [Int] {
        records.filter { serviceName(ofUnit: $0.name) == service && observedPhase(of: $0) == "Running" }
            .sorted { replicaIndex($0.name) < replicaIndex($1.name) }.map(\.port)
    }

    static func replicaIndex(_ unit: String) -> Int {
        guard let separator = unit.firstIndex(of: "_") else { return 0 }
        return Int(unit[unit.index(after: separator)...]) ?? 0
    }

    /// Stops one unit's processes (its group frozen then killed); `keep` leaves its record as
    /// Sleeping (with its port), else the record goes.
    private func stopUnit(_ record: ServiceRecord, keep: Bool) throws {
        var record = record
        if cgroups.isActive {
            cgroups.kill(record.environment, unit: record.name, remove: !keep)
        }
        if let pid = record.pid { ProcessControl.stopGroup(pid, grace: cgroups.isActive ? 0.2 : options.stopGrace) }
        if keep {
            record.pid = nil
            record.pidStart = nil
            record.phase = Self.sleepingPhase
            try state.save(record)
        } else {
            try state.deleteService(environment: record.environment, name: record.name)
        }
    }

    /// Starts the replicas `0..<count` of a service that do not run (none past the first
    /// without its working directory), returning those started.
    private func startReplicas(of service: Service, spec: EnvironmentSpec, upTo count: Int) throws -> [(ServiceRecord, Service)] {
        guard count > 0 else { return [] }
        let name = spec.name
        var records = Dictionary(uniqueKeysWithValues: try state.services(of: name).map { ($0.name, $0) })
        guard let first = records[service.name], let workdir = first.workdir, FileManager.default.fileExists(atPath: workdir) else {
            throw LocalDriverError("service \(service.name) of \(name) has no working directory to start from; a new commit applies it again")
        }
        try addRecords((1..<max(count, 1)).map { Self.unit(service.name, replica: $0) }, of: name, to: &records)
        let ports = records.mapValues(\.port)
        let resolved = try resolve(service, spec: spec, domain: (try? state.environment(name))??.domain ?? domain, ports: ports)
        var started: [(ServiceRecord, Service)] = []
        for replica in 0..<count {
            guard var record = records[Self.unit(service.name, replica: replica)] else { continue }
            if record.phase == "Running", let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) { continue }
            cgroups.kill(name, unit: record.name, remove: false)
            record.workdir = workdir
            record.fingerprint = first.fingerprint
            record.phase = "Starting"
            try start(&record, resolved: resolved, limits: service.resources) { _ in }
            started.append((record, service))
        }
        return started
    }

    private func waitAll(_ started: [(ServiceRecord, Service)]) throws {
        for (record, service) in started {
            var record = record
            try waitHealthy(&record, service: service) { _ in }
        }
    }
}

extension LocalDriver {
    /// The host's PostgreSQL server as environments share it: how many use it and its resident
    /// memory (its processes', read from /proc). Needs only the state DB.
    public static func sharedServers(state: StateStore) -> [SharedServer] {
        guard let record = runningPostgres(state: state), let pid = record.pid else { return [] }
        let users = Set(((try? state.holders(databaseAllocation)) ?? []).map(\.environment))
        let live = Set(((try? state.environments()) ?? []).map(\.name))
        var memory = 0
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let child = pid_t(entry), child == pid || getpgid(child) == pid || parent(of: child) == pid else { continue }
            // Proportional set size: the shared buffers are counted once, not once per process.
            if let rollup = try? String(contentsOfFile: "/proc/\(entry)/smaps_rollup", encoding: .utf8),
               let line = rollup.split(separator: "\n").first(where: { $0.hasPrefix("Pss:") }),
               let kilobytes = Int(line.split(separator: " ").dropFirst().first ?? "") {
                memory += kilobytes * 1024
            } else if let statm = try? String(contentsOfFile: "/proc/\(entry)/statm", encoding: .utf8) {
                let fields = statm.split(separator: " ")
                if fields.count > 1, let resident = Int(fields[1]) { memory += resident * page }
            }
        }
        return [SharedServer(name: "PostgreSQL", environments: users.intersection(live).count, memory: memory)]
    }

    private static func parent(of pid: pid_t) -> pid_t? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? pid_t(fields[1]) : nil
    }
}
