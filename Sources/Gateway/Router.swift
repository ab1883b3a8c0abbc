import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where a hostname routes: a backend address and port, or why there is none (for the error page).
public struct RouteTarget: Sendable, Equatable {
    public let environment: String
    /// The environment's own address (its network namespace), or loopback.
    public let host: String
    /// The first replica's port (nil: none serves).
    public var port: Int? { ports.first }
    /// Every replica that serves; requests are spread across them.
    public let ports: [Int]
    public let reason: String?
    /// The service the route reaches (for in-flight counts and wakes).
    public let service: String?
    /// Nothing serves because the environment (or the service, scaled to zero) sleeps: a
    /// request wakes it (`RouterHooks.ensureServing`) and waits.
    public let asleep: Bool

    public init(environment: String, host: String = "127.0.0.1", port: Int?, reason: String? = nil) {
        self.init(environment: environment, host: host, ports: port.map { [$0] } ?? [], reason: reason)
    }

    public init(environment: String, host: String = "127.0.0.1", ports: [Int], reason: String? = nil, service: String? = nil, asleep: Bool = false) {
        self.environment = environment
        self.host = host
        self.ports = ports
        self.reason = reason
        self.service = service
        self.asleep = asleep
    }
}

/// What the router tells the lifecycle: each request's start and end (idle timers, autoscaling),
/// and asking a sleeping service to serve before a request is forwarded.
public struct RouterHooks: Sendable {
    /// A request came; true when it must wait for `ensureServing` (its service is being stopped).
    public var started: @Sendable (_ environment: String, _ service: String) -> Bool
    public var ended: @Sendable (_ environment: String, _ service: String) -> Void
    /// Blocks until the service serves (nil), or says why it will not (answered with a 503).
    public var ensureServing: @Sendable (_ environment: String, _ service: String) -> String?

    public init(started: @escaping @Sendable (String, String) -> Bool, ended: @escaping @Sendable (String, String) -> Void,
                ensureServing: @escaping @Sendable (String, String) -> String?) {
        self.started = started
        self.ended = ended
        self.ensureServing = ensureServing
    }
}

/// The HTTP entrypoint: routes `<route>.<environment>.<domain>` by Host header to a service (at its
/// environment's address), streaming bytes both ways, adding `X-Forwarded-For`/`X-Forwarded-Host`, and answering
/// 502/404 pages that say which environment and why when there is no healthy backend.
public final class Router: @unchecked Sendable {
    let table: @Sendable () -> [String: RouteTarget]
    private var listeners: [Int32] = []
    public private(set) var port: Int = 0
    private let lock = NSLock()
    /// Told of every routed request (nil: nothing sleeps or scales).
    public var hooks: RouterHooks?
    /// Spreads requests across replicas.
    private var turn = 0
    /// How long a request waits for a sleeping service to serve.
    public var holdSeconds = 30.0
    /// Requests forwarded to each backend port and not yet done.
    private var forwarding: [Int: Int] = [:]
    /// Connections served at once, at most `maxConnections`; a request head must arrive within `headSeconds`.
    private var connections = 0
    public var maxConnections = 1024
    public var headSeconds = 10.0

    /// Requests under way to `port` (a replica going away waits for them).
    public func inFlight(port: Int) -> Int { lock.withLock { forwarding[port] ?? 0 } }

    /// `table` maps lowercase hostnames (without port) to targets; it is asked on every request.
    public init(table: @escaping @Sendable () -> [String: RouteTarget]) {
        self.table = table
    }

    /// Listens on 127.0.0.1:`port` (0 picks a free port) and serves in background threads; with
    /// `also`, on those addresses too, at the same port (where environments in networks of their
    /// own reach it). An extra address that cannot be bound is skipped and returned.
    @discardableResult
    public func start(port requested: Int, also extra: [String] = []) throws -> [String] {
        let fd = try Self.listen(on: "127.0.0.1", port: requested)
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        port = Int(UInt16(bigEndian: address.sin_port))
        var skipped: [String] = []
        var descriptors = [fd]
        for host in extra {
            guard let other = try? Self.listen(on: host, port: port) else { skipped.append(host); continue }
            descriptors.append(other)
        }
        lock.withLock { listeners = descriptors }
        for descriptor in descriptors { Thread.detachNewThread { [self] in acceptLoop(descriptor) } }
        return skipped
    }

