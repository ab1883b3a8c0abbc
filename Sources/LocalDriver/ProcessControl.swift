import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Starting, identifying and stopping supervised processes, each the leader of its own process group.
enum ProcessControl {
    struct SpawnError: Error, CustomStringConvertible {
        let description: String
        /// The tool ran past its time limit and was stopped.
        var timedOut = false
    }

    /// Runs a tool to its end (looked up in PATH), with `input` on its standard input; its standard
    /// output, or an error with the start of its standard error. (posix_spawn and poll(2): a
    /// Foundation `Process` takes up to 50 ms more per run, which a network's set-up would pay many times.)
    /// Without `inherit`, the tool gets `environment` only (nothing of Gantry's own environment).
    /// With `timeout` (seconds), a tool still running then is killed with its process group and
    /// the run fails saying so.
    @discardableResult
    static func run(_ arguments: [String], input: String? = nil, environment: [String: String] = [:], inherit: Bool = true,
                    label: String? = nil, timeout: Double? = nil) throws -> String {
        guard let program = arguments.first else { throw SpawnError(description: "empty command") }
        _ = ignoreBrokenPipes
        var variables = inherit ? ProcessInfo.processInfo.environment : [:]
        variables.merge(environment) { $1 }
        // Three pipes: standard input (written here), output and error (read here).
        var ends = [Int32](repeating: -1, count: 6)
        defer { for end in ends where end >= 0 { close(end) } }
        for index in stride(from: 0, to: 6, by: 2) {
            var pair: [Int32] = [-1, -1]
            guard pipe(&pair) == 0 else { throw SpawnError(description: "cannot create a pipe: \(String(cString: strerror(errno)))") }
            for end in pair { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
            ends[index] = pair[0]
            ends[index + 1] = pair[1]
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, ends[0], 0)
        posix_spawn_file_actions_adddup2(&actions, ends[3], 1)
        posix_spawn_file_actions_adddup2(&actions, ends[5], 2)
        if let addChdir { _ = addChdir(&actions, "/") }
        if let addCloseFrom { _ = addCloseFrom(&actions, 3) }
        let pid = try start(arguments, environment: variables, actions: &actions)
        // The child's ends belong to it now.
        for index in [0, 3, 5] { close(ends[index]); ends[index] = -1 }
        let bytes = Array((input ?? "").utf8)
        var written = 0
        _ = fcntl(ends[1], F_SETFL, fcntl(ends[1], F_GETFL) | O_NONBLOCK)
        if bytes.isEmpty { close(ends[1]); ends[1] = -1 }
        var output: [UInt8] = [], errors: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        var timedOut = false
        while ends[2] >= 0 || ends[4] >= 0 {
            var watched: [pollfd] = []
            if ends[1] >= 0 { watched.append(pollfd(fd: ends[1], events: Int16(POLLOUT), revents: 0)) }
            for index in [2, 4] where ends[index] >= 0 { watched.append(pollfd(fd: ends[index], events: Int16(POLLIN), revents: 0)) }
            let wait = deadline.map { Int32(max(0, min(1_000, $0.timeIntervalSinceNow * 1_000))) } ?? -1
            if let deadline, Date() >= deadline {
                // Its whole group: a pipeline's tools, whatever they started.
                killGroup(pid)
                timedOut = true
                break
            }
            guard poll(&watched, nfds_t(watched.count), wait) >= 0 || errno == EINTR else { break }
            for entry in watched where entry.revents != 0 {
                if entry.fd == ends[1] {
                    let count = bytes.withUnsafeBytes { write(entry.fd, $0.baseAddress! + written, bytes.count - written) }
                    if count > 0 { written += count }
                    // Done, or the tool stopped reading (EPIPE): its standard input ends.
                    if written == bytes.count || (count < 0 && errno != EAGAIN) { close(ends[1]); ends[1] = -1 }
                    continue
                }
                let count = read(entry.fd, &buffer, buffer.count)
                if count > 0 {
                    if entry.fd == ends[2] { output += buffer[0..<count] } else { errors += buffer[0..<count] }
                } else if count == 0 || errno != EINTR {
                    let index = entry.fd == ends[2] ? 2 : 4
                    close(ends[index])
                    ends[index] = -1
                }
            }
        }
        var exit: Int32 = 0
        // A tool that closed its output but runs on is waited for until the deadline too.
        while !timedOut, let deadline, waitpid(pid, &exit, WNOHANG) == 0 {
            if Date() >= deadline { killGroup(pid); timedOut = true; break }
            usleep(10_000)
        }
        while waitpid(pid, &exit, 0) < 0 && errno == EINTR {}
        if timedOut {
            throw SpawnError(description: "\(label ?? program) did not finish within \(Int(timeout ?? 0))s and was stopped", timedOut: true)
        }
        guard exit == 0 else {
            throw SpawnError(description: "\(label ?? arguments.first { !$0.hasPrefix("-") && $0 != "setpriv" } ?? "tool") failed: \(String(decoding: errors, as: UTF8.self).prefix(500))")
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// SIGKILL to the group `pid` leads, and to `pid` itself (should it have left the group).
    static func killGroup(_ pid: pid_t) {
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
    }

    /// A tool that exits before reading all its input must not take Gantry with it (SIGPIPE): the
    /// write fails with EPIPE instead. (Its children get the default back: `run` and `spawn` reset it.)
    static let ignoreBrokenPipes: Void = { signal(SIGPIPE, SIG_IGN) }()

    /// Starts `arguments` in `directory` as a new process group leader, stdin from /dev/null and
    /// stdout and stderr appended to `logPath`. The program is looked up in PATH.
    /// With `input`, the child's standard input is a pipe that receives those bytes and is then
    /// closed (how configuration with passwords reaches a server without argv or files).
    static func spawn(_ arguments: [String], directory: String, environment: [String: String], logPath: String,
                      input: Data? = nil) throws -> pid_t {
        try spawn(arguments, directory: directory, environment: environment, output: .log(logPath), input: input)
    }

    /// Where a spawned process's standard output and error go.
    enum Output {
        /// Both appended to one file.
        case log(String)
        /// Each to a descriptor of ours (the write ends of pipes, say), duplicated in the child.
        case descriptors(output: Int32, error: Int32)
    }

    static func spawn(_ arguments: [String], directory: String, environment: [String: String], output: Output,
                      input: Data? = nil) throws -> pid_t {
        guard let program = arguments.first else { throw SpawnError(description: "empty command") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var pipeEnds: [Int32] = [-1, -1]
        if input != nil {
            guard pipe(&pipeEnds) == 0 else { throw SpawnError(description: "cannot create a pipe: \(String(cString: strerror(errno)))") }
            for end in pipeEnds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
            posix_spawn_file_actions_adddup2(&actions, pipeEnds[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        defer { if pipeEnds[0] >= 0 { close(pipeEnds[0]) } }
        switch output {
        case .log(let logPath):
            posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o640)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        case .descriptors(let out, let err):
            posix_spawn_file_actions_adddup2(&actions, out, 1)
            posix_spawn_file_actions_adddup2(&actions, err, 2)
        }
        guard let addChdir = addChdir else { throw SpawnError(description: "this C library has no posix_spawn_file_actions_addchdir_np") }
        _ = addChdir(&actions, directory)
        // Nothing of Gantry's (the state lock, sockets, the database) may leak into a service.
        if let addCloseFrom { _ = addCloseFrom(&actions, 3) }

        let pid: pid_t
        do {
            pid = try start(arguments, environment: environment, actions: &actions)
        } catch {
            if pipeEnds[1] >= 0 { close(pipeEnds[1]) }
            throw error
        }
        if let input, pipeEnds[1] >= 0 {
            input.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let written = write(pipeEnds[1], raw.baseAddress! + offset, raw.count - offset)
                    if written <= 0 { break }
                    offset += written
                }
            }
            close(pipeEnds[1])
        }
        return pid
    }

    /// posix_spawn of `arguments` with exactly `environment` and `actions`: the child leads a
    /// process group of its own, with default signal dispositions and nothing blocked (Gantry's
    /// own mask and ignored signals are not inherited). The program is looked up in the child's
    /// PATH (posix_spawnp would search the caller's).
    private static func start(_ arguments: [String], environment: [String: String],
                              actions: inout posix_spawn_file_actions_t) throws -> pid_t {
        let program = arguments[0]
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for number in [SIGTERM, SIGINT, SIGUSR1, SIGPIPE, SIGHUP, SIGCHLD] { sigaddset(&defaults, number) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let executable = resolve(program, path: environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard status == 0 else { throw SpawnError(description: "cannot start '\(program)': \(String(cString: strerror(status)))") }
        return pid
    }

    /// glibc 2.29+ has `posix_spawn_file_actions_addchdir_np`, but its header hides it from Swift.
    static let addChdir: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32).self)
    }()

    /// glibc 2.34+: close every descriptor from N up in the child.
    static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()

    static func resolve(_ program: String, path: String) -> String {
        if program.contains("/") { return program }
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(program)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return program
    }

    /// Field 22 of `/proc/PID/stat` (start time in clock ticks) and the state letter; nil when gone.
    static func identity(of pid: pid_t) -> (start: Int64, state: Character)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let start = Int64(fields[19]), let state = fields[0].first else { return nil }
        return (start, state)
    }

    /// True when `pid` is alive, not a zombie, and is still the process that started at `start`.
    static func isAlive(_ pid: pid_t, start: Int64?) -> Bool {
        reap(pid)
        guard let identity = identity(of: pid), identity.state != "Z" else { return false }
        return start == nil || identity.start == start
    }

    /// Collects the exit status of our own child `pid` if it has exited; returns a description.
    @discardableResult
    static func reap(_ pid: pid_t) -> String? {
        var status: Int32 = 0
        guard waitpid(pid, &status, WNOHANG) == pid else { return nil }
        return describe(status)
    }

    static func describe(_ status: Int32) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "exited with status \((status >> 8) & 0xff)" }
        return "killed by signal \(signal)"
    }

