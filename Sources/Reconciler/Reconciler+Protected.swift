import Audit
import Foundation
import GitStore
import Governance
import SpecLoading
import SpecModel
import StateStore

extension Reconciler {
    /// The protected branch's part of a pass: the trust anchor, then every new protected commit
    /// in order, each judged with the governance of the last admitted revision. Returns the context
    /// the other branches are judged with, or nil when admission is halted (no anchor, anchor lost,
    /// protected branch missing): nothing is admitted or destroyed then.
    func advanceProtected(branches: [String: ObjectID], approvalsMoved: Bool, _ summary: inout PassSummary) throws -> PassContext? {
        var trust = try state.trust() ?? TrustState(protectedBranch: options.protectedBranch)
        if trust.anchor == nil, let tip = branches[trust.protectedBranch] {
            guard try anchorOnFirstStart(tip: tip, branches: branches, &trust, &summary) else { return nil }
        }
        // (Anchoring may name another protected branch: it is looked up again.)
        let name = trust.protectedBranch
        guard let tip = branches[name], let anchor = trust.anchor.flatMap(ObjectID.init(hex:)),
              let revision = trust.revision.flatMap(ObjectID.init(hex:)) else {
            try halt(&trust, "the protected branch \(name) is missing: nothing is admitted or destroyed until it is back", tip: nil, &summary)
            return nil
        }
        // Ancestry is checked once per tip, anchor and revision (a walk of the history each time).
        let contains = try containsCache?.key == [tip, anchor, revision].map(\.hex).joined(separator: ":")
            ? containsCache!.value
            : (anchor: tip == anchor || repository.isReachable(anchor, from: tip), revision: tip == revision || repository.isReachable(revision, from: tip),
               rewound: repository.isReachable(tip, from: revision))
        containsCache = ([tip, anchor, revision].map(\.hex).joined(separator: ":"), contains)
        guard contains.anchor else {
            try halt(&trust, "\(name) at \(tip.short) no longer contains the trust anchor \(anchor.short) (its history was rewritten or replaced): nothing is admitted or destroyed until an operator checks it and moves the anchor with `gantry trust set COMMIT --key KEY`", tip: tip, &summary)
            return nil
        }
        // Rewound (the tip is an ancestor of the admitted revision): nothing new to judge, and the
        // admitted revision keeps governing the other branches; the environments stay as admitted.
        if !contains.revision && contains.rewound {
            if trust.halted != nil { trust.halted = nil; try state.updateTrust(trust, expectedAnchor: trust.anchor) }
            logger.warning("the protected branch is behind its admitted revision; nothing on it is judged until it moves past it",
                           metadata: ["git.branch": "\(name)", "tip": "\(tip.short)", "revision": "\(revision.short)"])
            return try context(governance: try governance(at: revision), revision: revision, tip: tip, trust: trust)
        }
        // A rewrite that drops admitted history sideways is an operator's matter too: judging the
        // new history would replay approvals given to other states of it.
        guard contains.revision else {
            try halt(&trust, "\(name) at \(tip.short) no longer contains the admitted revision \(revision.short) (its history was rewritten): nothing is admitted or destroyed until it does again or an operator moves the anchor with `gantry trust set COMMIT --key KEY`", tip: tip, &summary)
            return nil
        }
        if trust.halted != nil {
            logger.notice("admission resumes", metadata: ["git.branch": "\(name)", "was": "\(trust.halted!)"])
            trust.halted = nil
            try state.updateTrust(trust, expectedAnchor: trust.anchor)
        }
        let justAnchored = trust.segmentBase == nil
        if justAnchored {
            // Just anchored (perhaps by `gantry trust set` while this process ran): the environments
            // at the anchor are taken as found, and the processed tips are read afresh.
            processedCacheReset()
            try convergeProtected(at: revision, base: nil, governance: try governance(at: revision), tip: tip, trust: trust, &summary)
            trust.segmentBase = revision.hex
            try state.updateTrust(trust, expectedAnchor: trust.anchor)
            summary.changedBranches.append(name)
        }
        let mainWaiting = try !justAnchored && state.environments().contains { $0.branch == name && isWaiting($0, approvalsMoved: approvalsMoved) }
        let processed = try processedRefs()[name]
        if processed != tip.hex || mainWaiting || (approvalsMoved && trust.blocked != nil) {
            summary.changedBranches.append(name)
            try walk(to: tip, anchor: anchor, branches: branches, rejudge: mainWaiting, &trust, &summary)
            // An anchor moved meanwhile by an operator wins: this pass's walk is dropped and redone from it.
            guard try state.updateTrust(trust, expectedAnchor: anchor.hex) else { return nil }
            try setProcessed(branch: name, commit: tip.hex)
            if let current = trust.revision.flatMap(ObjectID.init(hex:)) { try state.setAdmitted(branch: name, commit: current.hex) }
        }
        guard let current = trust.revision.flatMap(ObjectID.init(hex:)), let currentTip = branches[trust.protectedBranch] else { return nil }
        return try context(governance: try governance(at: current), revision: current, tip: currentTip, trust: trust)
    }

