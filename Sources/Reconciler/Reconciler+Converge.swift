import Audit
import Foundation
import GitStore
import Governance
import SpecLoading
import SpecModel
import StateStore

extension Reconciler {
    /// Converges the environments `branch` asks for at `tip` and judges the removal of those it no
    /// longer asks for. The change is the commits of `tip` that `hidden` does not contain;
    /// `changedSince` is where its files are counted from. With `asFound` (a revision just
    /// anchored) only the tip's own identity is checked and no approval is asked.
    func reconcile(branch: String, tip: ObjectID, hidden: [ObjectID], changedSince: ObjectID?, context: PassContext,
                   asFound: Bool = false, _ summary: inout PassSummary) throws {
        var names = Set<String>()
        let desired = try loader.desiredEnvironments(branch: branch, commit: tip, protectedBranch: context.protectedBranch,
                                                     protectedTip: context.protectedTip) { try self.previewName(environment: $0, branch: $1) }
            .filter { names.insert($0.name).inserted }
        let commit = try repository.commit(tip)
        let identity = try admission.judgeIdentity(tip: tip, hiding: hidden, changedSince: changedSince, context: context)
        // Environments that clone another's data come after the ones they clone from.
        let ordered = desired.filter { !($0.spec?.databases.contains { $0.cloneFrom != nil } ?? false) }
            + desired.filter { $0.spec?.databases.contains { $0.cloneFrom != nil } ?? false }
        for environment in ordered {
            try converge(environment, commit: commit, identity: identity, context: context, asFound: asFound, &summary)
        }
        if branch != context.protectedBranch && identity.problems.isEmpty { try state.setAdmitted(branch: branch, commit: tip.hex) }
        for existing in try state.environments(branch: branch) where !names.contains(existing.name) {
            try remove(existing, tip: commit, identity: identity, context: context, asFound: asFound, &summary)
        }
        // The protected branch's records are written before its trust state moves; other
        // branches' denials go out in batches (each branch is marked processed after its batch).
        if branch == context.protectedBranch { try flushRecords() } else { try flushRecordsWhenDue() }
    }

    /// The name a preview of `environment` on `branch` runs under: the one it already has, else
    /// FORMATS.md's `<environment>--<slug>` unless another branch (or another environment) ever
    /// held it, else a name with 64 bits of hash of its own. A name never changes hands.
    func previewName(environment: String, branch: String) throws -> String {
        if let owned = try state.environment(branch: branch, source: environment) { return owned.name }
        var candidate = Previews.name(environment: environment, branch: branch)
        var attempt = 0
        while let holder = try state.environment(candidate),
              !(holder.branch == branch && (holder.source == nil || holder.source == environment)) {
            candidate = Previews.hashed(environment: environment, branch: branch, attempt: attempt)
            attempt += 1
        }
        return candidate
    }

