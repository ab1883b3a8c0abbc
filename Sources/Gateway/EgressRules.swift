import Foundation
import SpecModel
#if canImport(Glibc)
import Glibc
#endif

/// What the proxy decided for one request, with the rule and what would change it.
public enum EgressVerdict: Sendable, Equatable {
    case allow(rule: String)
    case deny(reason: String, rule: String, remedy: String)

    public var allowed: Bool { if case .allow = self { return true } else { return false } }
}

/// `egress` in gantry.yaml (the protected branch's last admitted revision), parsed.
public struct EgressPolicy: Sendable {
    public var defaultAllows: Bool
    public var allow: [HostPattern]
    public var deny: [HostPattern]
    /// Where hosts resolve before DNS: the operator's pins (`gantry run --egress-resolve`), trusted
    /// as the operator's lists are (a pinned host may be internal).
    public var pinned: [String: [IPAddress]]
    /// The one port a pin opens (`HOST:PORT=ADDRESS`); a pin to an internal address has one.
    public var pinnedPorts: [String: Int]
    /// The addresses of this host's own interfaces: internal whatever their range (a server the
    /// host runs on all its addresses answers on its public one too).
    public var hostAddresses: Set<IPAddress>
    /// IPv4 networks the host answers for as a whole (an address with a prefix on a loopback
    /// device makes its whole network local): network and mask.
    public var hostNetworks: [(network: UInt32, mask: UInt32)]

    public init(defaultAllows: Bool = false, allow: [HostPattern] = [], deny: [HostPattern] = [], pinned: [String: [IPAddress]] = [:],
                pinnedPorts: [String: Int] = [:], hostAddresses: Set<IPAddress> = [], hostNetworks: [(network: UInt32, mask: UInt32)] = []) {
        self.defaultAllows = defaultAllows
        self.allow = allow
        self.deny = deny
        self.pinned = pinned
        self.pinnedPorts = pinnedPorts
        self.hostAddresses = hostAddresses
        self.hostNetworks = hostNetworks
    }

    /// Why `address` is internal (nil: it is not): its range, or being one of this host's own.
    public func internalKind(of address: IPAddress) -> String? {
        if let kind = address.internalKind { return kind }
        if hostAddresses.contains(address) { return "an address of this host" }
        if case .v4(let value) = address, hostNetworks.contains(where: { value & $0.mask == $0.network }) { return "a network this host answers for" }
        return nil
    }
}

/// An environment's own lists (`spec.egress`, `spec.services.S.egress`) and injections.
public struct EgressGrants: Sendable {
    /// `spec.egress`: every service of the environment.
    public var environment: [HostPattern] = []
    /// `spec.services.S.egress`, by service.
    public var services: [String: [HostPattern]] = [:]
    /// Headers the proxy adds for a host (values resolved, secrets included), by service ("" for `spec.egress`).
    public var injections: [String: [EgressInjection]] = [:]

    public init() {}
}

/// `{host, inject: {Header: value}}`: the proxy adds the headers to plain HTTP requests to the
/// host (replacing what the request carried), so the environment never holds the credential.
public struct EgressInjection: Sendable {
    public let host: HostPattern
    public let headers: [(name: String, value: String)]
    /// The proxy speaks TLS to the host (the environment sends plain HTTP to the proxy).
    public let tls: Bool

    public init(host: HostPattern, headers: [(name: String, value: String)], tls: Bool) {
        self.host = host
        self.headers = headers
        self.tls = tls
    }
}

