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
        var tipIdentity: CommitIdentity?
        for id in commits.isEmpty ? [tip] : commits {
            let identity = context.identity.judge(try repository.commit(id), signature: try repository.signature(of: id), now: now)
            if let problem = identity.problem { problems.append(problem) }
            if id == tip { tipIdentity = identity }
        }
        if tipIdentity == nil {
            tipIdentity = context.identity.judge(try repository.commit(tip), signature: try repository.signature(of: tip), now: now)
        }
        return IdentityVerdict(tip: tipIdentity!, problems: problems)
    }
}
