import Foundation
import GitStore
import SpecModel

/// The files of one revision, as a driver reads them: paths at one commit, never the repository
/// itself (a driver may run anywhere the files can be sent).
public protocol SourceSnapshot: Sendable {
    var commit: ObjectID { get }
    /// The id of the tree or file at `path`, nil when there is none: a service restarts when its source's id changes.
    func objectID(at path: String) throws -> ObjectID?
    /// The file at `path` (nil when there is none), at most `limit` bytes.
    func readFile(_ path: String, limit: Int) throws -> Data?
    /// Writes the tree (or file) at `path` into `directory` ("" for the whole revision).
    func materialize(_ path: String, into directory: URL) throws
}

/// Snapshots of any commit (a teardown's onDestroy jobs run at the commit last applied).
public protocol SourceStore: Sendable {
    func snapshot(at commit: ObjectID) -> any SourceSnapshot
}

/// Snapshots read from a Git repository on disk. Each read opens the repository on its own: a
/// libgit2 handle is not shared between the reconcile thread and the drivers' workers.
public struct GitSources: SourceStore {
    public let path: String
    public init(path: String) { self.path = path }
    public func snapshot(at commit: ObjectID) -> any SourceSnapshot { GitSnapshot(path: path, commit: commit) }
}

public struct GitSnapshot: SourceSnapshot {
    public let path: String
    public let commit: ObjectID
    public init(path: String, commit: ObjectID) {
        self.path = path
        self.commit = commit
    }

    public func objectID(at path: String) throws -> ObjectID? { try GitRepository.open(path: self.path).objectID(at: path, in: commit) }
    public func readFile(_ path: String, limit: Int) throws -> Data? { try GitRepository.open(path: self.path).readFile(path, at: commit, limit: limit) }
    public func materialize(_ path: String, into directory: URL) throws {
        try GitRepository.open(path: self.path).materialize(path, at: commit, into: directory)
    }
}

/// One environment revision to converge, with everything a driver needs to do it.
public struct PlannedEnvironment: Sendable {
    public let name: String
    public let branch: String
    public let commit: ObjectID
    /// The effective spec: template merged, preview isolation applied; `${...}` not yet resolved.
    public let spec: EnvironmentSpec
    public let fingerprint: String
    public let domain: String
    /// The revision's files.
    public let source: any SourceSnapshot
    /// The driver gantry.yaml's `drivers` names for it (`local`, `kubernetes`); nil for a revision
    /// that runs already (drift, a rotation): wherever it runs.
    public var driver: String?