    /// SIGTERM to the whole group, then SIGKILL after `grace` seconds; waits until the group is gone.
    static func stopGroup(_ pid: pid_t, grace: Double = 5) {
        stopGroups([pid], grace: grace)
    }

    /// Stops several process groups at once: SIGTERM to all, one grace period for all of them,
    /// then SIGKILL to those left (a restart that finds many leftovers does not wait for each in turn).
    static func stopGroups(_ pids: [pid_t], grace: Double = 5) {
        var left = pids.filter { $0 > 1 }
        for pid in left {
            kill(-pid, SIGTERM)
            kill(pid, SIGTERM)
        }
        let deadline = Date().addingTimeInterval(grace)
        while !left.isEmpty && Date() < deadline {
            left.removeAll { pid in
                reap(pid)
                return kill(-pid, 0) != 0 && (identity(of: pid).map { $0.state == "Z" } ?? true)
            }
            if !left.isEmpty { usleep(20_000) }
        }
        for pid in left { killGroup(pid) }
        let hardDeadline = Date().addingTimeInterval(2)
        while !left.isEmpty && Date() < hardDeadline {
            left.removeAll { pid in
                reap(pid)
                return kill(-pid, 0) != 0
            }
            if !left.isEmpty { usleep(10_000) }
        }
    }

