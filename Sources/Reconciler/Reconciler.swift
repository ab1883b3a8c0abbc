import Audit
import Foundation
import GitStore
import Governance
import Logging
import SpecLoading
import SpecModel
import StateStore

/// The reconcile loop: watches the configuration repository's branches and converges every
/// environment they ask for, recording each decision as a signed audit note.
///
/// Unchecked because its mutable state (caches, deferred records, the completions of submitted
/// operations) belongs to the one thread that runs passes; driver operations run on the
/// `operations` pool and hand back only values (`OperationResult`), handled on that thread.
public final class Reconciler: @unchecked Sendable {
    public struct Options: Sendable {
        /// The branch that defines governance and live environments, until gantry.yaml on it says otherwise.
        public var protectedBranch = "main"
        /// Seconds between polls of the refs.
        public var pollInterval = 1.0
        /// Report drift (stopped processes, dropped databases) without correcting it.
        public var detectOnly = false
        /// At most this many changed branches are judged, and this many environments torn down,
        /// in one pass: the rest wait for the next pass (which follows at once), taken in turn, so
        /// thousands of branches pushed at once delay a new push by a few passes, not by all of them.
        public var maxBranchesPerPass = 200
        public var maxTeardownsPerPass = 100
        /// A failed apply is retried without a new commit: after `retryBackoff` seconds, then
        /// doubling, at most `maxRetryBackoff` apart.
        public var retryBackoff = 10.0
        public var maxRetryBackoff = 300.0
        /// Applies and teardowns running at once (each environment has at most one).
        public var maxConcurrentOperations = 4 * ProcessInfo.processInfo.activeProcessorCount
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
        /// Teardowns started (recorded in `destroyed` once finished).
        public var tearingDown: [String] = []
        public var pending: [String] = []
        /// Environments whose drift was corrected (recorded), or only detected (`detectOnly`).
        public var driftCorrected: [String] = []
        public var drift: [String] = []
        public var skipped = false
        /// Why nothing was admitted or destroyed this pass (no anchor, anchor lost, branch missing).
        public var halted: String?
        /// The protected commit admission stopped at (waiting for approval, or denied).
        public var blocked: String?
        /// The notes had lost records and were published again.
        public var auditRestored = false
        /// Branches or teardowns left for the next pass (the per-pass caps were reached).
        public var postponed = 0
    }

    let repository: GitRepository
    let loader: ConfigLoader
    let admission: Admission
    let state: StateStore
    let audit: AuditLog
    let driver: Driver
    let logger: Logger
    /// Where applies and teardowns run (see `OperationPool`).
    public let operations: OperationPool
    /// What to do on this thread when a submitted operation finishes, by ticket.
    var completions: [Int: (OperationResult, inout PassSummary) throws -> Void] = [:]
    public let options: Options
    /// Called when a fetchable remote is mirrored: refreshes the local copy before each pass.
    public var beforePass: (() throws -> Void)?
    /// Told of each pass `run` makes (its duration in seconds and what it did), and of the
    /// operations recorded between passes (duration nil): for metrics.
    public var observe: ((_ seconds: Double?, _ summary: PassSummary) -> Void)?
    /// Told each pass the settings of the last admitted protected revision (the egress proxy and
    /// the kill switch follow them).
    public var governed: ((_ settings: Settings, _ revision: String) -> Void)?
    /// Told before an environment's revision is applied (its services may call out as they start).
    public var willApply: (@Sendable (_ environment: String, _ spec: EnvironmentSpec) -> Void)?
    /// The time budgets, TTLs and idle timers are counted with (a test drives a clock of its own).
    public var clock: @Sendable () -> Date = { Date() }
    /// Sleep, wake, TTL, spend and autoscaling (nil: environments never sleep and nothing is metered).
    public var lifecycle: LifecycleController?
    /// The environments a kill switch covers: not applied, corrected, woken or scaled meanwhile.
    public let killSwitches = KillSwitchBoard()
    /// The secrets of `spec.secrets` the environment cannot see (none are checked when nil).
    public var missingSecrets: ((EnvironmentSpec) -> [String])?
    /// The version of each secret an environment sees (name → version), to notice rotations.
    public var secretVersions: ((EnvironmentSpec) -> [String: String])?
    /// Secret versions last applied per environment (in memory: after a restart the driver's own
    /// fingerprints still catch a rotation).
    var appliedSecretVersions: [String: [String: String]] = [:]
    /// The processed tip per branch, read from the state DB once and then kept in step with it, so a
    /// pass over unchanged refs costs a ref listing and a dictionary compare.
    private var processedCache: [String: String]?
    /// The approvals notes ref as last seen; when it moves, environments waiting for approval are judged again.
    private var approvalsSeen: (tip: ObjectID?, known: Bool) = (nil, false)
    /// Governance read at recent revisions (a few entries).
    var governanceCache: [ObjectID: GovernanceRevision] = [:]
    /// Whether the protected tip contains the anchor and the admitted revision, for the last
    /// (tip:anchor:revision) checked.
    var containsCache: (key: String, value: (anchor: Bool, revision: Bool, rewound: Bool))?
    /// The last look for an anchor this key recorded before (by notes tip).
    var anchorRecordCache: (tip: ObjectID?, found: String?)?
    /// Denials and waits judged but not yet written (see `appendOnce`).
    var deferredRecords: [AuditEntry] = []
    /// The last branch judged by a pass that reached `maxBranchesPerPass`: the next pass starts after it.
    var branchCursor: String?
    /// Branches judged whose records are still deferred: marked processed once those are written
    /// (a crash in between judges them again; never a processed branch whose denial was lost).
    var pendingProcessed: [(branch: String, commit: String)] = []
    /// Environment files read at recent commits (a few entries).
    var loadedCache: [ObjectID: [LoadedEnvironment]] = [:]

