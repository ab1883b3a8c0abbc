import ArgumentParser
import Audit
import API
import DataPlane
import Foundation
import Gateway
import GitStore
import KubernetesDriver
import LocalDriver
import Logging
import Reconciler
import SpecModel
import StateStore
#if canImport(Glibc)
import Glibc
#endif

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Reconcile continuously (or one full pass with --once).")

    @Option(help: "Configuration repository: a local path, or a URL to mirror into the state directory.")
    var repo: String
    @OptionGroup var state: StateOption
    @Flag(help: "Run one full pass, then exit 0.")
    var once = false
    @Option(help: "Seconds between polls of the refs.")
    var interval: Double = 1
    @Option(help: "The protected branch (until gantry.yaml on it names another).")
    var branch = "main"
    @Flag(help: "Stop every service when Gantry exits (default: leave them running for the next start to adopt).")
    var stopOnExit = false
    @Option(help: "Port of the HTTP router on 127.0.0.1 for routes (<route>.<environment>.<domain>); 0 picks a free one.")
    var routerPort = 8080
    @Flag(help: "Do not start the HTTP router.")
    var noRouter = false
    @Flag(help: "Print the URL of each route (through the router) once its service answers; the demo does.")
    var announceRoutes = false
    @Flag(help: "Report drift (stopped processes, dropped databases) without correcting it.")
    var detectOnly = false
    @Flag(help: "Log debug detail.")
    var verbose = false
    @Option(help: "Serve the agents' API (HTTP, MCP at /mcp, /metrics) on HOST:PORT.")
    var api = "127.0.0.1:7070"
    @Flag(help: "Do not serve the API.")
    var noAPI = false
    @OptionGroup var apiRate: APIRate
    @Option(help: "Seconds an autoscaled service waits before it scales down (the highest count wanted within them is kept).")
    var scaleDownWindow = 60.0
    @Option(help: "Port of the egress proxy (HTTP_PROXY, and DNS on UDP) at the environments' gateway; 0 picks a free one.")
    var egressPort = 3128
    @Flag(help: "Do not start the egress proxy (environments then reach nothing outside).")
    var noEgress = false
    @Option(parsing: .singleValue, help: "Pin a host for the egress proxy, as HOST[:PORT]=ADDRESS (repeatable; a pin to an internal address names the one port it opens).")
    var egressResolve: [String] = []
    @Option(help: "A PEM file of extra certificate authorities the egress proxy trusts when it speaks TLS for an injected credential.")
    var egressCA: String?
    @OptionGroup var kubernetes: KubernetesOptions
    @Option(help: "A file holding the token `gantry agent` proves itself with: environments gantry.yaml's drivers put on `agent` then run where the agent runs (plans at /v1/dataplane on the API).")
    var dataPlaneTokenFile: String?
    @Option(help: "Seconds an apply or teardown on the data plane waits for the agent's report.")
    var dataPlaneTimeout = 300.0

    func validate() throws {
        guard interval > 0 else { throw ValidationError("--interval must be a positive number of seconds") }
        guard scaleDownWindow >= 0, scaleDownWindow <= 86_400 else { throw ValidationError("--scale-down-window must be 0 to 86400 seconds") }
        guard !repo.isEmpty else { throw ValidationError("--repo must name a repository path or URL") }
        guard (0...65535).contains(egressPort) else { throw ValidationError("--egress-port must be 0 to 65535") }
        do { _ = try EgressControl.pins(egressResolve) } catch { throw ValidationError("\(error)") }
    }

    func run() throws {
        Logs.bootstrap(level: verbose ? .debug : .info)
        let logger = Logger(label: "gantry")
        let paths = StatePaths(root: state.directory)
        try FileManager.default.createDirectory(at: paths.root, withIntermediateDirectories: true)
        let lock = open(paths.lockFile, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard lock >= 0, flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            throw Failure("another gantry run is using \(paths.root.path) (lock \(paths.lockFile) is held)")
        }
        let location = RepositoryLocation.isRemote(repo) ? repo : URL(fileURLWithPath: repo).standardizedFileURL.path
        try Data((location + "\n").utf8).write(to: URL(fileURLWithPath: paths.repositoryFile))
        let repository = try RepositoryLocation.open(location, paths: paths)
        let store = try StateStore(path: paths.database)
        let key = try SigningKey.loadOrCreate(at: paths.key)
        let audit = AuditLog(repository: repository, key: key)
        if RepositoryLocation.isRemote(location) { audit.remote = location }
        let driver = LocalDriver(stateDirectory: paths.root, state: store, logger: logger)
        let secrets = try SecretStore(state: store, keyPath: paths.secretsKey)
        driver.secrets = secrets
        // gantry.yaml's `drivers` put environments on the cluster; the rest stay local.
        let cluster = try kubernetes.driver(state: store, logger: logger)
        cluster.secrets = secrets
        // gantry.yaml's `drivers` may put environments on the data plane (`gantry agent`).
        let dataPlaneToken = try dataPlaneTokenFile.map { try DataPlaneOptions.token(from: $0) }
        let dataPlane = dataPlaneToken.map { _ in AgentDriver(state: store, key: key, logger: logger, timeout: dataPlaneTimeout) }
        var installed: [String: any Driver] = ["local": driver, KubernetesDriver.name: cluster]
        installed[AgentDriver.name] = dataPlane
        let drivers = DriverRouter(drivers: installed)
        let redactor = Redactor(store: secrets)
        Logs.redactor = redactor
        var options = Reconciler.Options()
        options.protectedBranch = branch
        options.pollInterval = interval
        options.detectOnly = detectOnly
        let reconciler = Reconciler(repository: repository, state: store, audit: audit, driver: drivers, logger: logger, options: options)
        if RepositoryLocation.isRemote(location) {
            reconciler.beforePass = { try repository.fetch(url: location) }
        }
        reconciler.useSecrets(secrets)
        // Idle sleep, wake on request, TTL, spend and autoscaling.
        // (An audit log of its own: it appends from its threads, chained through the same journal and lock.)
        let lifecycleAudit = AuditLog(repository: repository, key: key)
        lifecycleAudit.journal = StateJournal(store)
        // (Its records name hosts an environment asked for: no secret may stand in them.)
        lifecycleAudit.redact = { redactor.redact($0, fresh: true) }
        if RepositoryLocation.isRemote(location) { lifecycleAudit.remote = location }
        var lifecycleOptions = LifecycleController.Options()
        lifecycleOptions.stabilizationWindow = scaleDownWindow
        let lifecycle = LifecycleController(state: store, driver: driver, audit: lifecycleAudit, logger: logger, options: lifecycleOptions)
        reconciler.lifecycle = lifecycle
        // (Idle sleep and autoscaling act on what runs here; the cluster and the data plane scale their own.)
        lifecycle.runsHere = { [cluster, dataPlane] name in !cluster.holds(environment: name) && !(dataPlane?.holds(environment: name) ?? false) }
        // Kill switches: one board for everything that could start an environment's processes.
        lifecycle.killSwitches = reconciler.killSwitches
        driver.killSwitches = reconciler.killSwitches
        logger.info("gantry watching \(location) (state \(paths.root.path), audit key \(key.publicKey.fingerprint))")
        if once {
            reconciler.recover()
            let summary = try reconciler.runPass()
            logger.info("pass done", metadata: ["admitted": "\(summary.admitted)", "denied": "\(summary.denied)",
                                                "applied": "\(summary.applied)", "failed": "\(summary.failed)",
                                                "destroyed": "\(summary.destroyed)"])
            lifecycle.flush()
            if stopOnExit { driver.shutdown() }
            return
        }
        try Data("\(getpid())\n".utf8).write(to: URL(fileURLWithPath: paths.pidFile))
        var router: Router?
        if !noRouter {
            let board = reconciler.killSwitches
            let candidate = Router { [store] in RouteTable.build(store, killSwitches: board) }
            candidate.hooks = RouterHooks(started: { lifecycle.requestStarted(environment: $0, service: $1) },
                                          ended: { lifecycle.requestEnded(environment: $0, service: $1) },
                                          ensureServing: { lifecycle.ensureServing(environment: $0, service: $1) })
            lifecycle.portInFlight = { [weak candidate] port in candidate?.inFlight(port: port) ?? 0 }
            do {
                // Environments in networks of their own reach it at the gateway.
                let gateway = driver.routerGateway
                let skipped = try candidate.start(port: routerPort, also: gateway.map { [$0] } ?? [])
                try Data("\(candidate.port)\n".utf8).write(to: URL(fileURLWithPath: paths.routerPortFile))
                logger.info("router listening on 127.0.0.1:\(candidate.port)\(gateway.map { skipped.isEmpty ? " and \($0):\(candidate.port)" : "" } ?? "")")
                if skipped.isEmpty { driver.routerPort = candidate.port }
                else { logger.warning("the router could not listen on \(skipped.joined(separator: ", ")); environments cannot reach routes") }
                router = candidate
            } catch {
                logger.error("the router could not start; routes are not served (use --router-port)", metadata: ["error": "\(error)"])
            }
        }
        defer {
            router?.stop()
            if router != nil, !stopOnExit { driver.routerStopped() }
            try? FileManager.default.removeItem(atPath: paths.routerPortFile)
        }
        defer { try? FileManager.default.removeItem(atPath: paths.pidFile) }
        // The egress proxy and the kill switch.
        let egress = EgressControl(store: store, driver: driver, board: reconciler.killSwitches, secrets: secrets, lifecycle: lifecycle,
                                   logger: logger, pins: try EgressControl.pins(egressResolve))
        reconciler.governed = { settings, _ in egress.governed(settings) }
        egress.clusterKill = { [cluster] name, on in cluster.killSwitch(name, on) }
        reconciler.willApply = { egress.willApply($0, $1) }
        if !noEgress {
            if let gateway = driver.routerGateway {
                do {
                    // The switches and lists are loaded before the proxy listens (a restart never
                    // lets a killed environment through for a moment).
                    let proxy = try EgressProxy(snapshot: .empty, hooks: egress.hooks, extraCertificates: egressCA)
                    egress.proxy = proxy
                    egress.start()
                    try proxy.start(host: gateway, port: egressPort)
                    driver.egressPort = proxy.port
                    try? Data("\(proxy.port)\n".utf8).write(to: URL(fileURLWithPath: paths.egressPortFile))
                    logger.info("egress proxy listening on \(gateway):\(proxy.port) (HTTP and CONNECT; DNS on UDP)")
                } catch {
                    egress.proxy?.stop()
                    egress.proxy = nil
                    logger.error("the egress proxy could not start; environments reach nothing outside (use --egress-port)", metadata: ["error": "\(error)"])
                }
            } else {
                logger.warning("no egress proxy: environments share the host's network here (\(LocalDriver.networkSupport ?? "isolation is off")), so egress control is advisory")
            }
        }
        egress.start()
        defer {
            egress.stop()
            egress.proxy?.stop()
            if egress.proxy != nil, !stopOnExit { driver.egressStopped() }
            try? FileManager.default.removeItem(atPath: paths.egressPortFile)
        }
        if announceRoutes, let router {
            let announcer = RouteAnnouncer(routerPort: router.port, store: store)
            let before = reconciler.beforePass
            reconciler.beforePass = { announcer.announce(); try before?() }
        }
        let stop = StopFlag()
        let wake = WakeSignal()
        egress.wakeLoop = { wake.wake() }
        // The API starts beside the loop: reconciling never waits for it.
        let apiServer = LockedServer()
        if !noAPI {
            do {
                let service = try APIComposition.service(paths: paths, location: location, repository: repository, store: store, key: key,
                                                         protectedBranch: branch, rate: apiRate, secrets: secrets,
                                                         dataPlaneToken: dataPlaneToken, logger: logger)
                service.executor = driver
                service.wakeReconciler = { wake.wake() }
                let operations = reconciler.operations
                service.metrics.queueDepth = { operations.depth }
                let metrics = service.metrics
                reconciler.observe = { seconds, summary in metrics.record(seconds: seconds, summary: summary) }
                metrics.egress = { [weak egress] in
                    (egress?.proxy?.allCounters ?? [:]).mapValues { counts in
                        ["allowed": counts.allowed, "denied": counts.denied, "dlp-blocked": counts.dlpBlocked, "killed": counts.killed,
                         "bytes-out": counts.bytesOut, "bytes-in": counts.bytesIn]
                    }
                }
                let address = api
                Thread.detachNewThread {
                    do {
                        apiServer.set(try APIComposition.start(service, address: address, paths: paths, logger: logger))
                    } catch {
                        logger.error("the API could not start; agents cannot reach it (use --api HOST:PORT, or --no-api)", metadata: ["error": "\(error)"])
                    }
                }
            } catch {
                logger.error("the API could not start; agents cannot reach it (use --api HOST:PORT, or --no-api)", metadata: ["error": "\(error)"])
            }
        }
        defer {
            apiServer.stop()
            try? FileManager.default.removeItem(atPath: paths.apiAddressFile)
        }
        // A local repository's pushes wake the loop at once (no hook, no poll wait).
        let watcher = RepositoryLocation.isRemote(location) ? nil : RefWatcher(gitDirectory: repository.gitDirectory) { wake.wake() }
        if !RepositoryLocation.isRemote(location) && watcher == nil { logger.warning("inotify is unavailable: pushes are seen at the next poll or `gantry notify`") }
        wake.installSignalHandlers { signal in
            logger.info("received signal \(signal); stopping after this pass")
            stop.set()
            wake.wake()
        }
        lifecycle.start()
        reconciler.run(wake: wake, shouldStop: { stop.isSet })
        lifecycle.stop()
        lifecycle.flush()
        if stopOnExit {
            driver.shutdown()
            logger.info("gantry stopped, and every service with it (--stop-on-exit)")
        } else {
            logger.info("gantry stopped; services keep running and are adopted on the next start")
        }
    }
}

