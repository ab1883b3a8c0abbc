import ArgumentParser
import Foundation
import StateStore

struct SecretCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "secret", abstract: "The encrypted secret store (values are never printed).",
                                                    subcommands: [Set.self, List.self, Remove.self])

    struct Scope: ParsableArguments {
        @Option(help: "Only for this environment (exact name; a preview's name for a preview).")
        var env: String?
        @Option(help: "For every environment of this class (production, staging, development, preview).")
        var `class`: String?
        @Option(help: "For every environment of this team.")
        var team: String?

        func validate() throws {
            guard [env, `class`, team].compactMap({ $0 }).count == 1 else {
                throw ValidationError("give exactly one scope: --env E, --class C or --team T")
            }
        }

        var scope: SecretScope {
            if let env { return .environment(env) }
            if let `class` { return .class(`class`) }
            return .team(team!)
        }
    }

    static func store(_ state: StateOption) throws -> SecretStore {
        try store(state, in: try StateStore(path: StatePaths(root: state.directory).database))
    }

    static func store(_ state: StateOption, in states: StateStore) throws -> SecretStore {
        try SecretStore(state: states, keyPath: StatePaths(root: state.directory).secretsKey)
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Store a secret; the value is read from standard input.")
        @Argument(help: "The secret's name, as in spec.secrets.")
        var name: String
        @OptionGroup var scope: Scope
        @OptionGroup var state: StateOption

        func run() throws {
            var value = FileHandle.standardInput.readDataToEndOfFile()
            if value.last == UInt8(ascii: "\n") { value.removeLast() }
            guard !value.isEmpty else { throw Failure("no value on standard input: printf %s \"$VALUE\" | gantry secret set \(name) ...") }
            let states = try StateStore(path: StatePaths(root: state.directory).database)
            try SecretCommand.store(state, in: states).set(name, value: value, scope: scope.scope)
            print("stored \(name) for \(scope.scope) (\(value.count) bytes); services that use it restart on the next pass")
            // A preview's name goes to the first branch that claims it (`agents-x` and `agents/x`
            // both ask for `web--agents-x`): say who holds it, or that nobody does yet.
            if let env = scope.env {
                if let holder = try? states.environment(env), holder.phase != .destroyed {
                    print("\(env) is held by branch \(holder.branch)")
                } else {
                    print("note: no environment is named \(env) yet; the first branch to claim the name gets this secret (a preview of branch B is ENV--<B with / as ->, unless another branch holds that name)")
                }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Secret names, scopes and versions (never values).")
        @OptionGroup var state: StateOption

        func run() throws {
            let entries = try SecretCommand.store(state).list()
            if entries.isEmpty { print("no secrets") }
            for entry in entries { print("\(entry.name)  \(entry.scope)  v\(entry.version)  \(ISO8601DateFormatter().string(from: entry.updatedAt))") }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a secret.")
        @Argument var name: String
        @OptionGroup var scope: Scope
        @OptionGroup var state: StateOption

        func run() throws {
            guard try SecretCommand.store(state).remove(name, scope: scope.scope) else { throw Failure("no secret \(name) for \(scope.scope)") }
            print("removed \(name) for \(scope.scope)")
        }
    }
}
