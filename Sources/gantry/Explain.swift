import ArgumentParser
import Foundation
import SpecLoading
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
        let store = FileManager.default.fileExists(atPath: paths.database) ? try StateStore(path: paths.database) : nil
        let admission = Admission(repository: repository, logger: Logger(label: "gantry") { _ in SwiftLogNoOpLogHandler() })
        do {
            for line in try admission.explain(commit: target, branch: branch, store: store, defaultProtectedBranch: protected) {
                print(Printable.line(line))
            }
        } catch let error as Admission.ExplainError {
            throw Failure(error.description)
        }
    }
}
