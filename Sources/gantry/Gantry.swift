import ArgumentParser
import Foundation

@main
struct Gantry: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gantry",
        abstract: "A GitOps control plane for AI agents: branches in, governed environments and signed audit notes out.",
        subcommands: [Run.self, Status.self, Validate.self, Render.self, AuditCommand.self, Keys.self, Notify.self, Demo.self, Approve.self, Explain.self, CELCommand.self, SecretCommand.self, EnvCommand.self, TrustCommand.self, Diagnose.self,
                      TokenCommand.self, APICommand.self, MCPCommand.self, ExecCommand.self, LogsCommand.self,
                      SleepCommand.self, WakeCommand.self, CostCommand.self, BudgetCommand.self, KillCommand.self, AgentCommand.self])
}

/// `--state DIR`: `$GANTRY_STATE`, else `.gantry` in the current directory.
struct StateOption: ParsableArguments {
    @Option(name: .long, help: "State directory (default: $GANTRY_STATE, else ./.gantry).")
    var state: String?

    var directory: URL {
        let path = state ?? ProcessInfo.processInfo.environment["GANTRY_STATE"] ?? ".gantry"
        return URL(fileURLWithPath: path, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).standardizedFileURL
    }
}

/// Exit with a message on standard error and a non-zero code.
struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
