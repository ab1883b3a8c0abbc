import Foundation
import SpecModel
import NIOCore
import NIOPosix
import NIOSSL
#if canImport(Glibc)
import Glibc
#endif

/// Who is calling, known from the address a connection comes from (an environment's own).
public struct EgressCaller: Sendable {
    public let environment: String
    public let grants: EgressGrants
    /// Why the kill switch covers the environment (nil: it does not).
    public let killed: String?

    public init(environment: String, grants: EgressGrants, killed: String?) {
        self.environment = environment
        self.grants = grants
        self.killed = killed
    }
}

/// Everything the proxy decides with, replaced whole when governance, environments, secrets or
/// kill switches change.
public struct EgressSnapshot: Sendable {
    public var policy: EgressPolicy
    /// By the environment's address.
    public var callers: [String: EgressCaller]
    public var dlp: DLPScanner

    public init(policy: EgressPolicy, callers: [String: EgressCaller], dlp: DLPScanner) {
        self.policy = policy
        self.callers = callers
        self.dlp = dlp
    }

    public static let empty = EgressSnapshot(policy: EgressPolicy(), callers: [:], dlp: DLPScanner(secrets: []))
}

/// What happened to one request, for records, logs and counters. Never holds a secret's value.
public struct EgressEvent: Sendable {
    public enum Kind: String, Sendable { case allowed, denied, dlpBlocked = "dlp-blocked", killed }
    public let kind: Kind
    public let environment: String
    public let service: String?
    public let host: String
    public let port: Int
    public let rule: String
    public let reason: String
}

/// What the proxy asks of the host: which service opened a connection (from its address and
/// port; nil when unknown), and what to do with each event.
public struct EgressHooks: Sendable {
    public var identify: @Sendable (_ address: String, _ port: Int) -> String?
    public var event: @Sendable (EgressEvent) -> Void
    /// Asked about an address the snapshot does not know (an environment made since).
    public var caller: @Sendable (_ address: String) -> EgressCaller?

    public init(identify: @escaping @Sendable (String, Int) -> String?, event: @escaping @Sendable (EgressEvent) -> Void,
                caller: @escaping @Sendable (String) -> EgressCaller? = { _ in nil }) {
        self.identify = identify
        self.event = event
        self.caller = caller
    }
}

/// Counters of one environment's egress.
public struct EgressCounters: Sendable, Equatable {
    public var allowed = 0
    public var denied = 0
    public var dlpBlocked = 0
    public var killed = 0
    public var bytesOut = 0
    public var bytesIn = 0
    public init() {}
}

/// The egress proxy on the gateway: environments reach the outside world only through it (their
/// namespaces route nowhere else). HTTP forward proxy (plain requests in absolute form, and
/// CONNECT tunnels) and a DNS responder on the same port number (UDP). Each request is judged by
/// `EgressJudge` for the environment its address belongs to; plain requests pass DLP
/// (`DLPScanner`) and get injected credentials; CONNECT is judged on its host name and the TLS
/// server name must match it. A kill switch refuses new connections and cuts open ones.
public final class EgressProxy: @unchecked Sendable {
    /// A request head larger than this is refused (431).
    static let maxHead = 64 << 10
    /// A plain request body larger than this is refused (413): DLP reads bodies whole.
    public static let maxBody = 1 << 20
    /// Seconds for a client to send its request (head and body) and for an upstream to connect.
    static let timeout: Int64 = 10

    private let lock = NSLock()
    private var snapshot: EgressSnapshot
    private var open: [ObjectIdentifier: (environment: String, channel: Channel)] = [:]
    private var counters: [String: EgressCounters] = [:]
    let hooks: EgressHooks
    let group: MultiThreadedEventLoopGroup
    private var channels: [Channel] = []
    public private(set) var port = 0
    /// Extra certificate authorities for upstream TLS (tests, private registries).
    let tlsContext: NIOSSLContext?
    /// Blocking work: resolving, identifying callers, scanning bodies.
    let blocking = DispatchQueue(label: "gantry.egress", attributes: .concurrent)

    public init(snapshot: EgressSnapshot, hooks: EgressHooks, extraCertificates: String? = nil, threads: Int = 2) throws {
        self.snapshot = snapshot
        self.hooks = hooks
        group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let extraCertificates {
            configuration.trustRoots = .default
            configuration.additionalTrustRoots = [.file(extraCertificates)]
        }
        tlsContext = try? NIOSSLContext(configuration: configuration)
    }