    /// Judges one desired environment at the branch's new tip and applies it when admitted:
    /// identity, then the spec, team, policies and approvals; an unchanged revision is recorded
    /// but not restarted.
    func converge(_ desired: DesiredEnvironment, commit tipCommit: CommitInfo, identity: IdentityVerdict, context: PassContext,
                  asFound: Bool, _ summary: inout PassSummary) throws {
        let existing = try state.environment(desired.name)
        // A name belongs to one branch for good: never take over another branch's environment.
        if let existing, existing.branch != desired.branch {
            logger.error("an environment name belongs to another branch; not touched",
                         metadata: ["gantry.env": "\(desired.name)", "git.branch": "\(desired.branch)", "owner": "\(existing.branch)"])
            return
        }
        let live = existing.flatMap { $0.phase == .destroyed ? nil : $0 }
        // This very commit is being applied (queued or running): nothing to judge again.
        let applying = live.map { $0.conditions.contains(.applying) && operations.isBusy($0.name) } ?? false
        if let live, live.commit == desired.commit.hex, applying { return }
        // This commit was already judged (an apply cut short by a stop or a crash is Pending, or
        // Applying, and goes on; one waiting for approval, or denied, is judged again, as
        // approvals arrive). A failed apply whose retry is due goes on to be applied again.
        let retry = live.map { Self.retryDue($0) } ?? false
        let interrupted = live.map { $0.conditions.contains(.applying) && !applying } ?? false
        // Admitted, and its apply cut short by a stop or a crash: applied now, not judged again (the
        // verdict is recorded; judging it anew could ask for what the first judgement waived, as an
        // anchored revision taken as found).
        if let live, interrupted, live.commit == desired.commit.hex, tipCommit.id == desired.commit, let spec = desired.spec,
           try lastVerdict(desired.name, on: live.commit) == AuditEvent.admitted.rawValue {
            logger.notice("resuming an apply cut short", metadata: ["gantry.env": "\(desired.name)", "git.commit": "\(desired.commit.short)"])
            submitApply(desired, spec: spec, commit: desired.commit,
                        base: baseFields(desired.name, branch: desired.branch, commit: tipCommit, identity: identity.tip,
                                         policyRevision: context.governance.commit),
                        context: context)
            return
        }
        if let live, live.commit == desired.commit.hex, live.phase != .pending, !retry, !interrupted,
           !live.conditions.contains(.approvalPending), !live.conditions.contains(.secretMissing), !live.conditions.contains(.admissionDenied),
           try hasVerdict(desired.name, on: live.commit) { return }
        let untouched = try live.map { !(try touches(desired, since: $0.commit)) } ?? false
        // A commit that touches none of the environment's files only moves its commit along —
        // unless an apply was cut short (Pending goes on) or the last denial was about identity,
        // which a new commit (re-signed history, say) may cure.
        if let live, live.phase != .pending, !retry, !interrupted, !live.conditions.contains(.admissionDenied), !live.conditions.contains(.approvalPending), untouched {
            var updated = live
            if updated.commit != desired.commit.hex { updated.lastCommitAt = clock() }
            updated.commit = desired.commit.hex
            updated.updatedAt = Date()
            try state.save(updated)
            return
        }
        // Waiting for approval with nothing changed since: the approval asked for is still of the
        // commit it waits at (later commits elsewhere do not reset it), and what converges once
        // approved is exactly that commit (its jobs' scripts, say, are not taken from a later one).
        var commit = tipCommit
        var desired = desired
        if let live, live.conditions.contains(.approvalPending), untouched, let waitingAt = ObjectID(hex: live.commit), waitingAt != tipCommit.id,
           try repository.isReachable(waitingAt, from: tipCommit.id),
           let approved = try loader.desiredEnvironments(branch: desired.branch, commit: waitingAt, protectedBranch: context.protectedBranch,
                                                         protectedTip: context.protectedTip, previewName: { try self.previewName(environment: $0, branch: $1) })
            .first(where: { $0.name == desired.name }) {
            commit = try repository.commit(waitingAt)
            desired = approved
        }
        // A retired record is taken up again with its team kept until the new one is admitted: a name
        // once another team's stays theirs to give (see below).
        var record = live ?? existing ?? EnvironmentRecord(name: desired.name, branch: desired.branch, commit: commit.id.hex,
                                                           envClass: desired.spec?.class.rawValue ?? (desired.isPreview ? "preview" : "development"),
                                                           team: desired.loaded.spec?.team)
        let recreated = existing?.phase == .destroyed
        if recreated {
            record.createdAt = Date(); record.destroyedAt = nil; record.appliedCommit = nil; record.fingerprint = nil
            record.specJSON = nil; record.conditions = []
        }
        if record.appliedCommit == nil && (record.baseCommit == nil || recreated) { record.baseCommit = identity.hidden.first?.hex }
        record.branch = desired.branch
        record.source = desired.loaded.name
        if record.commit != commit.id.hex || record.lastCommitAt == nil || recreated { record.lastCommitAt = clock() }
        record.commit = commit.id.hex
        record.updatedAt = Date()
        let base = baseFields(desired.name, branch: desired.branch, commit: commit, identity: identity.tip, policyRevision: context.governance.commit)

        let unchanged = live.map { $0.fingerprint == desired.fingerprint && $0.phase == .running } ?? false
        var prior = try before(live, branch: desired.branch, identity: identity, context: context)
        // A name once used (and retired) by another team's environment is that team's to reuse:
        // what it was given by name (secrets scoped with --env, say) must not pass to a newcomer.
        // Until admitted, the record keeps the team it had.
        if record.appliedCommit == nil, let former = (live ?? existing)?.team, former != desired.spec?.team { prior.team = former }
        // A preview of another team's live environment still needs that team, whatever team the
        // branch writes into the file.
        if desired.branch != context.protectedBranch, let owner = context.live[desired.loaded.name]?.team, owner != desired.spec?.team {
            prior.team = owner
        }
        let judgement = try admission.judge(desired, tip: commit, identity: identity, before: prior, context: context,
                                            changesRevision: !unchanged, asFound: asFound,
                                            missingSecrets: desired.spec.flatMap { spec in
                                                // (The data plane keeps its environments' secrets: the control plane cannot know them.)
                                                context.settings.driver(for: desired.name, class: spec.class.rawValue) == "agent" ? [] : missingSecrets?(spec)
                                            } ?? [])
        record.conditions = judgement.conditions
        let rules = base + [("decision", judgement.decision.rawValue)] + judgement.rules.map { ("rule", $0) }
        switch judgement.decision {
        case .deny:
            try appendOnce(.denied, desired.name, commit.id, rules, fresh: recreated)
            // A running revision stays up (fail safe); the denial is its condition and message.
            record.message = "commit \(commit.id.short) denied: \(judgement.rules.filter { !$0.hasSuffix("valid") && !$0.contains(": ok") }.joined(separator: "; "))"
                + (judgement.remedies.isEmpty ? "" : "; to be admitted: \(judgement.remedies.joined(separator: "; "))")
            try state.save(record)
            try state.record(EventRecord(environment: desired.name, kind: "denied", message: record.message!))
            logger.warning("denied", metadata: ["gantry.env": "\(desired.name)", "git.commit": "\(commit.id.short)", "reason": "\(record.message!)"])
            summary.denied.append(desired.name)
            return
        case .pending:
            try appendOnce(.pendingApproval, desired.name, commit.id, rules, fresh: recreated)
            record.message = "commit \(commit.id.short) waits for approval\(record.appliedCommit.map { "; still running \($0.prefix(7))" } ?? ""): \(judgement.remedies.joined(separator: "; "))"
            try state.save(record)
            summary.pending.append(desired.name)
            return
        case .allow:
            break
        }
        guard let spec = desired.spec else { return }
        record.envClass = spec.class.rawValue
        // (A preview of no team is charged to, and seen by, the team of the live environment it previews.)
        record.team = spec.team ?? (desired.branch == context.protectedBranch ? nil : context.live[desired.loaded.name]?.team)
        record.domain = context.settings.domain
        // Whoever changed it last is charged for it (and holds its preview slot).
        record.actor = identity.tip.principal
        record.actorKind = identity.tip.actor?.kind.rawValue
        record.onBehalfOf = identity.tip.onBehalfOf
        if spec.class == .preview {
            context.usage.note(Usage.Preview(name: record.name, branch: record.branch, team: record.team, agent: record.agent))
        }
        if unchanged {
            // Judged and recorded, nothing to apply: the running revision already matches.
            try appendOnce(.admitted, desired.name, commit.id, rules + [("change", "none: the running revision already matches")], fresh: recreated)
            summary.admitted.append(desired.name)
            record.message = nil
            try state.save(record)
            return
        }
        // What it will cost per hour once it runs (FORMATS.md's `cost-hourly`).
        let hourly = CostModel.breakdown(spec, pricing: context.settings.pricing).hourly
        try appendOnce(.admitted, desired.name, commit.id, rules + [("cost-hourly", String(format: "%.4f", hourly))], fresh: recreated)
        summary.admitted.append(desired.name)
        record.message = "applying \(commit.id.short)"
        record.conditions.append(.applying)
        try state.save(record)
        submitApply(desired, spec: spec, commit: commit.id, base: base, context: context)
    }

