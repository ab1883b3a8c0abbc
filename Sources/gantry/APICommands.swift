import API
import ArgumentParser
import Audit
import Foundation
import GitStore
import Governance
import LocalDriver
import Logging
import Reconciler
import SpecLoading
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// Builds the agents' API service for a state directory (`gantry run`, `gantry api`, `gantry mcp`).
enum APIComposition {
    static func service(paths: StatePaths, location: String, repository: GitRepository, store: StateStore, key: SigningKey,
                        protectedBranch: String, rate: APIRate? = nil, secrets: SecretStore? = nil, dataPlaneToken: String? = nil,
                        logger: Logger) throws -> AgentService {
        var configuration = AgentService.Configuration(repositoryPath: repository.gitDirectory, stateDirectory: paths.root)
        configuration.protectedBranch = protectedBranch
        configuration.dataPlaneToken = dataPlaneToken
        if let rate {
            configuration.requestsPerSecond = rate.rate
            configuration.burst = rate.burst
        }
        if RepositoryLocation.isRemote(location) { configuration.remote = location }
        let service = AgentService(configuration: configuration, store: store, key: key, observer: LocalObserver(state: store), logger: logger)
        // An audit log of its own (appends from request threads; the reconciler's is its loop's),
        // chained through the same journal and repository lock.
        let audit = AuditLog(repository: repository, key: key)
        audit.journal = StateJournal(store)
        if RepositoryLocation.isRemote(location) { audit.remote = location }
        if let redactor = masking(service, paths: paths, secrets: secrets ?? (try? SecretStore(state: store, keyPath: paths.secretsKey))) {
            audit.redact = { redactor.redact($0, fresh: true) }
        }
        service.audit = audit
        service.sharedServers = { LocalDriver.sharedServers(state: store) }
        return service
    }

    /// Masks the service's answers with `secrets`' values, and gives it the environments' logs
    /// (only then: without the secret store there are no masked lines to give).
    @discardableResult
    static func masking(_ service: AgentService, paths: StatePaths, secrets: SecretStore?) -> Redactor? {
        service.routerPort = { paths.routerPort }
        guard let secrets else { return nil }
        let redactor = Redactor(store: secrets)
        service.redact = { redactor.redact($0) }
        let root = paths.root
        service.logs = { environment, tail in LocalDriver.recentOutput(stateDirectory: root, environment: environment, lines: tail) }
        return redactor
    }

    /// The service for reads on this host only (`gantry diagnose ENV --json`): no repository,
    /// no key of Gantry's made.
    static func local(paths: StatePaths, store: StateStore) throws -> AgentService {
        let service = AgentService(configuration: .init(repositoryPath: "", stateDirectory: paths.root), store: store, key: SigningKey(),
                                   observer: LocalObserver(state: store), logger: Logger(label: "gantry"))
        masking(service, paths: paths, secrets: try? SecretStore(state: store, keyPath: paths.secretsKey))
        return service
    }

    /// The service of a state directory outside `gantry run` (`gantry api`, `gantry mcp`): its
    /// repository (`--repo`, else the one `gantry run` watched), store and key.
    static func service(paths: StatePaths, repo: String?, protectedBranch: String, rate: APIRate? = nil, dataPlaneToken: String? = nil,
                        logger: Logger) throws -> AgentService {
        let location = try RepositoryLocation.resolve(repo, paths: paths)
        return try service(paths: paths, location: location, repository: try RepositoryLocation.open(location, paths: paths),
                           store: try StateStore(path: paths.database), key: try SigningKey.loadOrCreate(at: paths.key),
                           protectedBranch: protectedBranch, rate: rate, dataPlaneToken: dataPlaneToken, logger: logger)
    }

    /// Parses `HOST:PORT` (`:PORT` and `PORT` mean 127.0.0.1).
    static func address(_ text: String) throws -> (host: String, port: Int) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let host = parts.count > 1 ? parts.dropLast().joined(separator: ":") : "127.0.0.1"
        guard let port = Int(parts.last ?? ""), (0...65535).contains(port) else {
            throw ValidationError("--api must be HOST:PORT (e.g. 127.0.0.1:7070), not '\(text)'")
        }
        return (host.isEmpty ? "127.0.0.1" : host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
    }

