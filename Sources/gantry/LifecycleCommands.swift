import ArgumentParser
import Foundation
import GitStore
import LocalDriver
import Reconciler
import SpecLoading
import SpecModel
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// `gantry sleep ENV` / `gantry wake ENV`: asks the running `gantry run` to do it, and waits.
struct SleepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sleep", abstract: "Put an environment to sleep: its service processes stop, its data stays.")
    @Argument(help: "The environment.") var env: String
    @OptionGroup var state: StateOption
    @Option(help: "Seconds to wait for it.") var timeout: Double = 60

    func run() throws { try Lifecycles.ask(env, action: "sleep", state: state, timeout: timeout) }
}

struct WakeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "wake", abstract: "Wake a sleeping environment: its services start and are checked healthy.")
    @Argument(help: "The environment.") var env: String
    @OptionGroup var state: StateOption
    @Option(help: "Seconds to wait for it.") var timeout: Double = 60

    func run() throws { try Lifecycles.ask(env, action: "wake", state: state, timeout: timeout) }
}

enum Lifecycles {
    static func ask(_ name: String, action: String, state: StateOption, timeout: Double) throws {
        let paths = StatePaths(root: state.directory)
        guard FileManager.default.fileExists(atPath: paths.database) else { throw Failure("no state in \(paths.root.path) (start `gantry run` there first)") }
        let store = try StateStore(path: paths.database)
        guard let record = try store.environment(name), record.phase != .destroyed else {
            throw Failure("no environment \(name) (`gantry status` lists them)")
        }
        guard record.phase == .running else { throw Failure("\(name) is \(record.phase.rawValue), not running: there is nothing to \(action)") }
        if let why = KillSwitchBoard.reason(in: store, environment: name, team: record.team, onMain: false) {
            throw Failure("\(name) is frozen by the \(why): it is not put to sleep or woken until a human with a role lifts it (`gantry kill --env \(name) --off --key KEY`)")
        }
        let current = try store.lifecycleState(of: name)
        if action == "sleep", let current { print("\(name) already sleeps: \(current.reason)"); return }
        if action == "wake", current == nil { print("\(name) is awake"); return }
        if action == "wake", let current, current.state == .paused {
            throw Failure("\(name) is paused: \(current.reason). It may be woken once the budget's next period starts, or an admin raises the budget on the protected branch (`gantry budget` shows it)")
        }
        guard let text = try? String(contentsOfFile: paths.pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), kill(pid, 0) == 0 else {
            throw Failure("no `gantry run` is running for \(paths.root.path): it is the one that puts environments to sleep and wakes them")
        }
        let actor = "operator:" + (getpwuid(getuid()).flatMap { String(cString: $0.pointee.pw_name) } ?? String(getuid()))
        try store.requestLifecycle(name, action: action, actor: actor)
        kill(pid, SIGUSR1)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let now = try store.lifecycleState(of: name)
            if action == "sleep", let now { print("\(name) sleeps: \(now.reason)"); return }
            if action == "wake", now == nil { print("\(name) is awake"); return }
            usleep(50_000)
        }
        throw Failure("\(name) did not \(action) within \(Int(timeout))s; `gantry status --env \(name)` shows its history")
    }
}

