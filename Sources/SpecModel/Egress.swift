import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `{host, inject: {Header: value}, tls}` in an egress list: the egress proxy adds the headers to
/// plain HTTP requests to `host` (an exact name), speaking TLS to it when `tls` (the default),
/// so the environment never holds the credential. Values may name `${secrets.NAME}`.
public struct EgressInject: Sendable, Codable, Equatable {
    public var host: String
    public var headers: [EnvVar]
    public var tls: Bool

    public init(host: String, headers: [EnvVar], tls: Bool = true) {
        self.host = host
        self.headers = headers
        self.tls = tls
    }
}

/// One entry of an egress list: an exact host name (`api.stripe.com`), a one-label wildcard
/// (`*.example.com` matches `a.example.com`, not `a.b.example.com` nor `example.com`), an
/// any-depth wildcard (`**.example.com` matches `a.example.com` and `a.b.example.com`), an IP
/// address (`203.0.113.7`, `2001:db8::1`) or an IPv4 network (`10.1.0.0/16`).
public struct HostPattern: Sendable, Equatable, CustomStringConvertible {
    enum Kind: Sendable, Equatable {
        case exact(String)
        case oneLabel(suffix: String)
        case anyDepth(suffix: String)
        case address(IPAddress)
        case network(base: UInt32, bits: Int)
    }

    let kind: Kind
    public let description: String

    /// Parses an entry; nil with the reason when it is none of the shapes above.
    public static func parse(_ text: String) -> Result<HostPattern, EgressEntryError> {
        let entry = text.trimmingCharacters(in: .whitespaces).lowercased()
        func failure(_ why: String) -> Result<HostPattern, EgressEntryError> { .failure(EgressEntryError(entry: text, reason: why)) }
        if entry.isEmpty { return failure("is empty") }
        if let slash = entry.firstIndex(of: "/") {
            guard let base = IPAddress(String(entry[..<slash])), case .v4(let value) = base,
                  let bits = Int(entry[entry.index(after: slash)...]), (0...32).contains(bits) else {
                return failure("is not an IPv4 network (write it as 10.1.0.0/16)")
            }
            let mask: UInt32 = bits == 0 ? 0 : ~UInt32(0) << (32 - bits)
            return .success(HostPattern(kind: .network(base: value & mask, bits: bits), description: entry))
        }
        if let address = IPAddress(entry.hasPrefix("[") && entry.hasSuffix("]") ? String(entry.dropFirst().dropLast()) : entry) {
            return .success(HostPattern(kind: .address(address), description: entry))
        }
        if entry.contains(":") { return failure("names a port: egress entries are hosts only (any port of an allowed host is allowed)") }
        var name = entry
        if name.hasSuffix(".") { name.removeLast() }
        if name.hasPrefix("**.") {
            let suffix = String(name.dropFirst(3))
            guard HostName.isValid(suffix), suffix.contains(".") else { return failure("needs a domain of at least two labels after '**.'") }
            return .success(HostPattern(kind: .anyDepth(suffix: suffix), description: entry))
        }
        if name.hasPrefix("*.") {
            let suffix = String(name.dropFirst(2))
            guard HostName.isValid(suffix), suffix.contains(".") else { return failure("needs a domain of at least two labels after '*.'") }
            return .success(HostPattern(kind: .oneLabel(suffix: suffix), description: entry))
        }
        if name.contains("*") { return failure("may hold a wildcard only as its first label ('*.example.com' for one label, '**.example.com' for any depth)") }
        guard HostName.isValid(name) else { return failure("is not a host name (letters, digits, '-' and '.', labels of 1 to 63 characters)") }
        return .success(HostPattern(kind: .exact(name), description: entry))
    }

    /// Whether `host` (normalized by `HostName.normalize`) or `address` is matched.
    public func matches(host: String) -> Bool {
        switch kind {
        case .exact(let name): return host == name
        case .oneLabel(let suffix):
            guard host.hasSuffix("." + suffix) else { return false }
            let label = host.dropLast(suffix.count + 1)
            return !label.isEmpty && !label.contains(".")
        case .anyDepth(let suffix):
            return host.hasSuffix("." + suffix) && host.count > suffix.count + 1
        case .address(let address): return IPAddress(host) == address
        case .network(let base, let bits):
            guard case .v4(let value)? = IPAddress(host) else { return false }
            let mask: UInt32 = bits == 0 ? 0 : ~UInt32(0) << (32 - bits)
            return value & mask == base
        }
    }

    public func matches(address: IPAddress) -> Bool {
        switch kind {
        case .address(let mine): return mine == address
        case .network: return matches(host: address.description)
        default: return false
        }
    }

    /// True for an address or a network: only the operator's lists (gantry.yaml) may open internal addresses.
    public var isAddress: Bool {
        switch kind {
        case .address, .network: return true
        default: return false
        }
    }
}

