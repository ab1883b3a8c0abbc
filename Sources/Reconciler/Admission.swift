import Foundation
import GitStore
import Governance
import Logging
import SpecLoading
import SpecModel
import StateStore

/// Judges commits for admission with the governance of the last admitted protected revision:
/// identity of every new commit, the spec, team membership, policies and approvals. It decides and
/// explains; it never applies anything. The reconciler acts on its judgements; `gantry explain`
/// prints them.
public struct Admission: Sendable {
    let repository: GitRepository
    let loader: ConfigLoader
    let logger: Logger
    /// More new commits than this in one judgement are denied with their count (never skipped).
    public static let maxCommits = 100_000

    public init(repository: GitRepository, logger: Logger) {
        self.repository = repository
        self.loader = ConfigLoader(repository: repository)
        self.logger = logger
    }

    /// Governance for judging environments: everything read from one admitted protected revision.
    public struct Context: Sendable {
        public let governance: GovernanceRevision
        public var settings: Settings { governance.settings }
        public var identity: IdentityJudge { governance.identity }
        public var policies: PolicySet { governance.policies }
        public let protectedBranch: String
        /// The protected branch's tip as listed: a branch's previews are what it changes since its
        /// merge-base with it.
        public let protectedTip: ObjectID
        /// The last admitted protected revision: new commits of other branches are those it does
        /// not contain, and a branch it contains is merged.
        public let revision: ObjectID
        /// The environments of `revision`, for the policies' `previous`.
        let live: [String: EnvironmentSpec]
        /// Merge commits made on the protected branch: their signers approve what they merge.
        let protectedMerges: Set<String>
        /// What runs, by name (a `cloneFrom` copies the data of the environment of that name).
        let running: [String: Running]
        let cache: CommitCache
        /// Spend against budgets and the previews that hold a slot (empty when not known).
        public let usage: Usage
    }

    /// An environment whose data exists: its applied class and team, and whether it is live.
    public struct Running: Sendable {
        public let envClass: String
        public let team: String?
        public let isLive: Bool
        public init(envClass: String, team: String?, isLive: Bool) {
            self.envClass = envClass
            self.team = team
            self.isLive = isLive
        }
    }

    public func context(governance: GovernanceRevision, protectedBranch: String, protectedTip: ObjectID, revision: ObjectID,
                        protectedMerges: Set<String>, running: [String: Running] = [:], loadLive: Bool = true,
                        usage: Usage = Usage()) throws -> Context {
        var live: [String: EnvironmentSpec] = [:]
        for environment in loadLive ? try loader.environments(at: revision) : [] where environment.isValid {
            live[environment.name] = environment.spec
        }
        return Context(governance: governance, protectedBranch: protectedBranch, protectedTip: protectedTip, revision: revision,
                       live: live, protectedMerges: protectedMerges, running: running, cache: CommitCache(repository: repository),
                       usage: usage)
    }

    /// Judges every commit of `tip` that `hidden` does not contain, oldest first, with the
    /// context's identities. `changedSince` is where the change's files are counted from.
    func judgeIdentity(tip: ObjectID, hiding hidden: [ObjectID], changedSince: ObjectID?, context: Context) throws -> IdentityVerdict {
        let ids = try repository.newCommits(tip: tip, hiding: hidden)
        var problems: [String] = []
        var commits: [JudgedCommit] = []
        if ids.count > Self.maxCommits {
            problems.append("\(tip.short) brings \(ids.count) new commits, more than the \(Self.maxCommits) Gantry judges at once; none is admitted. Split the history into smaller pushes, or have an operator move the trust anchor (gantry trust set)")
        } else {
            for id in ids {
                let judged = try context.cache.judged(id, with: context.identity)
                if let problem = judged.identity.problem { problems.append(problem) }
                commits.append(judged)
            }
        }
        let tipJudged = try context.cache.judged(tip, with: context.identity)
        return IdentityVerdict(tip: tipJudged.identity, problems: problems, commits: commits, hidden: hidden,
                               changedFiles: try repository.changedPaths(from: changedSince, to: tip).sorted())
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
        public let conditions: [Condition]
    }

    /// What the environment was before this change: what the approvals, teams and policies compare with.
    struct Before {
        /// The class and team of the running revision (nil when none runs).
        var envClass: String?
        var team: String?
        var spec: EnvironmentSpec?
        /// Where the change starts: the approval covers the commits from here to the judged commit.
        var base: [ObjectID]
        /// Paths of the environment at that revision (its file, template, sources).
        var watched: [String] = []
        /// The agent it is charged to now (its preview slot is that agent's).
        var agent: String?
    }

