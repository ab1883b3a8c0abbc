import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A network namespace per environment (as root, with iproute2 and nftables), joined by a veth
/// pair to the host:
///
/// - The environment's end is `eth0` in namespace `gantry-<uid>` with the environment's own
///   address, `10.202.0.0/15` plus twice the uid's index in the range, plus one (a /31 with the
///   host's end). Whatever arrives on it is sent to the namespace's loopback (nftables DNAT, port
///   kept), so a service listening on 127.0.0.1:PORT — or on every address — answers at
///   `<address>:PORT`, and only there: no other environment can bind or answer for it.
/// - Inside, the only route leads to the gateway, `10.200.0.1` (on the host's loopback device),
///   where the instance's PostgreSQL listens. The host's end (`gantry<uid>`) forwards nothing,
///   and a table of nftables rules per environment (`inet gantry_<uid>`) drops every connection
///   the environment opens towards the host except to the ports it was given (PostgreSQL's), so
///   servers the host runs on all its addresses stay out of reach; so do other environments and
///   the outside world (the egress proxy will be the way out).
struct Networks: Sendable {
    /// Where the environments reach the host's servers (PostgreSQL).
    static let gateway = "10.200.0.1"
    /// The environments' addresses (a /31 each).
    static let environmentRange = "10.202.0.0/15"
    static let rangeBase: UInt32 = (10 << 24) | (202 << 16)
    /// How many environments the range holds (the uid range must not be wider).
    static let capacity = 1 << 16

    /// Why there are no namespaces (nil: there are).
    let unavailable: String?
    var enabled: Bool { unavailable == nil }

    init(enabled: Bool) {
        guard enabled else { unavailable = "turned off"; return }
        guard geteuid() == 0 else { unavailable = "not root: network namespaces need privileges"; return }
        unavailable = Self.hostSupport
    }

    /// Whether this host can make namespaces and nftables rules: checked once per process.
    static let hostSupport: String? = {
        for name in ["ip", "nft", "nsenter", "unshare"] where tool(name) == nil {
            return "\(name) is not installed (make deps installs iproute2, nftables and util-linux)"
        }
        do {
            try Self.run(["unshare", "--net", "true"])
            try Self.run(["nft", "list", "tables"])
        } catch {
            return "this host refuses network namespaces or nftables rules: \(error)"
        }
        return nil
    }()

    /// Where the tools are looked up (Gantry's own PATH may lack the sbin directories).
    static let systemPath = "/usr/sbin:/usr/bin:/sbin:/bin"

    @discardableResult
    static func run(_ arguments: [String], input: String? = nil) throws -> String {
        try ProcessControl.run(arguments, input: input, environment: ["PATH": systemPath])
    }

