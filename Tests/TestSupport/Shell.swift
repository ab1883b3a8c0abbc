import Foundation

/// Runs real commands (git, ssh-keygen, the gantry binary) for tests.
public enum Shell {
    public struct Result: Sendable {
        public let status: Int32
        public let stdout: String
        public let stderr: String
    }

    /// A clean environment for git: a fixed identity, no user or system configuration.
    public static var gitEnvironment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["GIT_AUTHOR_NAME"] = "Test Agent"
        environment["GIT_AUTHOR_EMAIL"] = "agent@example.com"
        environment["GIT_COMMITTER_NAME"] = "Test Agent"
        environment["GIT_COMMITTER_EMAIL"] = "agent@example.com"
        environment["GIT_CONFIG_NOSYSTEM"] = "1"
        environment["GIT_CONFIG_GLOBAL"] = "/dev/null"
        return environment
    }

    @discardableResult
    public static func run(_ arguments: [String], in directory: String? = nil, input: String? = nil,
                           environment: [String: String]? = nil) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.environment = environment ?? gitEnvironment
        let out = Pipe(), err = Pipe(), inPipe = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = inPipe
        try process.run()
        if let input { inPipe.fileHandleForWriting.write(Data(input.utf8)) }
        try? inPipe.fileHandleForWriting.close()
        let outData = ReadAll(out.fileHandleForReading)
        let errData = ReadAll(err.fileHandleForReading)
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: outData.wait(), as: UTF8.self),
                      stderr: String(decoding: errData.wait(), as: UTF8.self))
    }

    /// Runs and throws with the output when the command fails.
    @discardableResult
    public static func check(_ arguments: [String], in directory: String? = nil, input: String? = nil) throws -> String {
        let result = try run(arguments, in: directory, input: input)
        guard result.status == 0 else {
            throw ShellError(description: "\(arguments.joined(separator: " ")) exited \(result.status): \(result.stderr)\(result.stdout)")
        }
        return result.stdout
    }
}

public struct ShellError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// Reads a pipe to its end on a background thread, so a chatty child never blocks on a full pipe.
final class ReadAll: @unchecked Sendable {
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            data = handle.readDataToEndOfFile()
            done.signal()
        }
    }

    func wait() -> Data {
        done.wait()
        return data
    }
}

/// A temporary directory removed when the value goes away.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String
    public var url: URL { URL(fileURLWithPath: path) }

    /// A directory at `path` (created), removed like the others.
    public init(path: String) {
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        self.path = path
    }

    public init(_ prefix: String = "gantry-test") {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try! FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        path = base.path
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// Writable by every user (sticky, like /tmp): where an environment's code, running as a user
    /// of its own, leaves marks for a test to read.
    @discardableResult
    public func writableByEveryone() -> TemporaryDirectory {
        _ = chmod(path, 0o1777)
        return self
    }
}

/// Starts `arguments` with posix_spawnp, its output to /dev/null, and returns its pid (0 when it
/// could not start): far lighter than Foundation's `Process`, whose waitUntilExit spins when the
/// process was started off the main thread.
public func spawnQuiet(_ arguments: [String]) -> pid_t {
    var pid: pid_t = 0
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    return posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ) == 0 ? pid : 0
}

/// A TCP port free on 127.0.0.1 (the kernel's pick, released for the caller to bind).
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// A child process started with posix_spawn (`spawnQuiet`) and stopped with SIGKILL.
public final class SpawnedProcess: @unchecked Sendable {
    private let lock = NSLock()
    private var pid: pid_t = 0

    public init() {}

    public func start(_ arguments: [String]) {
        let child = spawnQuiet(arguments)
        lock.withLock { pid = child }
    }

    public func stop() {
        let child = lock.withLock { pid }
        guard child > 0 else { return }
        kill(child, SIGKILL)
        var status: Int32 = 0
        waitpid(child, &status, 0)
    }
}