    /// Identity, then the spec, team membership, policies and secrets, then (when the revision
    /// would change) the approvals of the stricter of the old and new class.
    /// With `asFound` (a revision just anchored, taken as found) team and approvals are not asked.
    func judge(_ desired: DesiredEnvironment, tip: CommitInfo, identity: IdentityVerdict, before: Before, context: Context,
               changesRevision: Bool, asFound: Bool = false, missingSecrets: [String] = []) throws -> Judgement {
        let signatureRules = signatureRules(identity)
        let specRules = desired.loaded.diagnostics.isEmpty ? ["spec: valid"] : desired.loaded.diagnostics.map { "spec: invalid: \($0)" }
        guard identity.problems.isEmpty, desired.loaded.diagnostics.isEmpty, let spec = desired.spec else {
            var remedies: [String] = []
            if !identity.problems.isEmpty { remedies.append(Self.signatureRemedy) }
            if !desired.loaded.diagnostics.isEmpty { remedies.append("fix the spec errors listed (gantry validate shows them)") }
            return Judgement(decision: .deny, rules: signatureRules + specRules, remedies: remedies,
                             conditions: identity.problems.isEmpty ? [.specInvalid] : [.admissionDenied])
        }
        let watched = desired.loaded.watchedPaths + before.watched
        let touching = asFound ? [] : try touchingCommits(watched: watched, change: tip.id, since: before.base, context: context)
        let teamRule = asFound ? (rule: "team: taken as found at the trust anchor", remedy: nil)
            : self.teamRule(environment: desired.name, teams: [spec.team, before.team], touching: touching, change: tip.id, context: context)
        let clones = cloneRules(spec, context: context)
        // On the protected branch the change runs from what runs (its files since then, its spec as
        // `previous`); a preview's from its merge-base with the protected branch.
        let isProtected = desired.branch == context.protectedBranch
        let previous = isProtected ? before.spec : context.live[desired.loaded.name]
        let files = try changedFiles(isProtected: isProtected, before: before, tip: tip.id, identity: identity)
        // What it would cost, and where its team's and its agent's budgets stand (the agent the
        // tip's actor is: whoever changes an environment last is charged for it).
        // Judged at the most it may cost: an autoscaled service at its max.
        let cost = CostModel.breakdown(spec, pricing: context.settings.pricing, ceiling: true)
        let agent = identity.tip.actor?.kind == .agent ? identity.tip.principal : nil
        let budgets = context.settings.budgets
        // A preview is charged to its file's team, else to the team of the live environment it previews.
        let team = spec.team ?? (isProtected ? nil : context.live[desired.loaded.name]?.team)
        let teamBudget = team.map { context.usage.spending.status(scope: "team", name: $0, limit: budgets.team($0)) } ?? []
        let agentBudget = agent.map { context.usage.spending.status(scope: "agent", name: $0, limit: budgets.agent($0)) } ?? []
        let costValue = Self.costValue(cost, initial: CostModel.breakdown(spec, pricing: context.settings.pricing))
        let budgetValue = Self.budgetValue(spec: spec, team: teamBudget, agent: agentBudget)
        let policy = policyVerdict({ judged, source in
            PolicyInput.variables(
                env: spec, previous: previous, actor: judged.identity.actor, principal: judged.identity.principal,
                onBehalfOf: judged.identity.onBehalfOf, task: judged.identity.task, branch: desired.branch, protected: isProtected,
                commit: PolicyInput.Commit(sha: judged.info.id.hex, message: judged.info.message, trailers: judged.info.trailers),
                changedFiles: files, approvals: [], now: Date(), clone: source, cost: costValue, budget: budgetValue)
        }, tip: try context.cache.judged(tip.id, with: context.identity), touching: touching ?? [], clones: clones.sources, context: context)
        let budget = budgetRules(spec: spec, cost: cost, agent: agent, chargedTeam: team, isNew: before.spec == nil,
                                 movesToAgent: before.spec != nil && agent != nil && before.agent != agent,
                                 movesToTeam: before.spec != nil && team != nil && before.team != team, team: teamBudget,
                                 agentStatus: agentBudget, context: context)
        let secretRules = missingSecrets.map {
            "secret: \($0) is not set for \(spec.name); set it with `gantry secret set \($0) --env \(spec.name)` (or --class \(spec.class.rawValue), --team)"
        }
        let judged = signatureRules + specRules + [teamRule.rule] + clones.rules + policy.rules + budget.rules + secretRules
        if teamRule.remedy != nil || !clones.remedies.isEmpty || policy.denied || !budget.remedies.isEmpty || !missingSecrets.isEmpty {
            return Judgement(decision: .deny, rules: judged,
                             remedies: (teamRule.remedy.map { [$0] } ?? []) + clones.remedies + policy.remedies + budget.remedies
                                + secretRules.map { String($0.dropFirst("secret: ".count)) },
                             conditions: [.admissionDenied] + (missingSecrets.isEmpty ? [] : [.secretMissing]))
        }
        guard changesRevision, !asFound else { return Judgement(decision: .allow, rules: judged, remedies: [], conditions: []) }
        return try approvals(classes: [before.envClass, spec.class.rawValue], tip: tip, base: before.base,
                             watched: desired.loaded.watchedPaths + before.watched, rules: judged, context: context)
    }

