import ArgumentParser
import Foundation
import GitStore
import Logging
import Reconciler
import StateStore

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Each environment the commit touches: verdict, every rule's result, what would satisfy a failing rule.")

    @Argument(help: "The commit to explain (sha, branch or any revision).")
    var commit: String
    @Option(help: "Configuration repository (default: the one `gantry run` watches).")
    var repo: String?
    @OptionGroup var state: StateOption
    @Option(help: "The branch to judge it on (default: a branch whose tip it is, else one that contains it).")
    var branch: String?
    @Option(help: "The protected branch.")
    var protected = "main"

    func run() throws {
        let paths = StatePaths(root: state.directory)
        let repository = try RepositoryLocation.open(try RepositoryLocation.resolve(repo, paths: paths), paths: paths)
        guard let target = try repository.resolveCommit(commit) else { throw Failure("\(commit) does not name a commit") }
        let branches = try repository.branches()
        let onBranch = try branch ?? branches.first(where: { $0.value == target }).map(\.key)
            ?? branches.keys.sorted().first(where: { try repository.isReachable(target, from: branches[$0]!) })
        guard let onBranch else { throw Failure("no branch contains \(target.short); name one with --branch") }
        let admission = Admission(repository: repository, logger: Logger(label: "gantry") { _ in SwiftLogNoOpLogHandler() })
        let context = try admission.context(branches: branches, protectedBranch: protected)
        var lastAdmitted: ObjectID?
        if FileManager.default.fileExists(atPath: paths.database) {
            let store = try StateStore(path: paths.database)
            lastAdmitted = try store.admittedCommit(branch: onBranch).flatMap(ObjectID.init(hex:))
            if let known = lastAdmitted, try repository.isReachable(target, from: known) { lastAdmitted = nil }
        }
        print("commit \(target.short) on \(onBranch), judged with policy revision \(context.protectedTip?.short ?? "none") of \(context.protectedBranch)")
        let explanations = try admission.explain(commit: target, branch: onBranch, lastAdmitted: lastAdmitted, context: context)
        if explanations.isEmpty { print("it touches no environment") }
        for explanation in explanations {
            let judgement = explanation.judgement
            print("\(explanation.environment): \(judgement.decision.rawValue)")
            for rule in judgement.rules { print("  rule \(rule)") }
            for remedy in judgement.remedies { print("  to satisfy: \(remedy)") }
        }
    }
}