/// The API server once it listens (it starts on a thread of its own); stopping before it does
/// stops it as soon as it does.
final class LockedServer: @unchecked Sendable {
    private let lock = NSLock()
    private var server: APIServer?
    private var stopped = false

    func set(_ started: APIServer) {
        let stopNow = lock.withLock { () -> Bool in
            server = started
            return stopped
        }
        if stopNow { started.stop() }
    }

    func stop() {
        let running = lock.withLock { () -> APIServer? in
            stopped = true
            return server
        }
        running?.stop()
    }
}

final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

struct Notify: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Wake a running reconciler at once (for a post-receive hook).")
    @OptionGroup var state: StateOption

    func run() throws {
        let paths = StatePaths(root: state.directory)
        guard let text = try? String(contentsOfFile: paths.pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw Failure("no running gantry for \(paths.root.path) (no \(paths.pidFile)); start one with `gantry run`")
        }
        guard kill(pid, SIGUSR1) == 0 else {
            throw Failure("gantry (pid \(pid)) is not running: \(String(cString: strerror(errno)))")
        }
    }
}

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the reconciler's public key as an allowed_signers line for principal gantry.")
    @OptionGroup var state: StateOption

    func run() throws {
        let key = try SigningKey.loadOrCreate(at: StatePaths(root: state.directory).key)
        print("gantry \(key.publicKey.authorizedKey)")
    }
}