public struct EgressEntryError: Error, Sendable, CustomStringConvertible {
    public let entry: String
    public let reason: String
    public var description: String { "egress entry '\(entry)' \(reason)" }
}

/// Host names as the proxy compares them: ASCII, lower case, no trailing dot.
public enum HostName {
    public static func normalize(_ host: String) -> String? {
        var name = host.lowercased()
        if name.hasPrefix("[") && name.hasSuffix("]") { name = String(name.dropFirst().dropLast()) }
        if let address = IPAddress(name) { return address.description }
        if name.hasSuffix(".") { name.removeLast() }
        // What the C resolver reads as an address ("2130706433", "0x7f.1") is one.
        var legacy = in_addr()
        if inet_aton(name, &legacy) != 0 { return IPAddress.v4(UInt32(bigEndian: legacy.s_addr)).description }
        return isValid(name) ? name : nil
    }

    public static func isValid(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63 && label.first != "-" && label.last != "-"
                && label.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x5f }
        }
    }
}

/// An IPv4 or IPv6 address, and whether it is internal (never reached unless the operator lists it).
public enum IPAddress: Sendable, Hashable, CustomStringConvertible {
    case v4(UInt32)
    case v6([UInt8])

    public init?(_ text: String) {
        var v4 = in_addr()
        if text.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2e }), inet_pton(AF_INET, text, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        guard text.contains(":"), inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        // An IPv4-mapped address is its IPv4 address (so ::ffff:127.0.0.1 is loopback).
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            self = .v4(UInt32(bytes[12]) << 24 | UInt32(bytes[13]) << 16 | UInt32(bytes[14]) << 8 | UInt32(bytes[15]))
            return
        }
        self = .v6(bytes)
    }

    public var description: String {
        switch self {
        case .v4(let value): return "\(value >> 24).\((value >> 16) & 255).\((value >> 8) & 255).\(value & 255)"
        case .v6(let bytes):
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: bytes) }
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count))
            return String(cString: buffer)
        }
    }

    /// Why the address is internal (loopback, private, link-local — the cloud metadata address
    /// 169.254.169.254 among them —, shared, multicast, unspecified), or nil for a public one.
    public var internalKind: String? {
        switch self {
        case .v4(let value):
            func within(_ a: UInt32, _ b: UInt32, _ c: UInt32, _ d: UInt32, _ bits: Int) -> Bool {
                let base = a << 24 | b << 16 | c << 8 | d
                let mask: UInt32 = ~UInt32(0) << (32 - bits)
                return value & mask == base
            }
            if within(127, 0, 0, 0, 8) { return "loopback" }
            if within(169, 254, 0, 0, 16) { return "link-local (cloud metadata)" }
            if within(10, 0, 0, 0, 8) || within(172, 16, 0, 0, 12) || within(192, 168, 0, 0, 16) { return "private" }
            if within(100, 64, 0, 0, 10) { return "shared (carrier-grade NAT)" }
            if within(0, 0, 0, 0, 8) { return "unspecified" }
            if within(224, 0, 0, 0, 4) || within(240, 0, 0, 0, 4) { return "multicast or reserved" }
            if within(192, 0, 0, 0, 24) || within(198, 18, 0, 0, 15) { return "reserved" }
            return nil
        case .v6(let bytes):
            if bytes[0..<15].allSatisfy({ $0 == 0 }) { return bytes[15] == 1 ? "loopback" : "unspecified" }
            // ::a.b.c.d (IPv4-compatible) and ::ffff:0:a.b.c.d (SIIT) carry an IPv4 address.
            if bytes[0..<12].allSatisfy({ $0 == 0 }) { return "IPv4-compatible" }
            if bytes[0..<8].allSatisfy({ $0 == 0 }) && bytes[8] == 0xff && bytes[9] == 0xff && bytes[10] == 0 && bytes[11] == 0 { return "IPv4-translated" }
            if bytes[0] == 0xfe && bytes[1] & 0xc0 == 0xc0 { return "site-local" }
            if bytes[0] == 0x01 && bytes[1] == 0 && bytes[2..<8].allSatisfy({ $0 == 0 }) { return "discard" }
            if bytes[0] == 0xfe && bytes[1] & 0xc0 == 0x80 { return "link-local" }
            if bytes[0] & 0xfe == 0xfc { return "private (unique local)" }
            if bytes[0] == 0xff { return "multicast" }
            // NAT64 and 6to4 carry IPv4 addresses that could be internal: not reached unless listed.
            if bytes[0] == 0x00 && bytes[1] == 0x64 && bytes[2] == 0xff && bytes[3] == 0x9b { return "NAT64" }
            if bytes[0] == 0x20 && bytes[1] == 0x02 { return "6to4" }
            return nil
        }
    }
}