    /// Walks the first-parent chain from the last admitted revision to `tip`, one step at a time.
    /// Environments converge at the end of each run of steps that share one governance (a step
    /// that changes governance ends a run: its own environments are judged with the rules before
    /// it). The walk stops at the first step that is denied or waits for approval.
    func walk(to tip: ObjectID, anchor: ObjectID, branches: [String: ObjectID], rejudge: Bool, _ trust: inout TrustState,
              _ summary: inout PassSummary) throws {
        guard let start = trust.revision.flatMap(ObjectID.init(hex:)) else { return }
        let new = try repository.newCommits(tip: tip, hiding: [start])
        trust.blocked = nil
        if new.count > Admission.maxCommits {
            let rule = "trust: \(trust.protectedBranch) brings \(new.count) new commits since \(start.short), more than the \(Admission.maxCommits) judged at once; none is admitted"
            try block(tip, decision: .deny, rules: [rule], remedies: ["push the history in smaller steps, or have an operator move the trust anchor (gantry trust set)"],
                      from: start, to: tip, &trust, &summary)
            return
        }
        let chain = try repository.firstParentSteps(tip: tip, within: new)
        if rejudge {
            // Environments waiting at the admitted revision (an approval, a secret) are judged again
            // first, with the rules that judged them; what the new steps bring comes after.
            let policy = try trust.policyRevision.flatMap(ObjectID.init(hex:)).map { try self.governance(at: $0) } ?? self.governance(at: start)
            try convergeProtected(at: start, base: trust.segmentBase.flatMap(ObjectID.init(hex:)) ?? start, governance: policy, tip: tip,
                                  trust: trust, &summary)
        }
        var governance = try self.governance(at: start)
        var previous = start
        var segmentBase = start
        // The tip the protected branch was last seen at: a merge on top of it was made on it.
        var seenTips = Set([try processedRefs()[trust.protectedBranch].flatMap(ObjectID.init(hex:))].compactMap { $0 })
        for step in chain {
            let stepContext = try context(governance: governance, revision: previous, tip: tip, trust: trust, loadLive: false)
            let verdict: Admission.StepVerdict
            do {
                verdict = try admission.judgeStep(step, previous: previous, start: start, anchor: anchor, branches: branches,
                                                  seenTips: seenTips, context: stepContext)
            } catch {
                // A step that cannot even be judged is denied, never a failed pass for everyone.
                try convergeBeforeBlock(at: previous, base: &segmentBase, governance: governance, tip: tip, &trust, &summary)
                trust.revision = previous.hex
                try block(step, decision: .deny, rules: ["governance: cannot judge \(step.short): \(error)"],
                          remedies: ["fix the commit (or rewrite it away), or have an operator move the anchor past it"],
                          from: previous, to: tip, policyRevision: governance.commit, &trust, &summary)
                break
            }
            if verdict.isProtectedMerge {
                try state.addProtectedMerge(step.hex)
                seenTips.insert(step)
            }
            guard verdict.decision == .allow else {
                // What was admitted before this step converges; this step and those after it wait.
                try convergeBeforeBlock(at: previous, base: &segmentBase, governance: governance, tip: tip, &trust, &summary)
                trust.revision = previous.hex
                try block(step, decision: verdict.decision, rules: verdict.rules, remedies: verdict.remedies, from: previous, to: tip,
                          identity: verdict.identity.tip, policyRevision: governance.commit, &trust, &summary)
                break
            }
            trust.revision = step.hex
            if let proposed = verdict.newGovernance {
                let info = try repository.commit(step)
                try appendScoped(.admitted, step, baseFields(nil, branch: trust.protectedBranch, commit: info, identity: verdict.identity.tip,
                                                             policyRevision: governance.commit)
                                 + [("scope", "governance"), ("decision", "allow")] + verdict.rules.map { ("rule", $0) })
                // The step's own environments are judged with the rules in force before it.
                try convergeProtected(at: step, base: segmentBase, governance: governance, tip: tip, trust: trust, &summary)
                trust.policyRevision = governance.commit.hex
                trust.segmentBase = segmentBase.hex
                governance = proposed
                governanceCache[step] = proposed
                segmentBase = step
                if proposed.settings.protectedBranch != trust.protectedBranch {
                    try moveProtectedBranch(to: proposed.settings.protectedBranch, &trust)
                    return
                }
            }
            previous = step
        }
        if let revision = trust.revision.flatMap(ObjectID.init(hex:)), revision != segmentBase {
            try convergeProtected(at: revision, base: segmentBase, governance: governance, tip: tip, trust: trust, &summary)
            trust.policyRevision = governance.commit.hex
            trust.segmentBase = segmentBase.hex
        }
    }