    func processedRefs() throws -> [String: String] {
        if let processedCache { return processedCache }
        let loaded = try state.processedRefs()
        processedCache = loaded
        return loaded
    }

    /// Forgets the processed tips read from the state DB (after it changed them behind this cache).
    func processedCacheReset() { processedCache = nil }

    /// Marks a judged branch processed, after its deferred records are written.
    func markProcessed(branch: String, commit: String) throws {
        if deferredRecords.isEmpty { try setProcessed(branch: branch, commit: commit) } else { pendingProcessed.append((branch, commit)) }
    }

    func setProcessed(branch: String, commit: String?) throws {
        try state.setProcessed(branch: branch, commit: commit)
        if processedCache != nil { processedCache![branch] = commit }
    }

    public init(repository: GitRepository, state: StateStore, audit: AuditLog, driver: Driver, logger: Logger,
                options: Options = Options()) {
        self.repository = repository
        self.loader = ConfigLoader(repository: repository)
        self.admission = Admission(repository: repository, logger: logger)
        self.state = state
        self.audit = audit
        self.driver = driver
        self.logger = logger
        self.options = options
        self.operations = OperationPool(limit: options.maxConcurrentOperations)
        if audit.journal == nil { audit.journal = StateJournal(state) }
    }

    /// Adopts what survived a restart, then loops: a pass, then wait for the poll interval or a wake.
    /// Applies and teardowns go on between passes; each one finished wakes the loop to record it.
    /// On stop, the operations under way finish and are recorded first.
    public func run(wake: WakeSignal, shouldStop: () -> Bool) {
        recover()
        operations.whenFinished { wake.wakeForOperations() }
        while !shouldStop() {
            var postponed = 0
            let started = Date()
            do {
                let summary = try runPass(waitForOperations: false)
                postponed = summary.postponed
                observe?(Date().timeIntervalSince(started), summary)
            } catch {
                logger.error("pass failed; nothing was destroyed, retrying", metadata: ["error": "\(error)"])
                observe?(Date().timeIntervalSince(started), PassSummary())
            }
            if shouldStop() { break }
            // Work left over by the per-pass caps goes on at once.
            guard postponed == 0 else { continue }
            // Operations that finish are recorded as they finish, without a whole pass (a burst of
            // applies would otherwise list every branch once per finished apply); a ref change,
            // an approval, a stop or the poll interval brings the next whole pass.
            let due = Date().addingTimeInterval(options.pollInterval)
            while wake.waitForReason(seconds: max(0, due.timeIntervalSinceNow)) == .operations, !shouldStop() {
                var summary = PassSummary()
                recordFinished(&summary)
                do { try flushRecords() } catch { logger.error("could not write the records of finished operations", metadata: ["error": "\(error)"]) }
                observe?(nil, summary)
            }
        }
        var summary = PassSummary()
        finishOperations(&summary)
    }

    /// Tells the driver which environments are wanted so it can adopt or stop what it finds.
    public func recover() {
        let wanted = Set(((try? state.environments()) ?? []).map(\.name))
        for event in driver.recover(desired: wanted) { note(event) }
    }

    /// One full pass: the audit chain's integrity, the protected branch commit by commit, then
    /// every other changed branch, the sweeps, and supervision.
    /// With `waitForOperations` the pass returns once the applies and teardowns it started have
    /// finished and are recorded; without, they go on and a later pass records them.
    @discardableResult
    public func runPass(waitForOperations: Bool = true) throws -> PassSummary {
        var summary = PassSummary()
        do {
            recordFinished(&summary)
            try pass(&summary)
            try flushRecords()
            if waitForOperations { finishOperations(&summary) }
        } catch {
            try? flushRecords()
            // Whatever stopped the pass, what runs is still supervised.
            correctDrift(&summary)
            if waitForOperations { finishOperations(&summary) }
            throw error
        }
        return summary
    }

