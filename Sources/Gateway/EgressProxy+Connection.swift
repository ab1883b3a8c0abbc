import Foundation
import SpecModel
import NIOCore
import NIOPosix
import NIOSSL

/// One client connection to the egress proxy: its head (and a plain request's body) is read,
/// judged off the event loop, then either refused with the reason or relayed to the upstream.
final class ProxyConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State {
        case head
        case body(ProxyRequest, EgressCaller, head: [UInt8])
        case deciding
        /// A tunnel is open upstream; the client's first bytes (its TLS ClientHello) are read
        /// for the server name before anything is relayed.
        case sniffing(ProxyRequest, EgressCaller, service: String?)
        case tunnel
        /// A plain request was sent; only the upstream's answer flows (to the client).
        case responding
        case closed
    }

    let proxy: EgressProxy
    var state = State.head
    var buffer: [UInt8] = []
    var upstream: Channel?
    var environment: String?
    var bytesOut = 0, bytesIn = 0
    var timeout: Scheduled<Void>?
    /// Where the search for the head's end goes on, and the readers of a body and a ClientHello:
    /// each read is looked at once (a head, body or hello trickled in costs no more than one sent whole).
    var headScanned = 0
    var chunks = ProxyRequest.ChunkedDecoder(limit: EgressProxy.maxBody)
    var hello = TLSHello.Reader()

    init(proxy: EgressProxy) { self.proxy = proxy }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timeout = context.eventLoop.scheduleTask(in: .seconds(EgressProxy.timeout)) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        switch state {
        case .tunnel:
            bytesOut += incoming.readableBytes
            upstream?.write(incoming, promise: nil)
            return
        case .responding, .closed:
            return
        default:
            buffer += incoming.readBytes(length: incoming.readableBytes) ?? []
        }
        advance(context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .tunnel = state { upstream?.flush() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        upstream?.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenFailure { _ in }
    }

    func channelInactive(context: ChannelHandlerContext) {
        state = .closed
        timeout?.cancel()
        if let upstream { Self.closeAfterWrites(upstream) }
        proxy.unregister(context.channel)
        if let environment {
            let (out, into) = (bytesOut, bytesIn)
            proxy.count(environment) { $0.bytesOut += out; $0.bytesIn += into }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }

    /// The client finished sending (a half-close, as some clients do after a request): a
    /// tunnel passes it on, a request under way still gets its answer, anything else ends.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, event == .inputClosed else { return context.fireUserInboundEventTriggered(event) }
        switch state {
        case .tunnel:
            if let upstream {
                upstream.writeAndFlush(ByteBuffer()).whenComplete { _ in upstream.close(mode: .output, promise: nil) }
            }
        case .responding, .deciding:
            return
        default:
            context.close(promise: nil)
        }
    }

    /// Closes `channel` once what was written to it went out (a close alone drops pending writes).
    static func closeAfterWrites(_ channel: Channel) {
        channel.writeAndFlush(ByteBuffer()).whenComplete { _ in channel.close(promise: nil) }
    }

    /// Moves the state on with what `buffer` holds.
    private func advance(_ context: ChannelHandlerContext) {
        switch state {
        case .head:
            guard let end = Self.headEnd(buffer, from: max(0, headScanned - 3)) else {
                headScanned = buffer.count
                if buffer.count > EgressProxy.maxHead { refuse(context, 431, "Request Header Fields Too Large", "the request head is over \(EgressProxy.maxHead) bytes") }
                return
            }
            let head = Array(buffer[..<end])
            buffer.removeFirst(end + 4)
            readHead(context, head)
        case .body(let request, let caller, let head):
            guard buffer.count <= EgressProxy.maxBody + EgressProxy.maxHead else {
                return refuse(context, 413, "Content Too Large", "a plain HTTP request body may be at most \(EgressProxy.maxBody) bytes through the proxy")
            }
            if request.chunked {
                switch chunks.feed(buffer) {
                case .incomplete: return
                case .invalid(let why): refuse(context, 400, "Bad Request", "the chunked body is malformed: \(why)")
                case .done(let body, _): decide(context, request, caller, head: head, body: body)
                }
            } else if buffer.count >= request.contentLength {
                decide(context, request, caller, head: head, body: Array(buffer.prefix(request.contentLength)))
            }
        case .deciding:
            // A tunnel's first bytes may come before the answer: kept, within bounds.
            if buffer.count > TLSHello.limit { context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in } }
        case .sniffing(let request, let caller, let service):
            switch hello.feed(buffer) {
            case .needMore: return
            case .notTLS, .hello(serverName: nil):
                relayTunnel(context)
            case .hello(serverName: let name?):
                guard HostName.normalize(name) == request.host else {
                    deny(context, caller, service, request, .deny(reason: "the TLS server name '\(name.prefix(253))' is not \(request.host), the host the tunnel was opened for",
                                                                   rule: "TLS server name must match CONNECT", remedy: "CONNECT to the host the TLS connection names"))
                    return
                }
                relayTunnel(context)
            case .malformed(let why):
                deny(context, caller, service, request, .deny(reason: "the tunnel's TLS handshake is malformed: \(why)", rule: "TLS server name must match CONNECT",
                                                               remedy: "send a well-formed ClientHello"))
            }
        default:
            return
        }
    }

    private func readHead(_ context: ChannelHandlerContext, _ head: [UInt8]) {
        guard let peer = context.channel.remoteAddress, let address = peer.ipAddress.flatMap(IPAddress.init)?.description,
              let caller = proxy.caller(at: address) else {
            let from = context.channel.remoteAddress?.ipAddress ?? "?"
            refuse(context, 403, "Forbidden", "\(from) is not the address of an environment Gantry runs: this proxy serves environments only")
            return
        }
        environment = caller.environment
        let request: ProxyRequest
        switch ProxyRequest.parse(head: head) {
        case .failure(let refusal):
            refuse(context, refusal.status, refusal.title, refusal.detail)
            return
        case .success(let parsed): request = parsed
        }
        if let why = caller.killed {
            proxy.report(EgressEvent(kind: .killed, environment: caller.environment, service: nil, host: request.host, port: request.port,
                                     rule: "kill switch", reason: why))
            refuse(context, 403, "Forbidden", "the kill switch is on (\(why)): no connection leaves \(caller.environment) until a human with a role lifts it")
            return
        }
        if request.kind == .plain {
            guard request.contentLength <= EgressProxy.maxBody else {
                refuse(context, 413, "Content Too Large", "a plain HTTP request body may be at most \(EgressProxy.maxBody) bytes through the proxy (DLP reads it whole); use HTTPS (CONNECT) for larger uploads")
                return
            }
            state = .body(request, caller, head: head)
            advance(context)
        } else {
            decide(context, request, caller, head: head, body: [])
        }
    }

    /// Judges off the event loop (resolving and identifying block), then connects or refuses.
    private func decide(_ context: ChannelHandlerContext, _ request: ProxyRequest, _ caller: EgressCaller, head: [UInt8], body: [UInt8]) {
        if request.kind == .plain { buffer = [] }
        state = .deciding
        let peer = (context.channel.remoteAddress?.ipAddress ?? "", context.channel.remoteAddress?.port ?? 0)
        let needsService = request.kind == .plain && caller.grants.injections.keys.contains { !$0.isEmpty }
        let loop = context.eventLoop, proxy = self.proxy
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        proxy.blocking.async {
            // The head is checked before the host is even resolved: a secret in a host name
            // would otherwise leave in a DNS query.
            let dlp = proxy.current.dlp
            let line = Array(head.prefix { $0 != 0x0d })
            var finding = dlp.scan(name: request.host) ?? dlp.scan(line, place: "URL") ?? dlp.scan(head, place: "headers")
            var (verdict, service, addresses): (EgressVerdict, String?, [IPAddress]) = (.allow(rule: ""), nil, [])
            var injection: EgressInjection?
            if finding == nil {
                (verdict, service, addresses) = proxy.judge(host: request.host, port: request.port, caller: caller, peer: peer, needsService: needsService)
                if verdict.allowed {
                    finding = body.isEmpty ? nil : dlp.scan(body, place: "body")
                    if request.kind == .plain { injection = EgressJudge.injection(host: request.host, grants: caller.grants, service: service) }
                }
            }
            loop.execute {
                let (connection, context) = bound.value
                guard case .deciding = connection.state else { return }
                if let finding {
                    // A host name that holds a secret is not repeated anywhere.
                    let host = finding.place == "host name" ? "(a host name holding a secret)" : request.host
                    proxy.report(EgressEvent(kind: .dlpBlocked, environment: caller.environment, service: service, host: host,
                                             port: request.port, rule: finding.rule, reason: "\(finding)"))
                    return connection.refuse(context, 403, "Forbidden", "DLP blocked this request to \(host): \(finding). Secrets must not leave an environment; let the proxy add the credential instead: egress: [{host: \(host), inject: {Authorization: \"Bearer ${secrets.NAME}\"}}]")
                }
                if !verdict.allowed { return connection.deny(context, caller, service, request, verdict) }
                connection.connect(context, request, caller, service, addresses, injection: injection, body: body)
            }
        }
    }

    private func connect(_ context: ChannelHandlerContext, _ request: ProxyRequest, _ caller: EgressCaller, _ service: String?,
                         _ addresses: [IPAddress], injection: EgressInjection?, body: [UInt8]) {
        let client = context.channel
        let tls = injection?.tls == true ? proxy.tlsContext : nil
        if injection?.tls == true && tls == nil {
            return refuse(context, 502, "Bad Gateway", "the proxy has no TLS configuration to reach \(request.host) (its certificate authorities could not be read)")
        }
        let upstreamPort = injection?.tls == true && request.port == 80 ? 443 : request.port
        let relay = UpstreamRelay(client: client, connection: self)
        let bootstrap = ClientBootstrap(group: context.eventLoop)
            .connectTimeout(.seconds(EgressProxy.timeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: request.host)) }
                    try channel.pipeline.syncOperations.addHandler(relay)
                }
            }
        let target: SocketAddress
        do { target = try SocketAddress(ipAddress: addresses[0].description, port: upstreamPort) } catch {
            return refuse(context, 502, "Bad Gateway", "\(addresses[0]) is not an address the proxy can connect to")
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        bootstrap.connect(to: target).whenComplete { result in
            let (connection, context) = bound.value
            switch result {
            case .failure(let error):
                connection.refuse(context, 502, "Bad Gateway", "could not connect to \(request.host):\(upstreamPort): \(error)")
            case .success(let upstream):
                guard case .deciding = connection.state, connection.proxy.register(client, environment: caller.environment) else {
                    upstream.close(promise: nil)
                    if case .deciding = connection.state { connection.refuse(context, 403, "Forbidden", "the kill switch is on: no connection leaves \(caller.environment)") }
                    return
                }
                connection.upstream = upstream
                connection.timeout?.cancel()
                connection.proxy.report(EgressEvent(kind: .allowed, environment: caller.environment, service: service, host: request.host,
                                                    port: request.port, rule: "", reason: ""))
                switch request.kind {
                case .connect:
                    connection.state = .sniffing(request, caller, service: service)
                    context.writeAndFlush(NIOAny(ByteBuffer(string: "HTTP/1.1 200 Connection established\r\n\r\n")), promise: nil)
                    connection.timeout = context.eventLoop.scheduleTask(in: .seconds(EgressProxy.timeout)) {
                        if case .sniffing = connection.state { client.close(promise: nil) }
                    }
                    connection.advance(context)
                case .plain:
                    connection.state = .responding
                    let headBytes = request.upstreamHead(bodyLength: body.count, injected: injection?.headers ?? [])
                    connection.bytesOut += headBytes.count + body.count
                    upstream.write(ByteBuffer(bytes: headBytes), promise: nil)
                    upstream.writeAndFlush(ByteBuffer(bytes: body), promise: nil)
                }
            }
        }
    }

    /// The tunnel passed its checks: what the client sent so far goes up, then bytes flow both ways.
    private func relayTunnel(_ context: ChannelHandlerContext) {
        timeout?.cancel()
        state = .tunnel
        bytesOut += buffer.count
        upstream?.writeAndFlush(ByteBuffer(bytes: buffer), promise: nil)
        buffer = []
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
    }

    private func deny(_ context: ChannelHandlerContext, _ caller: EgressCaller, _ service: String?, _ request: ProxyRequest, _ verdict: EgressVerdict) {
        guard case .deny(let reason, let rule, let remedy) = verdict else { return }
        proxy.report(EgressEvent(kind: .denied, environment: caller.environment, service: service, host: request.host, port: request.port,
                                 rule: rule, reason: reason))
        if case .sniffing = state {
            // The client already has its 200: the tunnel is closed instead.
            state = .closed
            context.close(promise: nil)
            return
        }
        refuse(context, 403, "Forbidden", "egress to \(request.host):\(request.port) denied: \(reason) (rule: \(rule)). To allow it: \(remedy)")
    }

    /// Answers with `status` and an explanation, then closes.
    func refuse(_ context: ChannelHandlerContext, _ status: Int, _ title: String, _ detail: String) {
        state = .closed
        let body = "Gantry egress proxy: \(detail)\n"
        let text = "HTTP/1.1 \(status) \(title)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nX-Gantry-Egress: refused\r\nConnection: close\r\n\r\n\(body)"
        context.writeAndFlush(NIOAny(ByteBuffer(string: text))).whenComplete { _ in context.close(promise: nil) }
    }

    static func headEnd(_ bytes: [UInt8], from start: Int = 0) -> Int? {
        guard bytes.count >= 4, start <= bytes.count - 4 else { return nil }
        for index in start...(bytes.count - 4) where bytes[index] == 0x0d && bytes[index + 1] == 0x0a && bytes[index + 2] == 0x0d && bytes[index + 3] == 0x0a {
            return index
        }
        return nil
    }
}

/// The upstream side of a relayed connection: what it answers goes to the client.
final class UpstreamRelay: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    let client: Channel
    let connection: ProxyConnection

    init(client: Channel, connection: ProxyConnection) {
        self.client = client
        self.connection = connection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        connection.bytesIn += bytes.readableBytes
        client.write(bytes, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        client.flush()
        if !client.isWritable { context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in } }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        client.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenFailure { _ in }
    }

    func channelInactive(context: ChannelHandlerContext) { ProxyConnection.closeAfterWrites(client) }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}