    /// Processes whose environment holds `NAME=value...` with the given prefix: (pid, value).
    static func processes(markedWith name: String, prefix: String) -> [(pid: pid_t, value: String)] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        var found: [(pid_t, String)] = []
        let needle = "\(name)=\(prefix)"
        for entry in entries {
            guard let pid = pid_t(entry), pid != getpid(),
                  let data = FileManager.default.contents(atPath: "/proc/\(entry)/environ") else { continue }
            for variable in data.split(separator: 0) {
                let text = String(decoding: variable, as: UTF8.self)
                if text.hasPrefix(needle) {
                    found.append((pid, String(text.dropFirst(name.count + 1))))
                    break
                }
            }
        }
        return found
    }

    /// A free TCP port on 127.0.0.1 not in `taken`.
    static func freePort(excluding taken: Set<Int>) throws -> Int {
        for _ in 0..<100 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { break }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = 0
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else { continue }
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            let port = Int(UInt16(bigEndian: address.sin_port))
            if !taken.contains(port) { return port }
        }
        throw SpawnError(description: "no free loopback port found")
    }
}

extension ProcessControl {
    /// The whole of a /proc file. (Foundation reads a file the size its metadata says, and /proc
    /// says 0: it stops at the first 4 KiB, and a namespace's TCP table or /proc/sysvipc is longer.)
    static func readProc(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var data = [UInt8](), chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return count == 0 ? String(decoding: data, as: UTF8.self) : nil }
            data += chunk[0..<count]
        }
    }
}
