import Audit
import Foundation
import GitStore
import Logging
import SpecLoading
import SpecModel
import StateStore

/// The reconcile loop: watches the configuration repository's branches and converges every
/// environment they ask for, recording each decision as a signed audit note.
public final class Reconciler: @unchecked Sendable {
    public struct Options: Sendable {
        /// The branch that defines governance and live environments, until gantry.yaml on it says otherwise.
        public var protectedBranch = "main"
        /// Seconds between polls of the refs.
        public var pollInterval = 1.0
        public init() {}
    }

    /// What one pass did, for logs, tests and benchmarks.
    public struct PassSummary: Sendable {
        public var changedBranches: [String] = []
        public var admitted: [String] = []
        public var denied: [String] = []
        public var applied: [String] = []
        public var failed: [String] = []
        public var destroyed: [String] = []
        public var skipped = false
    }

    let repository: GitRepository
    let loader: ConfigLoader
    let state: StateStore
    let audit: AuditLog
    let driver: Driver
    let logger: Logger
    public let options: Options
    /// Called when a fetchable remote is mirrored: refreshes the local copy before each pass.
    public var beforePass: (() throws -> Void)?
    /// The processed tip per branch, read from the state DB once and then kept in step with it, so a
    /// pass over unchanged refs costs a ref listing and a dictionary compare.
    private var processedCache: [String: String]?

    func processedRefs() throws -> [String: String] {
        if let processedCache { return processedCache }
        let loaded = try state.processedRefs()
        processedCache = loaded
        return loaded
    }

    func setProcessed(branch: String, commit: String?) throws {
        try state.setProcessed(branch: branch, commit: commit)
        if processedCache != nil { processedCache![branch] = commit }
    }

    public init(repository: GitRepository, state: StateStore, audit: AuditLog, driver: Driver, logger: Logger,
                options: Options = Options()) {
        self.repository = repository
        self.loader = ConfigLoader(repository: repository)
        self.state = state
        self.audit = audit
        self.driver = driver
        self.logger = logger
        self.options = options
    }

    /// Adopts what survived a restart, then loops: a pass, then wait for the poll interval or a wake.
    public func run(wake: WakeSignal, shouldStop: () -> Bool) {
        recover()
        while !shouldStop() {
            do { _ = try runPass() } catch { logger.error("pass failed; nothing was destroyed, retrying", metadata: ["error": "\(error)"]) }
            if shouldStop() { break }
            wake.wait(seconds: options.pollInterval)
        }
    }

    /// Tells the driver which environments are wanted so it can adopt or stop what it finds.
    public func recover() {
        let wanted = Set(((try? state.environments()) ?? []).map(\.name))
        for event in driver.recover(desired: wanted) { note(event) }
    }

    /// One full pass over the changed refs, then the sweeps, then supervision.
    @discardableResult
    public func runPass() throws -> PassSummary {
        var summary = PassSummary()
        try beforePass?()
        let branches: [String: ObjectID]
        do {
            branches = try repository.branches()
        } catch {
            logger.error("cannot list branches; skipping this pass (nothing is destroyed)", metadata: ["error": "\(error)"])
            summary.skipped = true
            return summary
        }
        guard !branches.isEmpty else {
            logger.warning("the repository lists no branches; skipping this pass (an empty listing never destroys)")
            summary.skipped = true
            return summary
        }
        var protectedBranch = options.protectedBranch
        var settings = Settings()
        if let tip = branches[protectedBranch] {
            settings = loader.settings(at: tip).settings
            if settings.protectedBranch != protectedBranch, let configured = branches[settings.protectedBranch] {
                protectedBranch = settings.protectedBranch
                settings = loader.settings(at: configured).settings
            }
        }
        let protectedTip = branches[protectedBranch]
        let processed = try processedRefs()
        let changed = branches.filter { processed[$0.key] != $0.value.hex && !settings.ignores(branch: $0.key) }
            .sorted { ($0.key == protectedBranch ? 0 : 1, $0.key) < ($1.key == protectedBranch ? 0 : 1, $1.key) }
        summary.changedBranches = changed.map(\.key)
        let context = PassContext(settings: settings, protectedBranch: protectedBranch, protectedTip: protectedTip)

        for (branch, tip) in changed {
            do {
                if branch != protectedBranch, let protectedTip, try repository.isReachable(tip, from: protectedTip) {
                    try destroyPreviews(of: branch, reason: "branch \(branch) was merged into \(protectedBranch) at \(protectedTip.short)", commitForNote: tip, &summary)
                } else {
                    try reconcile(branch: branch, tip: tip, context: context, &summary)
                }
                try setProcessed(branch: branch, commit: tip.hex)
            } catch {
                logger.error("could not reconcile branch; will retry", metadata: ["git.branch": "\(branch)", "error": "\(error)"])
            }
        }
        try sweep(branches: branches, context: context, protectedChanged: changed.contains { $0.key == protectedBranch }, &summary)
        for event in driver.supervise() { note(event) }
        return summary
    }