    /// Starts the API server, and records its address in the state directory for `gantry exec`.
    static func start(_ service: AgentService, address: String, paths: StatePaths, logger: Logger) throws -> APIServer {
        let (host, port) = try self.address(address)
        let server = APIServer(service: service, logger: logger)
        try server.start(host: host, port: port)
        let shown = host.contains(":") ? "[\(host)]" : host
        try Data("http://\(shown):\(server.port)\n".utf8).write(to: URL(fileURLWithPath: paths.apiAddressFile), options: .atomic)
        logger.info("API listening on http://\(shown):\(server.port) (MCP at /mcp, metrics at /metrics)")
        return server
    }
}

/// `--api-rate` and `--api-burst`: each token's requests per second on average, and at once.
struct APIRate: ParsableArguments {
    @Option(name: .customLong("api-rate"), help: "Requests per second each API token may make on average.")
    var rate = 20.0
    @Option(name: .customLong("api-burst"), help: "Requests each API token may make at once.")
    var burst = 60.0

    func validate() throws {
        guard rate > 0, burst >= 1 else { throw ValidationError("--api-rate must be positive and --api-burst at least 1") }
    }
}

struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "token", abstract: "Bearer tokens of the API: each acts as one principal of identities/actors.yaml.",
                                                    subcommands: [Create.self, List.self, Revoke.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a token; it is printed once, alone on standard output (the state DB keeps its hash).")
        @OptionGroup var state: StateOption
        @Option(help: "The principal the token acts as (a name of identities/actors.yaml on the protected branch).")
        var actor: String
        @Option(help: "How long it is valid (e.g. 30m, 24h, 7d); default: until revoked.")
        var ttl: String?

        func run() throws {
            let paths = StatePaths(root: state.directory)
            guard !actor.isEmpty, !actor.contains(where: { $0.isWhitespace || $0.isNewline }) else { throw ValidationError("--actor must be a principal name without spaces") }
            var seconds: TimeInterval?
            if let ttl {
                guard let parsed = Durations.seconds(ttl), parsed > 0 else { throw ValidationError("--ttl must be a duration such as 30m, 24h or 7d, not '\(ttl)'") }
                seconds = parsed
            }
            try FileManager.default.createDirectory(at: paths.root, withIntermediateDirectories: true)
            let store = try StateStore(path: paths.database)
            // A warning, not a refusal: the actor may be added on the protected branch later.
            if let trust = try store.trust(), let revision = (trust.revision ?? trust.anchor).flatMap(ObjectID.init(hex:)),
               let location = try? RepositoryLocation.resolve(nil, paths: paths),
               let repository = try? RepositoryLocation.open(location, paths: paths),
               let governance = try? GovernanceRevision.load(at: revision, repository: repository), governance.identity.actors[actor] == nil {
                FileHandle.standardError.write(Data("warning: \(actor) has no entry in identities/actors.yaml at \(revision.short); the token is refused until one is added on \(trust.protectedBranch)\n".utf8))
            }
            let (value, record) = try store.createToken(actor: actor, ttl: seconds)
            print(value)
            FileHandle.standardError.write(Data("token \(record.id) for \(actor)\(record.expiresAt.map { ", valid until \(ISO8601DateFormatter().string(from: $0))" } ?? ", valid until revoked (gantry token revoke \(record.id))")\n".utf8))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Tokens: id, actor, created, expiry, last use, revoked (never their values).")
        @OptionGroup var state: StateOption
        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            let paths = StatePaths(root: state.directory)
            guard FileManager.default.fileExists(atPath: paths.database) else { throw Failure("no state in \(paths.root.path)") }
            let tokens = try StateStore(path: paths.database).tokens()
            let format = ISO8601DateFormatter()
            if json {
                let rows: [PlainValue] = tokens.map { token in
                    .map([("id", .string(token.id)), ("actor", .string(token.actor)), ("createdAt", .string(format.string(from: token.createdAt))),
                          ("expiresAt", token.expiresAt.map { .string(format.string(from: $0)) } ?? .null),
                          ("lastUsedAt", token.lastUsedAt.map { .string(format.string(from: $0)) } ?? .null),
                          ("revokedAt", token.revokedAt.map { .string(format.string(from: $0)) } ?? .null),
                          ("valid", .bool(token.isValid(at: Date())))])
                }
                print(PlainValue.map([("tokens", .list(rows))]).json(indent: "  "))
                return
            }
            if tokens.isEmpty { print("no tokens (gantry token create --actor PRINCIPAL)") }
            for token in tokens {
                let state = token.revokedAt.map { "revoked \(format.string(from: $0))" }
                    ?? token.expiresAt.map { $0 <= Date() ? "expired \(format.string(from: $0))" : "valid until \(format.string(from: $0))" } ?? "valid until revoked"
                print(Printable.line("\(token.id)  \(token.actor)  created \(format.string(from: token.createdAt))  \(state)  last used \(token.lastUsedAt.map { format.string(from: $0) } ?? "never")"))
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token at once (its id, or a unique prefix).")
        @OptionGroup var state: StateOption
        @Argument(help: "The token's id (as `gantry token list` shows it).")
        var id: String

        func run() throws {
            let paths = StatePaths(root: state.directory)
            guard FileManager.default.fileExists(atPath: paths.database) else { throw Failure("no state in \(paths.root.path)") }
            guard try StateStore(path: paths.database).revokeToken(id) else { throw Failure("no single token with id \(id) (gantry token list)") }
            print("revoked \(id)")
        }
    }
}

/// `gantry api`: the API alone, without reconciling (exec needs the driver: `gantry run` serves it).
struct APICommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "api", abstract: "Serve the HTTP API (and MCP at /mcp) for a state directory without reconciling; `gantry run` serves it too.")
    @Option(help: "Configuration repository (default: the one `gantry run` watches).")
    var repo: String?
    @OptionGroup var state: StateOption
    @Option(help: "Listen on HOST:PORT.")
    var api = "127.0.0.1:7070"
    @Option(help: "The protected branch (until the trust state names one).")
    var branch = "main"
    @OptionGroup var rate: APIRate
    @Option(help: "A file holding the data-plane token: serve /v1/dataplane to `gantry agent` (the plans `gantry run` issues).")
    var dataPlaneTokenFile: String?

    func run() throws {
        Logs.bootstrap()
        let logger = Logger(label: "gantry.api")
        let paths = StatePaths(root: state.directory)
        let service = try APIComposition.service(paths: paths, repo: repo, protectedBranch: branch, rate: rate,
                                                 dataPlaneToken: try dataPlaneTokenFile.map { try DataPlaneOptions.token(from: $0) }, logger: logger)
        let server = try APIComposition.start(service, address: api, paths: paths, logger: logger)
        let stop = WakeSignal()
        let stopped = StopFlag()
        stop.installSignalHandlers { _ in stopped.set(); stop.wake() }
        while !stopped.isSet { _ = stop.waitForReason(seconds: 3600) }
        server.stop()
        try? FileManager.default.removeItem(atPath: paths.apiAddressFile)
    }
}