/// `gantry cost --env NAME [--ref REF]`: what an environment would cost per hour, item by item,
/// under the pricing of the protected branch's last admitted revision.
struct CostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cost", abstract: "The hourly cost of an environment, item by item, under gantry.yaml's pricing.")
    @Option(help: "Configuration repository path (default: the one `gantry run` watches).") var repo: String?
    @Option(help: "Branch or commit to read the environment from.") var ref = "main"
    @Option(help: "Environment name (as in metadata.name, or the preview name).") var env: String
    @Option(help: "The protected branch.") var branch = "main"
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var state: StateOption

    func run() throws {
        let paths = StatePaths(root: state.directory)
        let repository = try RepositoryLocation.open(try RepositoryLocation.resolve(repo, paths: paths), paths: paths)
        let loader = ConfigLoader(repository: repository)
        let (found, commit, branchName) = try EnvironmentAtRef.find(env, ref: ref, protectedBranch: branch, in: repository)
        let spec = found.spec!
        let revision = Budgets.governingRevision(paths: paths, repository: repository, branch: branch)
        let pricing = revision.map { loader.settings(at: $0).settings.pricing } ?? [:]
        let cost = CostModel.breakdown(spec, pricing: pricing)
        if json {
            let lines: [PlainValue] = cost.lines.map { .map([("item", .string($0.item)), ("detail", .string($0.detail)), ("hourly", .double($0.hourly))]) }
            print(PlainValue.map([("environment", .string(found.name)), ("hourly", .double(cost.hourly)), ("monthly", .double(cost.hourly * 730)),
                                  ("items", .list(lines)), ("budgetHourly", spec.budget?.hourly.map { .double($0) } ?? .null)]).json())
            return
        }
        print("\(found.name) at \(branchName)@\(commit.short): \(CostModel.format(cost.hourly))/h (\(CostModel.format(cost.hourly * 730)) per 730 h month)")
        for line in cost.lines { print("  \(line.item): \(CostModel.format(line.hourly))/h = \(line.detail)") }
        if pricing.isEmpty { print("  (gantry.yaml on \(branch) sets no pricing: everything costs 0)") }
        if let ceiling = spec.budget?.hourly {
            print("  spec.budget.hourly \(CostModel.format(ceiling)): \(cost.hourly > ceiling + 1e-9 ? "OVER — admission denies it" : "within")")
        }
    }
}

/// `gantry budget [--json]`: spend against every budget, what runs now, and what sharing saves.
struct BudgetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "budget", abstract: "Spend, limit and projection of every team and agent budget; top environments; sharing.")
    @Option(help: "Configuration repository path (default: the one `gantry run` watches).") var repo: String?
    @Option(help: "The protected branch.") var branch = "main"
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var state: StateOption

    func run() throws {
        let paths = StatePaths(root: state.directory)
        guard FileManager.default.fileExists(atPath: paths.database) else { throw Failure("no state in \(paths.root.path) (start `gantry run` there first)") }
        let store = try StateStore(path: paths.database)
        let repository = try RepositoryLocation.open(try RepositoryLocation.resolve(repo, paths: paths), paths: paths)
        let settings = Budgets.governingRevision(paths: paths, repository: repository, branch: branch)
            .map { ConfigLoader(repository: repository).settings(at: $0).settings } ?? Settings()
        let report = try BudgetReport.build(store, settings: settings, shared: LocalDriver.sharedServers(state: store))
        if json { print(report.plain.json()) } else { for line in report.lines { print(Printable.line(line)) } }
    }
}

enum Budgets {
    /// The last admitted protected revision (its gantry.yaml sets pricing and budgets), else the
    /// protected branch's tip.
    static func governingRevision(paths: StatePaths, repository: GitRepository, branch: String) -> ObjectID? {
        if FileManager.default.fileExists(atPath: paths.database), let store = try? StateStore(path: paths.database),
           let revision = (try? store.trust())??.revision.flatMap(ObjectID.init(hex:)) {
            return revision
        }
        return (try? repository.resolveCommit(branch)) ?? nil
    }
}

/// The environment `name` as branch `ref` asks for it (a preview when `ref` is not the protected
/// branch): `gantry render` and `gantry cost`. Its spec errors are printed, and exit 1.
enum EnvironmentAtRef {
    static func find(_ name: String, ref: String, protectedBranch: String, in repository: GitRepository) throws
        -> (environment: DesiredEnvironment, commit: ObjectID, branch: String) {
        guard let commit = try repository.resolveCommit(ref) else { throw Failure("\(ref) does not name a commit in \(repository.path)") }
        let branch = ref.hasPrefix("refs/heads/") ? String(ref.dropFirst("refs/heads/".count)) : ref
        let desired = try ConfigLoader(repository: repository).desiredEnvironments(branch: branch, commit: commit, protectedBranch: protectedBranch,
                                                                                  protectedTip: try repository.resolveCommit(protectedBranch))
        guard let found = desired.first(where: { $0.name == name || $0.loaded.name == name }) else {
            let names = desired.map(\.name)
            throw Failure("\(ref) has no environment '\(name)'\(names.isEmpty ? " (it changes none)" : "; it has: \(names.joined(separator: ", "))")")
        }
        guard found.spec != nil else {
            for diagnostic in found.loaded.diagnostics { print(diagnostic) }
            throw ExitCode(1)
        }
        return (found, commit, branch)
    }
}