    private func pass(_ summary: inout PassSummary) throws {
        try beforePass?()
        if let restored = try audit.ensureIntact() {
            summary.auditRestored = true
            logger.critical("the audit notes had lost records; they were published again from the state DB",
                            metadata: ["found": "\(restored.values("found").joined(separator: "; "))"])
        }
        let branches: [String: ObjectID]
        do {
            branches = try repository.branches()
        } catch {
            logger.error("cannot list branches; skipping this pass (nothing is destroyed)", metadata: ["error": "\(error)"])
            summary.skipped = true
            return
        }
        guard !branches.isEmpty else {
            logger.warning("the repository lists no branches; skipping this pass (an empty listing never destroys)")
            summary.skipped = true
            return
        }
        let approvalsTip = try repository.reference(Approvals.notesRef)
        let approvalsMoved = !approvalsSeen.known || approvalsSeen.tip != approvalsTip
        approvalsSeen = (approvalsTip, true)
        guard let context = try advanceProtected(branches: branches, approvalsMoved: approvalsMoved, &summary) else {
            // Halted: nothing is admitted or destroyed; what runs is still supervised.
            correctDrift(&summary)
            return
        }
        // (Before anything is applied: the drivers' choice and the egress rules follow these settings.)
        governed?(context.settings, context.revision.hex)
        let processed = try processedRefs()
        let protectedBranch = context.protectedBranch
        let environments = try state.environments()
        let waiting = Set(environments.filter { isWaiting($0, approvalsMoved: approvalsMoved) }.map(\.branch))
        let allChanged = branches.filter { $0.key != protectedBranch && (processed[$0.key] != $0.value.hex || waiting.contains($0.key))
                                           && !context.settings.ignores(branch: $0.key) }
            .sorted { $0.key < $1.key }
        // In turn: the branches after the last one judged come first, then the others from the start.
        let cursor = branchCursor
        let rotated = cursor.map { last in allChanged.filter { $0.key > last } + allChanged.filter { $0.key <= last } } ?? allChanged
        let changed = Array(rotated.prefix(options.maxBranchesPerPass))
        if rotated.count > changed.count {
            summary.postponed += rotated.count - changed.count
            branchCursor = changed.last?.key
            logger.notice("\(rotated.count - changed.count) changed branches wait for the next pass (at most \(options.maxBranchesPerPass) are judged per pass)")
        } else {
            branchCursor = nil
        }
        summary.changedBranches += changed.map(\.key)

        for (branch, tip) in changed {
            do {
                if try tip == context.revision || repository.isReachable(tip, from: context.revision) {
                    try destroyPreviews(of: branch, reason: "branch \(branch) was merged into \(protectedBranch) at \(context.revision.short)", commitForNote: tip, &summary)
                } else {
                    // Commits admitted before are not judged again only when the tip moved on from
                    // them: a branch rewound, or deleted and made again, at a commit admitted once is
                    // judged whole against today's signers (a key revoked since no longer counts).
                    let lastAdmitted = try state.admittedCommit(branch: branch).flatMap(ObjectID.init(hex:))
                        .flatMap { admitted in try admitted != tip && repository.isReachable(admitted, from: tip) ? admitted : nil }
                    try reconcile(branch: branch, tip: tip, hidden: (lastAdmitted.map { [$0] } ?? []) + [context.revision],
                                  changedSince: try repository.mergeBase(context.protectedTip, tip), context: context, &summary)
                }
                try markProcessed(branch: branch, commit: tip.hex)
            } catch let problem where ErrorDisposition.of(problem) == .stallUntilNewCommit {
                // The branch as a whole cannot be judged (too many environment files or changed
                // files, say): its denial, once per commit; the other branches go on.
                logger.warning("branch denied as a whole", metadata: ["git.branch": "\(branch)", "problem": "\(problem)"])
                summary.denied.append(branch)
                try? appendScoped(.denied, tip, [("branch", branch), ("commit", tip.hex), ("scope", "branch"), ("decision", "deny"), ("rule", "\(problem)")])
                try? markProcessed(branch: branch, commit: tip.hex)
            } catch {
                logger.error("could not reconcile branch; will retry", metadata: ["git.branch": "\(branch)", "error": "\(error)"])
            }
        }
        try sweep(branches: branches, context: context, protectedChanged: summary.changedBranches.contains(protectedBranch), &summary)
        expire(context: context, &summary)
        resumeTeardowns(of: environments, &summary)
        rotateSecrets(&summary)
        correctDrift(&summary)
    }

    /// Whether an environment is judged again although its branch did not move: one denied for a
    /// missing secret every pass (`gantry secret set` admits it); one waiting for approval, or
    /// denied, when the approvals moved (an approval may release a wait, or vouch for another
    /// team's commit in a denied change).
    func isWaiting(_ record: EnvironmentRecord, approvalsMoved: Bool) -> Bool {
        // An apply cut short (Gantry stopped or killed while it was queued or running) goes on.
        let interrupted = record.conditions.contains(.applying) && !operations.isBusy(record.name)
        return interrupted || Self.retryDue(record)
            || record.conditions.contains(.secretMissing)
            || (approvalsMoved && (record.conditions.contains(.approvalPending) || record.conditions.contains(.admissionDenied)))
    }

    /// A failed apply whose next attempt is due.
    static func retryDue(_ record: EnvironmentRecord, now: Date = Date()) -> Bool {
        record.conditions.contains(.applyFailed) && (record.nextAttemptAt.map { $0 <= now } ?? false)
    }

    typealias PassContext = Admission.Context

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
