import Crypto
import Foundation
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// Each environment's processes (services, caches, jobs) run as an unprivileged user of their own
/// when Gantry is root: a uid/gid pair from a reserved range, recorded in the state DB and never
/// handed to another environment. The environment's directory is Gantry's (root, 0711): its logs
/// and bookkeeping stay out of the environment's reach; the working directories and data inside it
/// belong to the environment's user (0700). Without root, everything runs as Gantry's own user and
/// isolation is advisory (`gantry status` says so).
extension LocalDriver {
    static let uidAllocation = "uid"

    /// True when processes get users of their own (Gantry is root and isolation is on).
    public var isolatesUsers: Bool { options.isolateUsers && geteuid() == 0 }

    /// What `gantry status` shows about isolation, and why.
    public var isolationSummary: String {
        if isolatesUsers {
            let network = isolatesNetwork
                ? "its own network namespace (\(Self.networkSummary))"
                : "the host's network (no namespaces: \(networks.unavailable ?? ""))"
            return "enforced: each environment runs as its own user (uids \(options.uidRange.lowerBound)–\(options.uidRange.upperBound - 1)) in its own control group (\(cgroups.summary)) and \(network); state directory 0711, its database and keys readable by Gantry only"
        }
        if !options.isolateUsers { return "advisory: turned off; environments run as Gantry's own user and can read its state and keys" }
        return "advisory: gantry run is not root, so environments run as its own user (uid \(geteuid())) and can read its state and keys; run it as root for per-environment users"
    }

    /// The environment's user: the one recorded for it, else the next uid of the range that no
    /// environment of this state directory ever had and no other Gantry on this host holds (the
    /// host registry, `Options.uidRegistry`, arbitrates between state directories).
    func user(of environment: String) throws -> uid_t? {
        guard isolatesUsers else { return nil }
        return try shared.withLock { try claimUser(of: environment) }
    }

    private func claimUser(of environment: String) throws -> uid_t? {
        if let known = try state.allocations(Self.uidAllocation, of: environment).first.flatMap({ uid_t($0) }),
           claimUID(known, for: environment) {
            return known
        }
        let used = Set(try state.allocatedNames(Self.uidAllocation).compactMap { Int($0) })
        for candidate in options.uidRange where !used.contains(candidate) {
            // A uid some account of this host already uses is skipped (its files are not ours to share).
            guard getpwuid(uid_t(candidate)) == nil, getgrgid(gid_t(candidate)) == nil,
                  claimUID(uid_t(candidate), for: environment) else { continue }
            try state.allocate(Self.uidAllocation, String(candidate), to: environment)
            return uid_t(candidate)
        }
        throw LocalDriverError("no user id left in \(options.uidRange.lowerBound)–\(options.uidRange.upperBound - 1) for \(environment) (ids are not reused within a state directory, and others are held by other Gantry instances in \(options.uidRegistry)); widen LocalDriver.Options.uidRange")
    }

    /// What this instance writes into a uid's claim in the host registry: its state directory,
    /// the environment, and the state directory's token (a state directory deleted and made again
    /// at the same path is another one).
    private func claimText(_ environment: String) -> String {
        "\(stateDirectory.path)\n\(environment)\n\(instanceToken)\n"
    }