    static func tool(_ name: String) -> String? {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static func namespace(_ uid: uid_t) -> String { "gantry-\(uid)" }
    static func namespacePath(_ uid: uid_t) -> String { "/run/netns/" + namespace(uid) }
    static func hostInterface(_ uid: uid_t) -> String { "gantry\(uid)" }
    static func table(_ uid: uid_t) -> String { "gantry_\(uid)" }

    /// Where a uid's addresses are in the range: 65536 consecutive uids (the default range
    /// 200000–265535) never share one.
    static func index(of uid: uid_t) -> Int { Int(uid) % capacity }

    /// The host's and the environment's addresses at `index`.
    static func addresses(index: Int) -> (host: String, environment: String) {
        let host = rangeBase + UInt32(2 * index)
        return (dotted(host), dotted(host + 1))
    }

    static func dotted(_ address: UInt32) -> String {
        "\(address >> 24).\((address >> 16) & 255).\((address >> 8) & 255).\(address & 255)"
    }

    /// `command`, run inside the environment's namespace (entered while still privileged, before
    /// the command drops to the environment's user).
    static func entering(_ uid: uid_t?, _ command: [String]) -> [String] {
        guard let uid else { return command }
        return [tool("nsenter") ?? "nsenter", "--net=" + namespacePath(uid), "--"] + command
    }

    /// Makes (or completes) the environment's namespace and link, and writes its host-side rules
    /// allowing `gatewayPorts`. Returns the environment's address.
    func ensure(uid: uid_t, gatewayPorts: [Int]) throws -> String {
        guard enabled else { throw LocalDriverError("network namespaces are not available: \(unavailable ?? "")") }
        let (host, environment) = Self.addresses(index: Self.index(of: uid))
        try Self.ensureGateway()
        let namespace = Self.namespace(uid), interface = Self.hostInterface(uid)
        let complete = FileManager.default.fileExists(atPath: Self.namespacePath(uid))
            && FileManager.default.fileExists(atPath: "/sys/class/net/\(interface)")
        if !complete {
            // Whatever a crash left half made goes first (a namespace without its link, or the reverse).
            remove(uid: uid)
            // A uid 65536 away (another Gantry's wider range) would have the same addresses.
            if let holder = (try? Self.run(["ip", "-o", "-4", "addr", "show", "to", "\(host)/32"]))?.split(separator: " ").dropFirst().first {
                throw LocalDriverError("\(host), the address of uid \(uid)'s network, is already on \(holder) (uids 65536 apart share addresses: keep every Gantry of the host within one range of 65536)")
            }
            do {
                try Self.run(["/bin/sh", "-c", """
                    set -e
                    ip netns add \(namespace)
                    ip link add \(interface) type veth peer name eth0 netns \(namespace)
                    echo 0 > /proc/sys/net/ipv4/conf/\(interface)/forwarding
                    echo 1 > /proc/sys/net/ipv6/conf/\(interface)/disable_ipv6
                    ip addr add \(host)/31 dev \(interface)
                    ip link set \(interface) up
                    ip -n \(namespace) link set lo up
                    ip -n \(namespace) addr add \(environment)/31 dev eth0
                    ip -n \(namespace) link set eth0 up
                    ip -n \(namespace) route add \(Self.gateway)/32 via \(host) src \(environment)
                    """])
                // Inside: what arrives on eth0 goes to loopback, port kept (route_localnet lets it).
                try Self.run(["nsenter", "--net=" + Self.namespacePath(uid), "--", "/bin/sh", "-c", """
                    set -e
                    echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet
                    echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
                    exec nft -f -
                    """], input: """
                    table ip gantry {
                      chain prerouting {
                        type nat hook prerouting priority -100; policy accept;
                        iifname "eth0" dnat to 127.0.0.1
                      }
                    }

                    """)
            } catch {
                remove(uid: uid)
                throw LocalDriverError("could not make the network of uid \(uid) (\(namespace), \(environment)): \(error)")
            }
        }
        try writeRules(uid: uid, gatewayPorts: gatewayPorts)
        return environment
    }

    /// The host's rules for the environment's link, replaced as one transaction.
    func writeRules(uid: uid_t, gatewayPorts: [Int]) throws {
        let interface = Self.hostInterface(uid), table = Self.table(uid)
        let allowed = gatewayPorts.isEmpty ? ""
            : "    iifname \"\(interface)\" ip daddr \(Self.gateway) tcp dport { \(gatewayPorts.sorted().map(String.init).joined(separator: ", ")) } accept\n"
        try Self.run(["nft", "-f", "-"], input: """
            table inet \(table)
            delete table inet \(table)
            table inet \(table) {
              chain input {
                type filter hook input priority 0; policy accept;
                iifname "\(interface)" ct state established,related accept
            \(allowed)    iifname "\(interface)" drop
              }
              chain forward {
                type filter hook forward priority 0; policy accept;
                iifname "\(interface)" drop
                oifname "\(interface)" drop
              }
            }

            """)
    }

    /// The gateway address on the host's loopback device (shared by every Gantry of the host).
    static func ensureGateway() throws {
        let listed = (try? Self.run(["ip", "-o", "-4", "addr", "show", "dev", "lo"])) ?? ""
        guard !listed.contains(" \(gateway)/") else { return }
        do {
            try Self.run(["ip", "addr", "add", "\(gateway)/32", "dev", "lo"])
        } catch {
            // Another Gantry may have added it meanwhile.
            guard (try? Self.run(["ip", "-o", "-4", "addr", "show", "dev", "lo"]))?.contains(" \(gateway)/") == true else { throw error }
        }
    }

    /// Removes the environment's rules, link and namespace (each may already be gone).
    func remove(uid: uid_t) {
        guard enabled else { return }
        _ = try? Self.run(["nft", "delete", "table", "inet", Self.table(uid)])
        if FileManager.default.fileExists(atPath: "/sys/class/net/\(Self.hostInterface(uid))") {
            _ = try? Self.run(["ip", "link", "del", Self.hostInterface(uid)])
        }
        if FileManager.default.fileExists(atPath: Self.namespacePath(uid)) {
            _ = try? Self.run(["ip", "netns", "del", Self.namespace(uid)])
        }
    }

    /// Whether the environment of `uid` has its namespace.
    static func exists(_ uid: uid_t) -> Bool { FileManager.default.fileExists(atPath: namespacePath(uid)) }

    /// The uids whose namespaces exist on this host.
    static func existing() -> [uid_t] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []).compactMap { name in
            name.hasPrefix("gantry-") ? uid_t(name.dropFirst("gantry-".count)) : nil
        }
    }
}
