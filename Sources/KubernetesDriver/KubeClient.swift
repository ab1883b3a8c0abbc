import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// A decoded JSON object as the API returns it (live objects carry fields Gantry does not type).
public typealias JSONObject = [String: Any]

/// One object in the cluster: enough to find it (`apiVersion`, `kind`, namespace, name).
public struct ObjectRef: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var apiVersion: String
    public var kind: String
    public var namespace: String?
    public var name: String

    public init(apiVersion: String, kind: String, namespace: String?, name: String) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.namespace = namespace
        self.name = name
    }

    public init(_ object: KubeObject) {
        self.init(apiVersion: object.apiVersion, kind: object.kind, namespace: object.metadata.namespace, name: object.metadata.name)
    }

    /// `Deployment/web`.
    public var description: String { "\(kind)/\(name)" }

    /// How the state DB keeps it: `apiVersion|kind|namespace|name` (names and kinds hold no `|`).
    public var entry: String { [apiVersion, kind, namespace ?? "", name].joined(separator: "|") }

    public init?(entry: String) {
        let parts = entry.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 4 else { return nil }
        self.init(apiVersion: parts[0], kind: parts[1], namespace: parts[2].isEmpty ? nil : parts[2], name: parts[3])
    }

    public static func < (lhs: ObjectRef, rhs: ObjectRef) -> Bool { lhs.entry < rhs.entry }

    /// The kinds the driver manages: their resource names in the API's paths.
    static let plurals: [String: String] = [
        "Namespace": "namespaces", "Secret": "secrets", "Service": "services", "Pod": "pods", "ResourceQuota": "resourcequotas",
        "LimitRange": "limitranges", "Deployment": "deployments", "StatefulSet": "statefulsets", "Ingress": "ingresses",
        "NetworkPolicy": "networkpolicies", "HorizontalPodAutoscaler": "horizontalpodautoscalers", "Cluster": "clusters",
    ]

    /// The collection's path (`/apis/apps/v1/namespaces/ns/deployments`).
    func collectionPath() throws -> String {
        guard let plural = Self.plurals[kind] else { throw KubeAPIError(operation: "find \(self)", status: 0, reason: "UnknownKind", message: "Gantry does not manage \(kind) objects") }
        let root = apiVersion.contains("/") ? "/apis/\(apiVersion)" : "/api/\(apiVersion)"
        return root + (namespace.map { "/namespaces/\(Self.escape($0))" } ?? "") + "/" + plural
    }

    func path() throws -> String { try collectionPath() + "/" + Self.escape(name) }

    static func escape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }
}

/// A refusal or failure of the API server, with its `Status` reason and message.
public struct KubeAPIError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    /// The HTTP status (0: the server was not reached).
    public let status: Int
    public let reason: String
    public let message: String

    public var description: String {
        status == 0 ? "\(operation): \(message)" : "\(operation): \(status) \(reason): \(message)"
    }
    public var isNotFound: Bool { status == 404 }
}

/// A thin client of the Kubernetes API over async-http-client: the calls the driver makes
/// (server-side apply, get, list by label, delete, watch), synchronous for the driver's workers.
public final class KubeClient: @unchecked Sendable {
    public let config: KubeConfig
    let http: HTTPClient
    /// Requests wait at most this long (a watch sets its own bound).
    let timeout: TimeAmount = .seconds(60)
    public static let fieldManager = "gantry"

