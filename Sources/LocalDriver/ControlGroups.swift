import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A control group per environment, with one per service (cache, job) inside it, on cgroup v2
/// where it is mounted and on the v1 controllers otherwise (pids, freezer, memory, cpu). Every
/// process joins its group before it runs the environment's code (a shell writes its own pid into
/// the group's `cgroup.procs`, then execs), so its children, detached or re-parented ones
/// included, stay inside: teardown freezes the environment's group, kills all it holds and removes
/// it. `resources.memory` and `resources.cpu` become the service group's limits; the environment's
/// group caps its number of processes.
struct ControlGroups: Sendable {
    enum Layout: Sendable, Equatable {
        /// The unified hierarchy: Gantry's groups live under this directory.
        case v2(base: String, controllers: Bool)
        /// v1: Gantry's directory under each controller's hierarchy (controller → directory).
        case v1([String: String])
        /// No usable hierarchy (not root, nothing mounted): why.
        case none(String)
    }

    let layout: Layout
    /// The memory limit of a unit that states none (a service without `resources.memory`, a
    /// cache, a job, a seed): without one, any environment could take the host's memory.
    var defaultMemory = 512 << 20
    /// Processes an environment may have at once (fork bombs end there).
    static let maxProcesses = 4096
    static let v1Controllers = ["pids", "freezer", "memory", "cpu"]