/// Prints each route's URL through the router, once, when its service first answers HTTP.
final class RouteAnnouncer: @unchecked Sendable {
    let routerPort: Int
    let store: StateStore
    private var announced: Set<String> = []

    init(routerPort: Int, store: StateStore) {
        self.routerPort = routerPort
        self.store = store
    }

    func announce() {
        for (host, target) in RouteTable.build(store).sorted(by: { $0.key < $1.key }) where !announced.contains(host) {
            guard let port = target.port, case .status = HTTPProbe.get(host: target.host, port: port, path: "/", timeout: 1) else { continue }
            announced.insert(host)
            FileHandle.standardOutput.write(Data("\(target.environment) is up: http://\(host):\(routerPort)/\n".utf8))
        }
    }
}

/// The router's view of the state: every route of every running environment, to the replicas
/// of its service that run; a sleeping environment's (or a service scaled to zero) marked asleep.
enum RouteTable {
    static func build(_ store: StateStore, killSwitches: KillSwitchBoard? = nil) -> [String: RouteTarget] {
        var table: [String: RouteTarget] = [:]
        let sleeping = (try? store.lifecycleStates()) ?? [:]
        let killed = killSwitches?.all ?? [:]
        for environment in (try? store.environments()) ?? [] {
            guard let spec = environment.appliedSpec else { continue }
            if let why = killed[environment.name] {
                for route in spec.routes {
                    let host = "\(route.name).\(environment.name).\(environment.domain ?? "localhost")".lowercased()
                    table[host] = RouteTarget(environment: environment.name, port: nil, reason: "it is frozen by the \(why)")
                }
                continue
            }
            let services = (try? store.services(of: environment.name)) ?? []
            let asleep = sleeping[environment.name]
            for route in spec.routes {
                let host = "\(route.name).\(environment.name).\(environment.domain ?? "localhost")".lowercased()
                guard let service = services.first(where: { $0.name == route.service }) else {
                    table[host] = RouteTarget(environment: environment.name, port: nil, reason: "service \(route.service) has no process (\(environment.phase.rawValue))")
                    continue
                }
                if let asleep {
                    table[host] = RouteTarget(environment: environment.name, ports: [], reason: "it sleeps (\(asleep.reason))", service: route.service, asleep: true)
                    continue
                }
                if service.phase == LocalDriver.sleepingPhase {
                    table[host] = RouteTarget(environment: environment.name, ports: [], reason: "service \(route.service) is scaled to zero",
                                              service: route.service, asleep: true)
                    continue
                }
                let ports = LocalDriver.backends(of: environment.name, service: route.service, in: services)
                let phase = LocalDriver.observedPhase(of: service)
                // A first replica being started (a wake, a scale from zero, an apply) or stopped is waited for.
                table[host] = RouteTarget(environment: environment.name, host: LocalDriver.address(of: environment.name, in: store), ports: ports,
                                          reason: ports.isEmpty ? "service \(route.service) is \(phase)" : nil, service: route.service,
                                          asleep: ports.isEmpty && (phase == "Starting" || phase == "Draining"))
            }
        }
        return table
    }
}
