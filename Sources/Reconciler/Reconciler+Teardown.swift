import Audit
import Foundation
import GitStore
import SpecLoading
import SpecModel
import StateStore

extension Reconciler {
    /// Branch deletion and merges, checked every pass against the fresh listing. A branch is
    /// merged when the last admitted protected revision contains its tip (an unadmitted merge on
    /// the protected branch destroys nothing).
    func sweep(branches: [String: ObjectID], context: PassContext, protectedChanged: Bool, _ summary: inout PassSummary) throws {
        // Branches seen before, and branches of environments a pass cut short may have left behind.
        // The protected branch is never swept: a listing without it must not take production down.
        let known = Set(try processedRefs().keys).union(try state.environments().map(\.branch))
        let gone = known.sorted().filter { branches[$0] == nil && $0 != context.protectedBranch }
        for (index, branch) in gone.enumerated() {
            guard summary.tearingDown.count < options.maxTeardownsPerPass else {
                summary.postponed += gone.count - index
                logger.notice("\(gone.count - index) deleted branches wait for the next pass to be torn down (at most \(options.maxTeardownsPerPass) environments per pass)")
                break
            }
            do {
                try destroyPreviews(of: branch, reason: "branch \(branch) was deleted", commitForNote: nil, &summary)
                try setProcessed(branch: branch, commit: nil)
            } catch {
                logger.error("could not tear down the previews of a deleted branch; will retry", metadata: ["git.branch": "\(branch)", "error": "\(error)"])
            }
        }
        guard protectedChanged else { return }
        let previewBranches = Set(try state.environments().filter { $0.branch != context.protectedBranch }.map(\.branch))
        for branch in previewBranches {
            guard let tip = branches[branch], try tip == context.revision || repository.isReachable(tip, from: context.revision) else { continue }
            try destroyPreviews(of: branch, reason: "branch \(branch) was merged into \(context.protectedBranch) at \(context.revision.short)",
                                commitForNote: tip, &summary)
        }
    }

    func destroyPreviews(of branch: String, reason: String, commitForNote: ObjectID?, _ summary: inout PassSummary) throws {
        for environment in try state.environments(branch: branch) {
            try destroy(environment, reason: reason, commitForNote: commitForNote?.hex ?? environment.commit, &summary)
        }
    }

    /// Decides a teardown: the record says Destroying (with the reason, and the commit its
    /// record goes on) before the driver starts, so a Gantry stopped in between tears it down
    /// again (`resumeTeardowns`); `finishDestroy` records it. Nothing happens while one is under way.
    func destroy(_ environment: EnvironmentRecord, reason: String, commitForNote: String, _ summary: inout PassSummary) throws {
        guard let target = ObjectID(hex: commitForNote) else {
            throw ReconcileError(message: "cannot record the teardown of \(environment.name): '\(commitForNote)' is not a commit id")
        }
        var record = try state.environment(environment.name) ?? environment
        guard record.phase != .destroyed, !(record.conditions.contains(.destroying) && operations.isBusy(record.name)) else { return }
        logger.info("destroying: \(reason)", metadata: ["gantry.env": "\(environment.name)"])
        if !record.conditions.contains(.destroying) { record.conditions.append(.destroying) }
        record.commit = target.hex
        record.message = reason
        record.updatedAt = Date()
        try state.save(record)
        summary.tearingDown.append(record.name)
        let driver = self.driver, name = record.name, sources = GitSources(path: repository.path), logger = self.logger
        let killSwitches = self.killSwitches, team = record.team
        // A revision still waiting to be applied never runs once the teardown is decided.
        for dropped in operations.dropQueuedApplies(of: name) { completions[dropped] = nil }
        let ticket = operations.submit(name, kind: .destroy) {
            // Frozen by a kill switch: its onDestroy job would run frozen too. The teardown waits
            // (retried) until a human with a role lifts the switch.
            if let why = killSwitches.reason(for: name, team: team) {
                return .failed("held by the kill switch (\(why)); torn down once it is lifted", .retryWithBackoff)
            }
            do {
                return .destroyed(problems: try driver.destroy(environment: name, sources: sources) { step in
                    logger.info("Destroying \(name): \(step)")
                })
            } catch {
                return .failed("\(error)", ErrorDisposition.of(error))
            }
        }
        completions[ticket] = { [unowned self] result, summary in try finishDestroy(name, reason: reason, target: target, result, &summary) }
    }

