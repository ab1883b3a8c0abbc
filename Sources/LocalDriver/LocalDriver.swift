import Crypto
import Foundation
import GitStore
import Logging
import Reconciler
import SpecLoading
import SpecModel
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// The embedded default driver: each service of each environment is a supervised local process in
/// its own working directory and process group, on its own loopback port.
///
/// Everything needed to find a process again is in the state DB (pid and start time), and every
/// process carries `GANTRY_MARK=<instance>:<environment>:<service>` in its environment, so after a
/// `kill -9` of Gantry a restart adopts the survivors and stops any process nobody recorded.
///
/// Applies and teardowns of different environments run at once on the reconciler's workers.
/// Unchecked Sendable: its few mutable fields are read and written only under `shared`.
public final class LocalDriver: Driver, @unchecked Sendable {
    public struct Options: Sendable {
        /// Seconds a new process has to pass its health check.
        public var startTimeout = 30.0
        /// Bytes of memory a unit that states none may use (a service without `resources.memory`,
        /// a cache, a job, a seed); a service that needs more states it.
        public var defaultMemory = 512 << 20
        /// Seconds a service without an HTTP health check must stay up (unless it listens on PORT sooner).
        public var settleTime = 2.0
        /// Seconds between SIGTERM and SIGKILL when stopping.
        public var stopGrace = 5.0
        /// A log file is rotated past this size; `keptLogs` old files are kept.
        public var maxLogBytes = 10 << 20
        public var keptLogs = 3
        /// Seconds a job may run.
        public var jobTimeout = 600.0
        /// Seconds a database's seed may run (the reconciler waits for it: one slow seed would hold
        /// every other environment's convergence), and a clone.
        public var seedTimeout = 120.0
        public var cloneTimeout = 600.0
        /// A seed that is plain SQL (no psql meta-command) runs once per content into a template
        /// database; environments seeded with it get a file copy of that (see `seedTemplate`).
        public var seedTemplates = true
        /// Copies of each seed template kept ready (`g_spare_<hash>_<k>`): an environment seeded
        /// with it takes one by renaming it, and CREATE DATABASE (100–250 ms here) runs afterwards,
        /// off the apply, to make the next one. 0 copies on demand only.
        public var spareSeedCopies = 2
        /// Seed templates kept (with their ready copies): beyond this, the one used least recently
        /// goes when a new one is made, provided it was not used for `seedTemplateIdle` seconds.
        public var keptSeedTemplates = 8
        public var seedTemplateIdle = 600.0
        /// Crash restarts: the first at once, the k-th after `restartBackoff`·2^(k-1) seconds, capped.
        public var restartBackoff = 1.0
        public var maxRestartBackoff = 60.0
        /// As root: each environment's processes run as a user of their own from `uidRange`.
        public var isolateUsers = true
        /// As root: a control group per environment and per service (limits, and teardown that
        /// leaves nothing running).
        public var useControlGroups = true
        /// As root, with users isolated: a network namespace per environment (see `Networks`).
        public var isolateNetwork = true
        /// How often `supervise` checks that the host table is still there (an `nft flush ruleset`
        /// by a firewall reload removes it) and writes it again when it is not.
        public var hostTableCheckInterval = 10.0
        /// How often `supervise` tries again to drop the databases a teardown could not drop.
        public var dropRetryInterval = 10.0
        /// Connections every environment together may hold at once to PostgreSQL (each at most
        /// `Networks.connectionsPerPort`): the server's other slots stay Gantry's, so many
        /// environments of one branch cannot keep teardowns and drift checks out.
        public var environmentConnectionsToPostgres = LocalDriver.postgresMaxConnections - 40
        public var uidRange = 200_000..<265_536
        /// Where the Gantry instances of this host claim uids (a file per uid): two state
        /// directories never run environments under one uid.
        public var uidRegistry = "/var/lib/gantry/uids"
        /// Where an instance keeps its environments' directories and its PostgreSQL cluster
        /// (`<this>/<instance>/envs`, `.../postgres`) when the state directory lies inside a private
        /// directory (such as /root) that environments' users or the postgres user cannot enter:
        /// `<state>/envs` is then a link to it.
        public var fallbackDirectory = "/var/lib/gantry/instances"
        public init() {}
    }

