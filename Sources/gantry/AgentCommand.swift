import ArgumentParser
import Audit
import DataPlane
import Foundation
import Gateway
import LocalDriver
import Logging
import Reconciler
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// `gantry agent`: the data plane. Runs the environments gantry.yaml's drivers put on `agent`,
/// here, from plans the control plane signs; secrets are set here (`gantry secret set --state`
/// this directory) and never leave.
struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the data plane beside the workloads: apply the control plane's signed plans with the local driver and this machine's secrets.")

    @Option(help: "The control plane's API, https://HOST:PORT (its `gantry run --data-plane-token-file`, behind TLS); http only on loopback or with --allow-http.")
    var control: String
    @Option(help: "A PEM file of certificate authorities trusted for the control plane's TLS (besides the system's).")
    var controlCA: String?
    @Flag(help: "Allow plain http to a control plane off this host: the token and the reports then cross the network unprotected.")
    var allowHTTP = false
    @Option(help: "The control plane's public key: its state directory's keys/gantry_ed25519.pub (or the `ssh-ed25519 AAAA...` line). Plans it did not sign are refused.")
    var key: String
    @Option(help: "A file holding the data-plane token (the same as the control plane's --data-plane-token-file).")
    var tokenFile: String
    @OptionGroup var state: StateOption
    @Option(help: "Seconds between rounds (fetch plans, supervise, report).")
    var interval = 1.0
    @Option(help: "A plan issued longer ago than this many seconds is refused as stale.")
    var maxPlanAge = 3600.0
    @Option(help: "Port of the HTTP router on 127.0.0.1 for the routes of what runs here; 0 picks a free one.")
    var routerPort = 8080
    @Flag(help: "Do not start the HTTP router.")
    var noRouter = false
    @Flag(help: "Stop every service when the agent exits (default: leave them running for its next start to adopt).")
    var stopOnExit = false
    @Flag(help: "Log debug detail.")
    var verbose = false

    func validate() throws {
        guard interval > 0, maxPlanAge > 0 else { throw ValidationError("--interval and --max-plan-age must be positive") }
        guard control.hasPrefix("http://") || control.hasPrefix("https://") else { throw ValidationError("--control must be https://HOST:PORT") }
        // Plans are signed, but the token and the reports ride on the connection: plain http is
        // for this host only, unless asked for.
        if control.hasPrefix("http://"), !allowHTTP {
            let host = URL(string: control)?.host ?? ""
            guard ["127.0.0.1", "localhost", "::1", "[::1]"].contains(host) else {
                throw ValidationError("--control \(control) is plain http to another host: the data-plane token and the agent's reports would cross the network unprotected (anyone on the way could forge a report). Put the control plane's API behind TLS and use https://, or pass --allow-http")
            }
        }
    }

    func run() throws {
        Logs.bootstrap(level: verbose ? .debug : .info)
        let logger = Logger(label: "gantry-agent")
        let trusted = try DataPlaneOptions.publicKey(key)
        let token = try DataPlaneOptions.token(from: tokenFile)
        let paths = StatePaths(root: state.directory)
        try FileManager.default.createDirectory(at: paths.root, withIntermediateDirectories: true)
        let lock = open(paths.lockFile, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard lock >= 0, flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            throw Failure("another gantry is using \(paths.root.path) (lock \(paths.lockFile) is held)")
        }
        let store = try StateStore(path: paths.database)
        let secrets = try SecretStore(state: store, keyPath: paths.secretsKey)
        let driver = LocalDriver(stateDirectory: paths.root, state: store, logger: logger)
        driver.secrets = secrets
        let board = KillSwitchBoard()
        driver.killSwitches = board
        let redactor = Redactor(store: secrets)
        Logs.redactor = redactor
        var verifier = PlanVerifier(trusted: trusted)
        verifier.maxAge = maxPlanAge
        var options = DataPlaneAgent.Options(control: control, token: token)
        options.interval = interval
        if let controlCA {
            guard let pem = FileManager.default.contents(atPath: controlCA) else { throw Failure("\(controlCA): cannot be read (--control-ca)") }
            options.certificateAuthority = Array(pem)
        }
        if control.hasPrefix("http://"), allowHTTP { logger.warning("the control plane is reached over plain http (--allow-http): its token and the reports are not protected on the way") }
        let agent = try DataPlaneAgent(options: options, driver: driver, verifier: verifier, stateDirectory: paths.root, logger: logger)
        agent.freeze = { name, on in _ = driver.setFrozen(name, on) }
        agent.switchesChanged = { board.set($0) }
        agent.redact = { redactor.redact($0) }
        agent.replicas = { driver.replicas(of: $0) }
        agent.store = store
        agent.secretVersions = { spec in
            var versions: [String: String] = [:]
            for name in spec.secrets { versions[name] = ((try? secrets.resolve(name, for: spec)) ?? nil)?.version ?? "-" }
            return versions
        }
        logger.info("gantry agent: plans from \(control), signed by \(trusted.fingerprint); state \(paths.root.path)")
        try Data("\(getpid())\n".utf8).write(to: URL(fileURLWithPath: paths.pidFile))
        var router: Router?
        if !noRouter {
            let candidate = Router { [store] in RouteTable.build(store, killSwitches: board) }
            do {
                let gateway = driver.routerGateway
                let skipped = try candidate.start(port: routerPort, also: gateway.map { [$0] } ?? [])
                try Data("\(candidate.port)\n".utf8).write(to: URL(fileURLWithPath: paths.routerPortFile))
                if skipped.isEmpty { driver.routerPort = candidate.port }
                logger.info("router listening on 127.0.0.1:\(candidate.port)")
                router = candidate
            } catch {
                logger.error("the router could not start; routes are not served (use --router-port)", metadata: ["error": "\(error)"])
            }
        }
        defer {
            router?.stop()
            if router != nil { driver.routerStopped() }
        }
        let stop = StopFlag()
        let wake = WakeSignal()
        wake.installSignalHandlers { signal in
            logger.info("received signal \(signal); stopping after this round")
            stop.set()
            wake.wake()
        }
        agent.run(until: { stop.isSet })
        if stopOnExit { driver.shutdown() }
    }
}

enum DataPlaneOptions {
    /// The token in `file` (surrounding whitespace dropped); at least 16 characters.
    static func token(from file: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: file) else { throw Failure("\(file): cannot be read (the data-plane token)") }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard token.count >= 16, !token.contains(where: \.isWhitespace) else {
            throw Failure("\(file): the data-plane token must be one word of at least 16 characters (e.g. `openssl rand -hex 32 > \(file)`)")
        }
        return token
    }

    /// An `ssh-ed25519 AAAA...` line, or a file holding one.
    static func publicKey(_ text: String) throws -> SSHPublicKey {
        let line = text.hasPrefix("ssh-") ? text : (FileManager.default.contents(atPath: text).map { String(decoding: $0, as: UTF8.self) } ?? "")
        guard !line.isEmpty else { throw Failure("\(text): cannot be read (the control plane's public key, keys/gantry_ed25519.pub in its state directory)") }
        do { return try SSHPublicKey(authorizedKey: line.trimmingCharacters(in: .whitespacesAndNewlines)) } catch {
            throw Failure("\(text): not an ssh-ed25519 public key (\(error))")
        }
    }
}
