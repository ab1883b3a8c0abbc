import Foundation
import GitStore
import Governance
import SpecLoading
import StateStore

extension Admission {
    /// What `gantry explain` reads from the state DB (all optional: without state, the protected
    /// branch's tip is taken as admitted).
    public struct Known: Sendable {
        public var trust: TrustState?
        public var lastAdmitted: ObjectID?
        public var protectedMerges: Set<String> = []
        /// The tip the protected branch was last seen at (a merge on top of it counts as an approval).
        public var observedTip: ObjectID?
        public var records: [String: EnvironmentRecord] = [:]
        /// Spend and preview slots (empty when not known).
        public var usage = Usage()
        public init(trust: TrustState? = nil, lastAdmitted: ObjectID? = nil, protectedMerges: Set<String> = [],
                    observedTip: ObjectID? = nil, records: [String: EnvironmentRecord] = [:]) {
            self.trust = trust
            self.lastAdmitted = lastAdmitted
            self.protectedMerges = protectedMerges
            self.observedTip = observedTip
            self.records = records
        }

        func running(_ protectedBranch: String) -> [String: Running] {
            var running: [String: Running] = [:]
            for record in records.values where record.appliedCommit != nil && record.phase != .destroyed {
                running[record.name] = Running(envClass: record.envClass, team: record.team, isLive: record.branch == protectedBranch)
            }
            return running
        }
    }

    /// Judges `commit` exactly as a pass would, changing nothing, and says it in lines: on the
    /// protected branch, the step it is (the range of commits it brings, the governance verdict)
    /// and every environment it releases; on another branch, every environment it touches.
    public func explain(commit: ObjectID, branch: String, branches: [String: ObjectID], protectedBranch configured: String,
                        known: Known) throws -> [String] {
        let protectedBranch = known.trust?.protectedBranch ?? configured
        guard let protectedTip = branches[protectedBranch] else {
            return ["the protected branch \(protectedBranch) is missing: nothing is admitted or destroyed until it is back"]
        }
        if let halted = known.trust?.halted { return ["admission is halted: \(halted)"] }
        let revision = known.trust?.revision.flatMap(ObjectID.init(hex:)) ?? protectedTip
        var lines: [String] = []
        if branch != protectedBranch {
            let governance = try GovernanceRevision.load(at: revision, repository: repository)
            let context = try self.context(governance: governance, protectedBranch: protectedBranch, protectedTip: protectedTip,
                                           revision: revision, protectedMerges: known.protectedMerges, running: known.running(protectedBranch), usage: known.usage)
            lines.append("commit \(commit.short) on \(branch), judged with policy revision \(revision.short) of \(protectedBranch)")
            let hidden = (known.lastAdmitted.map { [$0] } ?? []) + [revision]
            let identity = try judgeIdentity(tip: commit, hiding: hidden, changedSince: try repository.mergeBase(protectedTip, commit), context: context)
            lines += try environments(at: commit, branch: branch, touchedSince: try repository.commit(commit).parents.first, identity: identity,
                                      context: context, known: known)
            return lines
        }
        if try commit == revision || repository.isReachable(commit, from: revision) {
            let policy = try GovernanceRevision.load(at: known.trust?.policyRevision.flatMap(ObjectID.init(hex:)) ?? revision, repository: repository)
            let context = try self.context(governance: policy, protectedBranch: protectedBranch, protectedTip: protectedTip,
                                           revision: revision, protectedMerges: known.protectedMerges, running: known.running(protectedBranch), usage: known.usage)
            lines.append("commit \(commit.short) on \(protectedBranch) is admitted (the admitted revision is \(revision.short)), judged with policy revision \(policy.commit.short)")
            let parent = try repository.commit(commit).parents.first
            let identity = try judgeIdentity(tip: commit, hiding: parent.map { [$0] } ?? [], changedSince: parent, context: context)
            lines += try environments(at: commit, branch: branch, touchedSince: parent, identity: identity, context: context, known: known)
            return lines
        }
        // Not admitted yet: walk the first-parent chain from the admitted revision to it.
        let chain = try repository.firstParentSteps(tip: commit, within: try repository.newCommits(tip: commit, hiding: [revision]))
        guard let anchor = known.trust?.anchor.flatMap(ObjectID.init(hex:)) ?? Optional(revision) else { return lines }
        var governance = try GovernanceRevision.load(at: revision, repository: repository)
        var previous = revision
        for step in chain {
            let context = try self.context(governance: governance, protectedBranch: protectedBranch, protectedTip: protectedTip,
                                           revision: previous, protectedMerges: known.protectedMerges, loadLive: false)
            let verdict = try judgeStep(step, previous: previous, start: revision, anchor: anchor, branches: branches,
                                        seenTips: Set([known.observedTip].compactMap { $0 }), context: context)
            if step != commit && verdict.decision == .allow {
                if let proposed = verdict.newGovernance { governance = proposed }
                previous = step
                continue
            }
            if step != commit {
                lines.append("commit \(commit.short) on \(protectedBranch) is held back: \(step.short) before it is \(verdict.decision == .pending ? "waiting for approval" : "denied")")
            } else {
                lines.append("commit \(commit.short) on \(protectedBranch), judged with the governance of \(governance.commit.short) (the last admitted revision is \(revision.short))")
                let brought = verdict.identity.commits
                lines.append("range: \(previous.short)..\(step.short), \(brought.count) commit\(brought.count == 1 ? "" : "s"): "
                             + brought.map { "\($0.info.id.short) \($0.info.message.split(separator: "\n").first ?? "")" }.joined(separator: "; "))
            }
            lines.append("\(step.short) (governance and identity): \(verdict.decision.rawValue)")
            lines += verdict.rules.map { "  rule \($0)" } + verdict.remedies.map { "  to satisfy: \($0)" }
            guard step == commit else { return lines }
            let envContext = try self.context(governance: governance, protectedBranch: protectedBranch, protectedTip: protectedTip,
                                              revision: revision, protectedMerges: known.protectedMerges.union(verdict.isProtectedMerge ? [step.hex] : []),
                                              running: known.running(protectedBranch), usage: known.usage)
            let identity = try judgeIdentity(tip: commit, hiding: [revision], changedSince: revision, context: envContext)
            let released = try environments(at: commit, branch: branch, touchedSince: revision, identity: identity, context: envContext, known: known)
            lines.append("environments it releases once admitted:")
            lines += released
            return lines
        }
        lines.append("commit \(commit.short) is not on the first-parent chain of \(protectedBranch) from the admitted revision \(revision.short)")
        return lines
    }

