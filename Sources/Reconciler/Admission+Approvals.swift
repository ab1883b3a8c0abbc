import Foundation
import GitStore
import Governance
import SpecLoading
import SpecModel

extension Admission {
    /// The approvals of every class rule that applies (the old and the new class: a relabel needs
    /// the stricter of both), for exactly `tip`, covering the commits from `base` to it.
    func approvals(classes: [String?], tip: CommitInfo, base: [ObjectID], watched: [String], rules judged: [String],
                   context: Context) throws -> Judgement {
        let names = classes.compactMap { $0 }.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        let applicable = names.compactMap { name in context.settings.approvals[name].map { (name, $0) } }
        guard !applicable.isEmpty else { return Judgement(decision: .allow, rules: judged, remedies: [], conditions: []) }
        var rules = judged
        var remedies: [String] = []
        for (name, rule) in applicable {
            let verdict = try approvalVerdict(rule: rule, of: tip, base: base, isProtectedMerge: try mergeCovers(tip, base: base, watched: watched, context: context),
                                              context: context)
            let label = applicable.count > 1 ? "approval (\(name))" : "approval"
            if verdict.isSatisfied {
                rules.append("\(label): ok (\(verdict.approvers.joined(separator: ", ")))")
                continue
            }
            rules.append("\(label): needs \(verdict.required) approval\(verdict.required == 1 ? "" : "s") of this exact commit by a human with role \(rule.role)\(rule.distinctFromAuthors ? " who did not author, commit, sign or act for the change" : ""); has \(verdict.approvers.count)")
            rules += verdict.rejected.map { "\(label): not counted: \($0)" }
            remedies.append("a human with role \(rule.role) signs the merge into \(context.protectedBranch), or runs `gantry approve \(tip.id.short) --key KEY`")
        }
        if remedies.isEmpty { return Judgement(decision: .allow, rules: rules, remedies: [], conditions: []) }
        return Judgement(decision: .pending, rules: rules, remedies: remedies, conditions: [.approvalPending])
    }

    /// A merge made on the protected branch approves a change only when the change comes whole from
    /// what it merges: its first parent still has the environment as it was at `base`.
    func mergeCovers(_ commit: CommitInfo, base: [ObjectID], watched: [String], context: Context) throws -> Bool {
        guard context.protectedMerges.contains(commit.id.hex), let firstParent = commit.parents.first, let start = base.first else { return false }
        let changed = try repository.changedPaths(from: start, to: firstParent)
        return !Names.touches(changed, watched)
    }

    /// Counts the approvals of `commit` under `rule`; the approval covers the commits from `base`
    /// (exclusive) to `commit`, and none of their people may approve.
    func approvalVerdict(rule: Settings.ApprovalRule, of commit: CommitInfo, base: [ObjectID], isProtectedMerge: Bool,
                         context: Context) throws -> ApprovalVerdict {
        let range = try repository.newCommits(tip: commit.id, hiding: base)
        var people = Set<String>()
        var others = Set<String>()
        for id in range {
            let judged = try context.cache.judged(id, with: context.identity)
            let hands = judged.identity.people(of: judged.info)
            people.formUnion(hands)
            if id != commit.id { others.formUnion(hands) }
        }
        let own = try context.cache.judged(commit.id, with: context.identity).identity
        let signer = own.isVerified ? ApprovalJudge.CommitSigner(principal: own.principal!, isProtectedMerge: isProtectedMerge, others: others) : nil
        return ApprovalJudge(signers: context.identity.signers, actors: context.identity.actors).judge(
            rule: rule, commit: commit, signer: signer, approvingKeys: try Approvals.approvingKeys(of: commit.id, in: repository),
            people: people, now: Date())
    }
}
