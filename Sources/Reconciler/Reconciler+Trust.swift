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

    /// On a first start there is no anchor: the configured protected branch's tip is anchored when
    /// signed by a human of its own identities with the governance role (trust on first use);
    /// otherwise nothing is applied. A `protectedBranch` its gantry.yaml names instead is followed
    /// only from an anchorable tip, and only to a branch that contains it.
    func anchorOnFirstStart(tip: ObjectID, branches: [String: ObjectID], _ trust: inout TrustState, _ summary: inout PassSummary) throws -> Bool {
        // An audit log this key signed that already holds an anchor means the state DB was lost or
        // replaced, not a first start: trusting the tip again would hand governance to whoever
        // pushed it since. Only an operator re-anchors then.
        if let earlier = try anchorRecordedBefore() {
            try halt(&trust, "no trust anchor in the state DB, but this Gantry's audit log records one (\(earlier)): the state was lost or replaced; nothing is applied until an operator checks the history and runs `gantry trust set COMMIT --key KEY`", tip: tip, &summary)
            return false
        }
        switch try Trust.firstStartSigner(of: tip, repository: repository) {
        case .success(let principal):
            var branch = trust.protectedBranch
            let named = try GovernanceRevision.load(at: tip, repository: repository).settings.protectedBranch
            if named != branch {
                guard let other = branches[named], try other == tip || repository.isReachable(tip, from: other) else {
                    try halt(&trust, "no trust anchor: gantry.yaml at \(tip.short) names protectedBranch '\(named)', which does not contain it; nothing is applied until \(Trust.howTo(tip))", tip: tip, &summary)
                    return false
                }
                branch = named
            }
            try Trust.anchor(tip, branch: branch, by: principal, how: "first start: the tip is signed by a human with the governance role",
                             repository: repository, state: state, audit: audit)
            trust = try state.trust() ?? trust
            logger.notice("trust anchored at \(tip.short) of \(branch), signed by \(principal)")
            return true
        case .failure(let why):
            try halt(&trust, "no trust anchor: \(why); nothing is applied until \(Trust.howTo(tip))", tip: tip, &summary)
            return false
        }
    }

    /// An approved governance change named another protected branch (one that contains the
    /// anchor): the live environments move to it, and the next pass walks it from the revision.
    func moveProtectedBranch(to branch: String, _ trust: inout TrustState) throws {
        let old = trust.protectedBranch
        try state.moveEnvironments(fromBranch: old, to: branch)
        processedCacheReset()
        trust.protectedBranch = branch
        logger.notice("the protected branch is now \(branch) (was \(old))")
    }

    /// The newest `trust-anchored` record this Gantry's key signed on the notes, if any ("commit at seq N").
    func anchorRecordedBefore() throws -> String? {
        let tip = try repository.reference(audit.notesRef)
        if let cached = anchorRecordCache, cached.tip == tip { return cached.found }
        var found: String?
        for (_, record) in ((try? AuditLog.records(in: repository, notesRef: audit.notesRef).records) ?? []).reversed()
        where record.event == AuditEvent.trustAnchored.rawValue {
            guard (try? SSHSignature.verify(record.signature, message: Data(record.signedText.utf8), namespace: "gantry-audit")) == audit.key.publicKey else { continue }
            found = "\(record.value("commit")?.prefix(7) ?? "?") at seq \(record.seq)"
            break
        }
        anchorRecordCache = (tip, found)
        return found
    }
}
