import API
import ArgumentParser
import Foundation
import SpecLoading
import LocalDriver
import Reconciler
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// What this host lets Gantry enforce, checked without changing anything: whether environments
/// would run as users of their own, in control groups, and what the state directory looks like.
struct Diagnose: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "What isolation this host allows (users, cgroups, PostgreSQL, Redis, network), the state directory's permissions, and each environment that needs attention with what to do next.")
    @OptionGroup var state: StateOption
    @Option(help: "Diagnose this environment only (its phase, conditions, services and next steps).")
    var env: String?
    @Argument(help: "Diagnose this environment only (as --env).")
    var environment: String?
    @Flag(help: "Print the environment's whole diagnosis as JSON (as the API's diagnose answers).")
    var json = false

    func run() throws {
        let env = environment ?? self.env
        if json {
            guard let env else { throw ValidationError("--json needs an environment: gantry diagnose ENV --json") }
            let paths = StatePaths(root: state.directory)
            guard FileManager.default.fileExists(atPath: paths.database) else { throw Failure("no state in \(paths.root.path)") }
            let store = try StateStore(path: paths.database)
            guard let record = try store.environment(env) else { throw Failure("no environment named '\(env)' in \(paths.root.path)") }
            let service = try APIComposition.local(paths: paths, store: store)
            print(try service.diagnosis(of: record).json(indent: "  "))
            return
        }
        let root = geteuid() == 0
        func line(_ what: String, _ verdict: String) { print("\(what): \(verdict)") }
        let setpriv = Self.find("setpriv")
        line("users", root && setpriv != nil
             ? "enforced: each environment runs as a uid of its own (setpriv at \(setpriv!))"
             : root ? "advisory: setpriv (util-linux) is missing, environments would run as root" : "advisory: not root (uid \(geteuid())); environments run as Gantry's own user and can read its state and keys")
        line("control groups", Self.cgroups(root: root))
        line("PostgreSQL", LocalDriver.postgresBinaries.map { "found (\($0))" } ?? "missing: apt-get install postgresql (or make deps)")
        line("Redis", Self.find("redis-server").map { "found (\($0))" } ?? "missing: apt-get install redis-server (or make deps)")
        line("network", LocalDriver.networkSupport.map { root ? "shared: services listen on the host's loopback (\($0))" : "shared (not root): services listen on the host's loopback" }
             ?? "enforced: each environment in a network namespace of its own (\(LocalDriver.networkSummary))")
        let paths = StatePaths(root: state.directory)
        var info = stat()
        guard stat(paths.root.path, &info) == 0 else {
            line("state directory", "\(paths.root.path) does not exist yet (`gantry run` creates it)")
            return
        }
        line("state directory", "\(paths.root.path) mode \(String(info.st_mode & 0o777, radix: 8))" + (info.st_mode & 0o066 == 0 ? "" : " — readable or writable by others: run `gantry run` once to tighten it"))
        for (name, path) in [("state database", paths.database), ("keys", paths.root.appendingPathComponent("keys").path)] where stat(path, &info) == 0 {
            line(name, "mode \(String(info.st_mode & 0o777, radix: 8))" + (info.st_mode & 0o077 == 0 ? "" : " — open to others: run `gantry run` once to tighten it"))
        }
        guard FileManager.default.fileExists(atPath: paths.database), let store = try? StateStore(path: paths.database) else { return }
        if let isolation: String = try? store.meta("isolation") { line("last gantry run", isolation) }
        // The environments, from the same summary `status` and the API read.
        let summaries = try EnvironmentSummary.read(store, observer: LocalObserver(state: store), routerPort: paths.routerPort, only: env)
        if let env, summaries.isEmpty { throw Failure("no environment named '\(env)' in \(paths.root.path)") }
        let attention = env != nil ? summaries : summaries.filter { !$0.conditions.isEmpty || $0.phase != .running }
        if env == nil {
            line("environments", "\(summaries.count) known, \(attention.isEmpty ? "all running and healthy" : "\(attention.count) need attention")")
        }
        for summary in attention {
            let conditions = summary.conditions.isEmpty ? "" : " [\(summary.conditions.map(\.rawValue).joined(separator: ", "))]"
            print(Printable.line("  \(summary.name): \(summary.phase.rawValue)\(conditions)\(summary.record.message.map { " — \($0)" } ?? "")"))
            for service in summary.services where service.phase != "Running" || env != nil {
                print(Printable.line("    service \(service.name): \(service.phase)\(service.lastExit.map { ", last exit: \($0)" } ?? "")\(service.restarts > 0 ? ", \(service.restarts) restarts" : "")"))
            }
            for step in summary.nextSteps { print(Printable.line("    next: \(step)")) }
        }
    }

    static func find(_ program: String) -> String? {
        for directory in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] where access("\(directory)/\(program)", X_OK) == 0 {
            return "\(directory)/\(program)"
        }
        return nil
    }

    static func cgroups(root: Bool) -> String {
        let mount = "/sys/fs/cgroup"
        if FileManager.default.fileExists(atPath: mount + "/cgroup.controllers") {
            let controllers = (try? String(contentsOfFile: mount + "/cgroup.controllers", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            return (root ? "enforced: " : "advisory (not root): ") + "cgroup v2 (controllers: \(controllers))"
        }
        let present = ["pids", "freezer", "memory", "cpu"].filter { FileManager.default.fileExists(atPath: "\(mount)/\($0)/cgroup.procs") }
        guard !present.isEmpty else { return "advisory: no cgroup hierarchy under \(mount); teardown relies on users and process groups" }
        return (root ? "enforced: " : "advisory (not root): ") + "cgroup v1 (\(present.joined(separator: ", ")))"
    }
}
