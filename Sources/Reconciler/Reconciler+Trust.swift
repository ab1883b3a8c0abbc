import Audit
import Foundation
import GitStore
import Governance
import StateStore

extension Reconciler {
    /// Nothing is admitted or destroyed: the reason goes to the log (once), the trust state
    /// (`status`) and, when there is a commit to attach it to, a `denied` record.
    func halt(_ trust: inout TrustState, _ reason: String, tip: ObjectID?, _ summary: inout PassSummary) throws {
        summary.halted = reason
        if trust.halted != reason {
            logger.critical("admission halted: \(reason)")
            trust.halted = reason
            try state.updateTrust(trust, expectedAnchor: trust.anchor)
        }
        guard let tip else { return }
        let info = try repository.commit(tip)
        try appendScoped(.denied, tip, [("branch", trust.protectedBranch), ("commit", tip.hex), ("actor", info.authorEmail),
                                        ("actor-kind", "unverified"), ("scope", "governance"), ("decision", "deny"), ("rule", "trust: \(reason)")])
    }

    /// On a first start there is no anchor: the protected tip is anchored when signed by a human
    /// of its own identities with the governance role; otherwise nothing is applied.
    func anchorOnFirstStart(tip: ObjectID, branches: [String: ObjectID], _ trust: inout TrustState, _ summary: inout PassSummary) throws -> Bool {
        var branch = trust.protectedBranch
        var target = tip
        let named = loader.settings(at: tip).settings.protectedBranch
        if named != branch, let other = branches[named] {
            branch = named
            target = other
        }
        switch try Trust.firstStartSigner(of: target, repository: repository) {
        case .success(let principal):
            try Trust.anchor(target, branch: branch, by: principal, how: "first start: the tip is signed by a human with the governance role",
                             repository: repository, state: state, audit: audit)
            trust = try state.trust() ?? trust
            logger.notice("trust anchored at \(target.short) of \(branch), signed by \(principal)")
            return true
        case .failure(let why):
            try halt(&trust, "no trust anchor: \(why); nothing is applied until \(Trust.howTo(target))", tip: target, &summary)
            return false
        }
    }

    /// An approved governance change named another protected branch (one that contains the
    /// anchor): the live environments move to it, and the next pass walks it from the revision.
    func moveProtectedBranch(to branch: String, _ trust: inout TrustState) throws {
        let old = trust.protectedBranch
        for var record in try state.environments(includeDestroyed: true) where record.branch == old {
            record.branch = branch
            try state.save(record)
        }
        trust.protectedBranch = branch
        // Walked from the admitted revision on the next pass, whatever was seen of it as a branch.
        try setProcessed(branch: branch, commit: nil)
        logger.notice("the protected branch is now \(branch) (was \(old))")
    }
}