    /// Before admission stops: the steps admitted since the last convergence converge (once: the
    /// segment then starts at `previous`).
    func convergeBeforeBlock(at previous: ObjectID, base segmentBase: inout ObjectID, governance: GovernanceRevision, tip: ObjectID,
                             _ trust: inout TrustState, _ summary: inout PassSummary) throws {
        guard previous != segmentBase else { return }
        try convergeProtected(at: previous, base: segmentBase, governance: governance, tip: tip, trust: trust, &summary)
        trust.policyRevision = governance.commit.hex
        trust.segmentBase = segmentBase.hex
        segmentBase = previous
    }

    /// Converges the protected branch's environments at `revision`, judged with `governance`; the
    /// change is what `revision` brings since `base` (nil: the revision was just anchored and is
    /// taken as found — only its own commit is judged, and no approval is asked).
    func convergeProtected(at revision: ObjectID, base: ObjectID?, governance: GovernanceRevision, tip: ObjectID, trust: TrustState,
                           _ summary: inout PassSummary) throws {
        let context = try context(governance: governance, revision: base ?? revision, tip: tip, trust: trust)
        let hidden = try base.map { [$0] } ?? repository.commit(revision).parents
        try reconcile(branch: context.protectedBranch, tip: revision, hidden: hidden, changedSince: base ?? revision, context: context,
                      asFound: base == nil, &summary)
    }