    /// Detects the hierarchy and makes Gantry's directory `gantry-<instance>` under the groups this
    /// process is in (what was delegated to it).
    init(instance: String, enabled: Bool, mount: String = "/sys/fs/cgroup", selfCgroup: String = "/proc/self/cgroup") {
        guard enabled, geteuid() == 0 else {
            layout = .none(geteuid() == 0 ? "turned off" : "not root: cgroups need privileges")
            return
        }
        let own = (try? String(contentsOfFile: selfCgroup, encoding: .utf8)) ?? ""
        // hierarchy-id:controller,controller:/path
        let lines = own.split(separator: "\n").map { $0.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init) }
        let name = "gantry-\(instance)"
        if FileManager.default.fileExists(atPath: mount + "/cgroup.controllers") {
            let path = lines.first { $0.count == 3 && $0[0] == "0" }?[2] ?? "/"
            let base = mount + (path == "/" ? "" : path) + "/" + name
            guard Self.makeDirectory(base) else {
                layout = .none("cannot create \(base): \(String(cString: strerror(errno)))")
                return
            }
            // Controllers for the groups inside: possible when Gantry's own group may delegate them.
            let wanted = "+pids +memory +cpu"
            let enabled = Self.write(wanted, to: base + "/cgroup.subtree_control")
            layout = .v2(base: base, controllers: enabled)
            return
        }
        var directories: [String: String] = [:]
        for controller in Self.v1Controllers {
            guard let line = lines.first(where: { $0.count == 3 && $0[1].split(separator: ",").contains(Substring(controller)) }) else { continue }
            let root = mount + "/" + controller
            guard FileManager.default.fileExists(atPath: root + "/cgroup.procs") else { continue }
            let directory = root + (line[2] == "/" ? "" : line[2]) + "/" + name
            if Self.makeDirectory(directory) { directories[controller] = directory }
        }
        layout = directories["freezer"] == nil && directories["pids"] == nil
            ? .none("no cgroup v2 and no usable v1 pids or freezer hierarchy under \(mount)") : .v1(directories)
    }

    var isActive: Bool {
        if case .none = layout { return false }
        return true
    }

    var summary: String {
        switch layout {
        case .v2(let base, let controllers):
            return "cgroup v2 under \(base)" + (controllers ? " (pids, memory, cpu limits)" : " (freeze and kill only: controllers not delegated)")
        case .v1(let directories): return "cgroup v1 (\(directories.keys.sorted().joined(separator: ", ")))"
        case .none(let why): return "no cgroups (\(why))"
        }
    }

    /// The group directories of an environment, or of a unit (service, cache, job) inside it.
    func directories(_ environment: String, unit: String? = nil) -> [(controller: String, path: String)] {
        let suffix = "/" + environment + (unit.map { "/" + Self.safe($0) } ?? "")
        switch layout {
        case .v2(let base, _): return [("unified", base + suffix)]
        case .v1(let directories): return directories.sorted { $0.key < $1.key }.map { ($0.key, $0.value + suffix) }
        case .none: return []
        }
    }

    /// Bounds the environment's group as a whole: what outlives its units (files in /dev/shm it
    /// left, charged to the group) cannot grow past what its units may use together.
    func limitEnvironment(_ environment: String, memory: Int) {
        guard isActive else { return }
        for (controller, path) in directories(environment) {
            guard Self.makeDirectory(path) else { continue }
            switch controller {
            case "memory": _ = Self.write("\(memory)", to: path + "/memory.limit_in_bytes")
            case "unified": _ = Self.write("\(memory)", to: path + "/memory.max")
            default: break
            }
        }
    }

    /// Makes the unit's group (and its environment's) with the given limits; returns the files a
    /// process writes its pid to, to join it. Empty when there are no cgroups.
    /// An environment frozen by a kill switch (`keepFrozen`) stays frozen: what joins it is frozen too.
    func prepare(_ environment: String, unit: String, memory stated: Int?, cpu: Double?, keepFrozen: Bool = false) throws -> [String] {
        guard isActive else { return [] }
        let memory: Int? = stated ?? defaultMemory
        if case .v2(let base, true) = layout {
            _ = Self.makeDirectory(base + "/" + environment)
            _ = Self.write("+pids +memory +cpu", to: base + "/" + environment + "/cgroup.subtree_control")
        }
        for (controller, path) in directories(environment) {
            guard Self.makeDirectory(path) else { throw LocalDriverError("cannot create the control group \(path): \(String(cString: strerror(errno)))") }
            if controller == "pids" || controller == "unified" { _ = Self.write("\(Self.maxProcesses)", to: path + "/pids.max") }
        }
        // A group frozen by a teardown or restart that Gantry did not finish (killed meanwhile)
        // would freeze what joins it: thawed first.
        if !keepFrozen { thaw(environment) }
        thaw(environment, unit: unit)
        var joins: [String] = []
        for (controller, path) in directories(environment, unit: unit) {
            guard Self.makeDirectory(path) else { throw LocalDriverError("cannot create the control group \(path): \(String(cString: strerror(errno)))") }
            switch controller {
            case "memory":
                if let memory { _ = Self.write("\(memory)", to: path + "/memory.limit_in_bytes") }
            case "cpu":
                // (The kernel's least quota is 1 ms a period: a smaller one would be refused, and leave it unlimited.)
                if let cpu { _ = Self.write("100000", to: path + "/cpu.cfs_period_us"); _ = Self.write("\(max(1000, Int(cpu * 100_000)))", to: path + "/cpu.cfs_quota_us") }
            case "unified":
                _ = Self.write(memory.map(String.init) ?? "max", to: path + "/memory.max")
                _ = Self.write(cpu.map { "\(max(1000, Int($0 * 100_000))) 100000" } ?? "max 100000", to: path + "/cpu.max")
            default: break
            }
            joins.append(path + "/cgroup.procs")
        }
        return joins
    }

    /// `command` run by a shell that first moves itself into the groups (a failure stops it before
    /// the environment's code runs).
    static func joining(_ files: [String], _ command: [String]) -> [String] {
        guard !files.isEmpty else { return command }
        let script = "while [ \"$1\" != -- ]; do echo $$ > \"$1\" || exit 125; shift; done; shift; exec \"$@\""
        return ["/bin/sh", "-c", script, "gantry-cgroup"] + files + ["--"] + command
    }

    /// Lets the processes of a group run again (a freeze left by an interrupted kill).
    func thaw(_ environment: String, unit: String? = nil) {
        for group in directories(environment, unit: unit) { Self.freeze(group, false) }
    }

    /// Freezes or thaws a group through its controller's file (v1 freezer, v2 core); false when
    /// the group has no freezer.
    @discardableResult
    static func freeze(_ group: (controller: String, path: String), _ frozen: Bool) -> Bool {
        switch group.controller {
        case "freezer": return write(frozen ? "FROZEN" : "THAWED", to: group.path + "/freezer.state")
        case "unified": return write(frozen ? "1" : "0", to: group.path + "/cgroup.freeze")
        default: return false
        }
    }

    /// Freezes the environment (or one unit), kills everything in it, thaws, waits until it is
    /// empty, and with `remove` removes its groups. Returns the processes that survived.
    @discardableResult
    func kill(_ environment: String, unit: String? = nil, remove: Bool) -> [pid_t] {
        guard isActive else { return [] }
        let groups = directories(environment, unit: unit)
        let freezer = groups.first { $0.controller == "freezer" || $0.controller == "unified" }
        // cgroup.kill (v2, Linux 5.14+) kills the whole subtree at once; else freeze, then kill.
        if let freezer, !(freezer.controller == "unified" && Self.write("1", to: freezer.path + "/cgroup.kill")) {
            Self.freeze(freezer, true)
        }
        var survivors: [pid_t] = []
        let deadline = Date().addingTimeInterval(5)
        repeat {
            var found = Set<pid_t>()
            for (_, path) in groups { Self.collect(path, into: &found) }
            survivors = found.sorted()
            for pid in survivors { Glibc.kill(pid, SIGKILL) }
            if let freezer { Self.freeze(freezer, false) }
            for pid in survivors { ProcessControl.reap(pid) }
            if survivors.isEmpty { break }
            usleep(20_000)
        } while Date() < deadline
        if remove { for (_, path) in groups { Self.removeTree(path) } }
        return survivors
    }

    /// Removes Gantry's empty groups (at shutdown, when nothing runs any more).
    func removeEmpty() {
        for base in bases { Self.removeTree(base) }
    }

    /// Removes the environments' groups that hold nothing (what a Gantry killed with SIGKILL left),
    /// keeping Gantry's own directory: a group is made again when its environment starts.
    func removeEmptyEnvironments() {
        for base in bases {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? [] {
                var info = stat()
                let path = base + "/" + entry
                if lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { Self.removeTree(path) }
            }
        }
    }

    /// Gantry's directory under each hierarchy.
    private var bases: [String] {
        switch layout {
        case .v2(let base, _): [base]
        case .v1(let directories): Array(directories.values)
        case .none: []
        }
    }

    // MARK: Files

    static func safe(_ unit: String) -> String {
        String(unit.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "-" })
    }

    static func makeDirectory(_ path: String) -> Bool {
        mkdir(path, 0o755) == 0 || errno == EEXIST
    }

    @discardableResult
    static func write(_ text: String, to path: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return text.withCString { Glibc.write(fd, $0, strlen($0)) } >= 0
    }

    static func collect(_ path: String, into found: inout Set<pid_t>) {
        if let text = try? String(contentsOfFile: path + "/cgroup.procs", encoding: .utf8) {
            for line in text.split(separator: "\n") { if let pid = pid_t(line) { found.insert(pid) } }
        }
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] {
            var info = stat()
            let child = path + "/" + entry
            if lstat(child, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { collect(child, into: &found) }
        }
    }

    /// Removes a group and the groups inside it, deepest first (only empty groups can go).
    static func removeTree(_ path: String) {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] {
            var info = stat()
            let child = path + "/" + entry
            if lstat(child, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { removeTree(child) }
        }
        rmdir(path)
    }
}