    public init(config: KubeConfig) throws {
        self.config = config
        var tls = TLSConfiguration.makeClientConfiguration()
        do {
            if let ca = config.certificateAuthority {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(ca))
            }
            if let certificate = config.clientCertificate, let key = config.clientKey {
                tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(certificate).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: key, format: .pem))
            }
        } catch {
            throw KubeConfigError("\(config.origin): a certificate or key is not valid PEM (\(error))")
        }
        if config.insecureSkipTLSVerify { tls.certificateVerification = .none }
        http = HTTPClient(eventLoopGroupProvider: .singleton,
                          configuration: HTTPClient.Configuration(tlsConfiguration: tls, timeout: .init(connect: .seconds(10))))
    }

    /// Closes the connections in the background (a TLS close may wait for the server's answer).
    deinit {
        let http = self.http
        http.shutdown(queue: .global()) { _ in withExtendedLifetime(http) {} }
    }

    /// One request; the status and body of the answer.
    func send(_ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: Data? = nil,
              contentType: String? = nil, operation: String) throws -> (status: Int, body: Data) {
        let request = try makeRequest(method, path, query: query, body: body, contentType: contentType, operation: operation)
        do {
            let response = try http.execute(request: request, deadline: .now() + timeout).wait()
            return (Int(response.status.code), response.body.map { Data($0.readableBytesView) } ?? Data())
        } catch {
            throw KubeAPIError(operation: operation, status: 0, reason: "Unreachable", message: "the API server at \(config.server) did not answer (\(error))")
        }
    }

    func makeRequest(_ method: HTTPMethod, _ path: String, query: [(String, String)], body: Data?, contentType: String?,
                     operation: String) throws -> HTTPClient.Request {
        let encoded = query.map { "\(ObjectRef.escape($0.0))=\(ObjectRef.escape($0.1))" }.joined(separator: "&")
        var request = try HTTPClient.Request(url: config.server + path + (encoded.isEmpty ? "" : "?" + encoded), method: method)
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "gantry")
        if let token = try config.currentToken() { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        if let body { request.body = .bytes(body) }
        return request
    }

    /// The error an answer of `status` says, with the server's `Status` message.
    static func failure(_ operation: String, _ status: Int, _ body: Data) -> KubeAPIError {
        let decoded = (try? JSONSerialization.jsonObject(with: body)) as? JSONObject
        let message = (decoded?["message"] as? String) ?? String(decoding: body.prefix(300), as: UTF8.self)
        let reason = (decoded?["reason"] as? String) ?? HTTPResponseStatus(statusCode: status).reasonPhrase
        return KubeAPIError(operation: operation, status: status, reason: reason, message: message)
    }

    static func object(_ data: Data, _ operation: String) throws -> JSONObject {
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? JSONObject else {
            throw KubeAPIError(operation: operation, status: 200, reason: "BadResponse", message: "the answer is not a JSON object")
        }
        return object
    }

    /// The live object, nil when there is none (404).
    public func get(_ ref: ObjectRef) throws -> JSONObject? {
        let operation = "get \(ref)"
        let (status, body) = try send(.GET, try ref.path(), operation: operation)
        if status == 404 { return nil }
        guard status == 200 else { throw Self.failure(operation, status, body) }
        return try Self.object(body, operation)
    }

    /// Server-side apply of `object` (JSON, which is YAML) as Gantry's field manager, taking
    /// fields others changed (`force`); with `dryRun` the server answers what it would make.
    public func apply(_ ref: ObjectRef, json: Data, dryRun: Bool = false, manager: String = KubeClient.fieldManager) throws -> JSONObject {
        let operation = "\(dryRun ? "dry-run apply" : "apply") \(ref)"
        var query = [("fieldManager", manager), ("force", "true")]
        if dryRun { query.append(("dryRun", "All")) }
        let (status, body) = try send(.PATCH, try ref.path(), query: query, body: json, contentType: "application/apply-patch+yaml", operation: operation)
        guard status == 200 || status == 201 else { throw Self.failure(operation, status, body) }
        return try Self.object(body, operation)
    }

    /// Creates the object, and only creates it: one that exists already is an error (409
    /// AlreadyExists), never adopted.
    public func create(_ ref: ObjectRef, json: Data) throws -> JSONObject {
        let operation = "create \(ref)"
        let (status, body) = try send(.POST, try ref.collectionPath(), query: [("fieldManager", Self.fieldManager)], body: json,
                                      contentType: "application/json", operation: operation)
        guard status == 201 || status == 200 else { throw Self.failure(operation, status, body) }
        return try Self.object(body, operation)
    }

    /// The objects of `kind` in `namespace` (every namespace when nil) carrying every label of `labels`.
    public func list(apiVersion: String, kind: String, namespace: String?, labels: [String: String]) throws -> [JSONObject] {
        let ref = ObjectRef(apiVersion: apiVersion, kind: kind, namespace: namespace, name: "")
        let operation = "list \(kind)"
        let selector = labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        let (status, body) = try send(.GET, try ref.collectionPath(), query: selector.isEmpty ? [] : [("labelSelector", selector)], operation: operation)
        guard status == 200 else { throw Self.failure(operation, status, body) }
        return (try Self.object(body, operation)["items"] as? [JSONObject]) ?? []
    }

    /// Deletes the object (its dependents in the background); false when it was already gone.
    @discardableResult
    public func delete(_ ref: ObjectRef) throws -> Bool {
        let operation = "delete \(ref)"
        let (status, body) = try send(.DELETE, try ref.path(), query: [("propagationPolicy", "Background")], operation: operation)
        if status == 404 { return false }
        guard status == 200 || status == 202 else { throw Self.failure(operation, status, body) }
        return true
    }

    /// Whether the API serves `groupVersion` (`postgresql.cnpg.io/v1`: CloudNativePG is installed).
    public func serves(_ groupVersion: String) throws -> Bool {
        let operation = "discover \(groupVersion)"
        let (status, body) = try send(.GET, "/apis/\(groupVersion)", operation: operation)
        if status == 404 { return false }
        guard status == 200 else { throw Self.failure(operation, status, body) }
        return true
    }

    /// Watches `ref` (the changes after `resourceVersion`, else its current state first) until
    /// `done` says the object is as wanted (then returns it) or `timeout` passes (then returns the
    /// last version seen, nil if none).
    public func watch(_ ref: ObjectRef, timeout: TimeInterval, after resourceVersion: String? = nil,
                      until done: @escaping @Sendable (JSONObject) -> Bool) throws -> JSONObject? {
        let operation = "watch \(ref)"
        let seconds = max(1, Int(timeout.rounded(.up)))
        var query = [("watch", "true"), ("fieldSelector", "metadata.name=\(ref.name)"), ("timeoutSeconds", "\(seconds)")]
        if let resourceVersion { query.append(("resourceVersion", resourceVersion)) }
        let request = try makeRequest(.GET, try ref.collectionPath(), query: query, body: nil, contentType: nil, operation: operation)
        let delegate = WatchDelegate(done: done)
        let task = http.execute(request: request, delegate: delegate, deadline: .now() + .seconds(Int64(seconds + 5)))
        do {
            try task.wait()
        } catch {
            if delegate.state.satisfied { return delegate.state.last }
            if delegate.state.status == 0 {
                throw KubeAPIError(operation: operation, status: 0, reason: "Unreachable", message: "the API server at \(config.server) did not answer (\(error))")
            }
        }
        if delegate.state.status != 200 { throw Self.failure(operation, delegate.state.status, delegate.state.errorBody) }
        return delegate.state.last
    }
}

