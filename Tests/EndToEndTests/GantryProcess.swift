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
}