    struct PassContext {
        let settings: Settings
        let protectedBranch: String
        let protectedTip: ObjectID?
    }

    /// Converges the environments one branch asks for, and destroys those it no longer asks for.
    func reconcile(branch: String, tip: ObjectID, context: PassContext, _ summary: inout PassSummary) throws {
        let desired = try loader.desiredEnvironments(branch: branch, commit: tip, protectedBranch: context.protectedBranch,
                                                     protectedTip: context.protectedTip)
        let commit = try repository.commit(tip)
        for environment in desired {
            try converge(environment, commit: commit, context: context, &summary)
        }
        let wanted = Set(desired.map(\.name))
        for existing in try state.environments() where existing.branch == branch && !wanted.contains(existing.name) {
            let reason = branch == context.protectedBranch
                ? "environment \(existing.name) was removed from \(branch) at \(tip.short)"
                : "branch \(branch) no longer changes \(existing.name) at \(tip.short)"
            try destroy(existing, reason: reason, commitForNote: tip.hex, &summary)
        }
    }

    /// Judges and applies one desired environment.
    func converge(_ desired: DesiredEnvironment, commit: CommitInfo, context: PassContext, _ summary: inout PassSummary) throws {
        let existing = try state.environment(desired.name)
        let live = existing.flatMap { $0.phase == .destroyed ? nil : $0 }
        if let live, live.fingerprint == desired.fingerprint, live.phase == .running {
            guard live.commit != desired.commit.hex else { return }
            // Nothing to apply. A commit that touched the environment's files is still judged and
            // recorded; one that touched other files only moves the environment's commit along.
            if try touches(desired, since: live.commit) {
                let base = baseFields(desired.name, branch: desired.branch, commit: commit, policyRevision: context.protectedTip)
                try appendOnce(.admitted, desired.name, commit.id, base + [("decision", "allow"), ("rule", "spec: valid"),
                                                                            ("change", "none: the running revision already matches")])
                summary.admitted.append(desired.name)
            }
            var updated = live
            updated.commit = desired.commit.hex
            updated.updatedAt = Date()
            try state.save(updated)
            return
        }
        if let live, live.commit == desired.commit.hex, live.fingerprint == desired.fingerprint || live.phase == .denied {
            return
        }
        var record = live ?? EnvironmentRecord(name: desired.name, branch: desired.branch, commit: desired.commit.hex,
                                               envClass: desired.spec?.class.rawValue ?? (desired.isPreview ? "preview" : "development"),
                                               team: desired.loaded.spec?.team, phase: .pending)
        if existing?.phase == .destroyed { record.createdAt = Date(); record.destroyedAt = nil; record.appliedCommit = nil; record.fingerprint = nil }
        record.branch = desired.branch
        record.commit = desired.commit.hex
        record.updatedAt = Date()
        let base = baseFields(desired.name, branch: desired.branch, commit: commit, policyRevision: context.protectedTip)

        guard let spec = desired.spec else {
            let rules = desired.loaded.diagnostics.map { "spec: invalid: \($0)" }
            try appendOnce(.denied, desired.name, commit.id, base + [("decision", "deny")] + rules.map { ("rule", $0) })
            record.phase = record.appliedCommit == nil ? .denied : .running
            record.message = "commit \(commit.id.short) denied: \(desired.loaded.diagnostics.map(\.description).joined(separator: "; "))"
            try state.save(record)
            try state.record(EventRecord(environment: desired.name, kind: "denied", message: record.message!))
            logger.warning("denied", metadata: ["gantry.env": "\(desired.name)", "git.commit": "\(commit.id.short)",
                                                 "reason": "\(desired.loaded.diagnostics.first?.description ?? "")"])
            summary.denied.append(desired.name)
            return
        }
        record.envClass = spec.class.rawValue
        record.team = spec.team
        record.domain = context.settings.domain
        try appendOnce(.admitted, desired.name, commit.id, base + [("decision", "allow"), ("rule", "spec: valid")])
        summary.admitted.append(desired.name)
        if record.appliedCommit == nil { record.phase = .pending }
        record.message = "applying \(commit.id.short)"
        try state.save(record)

        let plan = PlannedEnvironment(name: desired.name, branch: desired.branch, commit: desired.commit, spec: spec,
                                      fingerprint: desired.fingerprint, domain: context.settings.domain, repository: repository)
        do {
            let outcome = try driver.apply(plan) { step in
                logger.info("Applying revision \(commit.id.short): \(step)", metadata: ["gantry.env": "\(desired.name)"])
            }
            record.phase = .running
            record.appliedCommit = desired.commit.hex
            record.fingerprint = desired.fingerprint
            record.specJSON = Self.json(spec)
            record.message = nil
            record.updatedAt = Date()
            // The record first: a crash before the state is saved redoes the apply (a no-op for the
            // driver) and finds the record already written.
            try appendOnce(.applied, desired.name, commit.id, base + outcome.changes.map { ("change", $0) })
            try state.save(record)
            try state.record(EventRecord(environment: desired.name, kind: "applied", message: "revision \(commit.id.short) running"))
            logger.info("applied", metadata: ["gantry.env": "\(desired.name)", "git.commit": "\(commit.id.short)"])
            summary.applied.append(desired.name)
        } catch {
            record.phase = .failed
            record.message = "apply of \(commit.id.short) failed: \(error)"
            record.fingerprint = desired.fingerprint
            record.updatedAt = Date()
            try appendOnce(.failed, desired.name, commit.id, base + [("error", "\(error)")])
            try state.save(record)
            try state.record(EventRecord(environment: desired.name, kind: "failed", message: record.message!))
            logger.error("apply failed", metadata: ["gantry.env": "\(desired.name)", "error": "\(error)"])
            summary.failed.append(desired.name)
        }
    }