/// How a client command (`gantry exec`, `gantry mcp`) reaches the running Gantry's API.
struct ClientOptions: ParsableArguments {
    @OptionGroup var state: StateOption
    @Option(help: "The API's address (default: $GANTRY_API, else the one the Gantry of --state serves, else http://127.0.0.1:7070).")
    var api: String?
    @Option(help: "A file holding the token (default: $GANTRY_TOKEN).")
    var tokenFile: String?

    var base: String {
        api ?? ProcessInfo.processInfo.environment["GANTRY_API"] ?? StatePaths(root: state.directory).apiAddress ?? "http://127.0.0.1:7070"
    }

    func token() throws -> String {
        let token = try tokenFile.map { try String(contentsOfFile: $0, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) }
            ?? ProcessInfo.processInfo.environment["GANTRY_TOKEN"]
        guard let token, !token.isEmpty else { throw Failure("no token: set GANTRY_TOKEN (or --token-file) to a token of `gantry token create --actor PRINCIPAL`") }
        return token
    }
}

/// `gantry mcp`: MCP on standard input and output for an agent that speaks stdio. It is only a
/// bridge: each message goes to the running Gantry's `/mcp` with the token, so it needs neither
/// Gantry's key nor its state (an agent runs it as itself), and the same rules, rate limits and
/// audit apply as over HTTP.
struct MCPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "mcp", abstract: "MCP server on stdio (token from GANTRY_TOKEN), bridged to the running Gantry's API.")
    @OptionGroup var client: ClientOptions

    func run() throws {
        let token = try client.token()
        let base = client.base
        let output = NSLock()
        let group = DispatchGroup()
        let write: @Sendable (String) -> Void = { line in
            output.withLock { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
        }
        while let line = readLine(strippingNewline: true) {
            guard !line.trimmingCharacters(in: .whitespaces).isEmpty else { continue }
            let id = ((try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any])?["id"]
            let idJSON = id.flatMap { try? JSONSerialization.data(withJSONObject: [$0], options: [.fragmentsAllowed]) }
                .map { String(decoding: $0, as: UTF8.self).dropFirst().dropLast() }.map(String.init)
            group.enter()
            // Each message on a thread of its own: a long call (create with wait, exec) does not hold back a ping.
            Thread.detachNewThread {
                defer { group.leave() }
                do {
                    let answer = try LoopbackHTTP.request(base: base, method: "POST", path: "/mcp", token: token, body: Data(line.utf8))
                    if (200..<300).contains(answer.status) || answer.body.contains("\"jsonrpc\"") {
                        // (The server's own JSON-RPC errors, a parse error included, go back as they are.)
                        if !answer.body.isEmpty { write(answer.body) }
                    } else if let idJSON {
                        let reason = ((try? JSONSerialization.jsonObject(with: Data(answer.body.utf8))) as? [String: Any])?["error"] as? [String: Any]
                        let message = "\(reason?["message"] ?? "the API answered \(answer.status)"); \(reason?["fix"] ?? "")"
                        write(#"{"jsonrpc":"2.0","id":\#(idJSON),"error":{"code":-32001,"message":\#(PlainValue.quote(message))}}"#)
                    }
                } catch {
                    if let idJSON {
                        write(#"{"jsonrpc":"2.0","id":\#(idJSON),"error":{"code":-32002,"message":\#(PlainValue.quote("cannot reach Gantry's API at \(base): \(error)"))}}"#)
                    }
                }
            }
        }
        group.wait()
    }
}

/// `gantry exec` runs commands through the running Gantry's API (the process
/// that runs the environments), with a token, so the same rules and audit apply.
struct RemoteExecutor: EnvironmentExecutor {
    let base: String
    let token: String

    func exec(_ request: ExecRequest, output: @escaping @Sendable (ExecStream, Data) -> Bool) throws -> ExecResult {
        var body: [(key: String, value: PlainValue)] = [("command", .list(request.command.map { .string($0) })), ("timeoutSeconds", .double(request.timeout))]
        if let service = request.service { body.append(("service", .string(service))) }
        let path = "/v1/environments/\(request.environment.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._"))) ?? request.environment)/exec?stream=true"
        var result: ExecResult?
        var failure: String?
        let status = try LoopbackHTTP.stream(base: base, method: "POST", path: path, token: token, body: Data(PlainValue.map(body).json().utf8)) { line in
            guard let data = line.data(using: .utf8), let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return }
            if let stream = object["stream"] as? String, let text = object["data"] as? String {
                _ = output(stream == "stderr" ? .stderr : .stdout, Data(text.utf8))
            } else if let code = object["exitCode"] as? Int {
                result = ExecResult(exitCode: Int32(code), timedOut: object["timedOut"] as? Bool ?? false, service: object["service"] as? String ?? "")
            } else if let error = object["error"] as? [String: Any] {
                failure = "\(error["message"] ?? "error"); \(error["fix"] ?? "")"
            }
        }
        if let result { return result }
        throw ExecRefusal(status == 404 ? .notFound : .invalid, failure ?? "the API answered \(status) without a result")
    }
}

