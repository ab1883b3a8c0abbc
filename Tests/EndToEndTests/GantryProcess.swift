import Foundation
import TestSupport

/// The real `gantry` binary run as a child process.
final class GantryProcess: @unchecked Sendable {
    let process = Process()
    let log: String

    init(_ arguments: [String], log: String) throws {
        self.log = log
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        handle.seekToEndOfFile()
        process.executableURL = URL(fileURLWithPath: TestPaths.gantryBinary)
        process.arguments = arguments
        process.environment = Shell.gitEnvironment
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    func kill9() {
        kill(pid, SIGKILL)
        process.waitUntilExit()
    }

    func terminate() {
        kill(pid, SIGTERM)
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning { kill9() }
    }
}

/// Runs `gantry ARGS` to completion.
func gantry(_ arguments: String..., input: String? = nil) throws -> Shell.Result {
    try Shell.run([TestPaths.gantryBinary] + arguments, input: input)
}

/// Processes started by the Gantry whose state directory is `state`: (pid, "env:service").
func markedProcesses(state: String) -> [(pid: Int32, mark: String)] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    var found: [(Int32, String)] = []
    for entry in entries {
        guard let pid = Int32(entry),
              let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/cwd"),
              cwd.hasPrefix(state),
              let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8), !stat.contains(") Z "),
              let environ = FileManager.default.contents(atPath: "/proc/\(entry)/environ") else { continue }
        for variable in environ.split(separator: 0) {
            let text = String(decoding: variable, as: UTF8.self)
            if text.hasPrefix("GANTRY_MARK=") {
                found.append((pid, text.split(separator: ":").dropFirst().joined(separator: ":")))
            }
        }
    }
    return found
}

func killMarked(state: String) {
    for (pid, _) in markedProcesses(state: state) { kill(-pid, SIGKILL); kill(pid, SIGKILL) }
    releaseLeftovers(state: state)
}

/// What a `gantry run` that left its services running (`--once`, or killed) leaves on the host
/// besides its processes: its uids' claims and networks, its control groups and its host table.
/// (Gantry's next start on the host would collect them; a test leaves nothing behind itself.)
func releaseLeftovers(state: String) {
    let path = URL(fileURLWithPath: state).standardizedFileURL.path
    let registry = "/var/lib/gantry/uids"
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: registry)) ?? [] {
        guard let uid = Int(entry), let claim = try? String(contentsOfFile: registry + "/" + entry, encoding: .utf8),
              claim.split(separator: "\n").first.map(String.init) == path else { continue }
        _ = try? Shell.run(["pkill", "-9", "-u", entry])
        _ = try? Shell.run(["ip", "link", "del", "gantry\(uid)"])
        _ = try? Shell.run(["ip", "netns", "del", "gantry-\(uid)"])
        unlink(registry + "/" + entry)
    }
    // The instance is named by the state directory's path (LocalDriver: SHA-256, 6 bytes in hex).
    guard let digest = try? Shell.run(["sha256sum"], input: path).stdout.prefix(12), digest.count == 12 else { return }
    let groups = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []).map { "/sys/fs/cgroup/\($0)/gantry-\(digest)" }
        + ["/sys/fs/cgroup/gantry-\(digest)"]
    for group in groups where FileManager.default.fileExists(atPath: group) {
        _ = try? Shell.run(["find", group, "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
    }
    _ = try? Shell.run(["nft", "delete", "table", "inet", "gantry_host_\(digest)"])
}

/// Every file under `directory` (a state directory: the DB, its WAL, logs, keys), as bytes: a
/// test greps it for a value that must not be there.
func contents(under directory: String) -> Data {
    var all = Data()
    for case let file as String in FileManager.default.enumerator(atPath: directory)?.allObjects ?? [] {
        if let data = FileManager.default.contents(atPath: directory + "/" + file) { all.append(data) }
    }
    return all
}
