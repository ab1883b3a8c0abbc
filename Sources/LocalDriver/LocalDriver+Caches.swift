import Crypto
import Foundation
import Reconciler
import SpecModel
import StateStore

/// `engine: redis` caches: one redis-server per cache per environment, on its own loopback port,
/// with a generated password kept encrypted in the secret store and handed to redis-server on its
/// standard input (never on its command line, in a file or in the state DB).
extension LocalDriver {
    static func cacheRecordName(_ cache: String) -> String { "redis:\(cache)" }

    /// The cache's password, created on first use.
    func cachePassword(_ cache: String, environment: String) throws -> (value: String, version: String) {
        try generatedPassword("redis.\(cache)", environment: environment)
    }

    /// A password Gantry generates for a server it runs (a cache, a database role), kept by the
    /// secret resolver as a credential of the environment and made on first use.
    func generatedPassword(_ name: String, environment: String) throws -> (value: String, version: String) {
        guard let secrets else { throw ProcessControl.SpawnError(description: "\(name) needs the secret store for its password") }
        let found = try secrets.credential(name, environment: environment) {
            SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }.map { String(format: "%02x", $0) }.joined()
        }
        return (String(decoding: found.value, as: UTF8.self), found.version)
    }

    /// `redis://default:PASSWORD@127.0.0.1:PORT/0` (the ACL user `default`, as Redis 6+ clients expect).
    func cacheURL(_ cache: String, environment: String, port: Int) throws -> String {
        "redis://default:\(try cachePassword(cache, environment: environment).value)@127.0.0.1:\(port)/0"
    }

    /// The redis-server configuration for standard input.
    func cacheConfiguration(_ cache: String, environment: String, port: Int, directory: String) throws -> Data {
        let password = try cachePassword(cache, environment: environment).value
        // Within its group's memory: past three quarters of it, the least recently used keys go
        // (a cache), rather than the server being killed; CONFIG is gone, so the environment
        // cannot lift that.
        let maxMemory = options.defaultMemory / 4 * 3
        return Data("port \(port)\nbind 127.0.0.1\nprotected-mode yes\nrequirepass \(password)\ndir \(directory)\nsave \"\"\nappendonly no\nmaxmemory \(maxMemory)\nmaxmemory-policy allkeys-lru\nrename-command CONFIG \"\"\n".utf8)
    }

    /// Starts (or keeps) every cache of the environment; returns the change lines.
    func applyCaches(_ environment: PlannedEnvironment, records: inout [String: ServiceRecord], progress: (String) -> Void) throws -> [String] {
        var changes: [String] = []
        for cache in environment.spec.caches {
            let name = Self.cacheRecordName(cache.name)
            var record = records[name]!
            let version = try cachePassword(cache.name, environment: environment.name).version
            let fingerprint = "redis:\(record.port):\(version)"
            if record.fingerprint == fingerprint, record.phase == "Running", let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) { continue }
            if let pid = record.pid { ProcessControl.stopGroup(pid, grace: options.stopGrace) }
            cgroups.kill(environment.name, unit: name, remove: false)
            let directory = root.appendingPathComponent(environment.name).appendingPathComponent("redis-\(cache.name)")
            try handOver(directory, to: try user(of: environment.name))
            record.workdir = directory.path
            record.fingerprint = fingerprint
            record.phase = "Starting"
            try startCache(&record, cache: cache.name, progress: progress)
            records[name] = record
            changes.append("+cache \(cache.name)")
        }
        return changes
    }

    func startCache(_ record: inout ServiceRecord, cache: String, progress: (String) -> Void) throws {
        let configuration = try cacheConfiguration(cache, environment: record.environment, port: record.port, directory: record.workdir!)
        try start(&record, resolved: ResolvedService(command: ["redis-server", "-"], environment: [:]), input: configuration, progress: progress)
        var probe = Service(name: record.name)
        probe.command = ["redis-server"]
        try waitHealthy(&record, service: probe, progress: progress)
    }
}
