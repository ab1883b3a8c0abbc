import GitStore
import SpecModel

/// One environment revision to converge, with everything a driver needs to do it.
public struct PlannedEnvironment: Sendable {
    public let name: String
    public let branch: String
    public let commit: ObjectID
    /// The effective spec: template merged, preview isolation applied; `${...}` not yet resolved.
    public let spec: EnvironmentSpec
    public let fingerprint: String
    public let domain: String
    public let repository: GitRepository

    public init(name: String, branch: String, commit: ObjectID, spec: EnvironmentSpec, fingerprint: String,
                domain: String, repository: GitRepository) {
        self.name = name
        self.branch = branch
        self.commit = commit
        self.spec = spec
        self.fingerprint = fingerprint
        self.domain = domain
        self.repository = repository
    }
}

/// What changed when a driver applied a revision, for the audit record's `change:` lines.
public struct ApplyOutcome: Sendable {
    public var changes: [String] = []
    public init(changes: [String] = []) { self.changes = changes }
}

/// A problem a driver found while supervising (a crash, a restart), for the history.
public struct DriverEvent: Sendable {
    public let environment: String
    public let kind: String
    public let message: String
    public init(environment: String, kind: String, message: String) {
        self.environment = environment
        self.kind = kind
        self.message = message
    }
}

/// Converges environments on some infrastructure. Applying the same revision twice changes nothing;
/// a driver resumes after a crash from its own recorded state.
public protocol Driver: AnyObject {
    /// Makes the environment run `environment`'s revision; throws with a reason when it cannot.
    func apply(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> ApplyOutcome
    /// Removes everything of the named environment. Succeeds when there is nothing left to remove;
    /// returns what could not be cleaned (a failed onDestroy job, say) — teardown completes anyway.
    func destroy(environment name: String, repository: GitRepository?, progress: (String) -> Void) throws -> [String]
    /// Called once at start: adopt what survived a restart of Gantry, stop what nobody wants.
    func recover(desired: Set<String>) -> [DriverEvent]
    /// Called every pass: restart what crashed (only report it when `correct` is false), rotate
    /// logs; returns what it found and did (`restarted`, `drift-detected`, ...).
    func supervise(correct: Bool) -> [DriverEvent]
    /// What of a running environment's state is missing besides its processes (a dropped database);
    /// `apply` recreates it.
    func drift(_ environment: PlannedEnvironment) -> [String]
    /// Stops everything without forgetting it (used when Gantry shuts down with `--stop-on-exit`).
    func shutdown()
}
