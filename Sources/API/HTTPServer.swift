import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Reconciler
import ServiceLifecycle
import SpecLoading

/// The HTTP/JSON API (FORMATS.md section 4) and, at `/mcp`, the MCP streamable HTTP transport,
/// over one `AgentService`. Runs on a thread of its own beside the reconcile loop.
public final class APIServer: @unchecked Sendable {
    public let service: AgentService
    let logger: Logger
    private var group: ServiceGroup?
    private var task: Task<Void, Error>?
    /// The port it listens on, once started.
    public private(set) var port = 0
    public private(set) var host = "127.0.0.1"

    public init(service: AgentService, logger: Logger) {
        self.service = service
        self.logger = logger
    }

    /// Starts listening on `host:port` (0: a free port) and returns once it does.
    public func start(host: String, port: Int) throws {
        let router = Router()
        routes(router)
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        // A connection that sends nothing, or trickles a request, is closed after 30 s (one whose
        // request is being answered is not: an exec or a wait may take minutes).
        let app = Application(router: router, server: .http1(configuration: .init(idleTimeout: .seconds(30))),
                              configuration: .init(address: .hostname(host, port: port), serverName: "gantry"),
                              onServerRunning: { channel in
                                  continuation.yield(channel.localAddress?.port ?? -1)
                                  continuation.finish()
                              }, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], logger: logger))
        self.group = group
        let failure = Box<String?>(nil)
        task = Task {
            do { try await group.run() } catch {
                failure.set("\(error)")
                continuation.finish()
                throw error
            }
        }
        let bound = Box(-1)
        let ready = DispatchSemaphore(value: 0)
        Task {
            for await value in ports { bound.set(value) }
            ready.signal()
        }
        guard ready.wait(timeout: .now() + 30) == .success, bound.get() > 0 else {
            stop()
            throw APIError(500, "no-listen", "the API could not listen on \(host):\(port): \(failure.get() ?? "no answer within 30 s")",
                           fix: "choose another address with --api HOST:PORT, or --no-api")
        }
        self.host = host
        self.port = bound.get()
    }

    /// Stops accepting, lets answers under way finish, and returns.
    public func stop() {
        guard let group else { return }
        self.group = nil
        let done = DispatchSemaphore(value: 0)
        let task = self.task
        Task {
            await group.triggerGracefulShutdown()
            _ = try? await task?.value
            done.signal()
        }
        if done.wait(timeout: .now() + 10) == .timedOut { task?.cancel() }
    }

    // MARK: Routes

    func routes(_ router: Router<BasicRequestContext>) {
        let service = self.service
        router.get("/metrics") { _, _ -> Response in
            service.metrics.request(route: "/metrics", status: 200)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: service.metrics.render(store: service.store))))
        }
        router.get("/v1/openapi.yaml") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/yaml"], body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.text)))
        }
        router.get("/v1/environments") { request, _ in
            await self.answer("GET /v1/environments", request) { caller, _ in (200, try service.listEnvironments(caller)) }
        }
        router.post("/v1/environments") { request, _ in
            await self.answer("POST /v1/environments", request) { caller, body in
                // The query is checked before anything is committed.
                let wait = request.uri.queryParameters.get("wait")
                if let wait, wait != "serving" {
                    throw APIError.badRequest("wait=\(wait) is not known", fix: "give wait=serving, or leave it out")
                }
                let seconds = try Self.number(request, "timeout", maximum: service.configuration.maxWaitSeconds) ?? 300
                let created = service.named(try service.create(caller, body: body))
                guard wait != nil else { return (201, service.plain(created)) }
                let state = service.waitServing(branch: created.branch, source: String(created.file.dropFirst("environments/".count).dropLast(5)),
                                                commit: created.commit, seconds: seconds)
                let source = String(created.file.dropFirst("environments/".count).dropLast(5))
                return (state == nil ? 202 : 201, service.plain(created, state: state ?? service.currentState(branch: created.branch, source: source) ?? .map([
                    ("phase", .string("Pending")), ("message", .string("not recorded within \(Int(seconds)) s; poll the status URL")),
                ])))
            }
        }
        router.get("/v1/environments/:name") { request, context in
            await self.answer("GET /v1/environments/{name}", request) { caller, _ in (200, try service.environment(caller, try Self.name(context))) }
        }
        router.delete("/v1/environments/:name") { request, context in
            await self.answer("DELETE /v1/environments/{name}", request) { caller, _ in (202, try service.destroy(caller, try Self.name(context))) }
        }
        router.get("/v1/environments/:name/diagnose") { request, context in
            await self.answer("GET /v1/environments/{name}/diagnose", request) { caller, _ in (200, try service.diagnose(caller, try Self.name(context))) }
        }
        router.get("/v1/environments/:name/logs") { request, context in
            await self.answer("GET /v1/environments/{name}/logs", request) { caller, _ in
                (200, try service.logs(caller, try Self.name(context), service: request.uri.queryParameters.get("service"),
                                       tail: try Self.number(request, "tail", maximum: 1000).map { Int($0) }))
            }
        }
        router.post("/v1/environments/:name/exec") { request, context in
            if request.uri.queryParameters.get("stream") == "true" {
                return await self.streamExec(request, name: context.parameters.get("name") ?? "")
            }
            return await self.answer("POST /v1/environments/{name}/exec", request) { caller, body in
                (200, try service.exec(caller, try Self.name(context), body: body))
            }
        }
        for action in ["sleep", "wake"] {
            router.post("/v1/environments/:name/\(action)") { request, context in
                await self.answer("POST /v1/environments/{name}/\(action)", request) { caller, _ in
                    (200, try service.lifecycle(caller, try Self.name(context), action: action))
                }
            }
        }
        router.post("/v1/kill") { request, _ in
            await self.answer("POST /v1/kill", request) { caller, body in (200, try service.killSwitch(caller, body: body)) }
        }
        router.get("/v1/budgets") { request, _ in
            await self.answer("GET /v1/budgets", request) { caller, _ in (200, try service.budgets(caller)) }
        }
        router.get("/v1/audit") { request, _ in
            await self.answer("GET /v1/audit", request) { caller, _ in
                let query = request.uri.queryParameters
                return (200, try service.audit(caller, environment: query.get("environment"), actor: query.get("actor"), event: query.get("event"),
                                               since: query.get("since"), limit: try Self.number(request, "limit", maximum: 1000).map { Int($0) }))
            }
        }
        router.get("/v1/commits/:sha/explain") { request, context in
            await self.answer("GET /v1/commits/{sha}/explain", request) { caller, _ in
                (200, try service.explain(caller, commit: context.parameters.get("sha") ?? ""))
            }
        }
        dataPlaneRoutes(router)
        MCPEndpoint.install(on: router, service: service, server: self)
        router.add(middleware: JSONErrors(metrics: service.metrics))
    }

    /// Authenticates, reads the body, runs `body` off the event loop, and turns what it returns
    /// or throws into a JSON answer.
    func answer(_ route: String, _ request: Request,
                _ body: @escaping @Sendable (Caller, Data) throws -> (Int, PlainValue)) async -> Response {
        let service = self.service
        // Who calls is known before the body is read: nobody without a token gets a megabyte in.
        let authenticated = await admit(request)
        var result: Result<(Int, PlainValue), Error>
        switch authenticated {
        case .failure(let error): result = .failure(error)
        case .success(let caller):
            do {
                let data = try await Self.readBody(request)
                result = await Self.offLoop {
                    defer { service.inFlight.leave(caller.tokenID) }
                    return Result { try body(caller, data) }
                }
            } catch {
                service.inFlight.leave(caller.tokenID)
                result = .failure(error)
            }
        }
        switch result {
        case .success(let (status, value)):
            service.metrics.request(route: route, status: status)
            return Self.json(status, value)
        case .failure(let error):
            return refusal(error, route: route)
        }
    }

    /// Authenticates the request's caller and takes one of its in-flight places (the caller
    /// gives it back with `service.inFlight.leave`).
    func admit(_ request: Request) async -> Result<Caller, Error> {
        let service = self.service
        let authorization = request.headers[.authorization]
        return await Self.offLoop {
            Result {
                let caller = try service.authenticate(authorization: authorization)
                try service.inFlight.enter(caller.tokenID)
                return caller
            }
        }
    }

    /// The JSON answer for what `route` refused (with `Retry-After` on a 429), counted.
    func refusal(_ error: Error, route: String) -> Response {
        let failure = Self.apiError(error)
        service.metrics.request(route: route, status: failure.status)
        if failure.status >= 500 { logger.error("api: \(route) failed", metadata: ["error": "\(service.redact("\(error)"))"]) }
        var response = Self.json(failure.status, failure.body)
        if let wait = failure.retryAfter { response.headers[.retryAfter] = String(wait) }
        if failure.status == 401 { response.headers[.wwwAuthenticate] = "Bearer" }
        return response
    }

    /// `POST .../exec?stream=true`: newline-delimited JSON, one `{"stream", "data"}` object per
    /// piece of output as it comes, then `{"exitCode", "timedOut"}`.
    func streamExec(_ request: Request, name: String) async -> Response {
        let service = self.service
        let route = "POST /v1/environments/{name}/exec"
        let authenticated = await admit(request)
        let prepared: Result<AgentService.ExecCall, Error>
        switch authenticated {
        case .failure(let error): prepared = .failure(error)
        case .success(let caller):
            do {
                let data = try await Self.readBody(request)
                prepared = await Self.offLoop {
                    Result {
                        do { return try service.prepareExec(caller, name, body: data) } catch {
                            service.inFlight.leave(caller.tokenID)
                            throw error
                        }
                    }
                }
            } catch {
                service.inFlight.leave(caller.tokenID)
                prepared = .failure(error)
            }
        }
        let call: AgentService.ExecCall
        switch prepared {
        case .success(let value): call = value
        case .failure(let error):
            return refusal(error, route: route)
        }
        service.metrics.request(route: route, status: 200)
        // A reader that stalls holds the command back until its own time is up, not longer; at
        // most about a mebibyte of output waits for it.
        let channel = LineChannel(capacityBytes: 1 << 20, deadline: Date().addingTimeInterval(call.request.timeout))
        Thread.detachNewThread {
            do {
                let result = try service.runExec(call) { stream, data in
                    // (Empty: the driver asks whether anyone still reads. After 5 s of silence an
                    // empty piece is sent: a reader that went away is found when it cannot be
                    // written; one that never began reading is given up after 10 s.)
                    data.isEmpty && !channel.isQuietFor(5) ? channel.isWanted
                        : channel.send(PlainValue.map([("stream", .string(stream.rawValue)), ("data", .string(String(decoding: data, as: UTF8.self)))]).json() + "\n")
                }
                _ = channel.send(AgentService.plain(result, stdout: nil, stderr: nil, environment: call.record.name).json() + "\n")
            } catch {
                _ = channel.send(Self.apiError(error).body.json() + "\n")
            }
            channel.finish()
            // The token's place is held until the answer is written (or given up on): a reader
            // that never reads cannot stack answers beyond the in-flight limit.
            channel.waitUntilWritten(seconds: 30)
            service.inFlight.leave(call.caller.tokenID)
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: ResponseBody { writer in
            channel.started()
            do {
                for await line in channel.lines {
                    try await writer.write(ByteBuffer(string: line))
                    channel.consumed(line.utf8.count)
                }
                try await writer.finish(nil)
                channel.written()
            } catch {
                // The client went away: the command is stopped rather than left writing to no one.
                channel.cancel()
                throw error
            }
            if Task.isCancelled { channel.cancel() }
        })
    }

    /// The request's body, at most `JSONInput.maxBody` bytes (else 413), all of it within 30 s
    /// (else 400: a body trickled in holds a token's place no longer).
    static func readBody(_ request: Request) async throws -> Data {
        let outcome = Box<Result<Data, Error>?>(nil)
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Data, Error>) in
            @Sendable func finish(_ result: Result<Data, Error>) {
                let first = outcome.swap(ifNil: result)
                if first { continuation.resume(with: result) }
            }
            Task {
                var request = request
                do {
                    let buffer = try await request.collectBody(upTo: JSONInput.maxBody)
                    finish(.success(Data(buffer.readableBytesView)))
                } catch {
                    finish(.failure(APIError(413, "too-large", "the request body is larger than \(JSONInput.maxBody) bytes", fix: "send a smaller body")))
                }
            }
            Task {
                try? await Task.sleep(for: .seconds(30))
                finish(.failure(APIError.badRequest("the request body did not arrive within 30 s", fix: "send the whole body at once")))
            }
        }
    }

    static func apiError(_ error: Error) -> APIError {
        if let error = error as? APIError { return error }
        return APIError(500, "internal", "Gantry could not answer: \(error)", fix: "try again; the server's log has the detail")
    }

    static func json(_ status: Int, _ value: PlainValue) -> Response {
        Response(status: .init(code: status), headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(string: value.json() + "\n")))
    }

    static func name(_ context: BasicRequestContext) throws -> String {
        guard let name = context.parameters.get("name"), !name.isEmpty else {
            throw APIError.badRequest("no environment name in the path", fix: "GET /v1/environments/NAME")
        }
        return name
    }

    /// A numeric query parameter, nil when absent; a 400 when it is not a number from 0 to `maximum`.
    static func number(_ request: Request, _ name: String, maximum: Double) throws -> Double? {
        guard let text = request.uri.queryParameters.get(name) else { return nil }
        // Decimal digits only (Double would also read hex, exponents, "nan"...).
        let decimal = !text.isEmpty && text.count <= 12 && text.allSatisfy { $0.isASCII && ($0.isNumber || $0 == ".") } && text.filter { $0 == "." }.count <= 1
        guard decimal, let value = Double(text), value.isFinite, value >= 0, value <= maximum else {
            throw APIError.badRequest("\(name)=\(text) is not a number from 0 to \(Int(maximum))", fix: "give \(name) as a number from 0 to \(Int(maximum))")
        }
        return value
    }

    /// Runs blocking work (SQLite, Git, waits, execs) on a thread of its own: never on the event
    /// loop, nor on a shared pool a few slow requests could fill (each token has at most
    /// `maxInFlight` of them).
    static func offLoop<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: work()) }
        }
    }
}