    /// Who asked for the teardown through the API (the `destroy-requested` record of the same
    /// branch tip), as the actor of its `destroyed` record; nothing when the branch went by Git.
    func requester(ofDestroy name: String, at target: ObjectID) -> [(String, String)] {
        for entry in (try? state.recentAuditRecords(environment: name, limit: 10)) ?? [] {
            guard let record = AuditRecord.parseNote(entry.text).records.first else { continue }
            if record.event == AuditEvent.destroyRequested.rawValue, record.value("commit") == target.hex, let actor = record.value("actor") {
                return [("actor", actor), ("actor-kind", record.value("actor-kind") ?? "unknown"), ("via", "api")]
            }
            if [AuditEvent.admitted, .applied, .denied].map(\.rawValue).contains(record.event) { break }
        }
        return []
    }

    /// Records a finished teardown; a failed one stays Destroying and is tried again next pass.
    func finishDestroy(_ name: String, reason: String, target: ObjectID, _ result: OperationResult, _ summary: inout PassSummary) throws {
        guard var record = try state.environment(name), record.phase != .destroyed else { return }
        switch result {
        case .destroyed(let problems):
            let fields = [("environment", name), ("branch", record.branch), ("commit", target.hex), ("reason", reason)]
                + requester(ofDestroy: name, at: target) + problems.map { ("problem", $0) }
            try appendOnce(.destroyed, name, target, fields)
            lifecycle?.forget(name)
            record.conditions = []
            record.destroyedAt = Date()
            record.updatedAt = Date()
            record.message = reason
            try state.save(record)
            try state.record(EventRecord(environment: name, kind: "destroyed", message: reason))
            summary.destroyed.append(name)
        case .failed(let error, _):
            // (Whatever the cause, a teardown decided is tried again every pass: what runs must go.)
            logger.error("could not tear down; will retry", metadata: ["gantry.env": "\(name)", "error": "\(error)"])
        case .applied:
            throw ReconcileError(message: "the teardown of \(name) came back as an apply")
        }
    }

    /// Teardowns decided before a stop or a crash, and failed ones, go on (of the `environments`
    /// the pass read at its start: one decided during the pass is under way).
    func resumeTeardowns(of environments: [EnvironmentRecord], _ summary: inout PassSummary) {
        for record in environments where record.conditions.contains(.destroying) && !operations.isBusy(record.name) {
            do {
                try destroy(record, reason: record.message ?? "teardown resumed", commitForNote: record.commit, &summary)
            } catch {
                logger.error("could not resume a teardown", metadata: ["gantry.env": "\(record.name)", "error": "\(error)"])
            }
        }
    }
}

extension Reconciler {
    /// The lifecycle's pass (idle sleep, requests, ledger, budgets), then the teardown of the
    /// previews whose TTL ran out: a `ttl-expired` record, then the teardown as for a deleted branch.
    func expire(context: PassContext, _ summary: inout PassSummary) {
        guard let lifecycle else { return }
        for expiry in lifecycle.tick(settings: context.settings, revision: context.revision.hex) {
            guard let record = try? state.environment(expiry.environment), record.phase != .destroyed,
                  !record.conditions.contains(.destroying), let commit = ObjectID(hex: record.commit) else { continue }
            // A commit pushed since this pass listed the branches is judged first (it may keep it).
            if let tip = try? repository.reference("refs/heads/\(record.branch)"), (try? processedRefs()[record.branch]) != tip.hex { continue }
            do {
                try appendOnce(.ttlExpired, record.name, commit, [("environment", record.name), ("branch", record.branch), ("commit", record.commit),
                                                                   ("actor", "gantry"), ("actor-kind", "system"), ("reason", expiry.reason)])
                try destroy(record, reason: "ttl expired: \(expiry.reason)", commitForNote: record.commit, &summary)
            } catch {
                logger.error("could not tear down an expired preview; retried next pass", metadata: ["gantry.env": "\(record.name)", "error": "\(error)"])
            }
        }
    }
}