    /// What the environment was before the change: its running class, team, spec and paths, and
    /// where the change starts (the applied revision, else where the environment first appeared;
    /// for a new one, what the branch's change is counted from).
    func before(_ live: EnvironmentRecord?, branch: String, identity: IdentityVerdict, context: PassContext) throws -> Admission.Before {
        let start = live.flatMap { ($0.appliedCommit ?? $0.baseCommit).flatMap(ObjectID.init(hex:)) }
        guard let start else { return Admission.Before(base: identity.hidden) }
        var before = Admission.Before(base: [start] + (branch == context.protectedBranch ? [] : [context.revision]))
        guard let live, let applied = live.appliedCommit.flatMap(ObjectID.init(hex:)) else { return before }
        before.envClass = live.envClass
        before.team = live.team
        before.agent = live.agent
        before.spec = live.appliedSpec
        if let loaded = try loadedEnvironments(at: applied).first(where: { $0.name == (live.source ?? live.name) }) {
            before.watched = loaded.watchedPaths
        }
        return before
    }

    /// The environment files at `commit`, read once per commit (a few kept).
    func loadedEnvironments(at commit: ObjectID) throws -> [LoadedEnvironment] {
        if let known = loadedCache[commit] { return known }
        let loaded = try loader.environments(at: commit)
        if loadedCache.count > 16 { loadedCache.removeAll() }
        loadedCache[commit] = loaded
        return loaded
    }