    /// A removal (the environment's file deleted, or its branch no longer changing it) is a change
    /// too: identity, the old team, the policies (with `env` null and `previous` set) and the
    /// approvals of the old class come before anything is destroyed.
    func judgeRemoval(of record: EnvironmentRecord, tip: CommitInfo, identity: IdentityVerdict, before: Before,
                      context: Context) throws -> Judgement {
        let signatureRules = signatureRules(identity)
        guard identity.problems.isEmpty else {
            return Judgement(decision: .deny, rules: signatureRules, remedies: [Self.signatureRemedy], conditions: [.admissionDenied])
        }
        let touching = try touchingCommits(watched: before.watched, change: tip.id, since: before.base, context: context)
        let team = teamRule(environment: record.name, teams: [before.team], touching: touching, change: tip.id, context: context)
        let isProtected = record.branch == context.protectedBranch
        let files = try changedFiles(isProtected: isProtected, before: before, tip: tip.id, identity: identity)
        let policy = policyVerdict({ judged, _ in
            PolicyInput.variables(
                env: nil, previous: before.spec, actor: judged.identity.actor, principal: judged.identity.principal,
                onBehalfOf: judged.identity.onBehalfOf, task: judged.identity.task, branch: record.branch, protected: isProtected,
                commit: PolicyInput.Commit(sha: judged.info.id.hex, message: judged.info.message, trailers: judged.info.trailers),
                changedFiles: files, approvals: [], now: Date())
        }, tip: try context.cache.judged(tip.id, with: context.identity), touching: touching ?? [], clones: [], context: context)
        let judged = signatureRules + [team.rule] + policy.rules
        if team.remedy != nil || policy.denied {
            return Judgement(decision: .deny, rules: judged, remedies: (team.remedy.map { [$0] } ?? []) + policy.remedies,
                             conditions: [.admissionDenied])
        }
        return try approvals(classes: [before.envClass], tip: tip, base: before.base, watched: before.watched, rules: judged, context: context)
    }

    /// The files of the change: on the protected branch, since the running revision; on another
    /// branch, since its merge-base with the protected branch.
    func changedFiles(isProtected: Bool, before: Before, tip: ObjectID, identity: IdentityVerdict) throws -> [String] {
        guard isProtected, let start = before.base.first else { return identity.changedFiles }
        return try repository.changedPaths(from: start, to: tip).sorted()
    }

    static let signatureRemedy = "sign every new commit of the branch with an ed25519 key listed in identities/allowed_signers on main, by a principal in identities/actors.yaml"

    /// One line per failing commit, the first 20 of them, then the count of the rest (a record
    /// stays small however many commits fail; every one was judged).
    func signatureRules(_ identity: IdentityVerdict) -> [String] {
        guard !identity.problems.isEmpty else { return ["signature: \(identity.tip.principal.map { "ok (\($0))" } ?? "not required")"] }
        let shown = identity.problems.prefix(20).map { "signature: \($0)" }
        let rest = identity.problems.count - shown.count
        return shown + (rest > 0 ? ["signature: and \(rest) more commit\(rest == 1 ? "" : "s") with a problem (\(identity.commits.count) new commits judged)"] : [])
    }

}

/// One commit with its identity under some governance.
struct JudgedCommit: Sendable {
    let info: CommitInfo
    let identity: CommitIdentity
}

/// The identity verdict of one branch's new commits, shared by every environment the branch asks for.
struct IdentityVerdict: Sendable {
    /// The tip's identity: who the records name as actor.
    let tip: CommitIdentity
    /// Every problem of every new commit, oldest first; empty when all may be admitted.
    let problems: [String]
    /// The new commits, oldest first, with their identities.
    let commits: [JudgedCommit]
    /// What the new commits were counted from.
    let hidden: [ObjectID]
    /// Repository paths the branch's change touches (the policies' `change.files`).
    let changedFiles: [String]
}
