import Foundation
import SpecModel
import NIOCore

/// The environments' DNS (their namespaces send every query here): names the proxy would allow
/// for the environment are answered with where they resolve (A and AAAA, 30 s), every other
/// name gets NXDOMAIN, and a kill switch refuses all. Answers for one question per query.
final class EgressDNS: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    let proxy: EgressProxy

    init(proxy: EgressProxy) { self.proxy = proxy }

    struct Query: Equatable {
        let id: UInt16
        let name: String
        let type: UInt16
        /// The question section as received (echoed in the answer).
        let question: [UInt8]
        let recursionDesired: Bool
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        var payload = envelope.data
        guard let bytes = payload.readBytes(length: payload.readableBytes), let query = Self.parse(bytes) else { return }
        let remote = envelope.remoteAddress
        let channel = context.channel, proxy = self.proxy
        guard let address = remote.ipAddress.flatMap(IPAddress.init)?.description, let caller = proxy.caller(at: address) else {
            Self.send(channel, to: remote, Self.answer(query, rcode: 5, addresses: []))
            return
        }
        if caller.killed != nil {
            Self.send(channel, to: remote, Self.answer(query, rcode: 5, addresses: []))
            return
        }
        proxy.blocking.async {
            guard let host = HostName.normalize(query.name), IPAddress(host) == nil else {
                return Self.send(channel, to: remote, Self.answer(query, rcode: 3, addresses: []))
            }
            // A secret in a name would leave in the query to the host's resolver.
            if let finding = proxy.current.dlp.scan(name: query.name) ?? proxy.current.dlp.scan(Array(query.name.utf8), place: "DNS name") {
                proxy.report(EgressEvent(kind: .dlpBlocked, environment: caller.environment, service: nil, host: "(a DNS name)", port: 53,
                                         rule: finding.rule, reason: "\(finding)"))
                return Self.send(channel, to: remote, Self.answer(query, rcode: 3, addresses: []))
            }
            // Allowed for the environment or for one of its services (DNS does not say which asks).
            let services = [nil] + caller.grants.services.keys.sorted().map(Optional.some)
            let policy = proxy.current.policy
            guard services.contains(where: { EgressJudge.decide(host: host, policy: policy, grants: caller.grants, service: $0).allowed }) else {
                proxy.report(EgressEvent(kind: .denied, environment: caller.environment, service: nil, host: host, port: 53,
                                         rule: "DNS answers allowed names only", reason: "\(host) is on no allow list of \(caller.environment)"))
                return Self.send(channel, to: remote, Self.answer(query, rcode: 3, addresses: []))
            }
            let addresses = proxy.resolve(host)
            // (A pin for one port answers: the port is judged when the connection comes.)
            if EgressJudge.checkResolved(host: host, port: policy.pinnedPorts[host], addresses: addresses, policy: policy) != nil {
                return Self.send(channel, to: remote, Self.answer(query, rcode: 3, addresses: []))
            }
            let wanted = addresses.filter {
                switch ($0, query.type) {
                case (.v4, 1), (.v6, 28): return true
                default: return false
                }
            }
            Self.send(channel, to: remote, Self.answer(query, rcode: addresses.isEmpty ? 3 : 0, addresses: wanted))
        }
    }

    static func send(_ channel: Channel, to remote: SocketAddress, _ bytes: [UInt8]) {
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: remote, data: ByteBuffer(bytes: bytes)), promise: nil)
    }

    /// The query's id, its first question's name and type; nil for what is no standard query.
    static func parse(_ bytes: [UInt8]) -> Query? {
        guard bytes.count >= 12, bytes[2] & 0x80 == 0, bytes[2] & 0x78 == 0 else { return nil }
        let count = Int(bytes[4]) << 8 | Int(bytes[5])
        guard count == 1 else { return nil }
        var index = 12, labels: [String] = []
        while true {
            guard index < bytes.count else { return nil }
            let length = Int(bytes[index])
            if length == 0 { index += 1; break }
            // No compression in a question; labels of at most 63 bytes.
            guard length <= 63, index + 1 + length <= bytes.count else { return nil }
            labels.append(String(decoding: bytes[index + 1..<index + 1 + length], as: UTF8.self))
            index += 1 + length
            guard index <= 12 + 255 else { return nil }
        }
        guard index + 4 <= bytes.count else { return nil }
        let type = UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1])
        return Query(id: UInt16(bytes[0]) << 8 | UInt16(bytes[1]), name: labels.joined(separator: "."), type: type,
                     question: Array(bytes[12..<index + 4]), recursionDesired: bytes[2] & 1 == 1)
    }

    static func answer(_ query: Query, rcode: UInt8, addresses: [IPAddress]) -> [UInt8] {
        var out: [UInt8] = [UInt8(query.id >> 8), UInt8(query.id & 255), 0x80 | (query.recursionDesired ? 1 : 0), 0x80 | rcode,
                            0, 1, UInt8(addresses.count >> 8), UInt8(addresses.count & 255), 0, 0, 0, 0]
        out += query.question
        for address in addresses {
            out += [0xc0, 12]   // the question's name
            switch address {
            case .v4(let value):
                out += [0, 1, 0, 1, 0, 0, 0, 30, 0, 4, UInt8(value >> 24), UInt8((value >> 16) & 255), UInt8((value >> 8) & 255), UInt8(value & 255)]
            case .v6(let bytes):
                out += [0, 28, 0, 1, 0, 0, 0, 30, 0, 16] + bytes
            }
        }
        return out
    }
}