/// `gantry exec ENV -- CMD...`: a command in an environment's context, through the running Gantry.
struct ExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "exec", abstract: "Run a command in an environment's context (its user, cgroup, network, variables and secrets); exits with its exit code. Needs GANTRY_TOKEN (or --token-file) and a running `gantry run`.")
    @OptionGroup var client: ClientOptions
    @Option(help: "The service whose variables and working directory the command gets (default: the first).")
    var service: String?
    @Option(help: "Seconds before the command is stopped.")
    var timeout: Double = 60
    @Argument(help: "The environment.")
    var environment: String
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    func run() throws {
        guard !command.isEmpty else { throw ValidationError("give the command after --: gantry exec ENV -- CMD ARGS...") }
        let executor = RemoteExecutor(base: client.base, token: try client.token())
        do {
            let result = try executor.exec(ExecRequest(environment: environment, service: service, command: command, timeout: timeout)) { stream, data in
                (stream == .stderr ? FileHandle.standardError : FileHandle.standardOutput).write(data)
                return true
            }
            if result.timedOut { FileHandle.standardError.write(Data("gantry exec: stopped after \(Int(timeout)) s (--timeout)\n".utf8)) }
            throw ExitCode(result.exitCode)
        } catch let refusal as ExecRefusal {
            throw Failure(refusal.description)
        } catch let failure as LoopbackHTTP.Failure {
            throw Failure(failure.description)
        }
    }
}