    static func listen(on host: String, port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RouterError("socket: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var address = socketAddress(host, port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, 128) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw RouterError("cannot listen on \(host):\(port): \(reason)")
        }
        return fd
    }

    public func stop() {
        lock.withLock {
            for listener in listeners { shutdown(listener, Int32(SHUT_RDWR)); close(listener) }
            listeners = []
        }
    }

    private func acceptLoop(_ fd: Int32) {
        while true {
            var peer = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let client = withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(fd, $0, &length) } }
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            let address = String(cString: inet_ntoa(peer.sin_addr))
            // A thread per connection, up to `maxConnections` at once: beyond, a 503 at once.
            let admitted = lock.withLock { () -> Bool in
                guard connections < maxConnections else { return false }
                connections += 1
                return true
            }
            guard admitted else {
                Thread.detachNewThread { [self] in
                    respond(client, 503, "Too many connections", detail: "The router serves \(maxConnections) connections at once; retry shortly.", retryAfter: 1)
                    close(client)
                }
                continue
            }
            Thread.detachNewThread { [self] in
                defer { lock.withLock { connections -= 1 } }
                handle(client, from: address)
            }
        }
    }

    private func handle(_ client: Int32, from clientIP: String) {
        defer { close(client) }
        // The head must arrive within `headSeconds` (a connection that trickles it is closed);
        // once forwarding, no limit (a response may stream for long).
        var limit = timeval(tv_sec: Int(headSeconds), tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let headStarted = Date()
        // Read the request head (bounded), then forward it and stream the rest.
        var head = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 8192)
        while !head.containsHeadEnd() {
            let count = recv(client, &buffer, buffer.count, 0)
            if count <= 0 || Date().timeIntervalSince(headStarted) > headSeconds { return }
            head += buffer[0..<count]
            if head.count > 64 * 1024 { respond(client, 431, "Request header too large", detail: "The request head exceeds 64 KiB."); return }
        }
        guard let split = head.headEnd() else { return }
        var unlimited = timeval(tv_sec: 0, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &unlimited, socklen_t(MemoryLayout<timeval>.size))
        let headText = String(decoding: head[..<split], as: UTF8.self)
        let body = Array(head[split...])
        let lines = headText.components(separatedBy: "\r\n")
        let hostLine = lines.first { $0.lowercased().hasPrefix("host:") }
        let host = hostLine.map { String($0.dropFirst(5)).trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        let hostname = host.split(separator: ":").first.map(String.init) ?? host
        guard var target = table()[hostname] else {
            respond(client, 404, "No such route", detail: "No environment has a route for \(hostname.isEmpty ? "this request (no Host header)" : hostname).")
            return
        }
        if let hooks = self.hooks, let service = target.service {
            let environment = target.environment
            let hold = hooks.started(environment, service)
            defer { hooks.ended(environment, service) }
            if target.asleep || hold {
                // Held while it wakes; forwarded once it serves.
                if let refusal = hooks.ensureServing(environment, service) {
                    respond(client, 503, "Waking up failed", detail: refusal, retryAfter: 5)
                    return
                }
                target = table()[hostname] ?? target
                // A replica being started (by this wake, another, or an apply) serves once healthy.
                let deadline = Date().addingTimeInterval(holdSeconds)
                while target.ports.isEmpty, target.asleep, Date() < deadline {
                    usleep(10_000)
                    target = table()[hostname] ?? target
                }
            }
            forward(client, head: lines, body: body, host: host, clientIP: clientIP, target: target)
            return
        }
        forward(client, head: lines, body: body, host: host, clientIP: clientIP, target: target)
    }

    private func forward(_ client: Int32, head: [String], body: [UInt8], host: String, clientIP: String, target: RouteTarget) {
        var lines = head
        guard !target.ports.isEmpty else {
            respond(client, 502, "No healthy backend", detail: "Environment \(target.environment): \(target.reason ?? "its service is not running").")
            return
        }
        // Round robin, skipping a replica that has more requests under way than another.
        let port = lock.withLock { () -> Int in
            turn &+= 1
            let least = target.ports.map { forwarding[$0, default: 0] }.min() ?? 0
            let candidates = target.ports.filter { forwarding[$0, default: 0] == least }
            let chosen = candidates[turn % candidates.count]
            forwarding[chosen, default: 0] += 1
            return chosen
        }
        defer { lock.withLock { forwarding[port, default: 1] -= 1; if forwarding[port] == 0 { forwarding[port] = nil } } }
        let backend = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard backend >= 0 else { return }
        defer { close(backend) }
        // A backend that does not answer at all is given up after 5 s (connect(2) honours the send timeout).
        var time = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(backend, SOL_SOCKET, SO_SNDTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        var backendAddress = Self.socketAddress(target.host, port)
        let connected = withUnsafePointer(to: &backendAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(backend, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            respond(client, 502, "No healthy backend", detail: "Environment \(target.environment): its service refused the connection on port \(port).")
            return
        }
        lines.removeAll { $0.isEmpty }
        // One request per connection (an upgrade aside): a request in flight is a connection
        // open, which is what idle timers and autoscaling count.
        if !lines.contains(where: { $0.lowercased().hasPrefix("connection:") && $0.lowercased().contains("upgrade") }) {
            lines.removeAll { $0.lowercased().hasPrefix("connection:") || $0.lowercased().hasPrefix("keep-alive:") }
            lines.append("Connection: close")
        }
        lines.insert("X-Forwarded-For: \(clientIP)", at: 1)
        lines.insert("X-Forwarded-Host: \(host)", at: 2)
        let forwarded = Array((lines.joined(separator: "\r\n") + "\r\n\r\n").utf8) + body
        guard sendAll(backend, forwarded) else { return }
        // Stream the rest of the request to the backend while the response streams back.
        // Both descriptors are closed only once the pump is done with them: a descriptor closed
        // under it would be reused by the next connection, and the pump would read that one's
        // request or shut its socket down.
        let pumped = DispatchSemaphore(value: 0)
        let pump = Thread { [self] in
            var chunk = [UInt8](repeating: 0, count: 16384)
            while true {
                let count = recv(client, &chunk, chunk.count, 0)
                if count <= 0 || !sendAll(backend, Array(chunk[0..<count])) { break }
            }
            shutdown(backend, Int32(SHUT_WR))
            pumped.signal()
        }
        pump.start()
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = recv(backend, &chunk, chunk.count, 0)
            if count <= 0 || !sendAll(client, Array(chunk[0..<count])) { break }
        }
        shutdown(client, Int32(SHUT_RDWR))
        pumped.wait()
    }

    static func socketAddress(_ host: String, _ port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr(host)
        return address
    }

    private func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent <= 0 { return false }
            offset += sent
        }
        return true
    }

    private func respond(_ fd: Int32, _ status: Int, _ title: String, detail: String, retryAfter: Int? = nil) {
        let escaped = detail.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        let body = "<!doctype html><title>\(status) \(title)</title><h1>\(status) \(title)</h1><p>\(escaped)</p><p>gantry router</p>\n"
        let retry = retryAfter.map { "Retry-After: \($0)\r\n" } ?? ""
        let response = "HTTP/1.1 \(status) \(title)\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\n\(retry)Connection: close\r\n\r\n" + body
        _ = sendAll(fd, Array(response.utf8))
    }
}

public struct RouterError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

extension Array where Element == UInt8 {
    func headEnd() -> Int? {
        guard count >= 4 else { return nil }
        for i in 0...(count - 4) where self[i] == 13 && self[i + 1] == 10 && self[i + 2] == 13 && self[i + 3] == 10 { return i + 4 }
        return nil
    }
    func containsHeadEnd() -> Bool { headEnd() != nil }
}