    /// The random token of this state directory (`<state>/instance`, made on first use).
    static func instanceToken(of stateDirectory: URL) -> String {
        let file = stateDirectory.appendingPathComponent("instance").path
        if let token = try? String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), token.count == 32 {
            return token
        }
        let token = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        try? FileManager.default.createDirectory(at: stateDirectory, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: file, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600])
        return (try? String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)) ?? token
    }

    /// Whether a claim's holder is gone: its state directory does not exist, or is another one at
    /// the same path (its token differs). An empty claim (its writer died before writing) is stale.
    static func claimIsStale(_ claim: String) -> Bool {
        let lines = claim.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let owner = lines.first, !owner.isEmpty, FileManager.default.fileExists(atPath: owner) else { return true }
        guard lines.count > 2, !lines[2].isEmpty else { return false }
        let current = (try? String(contentsOfFile: owner + "/instance", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        return current != nil && current != lines[2]
    }

    /// Claims `uid` for `environment` in the host registry (a file per uid, created exclusively).
    /// True when the claim is (now) this environment's. A claim whose state directory is gone and
    /// whose uid runs nothing is taken over.
    func claimUID(_ uid: uid_t, for environment: String) -> Bool {
        let registry = options.uidRegistry
        guard (try? FileManager.default.createDirectory(atPath: registry, withIntermediateDirectories: true,
                                                         attributes: [.posixPermissions: 0o700])) != nil else { return false }
        // One claimer at a time on this host: checking a stale claim and taking it over is one step.
        return withRegistryLock(otherwise: false) {
            let path = registry + "/\(uid)"
            let text = claimText(environment)
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 {
                defer { close(fd) }
                return text.withCString { write(fd, $0, strlen($0)) } == text.utf8.count
            }
            guard errno == EEXIST, let existing = try? String(contentsOfFile: path, encoding: .utf8) else { return false }
            if existing == text { return true }
            // Written by a Gantry before claims carried the token: ours, completed.
            if existing == "\(stateDirectory.path)\n\(environment)\n" {
                return FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
            }
            guard Self.claimIsStale(existing), ProcessControl.processes(ownedBy: uid).isEmpty else { return false }
            // Stale (its Gantry's state directory is gone, nothing runs as it): taken over atomically.
            let temporary = path + ".\(getpid()).new"
            guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]),
                  rename(temporary, path) == 0 else { return false }
            // What the earlier holder left in the host's shared places is not handed on, nor the
            // network it left: its link may still be in that Gantry's host table, whose rules are
            // not this one's. It is made again when the environment's first process starts.
            Self.scrubSharedFiles(of: uid)
            networks.remove(uid: uid, everywhere: true)
            networksMade.remove(uid)
            return (try? String(contentsOfFile: path, encoding: .utf8)) == text
        }
    }

    /// Gives the uid's claim back to the host (its files are gone, nothing of it runs).
    func releaseUID(_ uid: uid_t, of environment: String) {
        releaseUID(uid) { $0 == claimText(environment) }
    }

    private func releaseUID(_ uid: uid_t, when matches: (String) -> Bool) {
        withRegistryLock(otherwise: ()) {
            let path = options.uidRegistry + "/\(uid)"
            if let claim = try? String(contentsOfFile: path, encoding: .utf8), matches(claim) { unlink(path) }
        }
    }

    /// `body`'s result, run holding the host registry's lock (one claimer at a time on this
    /// host); `otherwise` when the lock cannot be had.
    func withRegistryLock<T>(otherwise: T, _ body: () -> T) -> T {
        let lock = open(options.uidRegistry + "/.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0, flock(lock, LOCK_EX) == 0 else { if lock >= 0 { close(lock) }; return otherwise }
        defer { flock(lock, LOCK_UN); close(lock) }
        return body()
    }

    /// `<state>/envs`, unless (as root, isolating users) an environment's user could not reach it
    /// through the directories above the state directory: then the instance's fallback directory,
    /// with `<state>/envs` a link to it (for `gantry status`).
    static func environmentsRoot(stateDirectory: URL, options: Options) -> URL {
        let inside = stateDirectory.appendingPathComponent("envs")
        let parent = stateDirectory.standardizedFileURL.deletingLastPathComponent().path
        guard options.isolateUsers, geteuid() == 0, !searchable(parent, uid: uid_t(options.uidRange.lowerBound), gid: gid_t(options.uidRange.lowerBound)) else {
            return inside
        }
        let instance = SHA256.hash(data: Data(stateDirectory.standardizedFileURL.path.utf8)).prefix(6).map { String(format: "%02x", $0) }.joined()
        let fallback = URL(fileURLWithPath: options.fallbackDirectory).appendingPathComponent(instance).appendingPathComponent("envs")
        try? FileManager.default.createDirectory(at: fallback, withIntermediateDirectories: true)
        // Traversable down to it (each environment's own directory is closed further down).
        openForTraversal(fallback, options: options)
        var info = stat()
        if lstat(inside.path, &info) != 0 { try? FileManager.default.createSymbolicLink(at: inside, withDestinationURL: fallback) }
        return fallback
    }

    /// Adds search permission for others to `directory` and each directory above it within the
    /// fallback directory and /var/lib (nothing else of their modes changes).
    static func openForTraversal(_ directory: URL, options: Options) {
        var current = directory.standardizedFileURL
        while current.path.hasPrefix(options.fallbackDirectory) || current.path.hasPrefix("/var/lib/") {
            var info = stat()
            if stat(current.path, &info) == 0 { _ = chmod(current.path, (info.st_mode & 0o7777) | 0o011) }
            current.deleteLastPathComponent()
        }
    }

    /// Whether `uid`/`gid` may search every directory from `/` down to `path`.
    static func searchable(_ path: String, uid: uid_t, gid: gid_t) -> Bool {
        var current = URL(fileURLWithPath: path).standardizedFileURL.path
        while true {
            var info = stat()
            guard stat(current, &info) == 0 else { return false }
            let allowed = info.st_uid == uid ? info.st_mode & S_IXUSR != 0
                : info.st_gid == gid ? info.st_mode & S_IXGRP != 0 : info.st_mode & S_IXOTH != 0
            guard allowed else { return false }
            if current == "/" { return true }
            current = (current as NSString).deletingLastPathComponent
        }
    }

    /// The entries of `path` another user can search (each directory and its parents open to
    /// others): Gantry's own PATH may start in /root, which an environment's user cannot enter.
    public static func searchablePath(_ path: String) -> String {
        // uid/gid -1 own nothing: what is checked is the permission for others.
        let kept = path.split(separator: ":").filter { searchable(String($0), uid: .max, gid: .max) }
        return kept.isEmpty ? "/usr/local/bin:/usr/bin:/bin" : kept.joined(separator: ":")
    }

    /// `command` the way the environment's own code runs — its user, its control group (`unit`,
    /// made here), its network — for what the repository gives Gantry to run on the environment's
    /// behalf (a database's seed, the restore of a clone). `cgroups.kill(environment, unit:
    /// remove: true)` ends whatever it leaves running.
    func sandboxed(_ environment: String, unit: String, _ command: [String]) throws -> [String] {
        let user = try user(of: environment)
        let network = try network(of: environment, user: user)
        let joins = try cgroups.prepare(environment, unit: unit, memory: nil, cpu: nil, keepFrozen: isKilled(environment))
        return ControlGroups.joining(joins, Networks.entering(network, Self.asUser(user, command)))
    }

    /// The whole environment of a sandboxed tool: `variables`, a PATH its user can search, no home.
    static func sandboxVariables(_ variables: [String: String], environment: String) -> [String: String] {
        var all = variables
        all["PATH"] = searchablePath(ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        all["HOME"] = "/nonexistent"
        all["GANTRY_ENVIRONMENT"] = environment
        return all
    }

    /// Runs `command` sandboxed (see `sandboxed`) to its end with `input`, nothing of Gantry's own
    /// environment but `variables`; its output.
    @discardableResult
    func runInEnvironment(_ environment: String, unit: String, _ command: [String], input: String,
                          variables: [String: String] = [:], label: String, timeout: Double) throws -> String {
        // Whatever it left running (`\\! sleep 1000 &` in a psql seed) goes with its group.
        defer { cgroups.kill(environment, unit: unit, remove: true) }
        return try ProcessControl.run(try sandboxed(environment, unit: unit, command), input: input,
                                      environment: Self.sandboxVariables(variables, environment: environment), inherit: false, label: label,
                                      timeout: timeout)
    }

    /// `command` run as `user` (uid and gid alike, no supplementary groups, no way back to privilege).
    static func asUser(_ user: uid_t?, _ command: [String]) -> [String] {
        guard let user else { return command }
        return ["setpriv", "--reuid=\(user)", "--regid=\(user)", "--clear-groups", "--no-new-privs", "--"] + command
    }

    /// The environment's directory (Gantry's, 0711) with its logs (Gantry's, 0700).
    func prepareEnvironmentDirectory(_ environment: String) throws {
        let directory = environmentDirectory(environment)
        let logs = directory.appendingPathComponent("logs")
        try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
        try secure(root.path, mode: isolatesUsers ? 0o711 : 0o700)
        try secure(directory.path, mode: isolatesUsers ? 0o711 : 0o700)
        try secure(logs.path, mode: 0o700)
    }

    /// A directory Gantry made for the environment's processes: created, then given (with all it
    /// holds) to the environment's user, 0700.
    func handOver(_ directory: URL, to user: uid_t?) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        guard let user else { return }
        try giveTree(directory.path, to: user)
        _ = chmod(directory.path, 0o700)
    }

    /// Owner and mode of a directory Gantry keeps, set without following a symbolic link.
    func secure(_ path: String, mode: mode_t) throws {
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw LocalDriverError("\(path) is not a directory Gantry made (a symbolic link?); refusing to use it")
        }
        if geteuid() == 0, info.st_uid != 0 { _ = lchown(path, 0, 0) }
        _ = chmod(path, mode)
    }

    /// Gives `path` and everything under it to `user`, walking by directory descriptors opened
    /// with O_NOFOLLOW: a directory swapped for a symbolic link meanwhile (by a process of the
    /// environment already running) is never followed, so nothing outside changes owner.
    private func giveTree(_ path: String, to user: uid_t) throws {
        let top = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard top >= 0 else {
            // Not a directory (or a link): the entry itself, never what it points to.
            guard lchown(path, user, user) == 0 else { throw LocalDriverError("cannot give \(path) to uid \(user): \(String(cString: strerror(errno)))") }
            return
        }
        try Self.giveDirectory(top, path: path, to: user)
    }

    /// Gives the open directory `fd` (closed here) and its contents to `user`.
    private static func giveDirectory(_ fd: Int32, path: String, to user: uid_t) throws {
        guard let stream = fdopendir(fd) else { close(fd); throw LocalDriverError("cannot read \(path): \(String(cString: strerror(errno)))") }
        defer { closedir(stream) }
        guard fchown(fd, user, user) == 0 else { throw LocalDriverError("cannot give \(path) to uid \(user): \(String(cString: strerror(errno)))") }
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name != ".", name != ".." else { continue }
            let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            if child >= 0 {
                try giveDirectory(child, path: path + "/" + name, to: user)
            } else if fchownat(fd, name, user, user, AT_SYMLINK_NOFOLLOW) != 0, errno != ENOENT {
                throw LocalDriverError("cannot give \(path)/\(name) to uid \(user): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// The places of the host every user may write to, outside the environments' directories.
    static let sharedDirectories = ["/tmp", "/var/tmp", "/run/lock", "/dev/shm", "/dev/mqueue"]

    /// Removes what `uid` left in the host's shared places (files, sockets, directories it owns in
    /// /tmp, /var/tmp, /run/lock, /dev/shm, POSIX message queues) and its System V IPC objects, so the next
    /// holder of the uid (another state directory's environment) finds nothing of it. Its
    /// processes are gone.
    static func scrubSharedFiles(of uid: uid_t) {
        for directory in sharedDirectories where FileManager.default.fileExists(atPath: directory) {
            // find never follows links (-P) and stays on the file system (-xdev); it only descends
            // where the uid could have written: its own directories and those open to everyone.
            let listed = (try? ProcessControl.run(["find", directory, "-xdev", "-mindepth", "1",
                                                   "(", "-type", "d", "!", "-uid", String(uid), "!", "-perm", "-0002", "-prune", ")",
                                                   "-o", "(", "-uid", String(uid), "-print0", ")"])) ?? ""
            // Deepest first: a directory is empty of the uid's files when its turn comes.
            for path in listed.split(separator: "\0").reversed().map(String.init) {
                var info = stat()
                guard lstat(path, &info) == 0, info.st_uid == uid else { continue }
                if (info.st_mode & S_IFMT) == S_IFDIR { rmdir(path) } else { unlink(path) }
            }
        }
        for (table, uidColumn, flag) in [("shm", 7, "-m"), ("msg", 7, "-q"), ("sem", 4, "-s")] {
            let lines = (ProcessControl.readProc("/proc/sysvipc/\(table)") ?? "").split(separator: "\n").dropFirst()
            for line in lines {
                let fields = line.split(separator: " ")
                guard fields.count > uidColumn, uid_t(fields[uidColumn]) == uid else { continue }
                _ = try? ProcessControl.run(["ipcrm", flag, String(fields[1])])
            }
        }
    }

    /// Stops every process of the environment's user, wherever it was started from (a detached,
    /// re-parented grandchild included): SIGKILL until none is left.
    func stopEveryProcess(of environment: String) -> [String] {
        guard isolatesUsers, let uids = try? state.allocations(Self.uidAllocation, of: environment), !uids.isEmpty else { return [] }
        let survivors = uids.compactMap { uid_t($0) }.flatMap { ProcessControl.killEveryProcess(of: $0) }
        return survivors.isEmpty ? [] : ["processes \(survivors.map(String.init).joined(separator: ", ")) of \(environment) survived SIGKILL"]
    }

    /// Gantry's state directory: the directory itself traversable only (0711: an environment's
    /// user reaches its own working directory through it), everything else in it Gantry's alone.
    func secureStateDirectory() {
        let state = stateDirectory
        _ = chmod(state.path, isolatesUsers ? 0o711 : 0o700)
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: state.path)) ?? [] {
            let path = state.appendingPathComponent(entry).path
            guard entry != "envs", entry != "postgres" else { continue }
            var info = stat()
            guard lstat(path, &info) == 0 else { continue }
            switch info.st_mode & S_IFMT {
            case S_IFDIR: _ = chmod(path, 0o700)
            case S_IFREG: _ = chmod(path, 0o600)
            default: continue
            }
        }
        let keys = state.appendingPathComponent("keys").path
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: keys)) ?? [] {
            _ = chmod(keys + "/" + entry, 0o600)
        }
    }
}