/// Reads a watch's stream of JSON lines (`{"type": ..., "object": ...}`) and ends it once an
/// object satisfies `done`. Its callbacks run on one event loop, one at a time.
final class WatchDelegate: HTTPClientResponseDelegate, @unchecked Sendable {
    typealias Response = Void

    struct State {
        var status = 0
        var pending = Data()
        var errorBody = Data()
        var last: JSONObject?
        var satisfied = false
    }
    private let lock = NSLock()
    private var _state = State()
    var state: State { lock.withLock { _state } }
    let done: @Sendable (JSONObject) -> Bool

    init(done: @escaping @Sendable (JSONObject) -> Bool) { self.done = done }

    func didReceiveHead(task: HTTPClient.Task<Void>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        lock.withLock { _state.status = Int(head.status.code) }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Void>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        let finished: Bool = lock.withLock {
            guard _state.status == 200 else {
                if _state.errorBody.count < 1 << 16 { _state.errorBody.append(contentsOf: buffer.readableBytesView) }
                return false
            }
            _state.pending.append(contentsOf: buffer.readableBytesView)
            // A single event bigger than 16 MiB is not an object Gantry applied.
            if _state.pending.count > 16 << 20 { _state.pending.removeAll() }
            while let newline = _state.pending.firstIndex(of: 10) {
                let line = _state.pending[_state.pending.startIndex..<newline]
                _state.pending = Data(_state.pending[_state.pending.index(after: newline)...])
                guard let event = (try? JSONSerialization.jsonObject(with: line)) as? JSONObject,
                      let object = event["object"] as? JSONObject else { continue }
                if event["type"] as? String == "DELETED" { _state.last = nil; continue }
                _state.last = object
                if done(object) {
                    _state.satisfied = true
                    return true
                }
            }
            return false
        }
        if finished { task.cancel() }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didFinishRequest(task: HTTPClient.Task<Void>) throws {}
}