/// The judge: settings first (deny wins), then the environment's and the service's lists.
public enum EgressJudge {
    /// The decision for `host` (normalized) asked by `service` (nil: not known) of an environment
    /// with `grants`.
    public static func decide(host: String, policy: EgressPolicy, grants: EgressGrants, service: String?) -> EgressVerdict {
        if let entry = policy.deny.first(where: { $0.matches(host: host) }) {
            return .deny(reason: "\(host) is on the deny list", rule: "egress.deny '\(entry)'",
                         remedy: "an admin removes '\(entry)' from egress.deny in gantry.yaml on the protected branch (deny wins over every allow)")
        }
        if let entry = policy.allow.first(where: { $0.matches(host: host) }) {
            return .allow(rule: "egress.allow '\(entry)'")
        }
        let literal = IPAddress(host)
        if let literal, let kind = policy.internalKind(of: literal) {
            return .deny(reason: "\(host) is an internal address (\(kind))", rule: "internal addresses",
                         remedy: "only an admin can open it, by listing it in egress.allow in gantry.yaml")
        }
        if let entry = grants.environment.first(where: { $0.matches(host: host) }) {
            return .allow(rule: "spec.egress '\(entry)'")
        }
        if let service, let entry = grants.services[service]?.first(where: { $0.matches(host: host) }) {
            return .allow(rule: "spec.services.\(service).egress '\(entry)'")
        }
        if literal != nil {
            return .deny(reason: "\(host) is an IP address, and no list names it", rule: "IP literals",
                         remedy: "use the host's name, or list the address in the service's egress")
        }
        if policy.defaultAllows { return .allow(rule: "egress.default: allow") }
        let who = service.map { "spec.services.\($0).egress" } ?? "spec.egress"
        return .deny(reason: "\(host) is on no allow list", rule: "egress.default: deny",
                     remedy: "list '\(host)' in \(who) (policies judge it) or an admin adds it to egress.allow in gantry.yaml")
    }

    /// The decision once `host` resolved to `addresses`: an internal one is refused unless the
    /// operator listed it (or the host) in gantry.yaml or pinned the host for that `port`.
    public static func checkResolved(host: String, port: Int?, addresses: [IPAddress], policy: EgressPolicy) -> EgressVerdict? {
        if policy.pinned[host] != nil, let only = policy.pinnedPorts[host], only != port, addresses.contains(where: { policy.internalKind(of: $0) != nil }) {
            return .deny(reason: "\(host) is pinned to an internal address for port \(only) only", rule: "internal addresses",
                         remedy: "use port \(only), or the operator pins the host for this port (--egress-resolve \(host):PORT=ADDRESS)")
        }
        if policy.pinned[host] != nil || policy.allow.contains(where: { !$0.isAddress && $0.matches(host: host) && !$0.description.contains("*") }) {
            return nil
        }
        for address in addresses {
            guard let kind = policy.internalKind(of: address), !policy.allow.contains(where: { $0.matches(address: address) }) else { continue }
            return .deny(reason: "\(host) resolves to \(address), an internal address (\(kind))", rule: "internal addresses",
                         remedy: "only an admin can open it, by listing the host (exactly) or the address in egress.allow in gantry.yaml")
        }
        return nil
    }

    /// The headers to add for `host` asked by `service`, and whether the proxy speaks TLS upstream.
    public static func injection(host: String, grants: EgressGrants, service: String?) -> EgressInjection? {
        let lists = [grants.injections[service ?? ""] ?? [], service == nil ? [] : grants.injections[""] ?? []]
        return lists.joined().first { $0.host.matches(host: host) }
    }
}

/// What this host answers for, from its interfaces (getifaddrs: the kernel's own list): every
/// address, IPv4 and IPv6, and the IPv4 networks of addresses on loopback devices (the kernel
/// answers for all of such a network: `ip addr add 198.51.100.9/24 dev lo` makes 198.51.100.0/24
/// local).
public enum HostInterfaces {
    public static func read() -> (addresses: Set<IPAddress>, loopbackNetworks: [(network: UInt32, mask: UInt32)]) {
        var first: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&first) == 0 else { return ([], []) }
        defer { freeifaddrs(first) }
        var addresses: Set<IPAddress> = [], networks: [(network: UInt32, mask: UInt32)] = []
        var cursor = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr else { continue }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            switch Int32(address.pointee.sa_family) {
            case AF_INET:
                let value = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { inet in
                    var raw = inet.pointee.sin_addr
                    _ = inet_ntop(AF_INET, &raw, &text, socklen_t(text.count))
                    return UInt32(bigEndian: raw.s_addr)
                }
                if entry.pointee.ifa_flags & UInt32(IFF_LOOPBACK) != 0, let netmask = entry.pointee.ifa_netmask {
                    let mask = netmask.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
                    if mask != ~UInt32(0) { networks.append((value & mask, mask)) }
                }
            case AF_INET6:
                address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { var raw = $0.pointee.sin6_addr; _ = inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count)) }
            default:
                continue
            }
            if let parsed = IPAddress(String(cString: text)) { addresses.insert(parsed) }
        }
        return (addresses, networks)
    }
}