    /// Where the environments' directories are: `<state>/envs`, or the fallback (see `Options.fallbackDirectory`).
    let root: URL
    let stateDirectory: URL
    let state: StateStore
    let logger: Logger
    let options: Options
    /// Identifies this state directory in `GANTRY_MARK`.
    let instance: String
    /// Tells this state directory from another made later at the same path (in uid claims).
    let instanceToken: String
    /// Guards what operations of different environments share: the fields below, the choice of
    /// ports and uids, the PostgreSQL server's start, and supervision's restarts.
    let shared = NSRecursiveLock()
    /// Environments with an apply or teardown under way: supervision leaves their processes alone.
    var busy: Set<String> = []
    /// One lock per environment: its operations (apply, teardown, sleep, wake, scale) run one at a time.
    var operationLocks: [String: NSLock] = [:]
    /// Guards the templates seen made (a copy that fails forgets its template: it is looked for
    /// again), their use times and `seedTemplateMakers`; held for moments only.
    let seedTemplateLock = NSLock()
    var knownSeedTemplates: Set<String> = []
    /// Held while a copied database is handed over to its role (`reassignment`): two hand-overs
    /// from one source update the source's catalog row, and PostgreSQL fails the second with
    /// "tuple concurrently updated" rather than waiting. They take milliseconds.
    let reassignmentLock = NSLock()
    /// One lock per seed template, held while it is made (seeds may run long: not under `shared`,
    /// and a slow seed holds back only the environments waiting for the same template).
    var seedTemplateMakers: [String: NSLock] = [:]
    /// The ready copies of each seed template, by template, and the lock that guards them.
    var spareSeeds: [String: Set<String>] = [:]
    let spareSeedsLock = NSLock()
    /// Making spare copies (one at a time, in the background); `shutdown` waits for it.
    let spareRefill = DispatchGroup()
    let spareRefillLock = NSLock()
    /// Crash-restart backoff: next allowed restart time per "env/service".
    var nextRestart: [String: Date] = [:]
    /// The routing domain of the last applied revision, for `${env.domain}` on a crash restart.
    var domain = "localhost"
    /// The databases of the host's PostgreSQL server, listed once per pass by `supervise` for the
    /// drift checks (nil while the server is not running).
    var postgresDatabases: Set<String>?
    /// Why the running server could not be listed at the last pass (every connection slot taken,
    /// say): its databases' drift is not judged then, rather than reported as a stopped server.
    var postgresUnlisted: String?
    /// Whether some teardown could not drop its databases (their allocations stay with the
    /// destroyed environment): `supervise` drops them again, at most every `Options.dropRetryInterval`.
    /// True at start: a Gantry that stopped in between may have left some.
    var dropsPending = true
    var nextDropAttempt: Date?
    /// Retries in a row that left something undropped: each doubles the wait (at most 64 times the
    /// interval), so an environment holding a lock on another's role cannot keep the loop busy.
    var dropFailures = 0
    /// The environments' control groups (inactive without root or a cgroup hierarchy).
    let cgroups: ControlGroups
    /// The environments' network namespaces (inactive without root or the tools).
    let networks: Networks
    /// The uids whose networks this process made or checked (their links are in the host table).
    var networksMade: Set<uid_t> = []
    /// The gateway ports the host table's rules were last written with (`writeHostRules`).
    var refreshedPorts: GatewayPorts?
    /// When `refreshNetworkRules` last checked that the host table is there.
    var hostTableCheckedAt: Date?
    /// The router's port, when environments reach it at the gateway (`GANTRY_ROUTER`).
    public var routerPort: Int?
    /// The egress proxy's port at the gateway (`HTTP_PROXY`, and DNS on the same port number).
    public var egressPort: Int?
    /// Environments under a kill switch: their processes are frozen, never restarted meanwhile.
    public var killSwitches: KillSwitchBoard?
    /// Where `${secrets.NAME}` values and the passwords Gantry makes for its servers come from;
    /// nil when no secret store is configured.
    public var secrets: (any SecretResolver)?

    public init(stateDirectory: URL, state: StateStore, logger: Logger, options: Options = Options()) {
        self.stateDirectory = stateDirectory.standardizedFileURL
        self.root = Self.environmentsRoot(stateDirectory: stateDirectory, options: options)
        self.state = state
        self.logger = logger
        self.options = options
        let digest = SHA256.hash(data: Data(stateDirectory.standardizedFileURL.path.utf8))
        self.instance = digest.prefix(6).map { String(format: "%02x", $0) }.joined()
        instanceToken = Self.instanceToken(of: self.stateDirectory)
        var cgroups = ControlGroups(instance: instance, enabled: options.useControlGroups)
        cgroups.defaultMemory = options.defaultMemory
        self.cgroups = cgroups
        networks = Networks(enabled: options.isolateNetwork && options.isolateUsers, instance: instance,
                            owner: "\(self.stateDirectory.path) \(instanceToken)")
        secureStateDirectory()
        collectAbandoned()
        try? state.setMeta("isolation", isolationSummary)
    }

    static let markVariable = "GANTRY_MARK"

    func logPath(_ environment: String, _ service: String) -> URL {
        root.appendingPathComponent(environment).appendingPathComponent("logs").appendingPathComponent("\(service).log")
    }

    /// The phase to show for a service: its recorded phase, or `Stopped` when its process is gone
    /// (Gantry stopped with `--stop-on-exit`, or not yet restarted after a crash).
    public static func observedPhase(of record: ServiceRecord) -> String {
        guard let pid = record.pid else { return record.phase }
        return ProcessControl.isAlive(pid, start: record.pidStart) ? record.phase : "Stopped"
    }
}

/// The local driver's services as they are now, for `EnvironmentSummary`: its records, with a
/// process that is gone shown as `Stopped`. Needs only the state DB (a `gantry status` beside a
/// running Gantry reads it without a driver).
public struct LocalObserver: EnvironmentObserver {
    let state: StateStore
    public init(state: StateStore) { self.state = state }

    public func services(of environment: String) throws -> [ServiceObservation] {
        let address = LocalDriver.address(of: environment, in: state)
        let records = try state.services(of: environment)
        // A service is shown once, as its first replica, with how many replicas run.
        return records.filter { LocalDriver.serviceName(ofUnit: $0.name) == $0.name }.map { first in
            let replicas = records.filter { LocalDriver.serviceName(ofUnit: $0.name) == first.name && LocalDriver.observedPhase(of: $0) == "Running" }.count
            return ServiceObservation(name: first.name, phase: LocalDriver.observedPhase(of: first), url: "http://\(address):\(first.port)",
                                      restarts: first.restarts, lastExit: first.lastExit, replicas: replicas)
        }
    }
}

extension LocalDriver {
    /// A DNS-1123 label: the only names the driver turns into paths, ports and database names.
    static func isSafeName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 63 && !name.hasPrefix("-") && !name.hasSuffix("-")
            && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }
    }

    static func checkName(_ name: String) throws {
        guard isSafeName(name) else {
            throw RevisionError("'\(name)' is not a DNS-1123 label; the local driver makes no path, port or database of it")
        }
    }
}

struct LocalDriverError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
