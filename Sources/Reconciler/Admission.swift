import Foundation
import GitStore
import Governance
import Logging
import SpecLoading
import SpecModel

/// Judges commits for admission with the governance read from the protected branch: identity of
/// every new commit, the spec, and approvals. It decides and explains; it never applies anything.
/// The reconciler acts on its judgements; `gantry explain` prints them.
public struct Admission: Sendable {
    let repository: GitRepository
    let loader: ConfigLoader
    let logger: Logger

    public init(repository: GitRepository, logger: Logger) {
        self.repository = repository
        self.loader = ConfigLoader(repository: repository)
        self.logger = logger
    }

    /// Governance for one pass: everything read from the protected branch.
    public struct Context: Sendable {
        public let settings: Settings
        public let protectedBranch: String
        public let protectedTip: ObjectID?
        /// Identity governance: allowed_signers, actors, signing.required.
        public let identity: IdentityJudge
        /// `policies/*.yaml`, compiled.
        public let policies: PolicySet
        /// The environments of the protected branch, for the policies' `previous`.
        let live: [String: EnvironmentSpec]
    }

    /// Reads gantry.yaml (following its `protectedBranch`), allowed_signers and actors from the
    /// protected branch of `branches`.
    public func context(branches: [String: ObjectID], protectedBranch configured: String) throws -> Context {
        var protectedBranch = configured
        var settings = Settings()
        if let tip = branches[protectedBranch] {
            var loaded = loader.settings(at: tip)
            if loaded.settings.protectedBranch != protectedBranch, let other = branches[loaded.settings.protectedBranch] {
                protectedBranch = loaded.settings.protectedBranch
                loaded = loader.settings(at: other)
            }
            settings = loaded.settings
            for diagnostic in loaded.diagnostics {
                logger.error("gantry.yaml on the protected branch is invalid; the defaults stand in for what it gets wrong",
                             metadata: ["problem": "\(diagnostic)"])
            }
        }
        let protectedTip = branches[protectedBranch]
        var identity = IdentityJudge(signers: AllowedSigners(text: ""), actors: [:], required: settings.signing.required)
        var policies = PolicySet(loaded: [])
        var live: [String: EnvironmentSpec] = [:]
        if let protectedTip {
            policies = PolicySet(loaded: try loader.policies(at: protectedTip))
            for file in policies.brokenFiles {
                logger.error("a policy on the protected branch is invalid; it fails closed", metadata: ["file": "\(file.file)", "problem": "\(file.problems)"])
            }
            for environment in try loader.environments(at: protectedTip) where environment.isValid {
                live[environment.name] = environment.spec
            }
            let signers = AllowedSigners(text: try loader.allowedSignersText(at: protectedTip))
            let actors = loader.actors(at: protectedTip)
            for diagnostic in signers.diagnostics + actors.diagnostics {
                logger.error("identity file on the protected branch has a problem", metadata: ["problem": "\(diagnostic)"])
            }
            identity = IdentityJudge(signers: signers, actors: actors.actors, required: settings.signing.required)
        }
        return Context(settings: settings, protectedBranch: protectedBranch, protectedTip: protectedTip, identity: identity,
                       policies: policies, live: live)
    }

    /// Judges every commit of `branch` up to `tip` that is new: not reachable from `lastAdmitted`
    /// nor, for other branches, from the protected branch. Without a last admitted commit on the
    /// protected branch, only its tip is judged (history before Gantry is taken as it is).
    func judgeIdentity(branch: String, tip: ObjectID, lastAdmitted: ObjectID?, context: Context) throws -> IdentityVerdict {
        var hidden: [ObjectID] = lastAdmitted.map { [$0] } ?? []
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
        let tipCommit = try repository.commit(tip)
        if tipIdentity == nil {
            tipIdentity = context.identity.judge(tipCommit, signature: try repository.signature(of: tip), now: now)
        }
        // The files the change touches: since the merge-base with the protected branch for a preview,
        // since the last admitted commit (or the parent) on the protected branch.
        let base = branch == context.protectedBranch
            ? (lastAdmitted ?? tipCommit.parents.first)
            : try context.protectedTip.flatMap { try repository.mergeBase($0, tip) }
        return IdentityVerdict(tip: tipIdentity!, problems: problems, authors: authors,
                               needsApproval: !(branch == context.protectedBranch && hidden.isEmpty),
                               changedFiles: try repository.changedPaths(from: base, to: tip).sorted())
    }

    /// The verdict on one environment at the branch's tip.
    public struct Judgement: Sendable {
        public enum Decision: String, Sendable { case allow, deny, pending }
        public let decision: Decision
        /// One line per rule evaluated, as the audit record's `rule:` lines.
        public let rules: [String]
        /// For each failing rule, what would satisfy it.
        public let remedies: [String]
        /// Conditions that are true (`AdmissionDenied`, `SpecInvalid`, `ApprovalPending`).
        public let conditions: [String]
    }

