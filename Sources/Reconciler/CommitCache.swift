import Foundation
import GitStore
import Governance

/// Commits, their identities and the paths they touch, read once per context.
final class CommitCache: @unchecked Sendable {
    let repository: GitRepository
    private let lock = NSLock()
    private var judged: [ObjectID: JudgedCommit] = [:]
    private var touched: [ObjectID: Set<String>] = [:]

    init(repository: GitRepository) { self.repository = repository }

    func judged(_ id: ObjectID, with judge: IdentityJudge) throws -> JudgedCommit {
        if let known = lock.withLock({ judged[id] }) { return known }
        let info = try repository.commit(id)
        let result = JudgedCommit(info: info, identity: judge.judge(info, signature: try repository.signature(of: id), now: Date()))
        lock.withLock { judged[id] = result }
        return result
    }

    /// The paths a commit itself changes: against its parent; for a merge of two, the paths whose
    /// result is not simply one side's change (the merge's own resolution — dropping one side's
    /// change included, whatever old parent the merge names); for an octopus, every path that differs
    /// from any parent.
    func touchedPaths(_ commit: CommitInfo) throws -> Set<String> {
        if let known = lock.withLock({ touched[commit.id] }) { return known }
        var paths = try repository.changedPaths(from: commit.parents.first, to: commit.id)
        if commit.parents.count > 2 {
            // An octopus answers for every path that differs from any of its parents.
            for parent in commit.parents.dropFirst() { paths.formUnion(try repository.changedPaths(from: parent, to: commit.id)) }
        } else if commit.parents.count == 2 {
            let (first, second) = (commit.parents[0], commit.parents[1])
            let base = try repository.mergeBase(first, second)
            let candidates = paths.union(try repository.changedPaths(from: second, to: commit.id))
            paths = try candidates.filter { path in
                let result = try repository.objectID(at: path, in: commit.id)
                let ours = try repository.objectID(at: path, in: first)
                let theirs = try repository.objectID(at: path, in: second)
                let original = try base.flatMap { try repository.objectID(at: path, in: $0) }
                let takenFromOneSide = (result == ours && theirs == original) || (result == theirs && ours == original)
                return !takenFromOneSide
            }
        }
        lock.withLock { touched[commit.id] = paths }
        return paths
    }
}
