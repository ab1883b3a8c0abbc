import Foundation
import GitStore
import Governance
import SpecLoading
import SpecModel

/// The identity verdict of one branch's new commits, shared by every environment the branch asks for.
struct IdentityVerdict {
    /// The tip's identity: who the records name as actor.
    let tip: CommitIdentity
    /// Every problem of every new commit, oldest first; empty when all may be admitted.
    let problems: [String]
    /// Authors and signers of the new commits (a merge at the tip excluded): who may not approve them.
    let authors: Set<String>
    /// False on the protected branch's first pass: the state found at start is taken as approved.
    let needsApproval: Bool
}

extension Reconciler {
    /// Governance read from the protected branch only: a branch under review cannot change it.
    func identityJudge(at protectedTip: ObjectID?, settings: Settings) throws -> IdentityJudge {
        guard let protectedTip else {
            return IdentityJudge(signers: AllowedSigners(text: ""), actors: [:], required: settings.signing.required)
        }
        let signers = AllowedSigners(text: try loader.allowedSignersText(at: protectedTip))
        let actors = loader.actors(at: protectedTip)
        for diagnostic in signers.diagnostics + actors.diagnostics {
            logger.error("identity file on the protected branch has a problem", metadata: ["problem": "\(diagnostic)"])
        }
        return IdentityJudge(signers: signers, actors: actors.actors, required: settings.signing.required)
    }

    /// `approvals.<class>` of gantry.yaml for `spec`, judged at the branch's tip; nil when the class
    /// needs no approval or the change is exempt (the protected branch's first pass).
    func judgeApproval(_ spec: EnvironmentSpec, tip: CommitInfo, identity: IdentityVerdict, context: PassContext) throws -> ApprovalVerdict? {
        guard identity.needsApproval, let rule = context.settings.approvals[spec.class.rawValue] else { return nil }
        let judge = ApprovalJudge(signers: context.identity.signers, actors: context.identity.actors)
        return judge.judge(rule: rule, tip: tip, tipSigner: identity.tip.problem == nil ? identity.tip.principal : nil,
                           approvingKeys: try Approvals.approvingKeys(of: tip.id, in: repository),
                           authors: identity.authors, now: Date())
    }

    /// Judges every commit of `branch` up to `tip` that is new: not reachable from the branch's last
    /// admitted commit nor, for other branches, from the protected branch. On the protected branch's
    /// first pass only its tip is judged (history before Gantry is taken as it is).
    func judgeIdentity(branch: String, tip: ObjectID, context: PassContext) throws -> IdentityVerdict {
        var hidden: [ObjectID] = []
        if let admitted = try state.admittedCommit(branch: branch).flatMap(ObjectID.init(hex:)) { hidden.append(admitted) }
        if branch != context.protectedBranch, let protectedTip = context.protectedTip { hidden.append(protectedTip) }
        let commits = branch == context.protectedBranch && hidden.isEmpty
            ? [tip] : try repository.newCommits(tip: tip, hiding: hidden)
        let now = Date()
        var problems: [String] = []
        var authors = Set<String>()
        var tipIdentity: CommitIdentity?
        for id in commits.isEmpty ? [tip] : commits {
            let commit = try repository.commit(id)
            let identity = context.identity.judge(commit, signature: try repository.signature(of: id), now: now)
            if let problem = identity.problem { problems.append(problem) }
            if id == tip { tipIdentity = identity }
            if !(id == tip && commit.parents.count > 1) {
                authors.insert(commit.authorEmail)
                if let principal = identity.principal { authors.insert(principal) }
            }
        }
        if tipIdentity == nil {
            tipIdentity = context.identity.judge(try repository.commit(tip), signature: try repository.signature(of: tip), now: now)
        }
        return IdentityVerdict(tip: tipIdentity!, problems: problems, authors: authors,
                               needsApproval: !(branch == context.protectedBranch && hidden.isEmpty))
    }
}