final class Box<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ value: T) { self.value = value }
    func get() -> T { lock.withLock { value } }
    func set(_ value: T) { lock.withLock { self.value = value } }
}

extension Box {
    /// Sets `new` only if nothing was set yet; true when this call set it.
    func swap<W>(ifNil new: W) -> Bool where T == W? {
        lock.withLock {
            guard value == nil else { return false }
            value = new
            return true
        }
    }
}

/// What Hummingbird answers itself (no such route, a method a route does not take) answered in
/// the API's error form too.
struct JSONErrors: RouterMiddleware {
    typealias Context = BasicRequestContext
    let metrics: GantryMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            let status = Int(error.status.code)
            metrics.request(route: "unmatched", status: status)
            let failure = status == 404
                ? APIError.notFound("no endpoint \(request.method.rawValue) \(request.uri.path)", fix: "the endpoints are listed in /v1/openapi.yaml")
                : APIError(status, "http-\(status)", "\(request.method.rawValue) \(request.uri.path): \(error.status.reasonPhrase)", fix: "the endpoints are listed in /v1/openapi.yaml")
            return APIServer.json(status, failure.body)
        }
    }
}

/// Lines from an exec to its HTTP answer, at most `capacityBytes` of them waiting: a client that
/// does not read holds the command back (until `deadline`, the command's own limit), and one that
/// goes away, or never starts reading, stops it, instead of filling Gantry's memory.
final class LineChannel: @unchecked Sendable {
    let lines: AsyncStream<String>
    private let continuation: AsyncStream<String>.Continuation
    private let condition = NSCondition()
    private var waitingBytes = 0
    private var cancelled = false
    private var reading = false
    private var done = false
    private let made = Date()
    private var lastSent = Date()
    let capacityBytes: Int
    let deadline: Date

