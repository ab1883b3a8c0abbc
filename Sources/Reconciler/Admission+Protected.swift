import Foundation
import GitStore
import Governance
import SpecLoading
import SpecModel

extension Admission {
    /// The verdict on one step of the protected branch: a commit of its first-parent chain and
    /// every commit it brings (a merge brings the merged branch).
    public struct StepVerdict: Sendable {
        public let commit: ObjectID
        public let decision: Judgement.Decision
        public let rules: [String]
        public let remedies: [String]
        /// The governance the step brings, when it changes gantry.yaml, identities/ or policies/.
        public let newGovernance: GovernanceRevision?
        /// A merge made on the protected branch that merges something new: its signer approves.
        public let isProtectedMerge: Bool
        let identity: IdentityVerdict
    }

    /// Judges `step` (whose first-parent predecessor on the protected branch is `previous`; the
    /// walk started at the admitted revision `start`) with the governance in force, `context`:
    /// identity of every commit it brings, then — when it changes governance — the new files'
    /// validity, the protected branch it names, and the approval `approvals.governance` asks for.
    ///
    /// `seenTips` are the tip the protected branch was last seen at and the merges already found
    /// made on it: a merge approves only when its first parent is one of them (or `start`).
    func judgeStep(_ step: ObjectID, previous: ObjectID, start: ObjectID, anchor: ObjectID, branches: [String: ObjectID],
                   seenTips: Set<ObjectID>, context: Context) throws -> StepVerdict {
        let identity = try judgeIdentity(tip: step, hiding: [previous, start], changedSince: previous, context: context)
        let info = try repository.commit(step)
        // A merge approves only when made on the protected branch: its first parent is a tip the
        // branch was seen at, and it brings commits the branch never had (a sync merge made on a
        // feature branch and fast-forwarded brings none).
        var isProtectedMerge = false
        if info.parents.count > 1, info.parents[0] == previous, previous == start || seenTips.contains(previous) {
            let merged = try repository.newCommits(tip: step, hiding: [previous, start] + Array(seenTips))
            isProtectedMerge = merged.contains { $0 != step }
        }
        // A merge approves what it merges, nothing its first parent already brought.
        let mergeCovers = try isProtectedMerge && GovernanceRevision.fingerprint(at: info.parents[0], in: repository) == context.governance.fingerprint
        var rules = signatureRules(identity)
        let environmentFiles = try loader.environmentFileCount(at: step)
        if environmentFiles > ConfigLoader.maxEnvironments {
            return StepVerdict(commit: step, decision: .deny,
                               rules: rules + ["environments: \(environmentFiles) environment files, more than the \(ConfigLoader.maxEnvironments) judged at one commit"],
                               remedies: ["keep at most \(ConfigLoader.maxEnvironments) files in environments/"],
                               newGovernance: nil, isProtectedMerge: false, identity: identity)
        }
        guard identity.problems.isEmpty else {
            return StepVerdict(commit: step, decision: .deny, rules: rules, remedies: [Self.signatureRemedy],
                               newGovernance: nil, isProtectedMerge: isProtectedMerge, identity: identity)
        }
        // Gantry's key signs the API's previews; such a commit moved onto the protected branch
        // (a fast-forward by whoever can push) is not a person's decision to change it.
        if identity.tip.viaAPI {
            return StepVerdict(commit: step, decision: .deny,
                               rules: rules + ["signature: commit \(step.short) was made through Gantry's API for \(identity.tip.principal ?? "?"); the API's commits reach the protected branch only inside a merge a person signs"],
                               remedies: ["merge the branch with a merge commit signed by a listed principal (git merge --no-ff -S), instead of moving the protected branch onto the API's commit"],
                               newGovernance: nil, isProtectedMerge: isProtectedMerge, identity: identity)
        }
        let fingerprint = try GovernanceRevision.fingerprint(at: step, in: repository)
        let changed = context.governance.changedPaths(comparedWith: fingerprint)
        guard !changed.isEmpty else {
            return StepVerdict(commit: step, decision: .allow, rules: rules + ["governance: unchanged"], remedies: [],
                               newGovernance: nil, isProtectedMerge: isProtectedMerge, identity: identity)
        }
        let proposed = try GovernanceRevision.load(at: step, repository: repository)
        rules.append("governance: changes \(changed.joined(separator: ", "))")
        var problems = proposed.problems
        let target = proposed.settings.protectedBranch
        if target != context.protectedBranch {
            if let targetTip = branches[target] {
                if !(try targetTip == anchor || repository.isReachable(anchor, from: targetTip)) {
                    problems.append("\(ConfigLoader.settingsFile):1:1: protectedBranch '\(target)' does not contain the trust anchor \(anchor.short); only a branch that contains it can become the protected branch")
                }
            } else {
                problems.append("\(ConfigLoader.settingsFile):1:1: protectedBranch '\(target)' does not exist; push it (containing the trust anchor \(anchor.short)) first")
            }
        }
        guard problems.isEmpty else {
            return StepVerdict(commit: step, decision: .deny, rules: rules + problems.map { "governance: invalid: \($0)" },
                               remedies: ["fix the governance files on \(context.protectedBranch); until then the governance of \(context.governance.commit.short) stays in force"],
                               newGovernance: proposed, isProtectedMerge: isProtectedMerge, identity: identity)
        }
        rules += proposed.warnings.map { "governance: warning: \($0)" }
        let rule = context.governance.governanceRule
        let verdict = try approvalVerdict(rule: rule, of: info, base: [previous, start], isProtectedMerge: mergeCovers, context: context)
        let role = rule.role.isEmpty ? "any role" : "role \(rule.role)"
        if verdict.isSatisfied {
            return StepVerdict(commit: step, decision: .allow, rules: rules + ["approval (governance): ok (\(verdict.approvers.joined(separator: ", ")))"],
                               remedies: [], newGovernance: proposed, isProtectedMerge: isProtectedMerge, identity: identity)
        }
        rules.append("approval (governance): needs \(verdict.required) approval\(verdict.required == 1 ? "" : "s") of this exact commit by a human with \(role)\(rule.distinctFromAuthors ? " who did not author, commit, sign or act for the change" : ""); has \(verdict.approvers.count)")
        rules += verdict.rejected.map { "approval (governance): not counted: \($0)" }
        return StepVerdict(commit: step, decision: .pending, rules: rules,
                           remedies: ["a human with \(role) (approvals.governance in gantry.yaml of \(context.governance.commit.short)) runs `gantry approve \(step.short) --key KEY`, or signs the merge that brings the change"],
                           newGovernance: proposed, isProtectedMerge: isProtectedMerge, identity: identity)
    }
}