extension ProcessControl {
    /// Kills every process of `uid` (SIGKILL until none is left, 5 s at most); the survivors.
    @discardableResult
    static func killEveryProcess(of uid: uid_t) -> [pid_t] {
        var survivors: [pid_t] = []
        let deadline = Date().addingTimeInterval(5)
        repeat {
            survivors = processes(ownedBy: uid)
            // Frozen first (SIGSTOP), so none can fork another while the others are killed.
            for pid in survivors { kill(pid, SIGSTOP) }
            for pid in survivors { kill(pid, SIGKILL) }
            for pid in survivors { reap(pid) }
            if survivors.isEmpty { break }
            usleep(20_000)
        } while Date() < deadline
        return survivors
    }

    /// The processes of the host by real uid (one scan of /proc).
    static func processesByUID() -> [uid_t: [pid_t]] {
        var found: [uid_t: [pid_t]] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let uid = realUID(of: entry) else { continue }
            found[uid, default: []].append(pid)
        }
        return found
    }

    /// The real uid of /proc/`entry` (nil for a zombie: it is already dead).
    static func realUID(of entry: String) -> uid_t? {
        guard let status = try? String(contentsOfFile: "/proc/\(entry)/status", encoding: .utf8), !status.contains("State:\tZ"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
        let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
        return fields.count > 1 ? uid_t(fields[1]) : nil
    }

    /// Every process whose real uid is `uid` (from /proc/PID/status).
    static func processes(ownedBy uid: uid_t) -> [pid_t] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { entry in
            guard let pid = pid_t(entry), realUID(of: entry) == uid else { return nil }
            return pid
        }
    }
}