    /// True when a file, template or source of the environment differs between `previous` and its commit.
    func touches(_ desired: DesiredEnvironment, since previous: String) throws -> Bool {
        guard let before = ObjectID(hex: previous) else { return true }
        return desired.loaded.isTouched(by: try repository.changedPaths(from: before, to: desired.commit))
    }

    /// Branch deletion and merges, checked every pass against the fresh listing.
    func sweep(branches: [String: ObjectID], context: PassContext, protectedChanged: Bool, _ summary: inout PassSummary) throws {
        // Branches seen before, and branches of environments a pass cut short may have left behind.
        // The protected branch is never swept: a listing without it must not take production down.
        let known = Set(try processedRefs().keys).union(try state.environments().map(\.branch))
        for branch in known.sorted() where branches[branch] == nil && branch != context.protectedBranch {
            do {
                try destroyPreviews(of: branch, reason: "branch \(branch) was deleted", commitForNote: nil, &summary)
                try setProcessed(branch: branch, commit: nil)
            } catch {
                logger.error("could not tear down the previews of a deleted branch; will retry", metadata: ["git.branch": "\(branch)", "error": "\(error)"])
            }
        }
        guard protectedChanged, let protectedTip = context.protectedTip else { return }
        let previewBranches = Set(try state.environments().filter { $0.branch != context.protectedBranch }.map(\.branch))
        for branch in previewBranches {
            guard let tip = branches[branch], try repository.isReachable(tip, from: protectedTip) else { continue }
            try destroyPreviews(of: branch, reason: "branch \(branch) was merged into \(context.protectedBranch) at \(protectedTip.short)",
                                commitForNote: tip, &summary)
        }
    }

