import Audit
import Foundation
import GitStore
import SpecLoading
import SpecModel
import StateStore

extension Reconciler {
    /// Branch deletion and merges, checked every pass against the fresh listing. A branch is
    /// merged when the last admitted protected revision contains its tip (an unadmitted merge on
    /// the protected branch destroys nothing).
    func sweep(branches: [String: ObjectID], context: PassContext, protectedChanged: Bool, _ summary: inout PassSummary) throws {
        // Branches seen before, and branches of environments a pass cut short may have left behind.
        // The protected branch is never swept: a listing without it must not take production down.
        let known = Set(try processedRefs().keys).union(try state.environments().map(\.branch))
        let gone = known.sorted().filter { branches[$0] == nil && $0 != context.protectedBranch }
        for (index, branch) in gone.enumerated() {
            guard summary.destroyed.count < options.maxTeardownsPerPass else {
                summary.postponed += gone.count - index
                logger.notice("\(gone.count - index) deleted branches wait for the next pass to be torn down (at most \(options.maxTeardownsPerPass) environments per pass)")
                break
            }
            do {
                try destroyPreviews(of: branch, reason: "branch \(branch) was deleted", commitForNote: nil, &summary)
                try setProcessed(branch: branch, commit: nil)
            } catch {
                logger.error("could not tear down the previews of a deleted branch; will retry", metadata: ["git.branch": "\(branch)", "error": "\(error)"])
            }
        }
        guard protectedChanged else { return }
        let previewBranches = Set(try state.environments().filter { $0.branch != context.protectedBranch }.map(\.branch))
        for branch in previewBranches {
            guard let tip = branches[branch], try tip == context.revision || repository.isReachable(tip, from: context.revision) else { continue }
            try destroyPreviews(of: branch, reason: "branch \(branch) was merged into \(context.protectedBranch) at \(context.revision.short)",
                                commitForNote: tip, &summary)
        }
    }

    func destroyPreviews(of branch: String, reason: String, commitForNote: ObjectID?, _ summary: inout PassSummary) throws {
        for environment in try state.environments(branch: branch) {
            try destroy(environment, reason: reason, commitForNote: commitForNote?.hex ?? environment.commit, &summary)
        }
    }

    func destroy(_ environment: EnvironmentRecord, reason: String, commitForNote: String, _ summary: inout PassSummary) throws {
        logger.info("destroying: \(reason)", metadata: ["gantry.env": "\(environment.name)"])
        let problems = try driver.destroy(environment: environment.name, repository: repository) { step in
            logger.info("Destroying \(environment.name): \(step)")
        }
        var fields: [(String, String)] = [("environment", environment.name), ("branch", environment.branch), ("commit", commitForNote)]
        fields.append(("reason", reason))
        fields += problems.map { ("problem", $0) }
        guard let target = ObjectID(hex: commitForNote) else {
            throw ReconcileError(message: "cannot record the teardown of \(environment.name): '\(commitForNote)' is not a commit id")
        }
        try appendOnce(.destroyed, environment.name, target, fields)
        var record = environment
        record.phase = .destroyed
        record.destroyedAt = Date()
        record.updatedAt = Date()
        record.message = reason
        try state.save(record)
        try state.record(EventRecord(environment: environment.name, kind: "destroyed", message: reason))
        summary.destroyed.append(environment.name)
    }
}
