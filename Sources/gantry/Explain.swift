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
    @Option(help: "The protected branch (when there is no state yet).")
    var protected = "main"

    func run() throws {
        let paths = StatePaths(root: state.directory)
        let repository = try RepositoryLocation.open(try RepositoryLocation.resolve(repo, paths: paths), paths: paths)
        let target = try Revision.resolve(commit, in: repository)
        let branches = try repository.branches()
        var known = Admission.Known()
        if FileManager.default.fileExists(atPath: paths.database) {
            let store = try StateStore(path: paths.database)
            known.trust = try store.trust()
            known.protectedMerges = try store.protectedMerges()
            known.observedTip = try store.processedRefs()[known.trust?.protectedBranch ?? protected].flatMap(ObjectID.init(hex:))
            known.records = Dictionary(try store.environments(includeDestroyed: true).map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        }
        let protectedBranch = known.trust?.protectedBranch ?? protected
        let onBranch = try branch ?? (branches[protectedBranch] == target ? protectedBranch : nil)
            ?? branches.first(where: { $0.value == target }).map(\.key)
            ?? ([protectedBranch] + branches.keys.sorted()).first(where: { name in
                try branches[name].map { try repository.isReachable(target, from: $0) } ?? false
            })
        guard let onBranch else { throw Failure("no branch contains \(target.short); name one with --branch") }
        if FileManager.default.fileExists(atPath: paths.database), onBranch != protectedBranch {
            let store = try StateStore(path: paths.database)
            known.lastAdmitted = try store.admittedCommit(branch: onBranch).flatMap(ObjectID.init(hex:))
            if let last = known.lastAdmitted, try repository.isReachable(target, from: last) { known.lastAdmitted = nil }
        }
        let admission = Admission(repository: repository, logger: Logger(label: "gantry") { _ in SwiftLogNoOpLogHandler() })
        for line in try admission.explain(commit: target, branch: onBranch, branches: branches, protectedBranch: protectedBranch, known: known) {
            print(Printable.line(line))
        }
    }
}