    func destroyPreviews(of branch: String, reason: String, commitForNote: ObjectID?, _ summary: inout PassSummary) throws {
        for environment in try state.environments() where environment.branch == branch {
            try destroy(environment, reason: reason, commitForNote: commitForNote?.hex ?? environment.commit, &summary)
        }
    }

    func destroy(_ environment: EnvironmentRecord, reason: String, commitForNote: String, _ summary: inout PassSummary) throws {
        logger.info("destroying: \(reason)", metadata: ["gantry.env": "\(environment.name)"])
        try driver.destroy(environment: environment.name) { step in
            logger.info("Destroying \(environment.name): \(step)")
        }
        var fields: [(String, String)] = [("environment", environment.name), ("branch", environment.branch), ("commit", commitForNote)]
        fields.append(("reason", reason))
        guard let target = ObjectID(hex: commitForNote) else {
            throw ReconcileError(message: "cannot record the teardown of \(environment.name): '\(commitForNote)' is not a commit id")
        }
        try appendOnce(.destroyed, environment.name, target, fields)
        var record = environment
        record.phase = .destroyed
        record.destroyedAt = Date()
        record.updatedAt = Date()
        record.message = reason
        try state.save(record)
        try state.record(EventRecord(environment: environment.name, kind: "destroyed", message: reason))
        summary.destroyed.append(environment.name)
    }

    func baseFields(_ environment: String, branch: String, commit: CommitInfo, policyRevision: ObjectID?) -> [(String, String)] {
        var fields: [(String, String)] = [("environment", environment), ("branch", branch), ("commit", commit.id.hex),
                                          ("actor", commit.authorEmail), ("actor-kind", "unverified")]
        for trailer in commit.trailers {
            switch trailer.key.lowercased() {
            case "agent": fields.append(("agent", trailer.value))
            case "on-behalf-of": fields.append(("on-behalf-of", trailer.value))
            case "task": fields.append(("task", trailer.value))
            default: break
            }
        }
        fields.append(("policy-revision", policyRevision?.hex ?? "none"))
        return fields
    }

    /// Appends a record unless a pass redone after a crash already wrote it: the commit's note is
    /// the evidence. Within the environment's records on that note, an `admitted`/`denied` counts
    /// as written while no `destroyed` follows it; `applied`/`failed` while no new admission
    /// follows; `destroyed` when it is the latest. An environment destroyed and re-created on the
    /// same commit is therefore recorded again.
    func appendOnce(_ event: AuditEvent, _ environment: String, _ commit: ObjectID, _ fields: [(String, String)]) throws {
        if let note = try repository.note(on: commit, notesRef: audit.notesRef) {
            let events = AuditRecord.parseNote(note).records.filter { $0.value("environment") == environment }.map(\.event)
            if Self.alreadyRecorded(event.rawValue, in: events) { return }
        }
        try audit.append([AuditEntry(event: event, commit: commit.hex, fields: fields.map { (key: $0.0, value: $0.1) })])
    }

    static func alreadyRecorded(_ event: String, in events: [String]) -> Bool {
        let judged: Set<String> = [AuditEvent.admitted.rawValue, AuditEvent.denied.rawValue]
        let destroyed = AuditEvent.destroyed.rawValue
        switch event {
        case destroyed:
            return events.last == destroyed
        case _ where judged.contains(event):
            guard let last = events.lastIndex(where: { judged.contains($0) }) else { return false }
            return !events[last...].contains(destroyed)
        default:
            let cycle = events.lastIndex(where: { judged.contains($0) }).map { events[($0 + 1)...] } ?? events[...]
            return cycle.contains(event)
        }
    }

    func note(_ event: DriverEvent) {
        logger.notice("\(event.message)", metadata: ["gantry.env": "\(event.environment)", "event": "\(event.kind)"])
        try? state.record(EventRecord(environment: event.environment, kind: event.kind, message: event.message))
    }

    static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}

/// A broken invariant inside a pass, with what was being done.
struct ReconcileError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
