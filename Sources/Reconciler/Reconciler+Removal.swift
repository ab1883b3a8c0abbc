import Foundation
import GitStore
import SpecLoading
import StateStore

extension Reconciler {
    /// An environment its branch no longer asks for. Removing it is a change to it: judged like
    /// one (identity, the old team, policies with `env` null, the approvals of its class) before
    /// anything is destroyed; denied or waiting, it keeps running. One that never ran just goes.
    func remove(_ existing: EnvironmentRecord, tip: CommitInfo, identity: IdentityVerdict, context: PassContext, asFound: Bool,
                _ summary: inout PassSummary) throws {
        let protected = existing.branch == context.protectedBranch
        let reason = protected
            ? "environment \(existing.name) was removed from \(existing.branch) at \(tip.id.short)"
            : "branch \(existing.branch) no longer changes \(existing.name) at \(tip.id.short)"
        guard existing.appliedCommit != nil, !asFound else {
            try destroy(existing, reason: reason, commitForNote: tip.id.hex, &summary)
            return
        }
        let before = try before(existing, branch: existing.branch, identity: identity, context: context)
        // Waiting since an earlier commit with nothing of it changed since: judged at that commit.
        var commit = tip
        if existing.conditions.contains(.approvalPending), let waitingAt = ObjectID(hex: existing.commit), waitingAt != tip.id,
           try repository.isReachable(waitingAt, from: tip.id),
           try loadedEnvironments(at: waitingAt).allSatisfy({ $0.name != (existing.source ?? existing.name) }),
           !Names.touches(try repository.changedPaths(from: waitingAt, to: tip.id), before.watched) {
            commit = try repository.commit(waitingAt)
        }
        let judgement = try admission.judgeRemoval(of: existing, tip: commit, identity: identity, before: before, context: context)
        let base = baseFields(existing.name, branch: existing.branch, commit: commit, identity: identity.tip, policyRevision: context.governance.commit)
        let rules = base + [("decision", judgement.decision.rawValue)] + judgement.rules.map { ("rule", $0) }
        var record = existing
        record.updatedAt = Date()
        switch judgement.decision {
        case .allow:
            try appendOnce(.admitted, existing.name, commit.id, rules + [("change", "-environment \(existing.name)")])
            summary.admitted.append(existing.name)
            try destroy(existing, reason: reason, commitForNote: commit.id.hex, &summary)
        case .pending:
            try appendOnce(.pendingApproval, existing.name, commit.id, rules + [("change", "-environment \(existing.name)")])
            record.commit = commit.id.hex
            record.conditions = judgement.conditions
            record.message = "removal at \(commit.id.short) waits for approval; still running \(existing.appliedCommit!.prefix(7)): \(judgement.remedies.joined(separator: "; "))"
            try state.save(record)
            summary.pending.append(existing.name)
        case .deny:
            try appendOnce(.denied, existing.name, commit.id, rules + [("change", "-environment \(existing.name)")])
            record.commit = commit.id.hex
            record.conditions = judgement.conditions
            record.message = "removal at \(commit.id.short) denied; still running \(existing.appliedCommit!.prefix(7)): \(judgement.rules.filter { !$0.contains(": ok") && !$0.hasSuffix(": pass") }.joined(separator: "; "))"
            try state.save(record)
            try state.record(EventRecord(environment: existing.name, kind: "denied", message: record.message!))
            summary.denied.append(existing.name)
        }
    }
}