    /// Admission stops at `commit`: it waits for approval or was denied. A record on it says why;
    /// live environments the held-back commits change keep their admitted revision and say so.
    func block(_ commit: ObjectID, decision: Admission.Judgement.Decision, rules: [String], remedies: [String], from revision: ObjectID,
               to tip: ObjectID, identity: CommitIdentity? = nil, policyRevision: ObjectID? = nil, _ trust: inout TrustState,
               _ summary: inout PassSummary) throws {
        trust.blocked = TrustState.Blocked(commit: commit.hex, decision: decision.rawValue, rules: rules, remedies: remedies)
        summary.blocked = commit.hex
        let info = try repository.commit(commit)
        let who = try identity ?? governance(at: revision).identity.judge(info, signature: try repository.signature(of: commit), now: Date())
        let event: AuditEvent = decision == .pending ? .pendingApproval : .denied
        let base = baseFields(nil, branch: trust.protectedBranch, commit: info, identity: who, policyRevision: policyRevision ?? revision)
        let lines = [("decision", decision.rawValue)] + rules.map { ("rule", $0) }
        try appendScoped(event, commit, base + [("scope", "governance")] + lines)
        logger.warning(decision == .pending ? "a protected commit waits for approval" : "a protected commit was denied",
                       metadata: ["git.commit": "\(commit.short)", "rules": "\(rules.joined(separator: "; "))"])
        // The live environments the held-back commits change (when the change cannot even be
        // read — too many files, say — the record above says why, and the environments keep running).
        let changed: Set<String>
        let loaded: [LoadedEnvironment]
        do {
            changed = try repository.changedPaths(from: revision, to: tip)
            loaded = try loader.environments(at: tip) + loader.environments(at: revision)
        } catch let problem where ErrorDisposition.of(problem) == .stallUntilNewCommit {
            logger.warning("the held-back change cannot be mapped to environments", metadata: ["problem": "\(problem)"])
            return
        }
        var seen = Set<String>()
        for environment in loaded where seen.insert(environment.name).inserted && environment.isTouched(by: changed) {
            guard var record = try state.environment(environment.name), record.branch == trust.protectedBranch, record.phase != .destroyed else { continue }
            try appendOnce(event, record.name, commit, baseFields(record.name, branch: trust.protectedBranch, commit: info, identity: who,
                                                                   policyRevision: policyRevision ?? revision) + lines)
            let still = record.appliedCommit.map { "; still running \($0.prefix(7))" } ?? ""
            if decision == .pending {
                record.conditions = [.approvalPending]
                record.message = "\(trust.protectedBranch) is held at \(commit.short), which waits for approval\(still): \(remedies.joined(separator: "; "))"
                summary.pending.append(record.name)
            } else {
                record.conditions = [.admissionDenied]
                record.message = "\(trust.protectedBranch) is held at \(commit.short), which was denied\(still): \(rules.joined(separator: "; "))"
                summary.denied.append(record.name)
            }
            record.updatedAt = Date()
            try state.save(record)
        }
    }

    /// The governance of `commit`, read once.
    func governance(at commit: ObjectID) throws -> GovernanceRevision {
        if let known = governanceCache[commit] { return known }
        let loaded = try GovernanceRevision.load(at: commit, repository: repository)
        if governanceCache.count > 16 { governanceCache.removeAll() }
        governanceCache[commit] = loaded
        return loaded
    }

    func context(governance: GovernanceRevision, revision: ObjectID, tip: ObjectID, trust: TrustState, loadLive: Bool = true) throws -> PassContext {
        // A step's context (loadLive false) judges identity and governance only: no state is read for it.
        try admission.context(governance: governance, protectedBranch: trust.protectedBranch, protectedTip: tip, revision: revision,
                              protectedMerges: loadLive ? try state.protectedMerges() : [], running: loadLive ? try running(trust) : [:],
                              loadLive: loadLive, usage: loadLive ? try Usage.load(state, now: clock()) : Usage())
    }

    /// Every environment whose data exists (it was applied), by name, with the class and team it runs with.
    func running(_ trust: TrustState) throws -> [String: Admission.Running] {
        var running: [String: Admission.Running] = [:]
        for record in try state.environments() where record.appliedCommit != nil {
            running[record.name] = Admission.Running(envClass: record.envClass, team: record.team, isLive: record.branch == trust.protectedBranch)
        }
        return running
    }

    /// Appends a record about a branch itself (`scope: governance` for the protected branch,
    /// `scope: branch` for another) unless the commit's note already holds one of that event and scope.
    func appendScoped(_ event: AuditEvent, _ commit: ObjectID, _ fields: [(String, String)]) throws {
        let scope = fields.first { $0.0 == "scope" }?.1
        if let note = try recordedNote(on: commit, environment: nil),
           AuditRecord.parseNote(note).records.contains(where: { $0.value("scope") == scope && $0.event == event.rawValue }) {
            return
        }
        try flushRecords()
        try audit.append([AuditEntry(event: event, commit: commit.hex, fields: fields.map { (key: $0.0, value: $0.1) })])
    }
}
