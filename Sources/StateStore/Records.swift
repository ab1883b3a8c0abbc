import Foundation
import GRDB

/// The summarized state of an environment, as `gantry status` shows it.
public enum EnvironmentPhase: String, Sendable, Codable, CaseIterable {
    case pending = "Pending", running = "Running", sleeping = "Sleeping", pendingApproval = "PendingApproval"
    case denied = "Denied", failed = "Failed", destroyed = "Destroyed"
}

/// A condition that is true of an environment, named for what it waits on or what went wrong.
/// The phase is derived from these (`EnvironmentRecord.derivedPhase`), never set on its own.
public enum Condition: String, Sendable, Codable, CaseIterable {
    /// The spec at the commit does not load or validate.
    case specInvalid = "SpecInvalid"
    /// Identity, policy or a rule denied the commit.
    case admissionDenied = "AdmissionDenied"
    /// A secret the spec names is not visible to the environment.
    case secretMissing = "SecretMissing"
    /// The commit waits for a human approval.
    case approvalPending = "ApprovalPending"
    /// The last apply failed; it is retried with backoff (`attempts`, `nextAttemptAt`).
    case applyFailed = "ApplyFailed"
    /// An admitted revision is being applied (queued or running); a Gantry restarted in between applies it again.
    case applying = "Applying"
    /// A teardown was decided and is under way; a Gantry restarted in between tears it down again.
    case destroying = "Destroying"
    /// Running, but a service's process is not (observed, never stored).
    case unhealthy = "Unhealthy"
}

/// One environment Gantry knows of, live or kept as history after it was destroyed.
public struct EnvironmentRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "environments"
    public var name: String
    public var branch: String
    /// The commit last seen for this environment (applied, or denied).
    public var commit: String
    /// The commit whose revision is running (nil until one was applied).
    public var appliedCommit: String?
    public var envClass: String
    public var team: String?
    /// The routing domain of `gantry.yaml` when the environment was last admitted.
    public var domain: String?
    /// Derived from the conditions by `derivedPhase` whenever the record is saved (stored so that
    /// queries can select by it); nobody sets it.
    public internal(set) var phase: EnvironmentPhase = .pending
    /// Fingerprint of the applied revision: an unchanged fingerprint is left alone.
    public var fingerprint: String?
    /// JSON of the applied `EnvironmentSpec`.
    public var specJSON: String?
    /// Why the environment is in its phase (the denial, the failure), for `status`.
    public var message: String?
    /// Conditions that are true, named for the problem (`SpecInvalid`, `ApplyFailed`, ...).
    public var conditions: [Condition] = []
    public var createdAt: Date
    public var updatedAt: Date
    public var destroyedAt: Date?
    /// `metadata.name` of the environment file this one comes from: a preview's name belongs to
    /// exactly one (branch, source) pair, for good.
    public var source: String?
    /// Where the change waiting to converge starts: the applied revision, or for an environment
    /// never applied, the revision its branch had been judged up to when it first appeared. An
    /// approval covers the commits from here to the approved commit.
    public var baseCommit: String?
    /// Failed applies of the current revision in a row, and when the next one is due (retried with
    /// exponential backoff without a new commit; nil when nothing is to be retried).
    public var attempts: Int = 0
    public var nextAttemptAt: Date?
    /// The principal whose commit was last admitted for it, its kind (`agent`, `human`), and
    /// whom it acted for: its spend is charged to them, and an agent's previews count against
    /// `previews.maxPerAgent`.
    public var actor: String?
    public var actorKind: String?
    public var onBehalfOf: String?
    /// When its branch last brought a new commit for it: a preview's TTL counts from here.
    public var lastCommitAt: Date?

    public init(name: String, branch: String, commit: String, envClass: String, team: String?, now: Date = Date()) {
        self.name = name
        self.branch = branch
        self.commit = commit
        self.envClass = envClass
        self.team = team
        self.createdAt = now
        self.updatedAt = now
    }

    /// The phase shown to users, decided here and nowhere else:
    /// - Destroyed once torn down;
    /// - Failed while the last apply failed (`ApplyFailed`, retried with backoff);
    /// - PendingApproval while a commit waits for a human (a revision applied before keeps running);
    /// - Denied when a denial (`SpecInvalid`, `AdmissionDenied`, `SecretMissing`) left nothing
    ///   running — with a revision applied before, that one keeps running (fail safe): Running;
    /// - Pending until a first revision is applied; Running after.
    public var derivedPhase: EnvironmentPhase {
        if destroyedAt != nil { return .destroyed }
        if conditions.contains(.applyFailed) { return .failed }
        if conditions.contains(.approvalPending) { return .pendingApproval }
        if appliedCommit == nil {
            return conditions.contains(where: { [.specInvalid, .admissionDenied, .secretMissing].contains($0) }) ? .denied : .pending
        }
        return .running
    }

    /// The agent its spend and previews count against: the actor, when that is an agent.
    public var agent: String? { actorKind == "agent" ? actor : nil }
}

/// One service process of an environment, with what is needed to adopt it after a restart.
public struct ServiceRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "services"
    public var environment: String
    public var name: String
    public var port: Int
    public var pid: Int32?
    /// Start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22): a reused pid differs.
    public var pidStart: Int64?
    public var workdir: String?
    public var fingerprint: String?
    public var phase: String
    public var restarts: Int
    public var lastExit: String?

    public init(environment: String, name: String, port: Int) {
        self.environment = environment
        self.name = name
        self.port = port
        self.phase = "Pending"
        self.restarts = 0
    }
}

/// An entry of the environment's history (phase changes, restarts), for operators.
public struct EventRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "events"
    public var id: Int64?
    public var at: Date
    public var environment: String
    public var kind: String
    public var message: String

    public init(environment: String, kind: String, message: String, at: Date = Date()) {
        self.environment = environment
        self.kind = kind
        self.message = message
        self.at = at
    }
}