/// `gantry logs ENV`: the last lines of an environment's logs, secret values masked.
struct LogsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "An environment's service logs, secret values masked.")
    @OptionGroup var state: StateOption
    @Option(help: "Only this service's log.")
    var service: String?
    @Option(help: "Lines of each log.")
    var tail = 50
    @Flag(help: "Keep printing new lines until interrupted.")
    var follow = false
    @Argument(help: "The environment.")
    var environment: String

    func run() throws {
        let paths = StatePaths(root: state.directory)
        guard FileManager.default.fileExists(atPath: paths.database) else { throw Failure("no state in \(paths.root.path)") }
        let store = try StateStore(path: paths.database)
        guard try store.environment(environment) != nil else { throw Failure("no environment named '\(environment)' in \(paths.root.path)") }
        guard let secrets = try? SecretStore(state: store, keyPath: paths.secretsKey) else {
            throw Failure("the secret store cannot be opened to mask secrets, so no log line is shown (run as the user that runs gantry)")
        }
        let redactor = Redactor(store: secrets)
        let wanted = service.map { "\($0).log" }
        let files = LocalDriver.recentOutput(stateDirectory: paths.root, environment: environment, lines: max(1, tail))
            .filter { wanted == nil || $0.file == wanted }
        if let wanted, files.isEmpty { throw Failure("\(environment) has no log \(wanted) yet") }
        for (file, lines) in files {
            if files.count > 1 { print("==> \(file) <==") }
            for line in lines { print(Printable.line(redactor.redact(line))) }
        }
        guard follow else { return }
        let directory = LocalDriver.logDirectory(stateDirectory: paths.root, environment: environment)
        var offsets: [String: UInt64] = [:]
        for (file, _) in files { offsets[file] = (try? FileManager.default.attributesOfItem(atPath: directory.appendingPathComponent(file).path)[.size] as? UInt64) ?? 0 }
        var partial: [String: String] = [:]
        while true {
            for file in ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).sorted() where file.hasSuffix(".log") && (wanted == nil || file == wanted) {
                guard let handle = FileHandle(forReadingAtPath: directory.appendingPathComponent(file).path) else { continue }
                let size = (try? handle.seekToEnd()) ?? 0
                var offset = offsets[file] ?? 0
                if size < offset { offset = 0 }  // rotated
                try? handle.seek(toOffset: offset)
                let data = (try? handle.readToEnd()) ?? Data()
                try? handle.close()
                offsets[file] = offset + UInt64(data.count)
                guard !data.isEmpty else { continue }
                var text = partial[file, default: ""] + String(decoding: data, as: UTF8.self)
                let complete = text.hasSuffix("\n")
                var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
                text = complete ? "" : (lines.popLast() ?? "")
                partial[file] = text
                for line in lines where !line.isEmpty {
                    FileHandle.standardOutput.write(Data((Printable.line((wanted == nil ? "\(file): " : "") + redactor.redact(line)) + "\n").utf8))
                }
            }
            usleep(250_000)
        }
    }
}