    /// Identity, then the spec, then (when the revision would change) approvals.
    func judge(_ desired: DesiredEnvironment, tip: CommitInfo, identity: IdentityVerdict, context: Context,
               changesRevision: Bool, missingSecrets: [String] = []) throws -> Judgement {
        let signatureRules = identity.problems.isEmpty
            ? ["signature: \(identity.tip.principal.map { "ok (\($0))" } ?? "not required")"]
            : identity.problems.map { "signature: \($0)" }
        let specRules = desired.loaded.diagnostics.isEmpty ? ["spec: valid"] : desired.loaded.diagnostics.map { "spec: invalid: \($0)" }
        guard identity.problems.isEmpty, desired.loaded.diagnostics.isEmpty, let spec = desired.spec else {
            var remedies: [String] = []
            if !identity.problems.isEmpty {
                remedies.append("sign every new commit of the branch with an ed25519 key listed in identities/allowed_signers on main, by a principal in identities/actors.yaml")
            }
            if !desired.loaded.diagnostics.isEmpty { remedies.append("fix the spec errors listed (gantry validate shows them)") }
            return Judgement(decision: .deny, rules: signatureRules + specRules, remedies: remedies,
                             conditions: identity.problems.isEmpty ? ["SpecInvalid"] : ["AdmissionDenied"])
        }
        let variables = PolicyInput.variables(
            env: spec, previous: context.live[desired.loaded.name], actor: identity.tip.actor, principal: identity.tip.principal,
            onBehalfOf: identity.tip.onBehalfOf, task: identity.tip.task, branch: desired.branch,
            protected: desired.branch == context.protectedBranch,
            commit: PolicyInput.Commit(sha: tip.id.hex, message: tip.message, trailers: tip.trailers),
            changedFiles: identity.changedFiles, approvals: [], now: Date())
        let policy = context.policies.evaluate(variables)
        let secretRules = missingSecrets.map {
            "secret: \($0) is not set for \(spec.name); set it with `gantry secret set \($0) --env \(spec.name)` (or --class \(spec.class.rawValue), --team)"
        }
        let judged = signatureRules + specRules + policy.rules + secretRules
        if policy.denied || !missingSecrets.isEmpty {
            return Judgement(decision: .deny, rules: judged, remedies: policy.remedies + secretRules.map { String($0.dropFirst("secret: ".count)) },
                             conditions: ["AdmissionDenied"] + (missingSecrets.isEmpty ? [] : ["SecretMissing"]))
        }
        guard changesRevision, identity.needsApproval, let rule = context.settings.approvals[spec.class.rawValue] else {
            return Judgement(decision: .allow, rules: judged, remedies: [], conditions: [])
        }
        let approval = ApprovalJudge(signers: context.identity.signers, actors: context.identity.actors).judge(
            rule: rule, tip: tip, tipSigner: identity.tip.problem == nil ? identity.tip.principal : nil,
            approvingKeys: try Approvals.approvingKeys(of: tip.id, in: repository), authors: identity.authors, now: Date())
        if approval.isSatisfied {
            return Judgement(decision: .allow, rules: judged + ["approval: ok (\(approval.approvers.joined(separator: ", ")))"],
                             remedies: [], conditions: [])
        }
        let need = "approval: needs \(approval.required) approval\(approval.required == 1 ? "" : "s") of this exact commit by a human with role \(rule.role)\(rule.distinctFromAuthors ? " who did not author or sign the change" : ""); has \(approval.approvers.count)"
        return Judgement(decision: .pending,
                         rules: judged + [need] + approval.rejected.map { "approval: not counted: \($0)" },
                         remedies: ["a human with role \(rule.role) signs the merge commit, or runs `gantry approve \(tip.id.short) --key KEY`"],
                         conditions: ["ApprovalPending"])
    }
}

extension Admission {
    /// One environment's judgement, for `gantry explain`.
    public struct Explanation: Sendable {
        public let environment: String
        public let judgement: Judgement
    }

    /// Judges `commit` as the tip of `branch` for every environment it touches (compared with its
    /// first parent), exactly as a pass would, without changing anything.
    public func explain(commit: ObjectID, branch: String, lastAdmitted: ObjectID?, context: Context) throws -> [Explanation] {
        let info = try repository.commit(commit)
        let changed = try repository.changedPaths(from: info.parents.first, to: commit)
        let desired = try loader.desiredEnvironments(branch: branch, commit: commit, protectedBranch: context.protectedBranch,
                                                     protectedTip: context.protectedTip)
        let identity = try judgeIdentity(branch: branch, tip: commit, lastAdmitted: lastAdmitted, context: context)
        return try desired.filter { $0.loaded.isTouched(by: changed) }.map {
            Explanation(environment: $0.name, judgement: try judge($0, tip: info, identity: identity, context: context, changesRevision: true))
        }
    }
}

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
    /// Repository paths the branch's change touches (the policies' `change.files`).
    let changedFiles: [String]
}