    /// Each environment `commit` touches (since `touchedSince`), as judged at it.
    func environments(at commit: ObjectID, branch: String, touchedSince: ObjectID?, identity: IdentityVerdict, context: Context,
                      known: Known) throws -> [String] {
        let info = try repository.commit(commit)
        let changed = try repository.changedPaths(from: touchedSince, to: commit)
        let desired = try loader.desiredEnvironments(branch: branch, commit: commit, protectedBranch: context.protectedBranch,
                                                     protectedTip: context.protectedTip) { environment, branch in
            known.records.values.first { $0.branch == branch && $0.source == environment }?.name ?? Previews.name(environment: environment, branch: branch)
        }
        var lines: [String] = []
        for environment in desired where environment.loaded.isTouched(by: changed) {
            let live = known.records[environment.name].flatMap { $0.phase == .destroyed ? nil : $0 }
            var before = Admission.Before(base: identity.hidden)
            if let live, let start = (live.appliedCommit ?? live.baseCommit).flatMap(ObjectID.init(hex:)) {
                before.base = [start] + (branch == context.protectedBranch ? [] : [context.revision])
                if live.appliedCommit != nil {
                    before.envClass = live.envClass
                    before.team = live.team
                }
            }
            let judgement = try judge(environment, tip: info, identity: identity, before: before, context: context, changesRevision: true)
            lines.append("\(environment.name): \(judgement.decision.rawValue)")
            lines += judgement.rules.map { "  rule \($0)" } + judgement.remedies.map { "  to satisfy: \($0)" }
        }
        if lines.isEmpty { lines.append("it touches no environment") }
        return lines
    }
}

extension Admission {
    /// Why an explain found nothing to judge.
    public struct ExplainError: Error, CustomStringConvertible {
        public let description: String
    }

    /// `gantry explain` and the API's explain: `target` judged on `branch` (default: a branch whose
    /// tip it is, else the protected branch or another that contains it), with what the state
    /// directory's store knows (the trust anchor, merges, the last admitted commit).
    public func explain(commit target: ObjectID, branch: String?, store: StateStore?, defaultProtectedBranch: String) throws -> [String] {
        let branches = try repository.branches()
        var known = Known()
        if let store {
            known.trust = try store.trust()
            known.protectedMerges = try store.protectedMerges()
            known.observedTip = try store.processedRefs()[known.trust?.protectedBranch ?? defaultProtectedBranch].flatMap(ObjectID.init(hex:))
            known.records = Dictionary(try store.environments(includeDestroyed: true).map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            known.usage = try Usage.load(store, now: Date())
        }
        let protectedBranch = known.trust?.protectedBranch ?? defaultProtectedBranch
        let onBranch = try branch ?? (branches[protectedBranch] == target ? protectedBranch : nil)
            ?? branches.first(where: { $0.value == target }).map(\.key)
            ?? ([protectedBranch] + branches.keys.sorted()).first(where: { name in
                try branches[name].map { try repository.isReachable(target, from: $0) } ?? false
            })
        guard let onBranch else { throw ExplainError(description: "no branch contains \(target.short); name one with --branch") }
        if let store, onBranch != protectedBranch {
            known.lastAdmitted = try store.admittedCommit(branch: onBranch).flatMap(ObjectID.init(hex:))
            if let last = known.lastAdmitted, try repository.isReachable(target, from: last) { known.lastAdmitted = nil }
        }
        return try explain(commit: target, branch: onBranch, branches: branches, protectedBranch: protectedBranch, known: known)
    }
}