    /// Hands an admitted revision to the driver on the operations pool; `finishApply` records the
    /// outcome on this thread. Production and the protected branch go first; a clone waits for the
    /// environments it clones from.
    func submitApply(_ desired: DesiredEnvironment, spec: EnvironmentSpec, commit: ObjectID, base: [(String, String)], context: PassContext) {
        var planned = PlannedEnvironment(name: desired.name, branch: desired.branch, commit: desired.commit, spec: spec,
                                         fingerprint: desired.fingerprint, domain: context.settings.domain,
                                         source: GitSnapshot(path: repository.path, commit: desired.commit))
        planned.driver = context.settings.driver(for: desired.name, class: spec.class.rawValue)
        let plan = planned
        // The secret versions as of now: the driver resolves these or newer ones, so a rotation
        // racing this apply is still noticed on the next pass.
        if let secretVersions, !spec.secrets.isEmpty { appliedSecretVersions[desired.name] = secretVersions(spec) }
        let driver = self.driver, logger = self.logger, killSwitches = self.killSwitches, willApply = self.willApply
        // An older revision still waiting is not applied first (branches pushed back and forth).
        for dropped in operations.dropQueuedApplies(of: desired.name) { completions[dropped] = nil }
        let ticket = operations.submit(desired.name, after: spec.databases.compactMap(\.cloneFrom),
                                       urgent: desired.branch == context.protectedBranch) {
            // Under a kill switch nothing of the environment starts: the apply is tried again
            // (with backoff) until the switch is lifted.
            if let why = killSwitches.reason(for: plan.name, team: plan.spec.team) {
                return .failed("held by the kill switch (\(why)); it is applied once a human with a role lifts the switch", .retryWithBackoff)
            }
            willApply?(plan.name, plan.spec)
            do {
                return .applied(try driver.apply(plan) { step in
                    logger.info("Applying revision \(commit.short): \(step)", metadata: ["gantry.env": "\(plan.name)"])
                })
            } catch {
                return .failed("\(error)", ErrorDisposition.of(error))
            }
        }
        completions[ticket] = { [unowned self] result, summary in try finishApply(plan, commit: commit, base: base, result, &summary) }
    }