    public init(name: String, branch: String, commit: ObjectID, spec: EnvironmentSpec, fingerprint: String,
                domain: String, source: any SourceSnapshot) {
        self.name = name
        self.branch = branch
        self.commit = commit
        self.spec = spec
        self.fingerprint = fingerprint
        self.domain = domain
        self.source = source
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
///
/// Operations of different environments run concurrently (on `OperationPool`'s workers, while the
/// loop calls `supervise` and `drift`); one environment never has two at once.
public protocol Driver: AnyObject, Sendable {
    /// Makes the environment run `environment`'s revision; throws with a reason when it cannot.
    func apply(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> ApplyOutcome
    /// Removes everything of the named environment. Succeeds when there is nothing left to remove;
    /// returns what could not be cleaned (a failed onDestroy job, say) — teardown completes anyway.
    func destroy(environment name: String, sources: (any SourceStore)?, progress: (String) -> Void) throws -> [String]
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
    /// Whether anything of the environment is on this driver (a driver that may be wrong says yes).
    func holds(environment name: String) -> Bool
    /// Whether `drift` has anything to look at for this environment (called every pass).
    func checksDrift(_ environment: PlannedEnvironment) -> Bool
    /// Whether a change of the environment's secrets in Gantry's store is applied by applying
    /// it again (false where the secrets live elsewhere: the data plane keeps its own).
    func followsSecretRotation(_ environment: PlannedEnvironment) -> Bool
    /// Whether the drift found is the driver's own cut to undo (a kill switch lifted while the
    /// environment's workloads were scaled away): restored even with `--detect-only`, which
    /// leaves alone what others changed, not what Gantry itself did.
    func restoresOwnCut(_ environment: PlannedEnvironment) -> Bool
}

extension Driver {
    public func holds(environment name: String) -> Bool { true }
    /// A driver that only supervises processes looks for drift in databases.
    public func checksDrift(_ environment: PlannedEnvironment) -> Bool { !environment.spec.databases.isEmpty }
    public func followsSecretRotation(_ environment: PlannedEnvironment) -> Bool { true }
    public func restoresOwnCut(_ environment: PlannedEnvironment) -> Bool { false }
}

/// A secret's value as a driver receives it, with its version: fingerprints and rotations count
/// versions, never values.
public struct ResolvedSecret: Sendable {
    public let value: Data
    public let version: String
    public init(value: Data, version: String) {
        self.value = value
        self.version = version
    }
}

/// Where a driver gets secret values: the `${secrets.NAME}` a spec names, and the credentials the
/// driver makes for an environment itself (a cache's or a database role's password), kept
/// encrypted with them. Which scope a name resolves in (the environment's own, its class's, its
/// team's) is the resolver's business; a driver asks by name and never lists or writes a user's secret.
public protocol SecretResolver: Sendable {
    /// The value of `name` as `spec`'s environment sees it; nil when it sees none.
    func resolve(_ name: String, for spec: EnvironmentSpec) throws -> ResolvedSecret?
    /// The credential `name` kept for `environment`, made with `make` (and kept) the first time.
    func credential(_ name: String, environment: String, make: () -> String) throws -> ResolvedSecret
    /// Forgets every credential kept for `environment` (after its teardown).
    func forgetCredentials(of environment: String) throws
}

extension SourceSnapshot {
    /// The file at `path`, at most 1 MiB.
    public func readFile(_ path: String) throws -> Data? { try readFile(path, limit: 1 << 20) }
}

/// A command to run in an environment's context: its user, control group, network, variables
/// and secrets, in a service's working directory.
public struct ExecRequest: Sendable {
    public let environment: String
    /// The service whose variables and working directory the command gets (nil: the first).
    public let service: String?
    public let command: [String]
    public let timeout: TimeInterval

    public init(environment: String, service: String?, command: [String], timeout: TimeInterval) {
        self.environment = environment
        self.service = service
        self.command = command
        self.timeout = timeout
    }
}

public enum ExecStream: String, Sendable { case stdout, stderr }

public struct ExecResult: Sendable, Equatable {
    /// The command's exit status; 128 + N when signal N ended it (124 when the time ran out, 130
    /// when whoever read its output went away).
    public let exitCode: Int32
    public let timedOut: Bool
    public let service: String
    /// Stopped because its output was no longer wanted.
    public var cancelled = false

    public init(exitCode: Int32, timedOut: Bool, service: String) {
        self.exitCode = exitCode
        self.timedOut = timedOut
        self.service = service
    }
}

/// Why an exec was refused before anything ran.
public struct ExecRefusal: Error, CustomStringConvertible {
    public enum Kind: Sendable { case notFound, notRunning, invalid }
    public let kind: Kind
    public let description: String
    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}

/// Runs commands in environments' contexts (the driver that runs them).
public protocol EnvironmentExecutor: Sendable {
    /// Runs `request`, handing its output to `output` as it comes, in order (and, while it prints
    /// nothing, an empty piece once a second). Blocks until the command ends, its time runs out,
    /// or `output` answers false (no one reads any more): then its process group and control
    /// group are stopped.
    func exec(_ request: ExecRequest, output: @escaping @Sendable (ExecStream, Data) -> Bool) throws -> ExecResult
}

/// Puts an environment's services to sleep and wakes them, and scales a service's replicas,
/// without touching its data (databases, caches and files stay). Operations of one environment
/// never overlap an apply or teardown of it.
public protocol LifecycleDriver: AnyObject, Sendable {
    /// Stops every service process (its control group frozen, then killed).
    func sleep(environment: String) throws
    /// Starts the services again and waits until they are healthy.
    func wake(environment: String) throws
    /// Runs `replicas` processes of the service (0: none until a wake); new ones are checked
    /// healthy; one that goes is first taken out of routing and `drain(port)` waits for what it serves.
    func scale(environment: String, service: String, replicas: Int, drain: (Int) -> Void) throws
    /// The replicas that run now, per service (a sleeping service 0).
    func replicas(of environment: String) -> [String: Int]
}