    init(capacityBytes: Int, deadline: Date) {
        (lines, continuation) = AsyncStream.makeStream(of: String.self)
        self.capacityBytes = capacityBytes
        self.deadline = deadline
    }

    var isCancelled: Bool { condition.withLock { cancelled } }

    /// Someone reads, or may still begin to (10 s after the answer was made).
    var isWanted: Bool {
        condition.withLock {
            if !reading && Date().timeIntervalSince(made) > 10 { cancelled = true }
            return !cancelled
        }
    }

    /// Nothing was sent for `seconds`.
    func isQuietFor(_ seconds: TimeInterval) -> Bool { condition.withLock { Date().timeIntervalSince(lastSent) >= seconds } }

    /// Waits for room; false once the reader is gone, never came, or stalled past the deadline.
    func send(_ line: String) -> Bool {
        guard isWanted else { return false }
        condition.lock()
        defer { condition.unlock() }
        while waitingBytes > 0 && waitingBytes + line.utf8.count > capacityBytes && !cancelled {
            if !condition.wait(until: min(deadline, Date().addingTimeInterval(1))) && Date() >= deadline {
                cancelled = true
            }
        }
        guard !cancelled else { return false }
        waitingBytes += line.utf8.count
        lastSent = Date()
        continuation.yield(line)
        return true
    }

    func started() { condition.withLock { reading = true } }

    func consumed(_ bytes: Int) {
        condition.withLock {
            waitingBytes = max(0, waitingBytes - bytes)
            condition.broadcast()
        }
    }

    func finish() { continuation.finish() }

    func written() {
        condition.withLock {
            done = true
            condition.broadcast()
        }
    }

    /// Waits until the answer is written, the reader is gone, or `seconds` pass.
    func waitUntilWritten(seconds: TimeInterval) {
        let until = Date().addingTimeInterval(seconds)
        condition.lock()
        while !done && !cancelled && Date() < until { _ = condition.wait(until: until) }
        condition.unlock()
    }

    func cancel() {
        condition.withLock {
            cancelled = true
            condition.broadcast()
        }
        continuation.finish()
    }
}