    /// Records a finished apply: the applied record and Running, or the failure and when it is retried.
    func finishApply(_ plan: PlannedEnvironment, commit: ObjectID, base: [(String, String)], _ result: OperationResult,
                     _ summary: inout PassSummary) throws {
        guard var record = try state.environment(plan.name) else { return }
        // Another operation of the environment is queued (a later commit): it keeps Applying.
        let more = operations.isBusy(plan.name)
        let current = record.commit == commit.hex
        let previouslyApplied = record.appliedCommit
        if record.phase == .destroyed { record.destroyedAt = nil }
        record.updatedAt = Date()
        switch result {
        case .applied(let outcome):
            // (A later commit judged meanwhile may wait for approval: this revision runs, that one waits.)
            record.appliedCommit = plan.commit.hex
            record.fingerprint = plan.fingerprint
            record.specJSON = Self.json(plan.spec)
            record.attempts = 0
            record.nextAttemptAt = nil
            record.conditions.removeAll { $0 == .applyFailed || ($0 == .applying && !more) }
            if current && !more { record.message = nil }
            // The record first: a crash before the state is saved redoes the apply (a no-op for the
            // driver) and finds the record already written. A revision applied again after another
            // ran (a branch moved back and forth) is recorded again: the log says what runs.
            let reapplied = try previouslyApplied.map { $0 != plan.commit.hex } ?? false
                && state.lastAuditRecord(environment: plan.name).map { last in
                    !(last.target == commit.hex && AuditRecord.parseNote(last.text).records.last?.event == AuditEvent.applied.rawValue)
                } ?? false
            try appendOnce(.applied, plan.name, commit, base + outcome.changes.map { ("change", $0) }, fresh: reapplied)
            try state.save(record)
            try state.record(EventRecord(environment: plan.name, kind: "applied", message: "revision \(commit.short) running"))
            lifecycle?.applied(plan.name)
            logger.info("applied", metadata: ["gantry.env": "\(plan.name)", "git.commit": "\(commit.short)"])
            summary.applied.append(plan.name)
        case .destroyed:
            throw ReconcileError(message: "the apply of \(plan.name) at \(commit.short) came back as a teardown")
        case .failed(let error, let disposition):
            // Attempts count failures of one revision: a new one starts again from the first backoff.
            record.attempts = (record.fingerprint == plan.fingerprint ? record.attempts : 0) + 1
            record.conditions = [.applyFailed] + (more ? [.applying] : [])
            if disposition == .stallUntilNewCommit {
                // No retry can help: the next commit that changes the environment is applied.
                record.nextAttemptAt = nil
                record.message = "apply of \(commit.short) failed; not retried until a new commit changes it: \(error)"
            } else {
                let delay = min(options.retryBackoff * pow(2, Double(record.attempts - 1)), options.maxRetryBackoff)
                record.nextAttemptAt = Date().addingTimeInterval(delay)
                record.message = "apply of \(commit.short) failed (attempt \(record.attempts); next attempt in \(Int(delay.rounded()))s): \(error)"
            }
            record.fingerprint = plan.fingerprint
            try appendOnce(.failed, plan.name, commit, base + [("error", error)])
            try state.save(record)
            try state.record(EventRecord(environment: plan.name, kind: "failed", message: record.message!))
            logger.error("apply failed", metadata: ["gantry.env": "\(plan.name)", "error": "\(error)"])
            summary.failed.append(plan.name)
        }
    }

    /// True when a file, template or source of the environment differs between `previous` and its commit.
    func touches(_ desired: DesiredEnvironment, since previous: String) throws -> Bool {
        guard let before = ObjectID(hex: previous) else { return true }
        return desired.loaded.isTouched(by: try repository.changedPaths(from: before, to: desired.commit))
    }
}