    /// Listens on `host:port` (TCP for the proxy, UDP for DNS; 0 picks a free port for both).
    public func start(host: String, port requested: Int) throws {
        var lastError: Error?
        for _ in 0..<(requested == 0 ? 20 : 1) {
            do {
                let server = try ServerBootstrap(group: group)
                    .serverChannelOption(.backlog, value: 512)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    .childChannelOption(.allowRemoteHalfClosure, value: true)
                    .childChannelInitializer { [self] channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(ProxyConnection(proxy: self))
                        }
                    }
                    .bind(host: host, port: requested).wait()
                let bound = server.localAddress?.port ?? requested
                do {
                    let dns = try DatagramBootstrap(group: group)
                        .channelInitializer { [self] channel in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.addHandler(EgressDNS(proxy: self))
                            }
                        }
                        .bind(host: host, port: bound).wait()
                    lock.withLock { channels = [server, dns] }
                    port = bound
                    return
                } catch {
                    try? server.close().wait()
                    throw error
                }
            } catch {
                lastError = error
            }
        }
        throw lastError ?? ChannelError.ioOnClosedChannel
    }

    public func stop() {
        let all = lock.withLock { channels + open.values.map(\.channel) }
        for channel in all { try? channel.close().wait() }
        try? group.syncShutdownGracefully()
    }

    /// Replaces what the proxy decides with; connections of environments the kill switch now
    /// covers are cut, and this returns once they are closed (waiting at most a second): the
    /// number still open then (0: all cut).
    @discardableResult
    public func update(_ new: EgressSnapshot) -> Int {
        let cut: [Channel] = lock.withLock {
            snapshot = new
            let killed = Set(new.callers.values.filter { $0.killed != nil }.map(\.environment))
            return open.values.filter { killed.contains($0.environment) }.map(\.channel)
        }
        let closed = cut.map { $0.close() }
        let deadline = Date().addingTimeInterval(1)
        var pending = 0
        for future in closed {
            let semaphore = DispatchSemaphore(value: 0)
            future.whenComplete { _ in semaphore.signal() }
            if semaphore.wait(timeout: .now() + max(0, deadline.timeIntervalSinceNow)) == .timedOut { pending += 1 }
        }
        return pending
    }

    public var current: EgressSnapshot { lock.withLock { snapshot } }

    /// The caller at `address`: the snapshot's, else the host's answer (kept until the next update).
    func caller(at address: String) -> EgressCaller? {
        if let known = lock.withLock({ snapshot.callers[address] }) { return known }
        guard let found = hooks.caller(address) else { return nil }
        lock.withLock { snapshot.callers[address] = found }
        return found
    }

    /// Replaces one environment's entry (its revision is being applied).
    public func setCaller(_ caller: EgressCaller, at address: String) { lock.withLock { snapshot.callers[address] = caller } }

    public func counters(of environment: String) -> EgressCounters { lock.withLock { counters[environment] ?? EgressCounters() } }
    public var allCounters: [String: EgressCounters] { lock.withLock { counters } }

    /// Open connections (tunnels and requests under way) of an environment.
    public func openConnections(of environment: String) -> Int { lock.withLock { open.values.filter { $0.environment == environment }.count } }

    func register(_ channel: Channel, environment: String) -> Bool {
        lock.withLock {
            // A kill switch that came while this connection was being decided.
            guard snapshot.callers.values.first(where: { $0.environment == environment })?.killed == nil else { return false }
            open[ObjectIdentifier(channel)] = (environment, channel)
            return true
        }
    }

    func unregister(_ channel: Channel) { _ = lock.withLock { open.removeValue(forKey: ObjectIdentifier(channel)) } }

    func count(_ environment: String, _ change: (inout EgressCounters) -> Void) {
        lock.withLock { change(&counters[environment, default: EgressCounters()]) }
    }

    func report(_ event: EgressEvent) {
        count(event.environment) {
            switch event.kind {
            case .allowed: $0.allowed += 1
            case .denied: $0.denied += 1
            case .dlpBlocked: $0.dlpBlocked += 1
            case .killed: $0.killed += 1
            }
        }
        hooks.event(event)
    }

    /// Where `host` goes: the operator's pin, else the system resolver. Blocking.
    func resolve(_ host: String) -> [IPAddress] {
        let policy = current.policy
        if let pinned = policy.pinned[host] { return pinned }
        if let literal = IPAddress(host) { return [literal] }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &found) == 0 else { return [] }
        defer { freeaddrinfo(found) }
        var addresses: [IPAddress] = []
        var cursor = found
        while let info = cursor {
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            if info.pointee.ai_family == AF_INET {
                info.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { var a = $0.pointee.sin_addr; inet_ntop(AF_INET, &a, &buffer, socklen_t(buffer.count)) }
            } else if info.pointee.ai_family == AF_INET6 {
                info.pointee.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { var a = $0.pointee.sin6_addr; inet_ntop(AF_INET6, &a, &buffer, socklen_t(buffer.count)) }
            }
            if let address = IPAddress(String(cString: buffer)), !addresses.contains(address) { addresses.append(address) }
            cursor = info.pointee.ai_next
        }
        return addresses
    }

    /// The whole decision for a request of `caller` to `host`, off the event loop: the lists
    /// (asking which service calls only when that matters), then where the host resolves.
    func judge(host: String, port: Int, caller: EgressCaller, peer: (String, Int), needsService: Bool) -> (EgressVerdict, service: String?, addresses: [IPAddress]) {
        let policy = current.policy
        var service: String?
        var verdict = EgressJudge.decide(host: host, policy: policy, grants: caller.grants, service: nil)
        // Which service calls is asked only when it could change the answer (a service's own list
        // names the host) or an injection depends on it: the lookup reads the kernel's tables.
        let serviceCouldAllow = !verdict.allowed && caller.grants.services.values.contains { $0.contains { $0.matches(host: host) } }
        if serviceCouldAllow || needsService {
            service = hooks.identify(peer.0, peer.1)
            if service != nil { verdict = EgressJudge.decide(host: host, policy: policy, grants: caller.grants, service: service) }
        }
        guard verdict.allowed else { return (verdict, service, []) }
        let addresses = resolve(host)
        guard !addresses.isEmpty else {
            return (.deny(reason: "\(host) does not resolve", rule: "DNS", remedy: "check the name; the proxy resolves with the host's resolver"), service, [])
        }
        if let refused = EgressJudge.checkResolved(host: host, port: port, addresses: addresses, policy: policy) { return (refused, service, []) }
        return (verdict, service, addresses)
    }
}
