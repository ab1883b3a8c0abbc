import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What the egress proxy and the kill switch need of the local driver: whose address a
/// connection comes from, which service opened it, and freezing an environment's processes.
extension LocalDriver {
    /// Every environment's own address (its network namespace) → the environment.
    public func environmentAddresses() -> [String: String] {
        guard isolatesNetwork else { return [:] }
        var found: [String: String] = [:]
        for holder in (try? state.holders(Self.networkAllocation)) ?? [] { found[holder.name] = holder.environment }
        return found
    }

    /// The service whose process holds the connection from `address:port` (an environment's
    /// address) to the egress proxy: the socket is found in the namespace's TCP table, its owner
    /// among the environment's processes, and the service from that process's control group
    /// (which the environment's user cannot leave). Nil when any step finds nothing.
    public func service(connectedFrom address: String, port: Int) -> String? {
        guard let egressPort, let environment = environmentAddresses()[address],
              let uid = ((try? state.allocations(Self.uidAllocation, of: environment)) ?? []).compactMap({ uid_t($0) }).first else { return nil }
        let pids = ProcessControl.processes(ownedBy: uid)
        // The namespace's TCP table, read through the first process that is in it (one that is
        // exiting, or not in the namespace, shows another table).
        let local = Self.procAddress(address, port), remote = Self.procAddress(Networks.gateway, egressPort)
        var seen = Set<String>(), found: Substring?
        for pid in pids {
            guard let namespace = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/net"), seen.insert(namespace).inserted,
                  let table = ProcessControl.readProc("/proc/\(pid)/net/tcp") else { continue }
            if let line = table.split(separator: "\n").first(where: { $0.contains(" \(local) \(remote) ") }) {
                found = line
                break
            }
        }
        guard let line = found else { return nil }
        let fields = line.split(separator: " ")
        guard fields.count > 9 else { return nil }
        let socket = "socket:[\(fields[9])]"
        // At most `maxDescriptorsRead` descriptors are looked at: an environment that holds
        // thousands cannot make each of its requests cost the proxy more (unknown: refused).
        var budget = Self.maxDescriptorsRead
        for pid in pids {
            let directory = "/proc/\(pid)/fd"
            guard let descriptors = try? FileManager.default.contentsOfDirectory(atPath: directory) else { continue }
            for descriptor in descriptors {
                budget -= 1
                guard budget >= 0 else { return nil }
                if (try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + descriptor)) == socket {
                    return unit(of: pid, environment: environment).map(Self.serviceName(ofUnit:))
                }
            }
        }
        return nil
    }

    static let maxDescriptorsRead = 4096

    /// The unit (service replica, cache, job) whose control group holds `pid`.
    func unit(of pid: pid_t, environment: String) -> String? {
        guard let lines = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8) else { return nil }
        for line in lines.split(separator: "\n") {
            let parts = line.split(separator: "/").map(String.init)
            if let index = parts.lastIndex(of: environment), index + 1 < parts.count { return parts[index + 1] }
        }
        return nil
    }

    /// `10.202.0.3:40000` as /proc/net/tcp writes it (the address's bytes in host order, hex).
    static func procAddress(_ address: String, _ port: Int) -> String {
        var parsed = in_addr()
        inet_pton(AF_INET, address, &parsed)
        return String(format: "%08X:%04X", parsed.s_addr, port)
    }

    /// Freezes (or thaws) every process of an environment: its control group's freezer, else a
    /// SIGSTOP (SIGCONT) to each process of its user. False when neither is possible.
    @discardableResult
    public func setFrozen(_ environment: String, _ frozen: Bool) -> Bool {
        // (Frozen, its roles may not log in and their sessions end: the server is Gantry's, outside
        // the environment's group, and would go on running what a frozen client sent it, or what
        // anyone holding the password sends. Thawed, they log in again. In order, off the caller's
        // thread: the proxy's cut must not wait for psql.)
        defer { Self.databaseLogins.async { [self] in setDatabaseLogin(of: environment, allowed: !frozen) } }
        let groups = cgroups.directories(environment).filter { $0.controller == "freezer" || $0.controller == "unified" }
        if !groups.isEmpty, FileManager.default.fileExists(atPath: groups[0].path) {
            return groups.map { ControlGroups.freeze($0, frozen) }.contains(true)
        }
        let uids = ((try? state.allocations(Self.uidAllocation, of: environment)) ?? []).compactMap { uid_t($0) }
        guard !uids.isEmpty else { return false }
        for uid in uids { for pid in ProcessControl.processes(ownedBy: uid) { kill(pid, frozen ? SIGSTOP : SIGCONT) } }
        return true
    }

    static let databaseLogins = DispatchQueue(label: "gantry.postgres-logins")

    /// Returns once the roles' logins `setFrozen` asked for are set (a command that exits next).
    public static func awaitDatabaseLogins() { databaseLogins.sync {} }

    /// Lets the environment's PostgreSQL roles log in, or not (and then ends their sessions), when
    /// the server runs (it is not started for this).
    func setDatabaseLogin(of environment: String, allowed: Bool) {
        guard let roles = try? state.allocations(Self.databaseAllocation, of: environment), !roles.isEmpty,
              let server = Self.runningPostgres(state: state) else { return }
        let listed = roles.map { "'" + $0.replacingOccurrences(of: "'", with: "''") + "'" }.joined(separator: ", ")
        let login = "SELECT format('ALTER ROLE %I \(allowed ? "LOGIN" : "NOLOGIN")', rolname) FROM pg_roles WHERE rolname IN (\(listed)) \\gexec\n"
        let end = allowed ? "" : "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename IN (\(listed)) AND pid <> pg_backend_pid();\n"
        do {
            _ = try psql(port: server.port, sql: login + end)
        } catch {
            logger.warning("could not \(allowed ? "let the PostgreSQL roles of a thawed environment log in again" : "stop the PostgreSQL sessions of a frozen environment")",
                           metadata: ["gantry.env": "\(environment)", "error": "\(error)"])
        }
    }

    /// Whether a kill switch covers the environment (its processes stay frozen, nothing thaws them).
    func isKilled(_ environment: String) -> Bool { killSwitches?.reason(for: environment) != nil }

    /// Whether an environment's processes are frozen (its control group says so).
    public func isFrozen(_ environment: String) -> Bool {
        guard let group = cgroups.directories(environment).first(where: { $0.controller == "freezer" || $0.controller == "unified" }) else { return false }
        let file = group.controller == "freezer" ? "/freezer.state" : "/cgroup.freeze"
        let text = (try? String(contentsOfFile: group.path + file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        return text == "FROZEN" || text == "FREEZING" || text == "1"
    }
}
