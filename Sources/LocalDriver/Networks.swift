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
///   and one table of nftables rules per Gantry (`inet gantry_host_<instance>`, whose set `envs`
///   holds its environments' links) drops every connection an environment opens towards the host
///   except to the instance's gateway ports (PostgreSQL's, the router's), at most
///   `connectionsPerPort` at once per environment and port, so servers the host runs on all its
///   addresses stay out of reach; so do other environments and the outside world (the egress
///   proxy will be the way out). One table rather than one per environment: nft reads every
///   table of the host on each call, and a table per environment made each new one slower.
///   The namespace's own rules allow the same ports only (they outlive a flush of the host's
///   ruleset, and the host table is written again, with every live link, when `supervise` finds
///   it gone or a Gantry starts).
/// What an environment may open at the gateway: TCP ports (PostgreSQL's, the router's, the
/// egress proxy's) and the DNS port (UDP, the egress proxy's resolver: every query the
/// namespace sends to port 53 goes there).
struct GatewayPorts: Sendable, Equatable {
    var tcp: [Int]
    var dns: Int?
}

struct Networks: Sendable {
    /// Connections an environment may hold at once to each port of the gateway.
    static let connectionsPerPort = 32

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
    /// The host-side table of this Gantry (its instance: one per state directory), and what its
    /// comment says of its owner: the state directory and its token, as a uid claim does (a table
    /// whose owner is gone is removed by the next Gantry that starts, `LocalDriver.collectAbandoned`).
    let hostTable: String
    let owner: String

    init(enabled: Bool, instance: String, owner: String) {
        hostTable = Self.hostTablePrefix + instance
        self.owner = owner.allSatisfy { $0 != "\"" && $0 != "\n" && $0 != "\\" } ? owner : ""
        guard enabled else { unavailable = "turned off"; return }
        guard geteuid() == 0 else { unavailable = "not root: network namespaces need privileges"; return }
        unavailable = Self.hostSupport
    }

    static let hostTablePrefix = "gantry_host_"

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
    static func hostInterface(_ uid: uid_t) -> String { interfacePrefix + "\(uid)" }
    static let interfacePrefix = "gantry"
    /// The per-environment table earlier versions made (removed with the environment's network).
    static func legacyTable(_ uid: uid_t) -> String { "gantry_\(uid)" }

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

    /// Makes (or completes) the environment's namespace and link, and puts the link in the host
    /// table's set (`writeHostRules` made the table). Inside the namespace, only the gateway's
    /// `gatewayPorts` are allowed out (`innerRules`). Returns the environment's address. Made in
    /// one script (each tool started from Gantry costs more than the script's steps).
    func ensure(uid: uid_t, gatewayPorts: GatewayPorts) throws -> String {
        guard enabled else { throw LocalDriverError("network namespaces are not available: \(unavailable ?? "")") }
        let (host, environment) = Self.addresses(index: Self.index(of: uid))
        let namespace = Self.namespace(uid), interface = Self.hostInterface(uid)
        // Made whole by an earlier run (a Gantry killed half-way through the script below leaves a
        // namespace and a link without their addresses or rules): only the rules are written again.
        if Self.isComplete(uid), (try? Self.run(["/bin/sh", "-c", """
            ip -o -4 addr show dev \(interface) up | grep -q ' \(host)/31' &&
            ip -n \(namespace) -o -4 route show \(Self.gateway) | grep -q . &&
            \(Self.nameserverRoutes(namespace: namespace, host: host, environment: environment))
            nsenter --net=\(Self.namespacePath(uid)) -- nft -f - <<'RULES' &&
            \(Self.innerRules(gatewayPorts: gatewayPorts))
            RULES
            nft add element inet \(hostTable) envs '{ "\(interface)" }'
            """])) != nil {
            return environment
        }
        // (The host's addresses are read here rather than by tools: one call, no process.)
        let addresses = Self.hostAddresses()
        // A uid 65536 away (another Gantry's wider range) would have the same addresses. (On this
        // uid's own link, left half made by a crash, the address goes with the link below.)
        if let holder = addresses[host], holder != interface {
            throw LocalDriverError("could not make the network of uid \(uid): \(host), its address, is already on \(holder) (uids 65536 apart share addresses: keep every Gantry of the host within one range of 65536)")
        }
        do {
            try Self.run(["/bin/sh", "-c", """
                set -e
                # Whatever a crash left half made goes first (a namespace without its link, or the reverse).
                # (The link first: it takes its peer along; a namespace's deletion takes its end
                # of the link only eventually.)
                if [ -e /sys/class/net/\(interface) ]; then ip link del \(interface) 2>/dev/null || true; fi
                if [ -e \(Self.namespacePath(uid)) ]; then ip netns del \(namespace); fi
                \(addresses[Self.gateway] == "lo" ? "" : Self.gatewayScript)
                ip -batch - <<'STEPS'
                netns add \(namespace)
                link add \(interface) type veth peer name eth0 netns \(namespace)
                STEPS
                echo 0 > /proc/sys/net/ipv4/conf/\(interface)/forwarding
                echo 1 > /proc/sys/net/ipv6/conf/\(interface)/disable_ipv6
                ip -batch - <<'STEPS'
                addr add \(host)/31 dev \(interface)
                link set \(interface) up
                STEPS
                ip -n \(namespace) -batch - <<'STEPS'
                link set lo up
                addr add \(environment)/31 dev eth0
                link set eth0 up
                route add \(Self.gateway)/32 via \(host) src \(environment)
                STEPS
                \(Self.nameserverRoutes(namespace: namespace, host: host, environment: environment))
                # Inside: what arrives on eth0 goes to loopback, port kept (route_localnet lets it);
                # what leaves may only reach the gateway's ports.
                nsenter --net=\(Self.namespacePath(uid)) -- /bin/sh -c 'set -e
                    echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet
                    echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6
                    exec nft -f -' <<'RULES'
                \(Self.innerRules(gatewayPorts: gatewayPorts))
                RULES
                nft add element inet \(hostTable) envs '{ "\(interface)" }'
                """])
        } catch {
            remove(uid: uid)
            throw LocalDriverError("could not make the network of uid \(uid) (\(namespace), \(environment)): \(error)")
        }
        return environment
    }

    /// The rules inside an environment's namespace (table `ip gantry`, written whole each time:
    /// a namespace made by an earlier version gets the set too). What arrives on eth0 goes to the
    /// namespace's loopback, port kept; what leaves may only reach `gatewayPorts` at the gateway.
    /// The host table allows the same, but rules in the namespace stay when the host's ruleset is
    /// flushed (a firewall reload) and the environment's user cannot change them.
    static func innerRules(gatewayPorts: GatewayPorts) -> String {
        let table = "ip gantry"
        let ports = gatewayPorts.tcp.sorted().map(String.init).joined(separator: ", ")
        // DNS: every query to port 53 (whatever resolv.conf names) goes to the egress proxy's
        // resolver; a loopback nameserver's queries leave with the environment's address.
        let dns = gatewayPorts.dns.map { port in """
            add rule \(table) dns udp dport 53 dnat to \(gateway):\(port)
            add rule \(table) dnssource oifname "eth0" ip saddr 127.0.0.0/8 masquerade
            add rule \(table) output oifname "eth0" ip daddr \(gateway) udp dport \(port) accept

            """ } ?? ""
        return """
            table \(table) {
              set ports { type inet_service; }
              chain prerouting { type nat hook prerouting priority -100; policy accept; }
              chain output { type filter hook output priority 0; policy accept; }
              chain dns { type nat hook output priority -100; policy accept; }
              chain dnssource { type nat hook postrouting priority 100; policy accept; }
            }
            flush chain \(table) prerouting
            flush chain \(table) output
            flush chain \(table) dns
            flush chain \(table) dnssource
            flush set \(table) ports
            \(ports.isEmpty ? "" : "add element \(table) ports { \(ports) }")
            add rule \(table) prerouting iifname "eth0" dnat to 127.0.0.1
            add rule \(table) output oifname "eth0" ct state established,related accept
            add rule \(table) output oifname "eth0" ip daddr \(gateway) tcp dport @ports accept
            \(dns)add rule \(table) output oifname "eth0" drop
            """
    }

    /// Routes inside the namespace to the host's IPv4 nameservers (resolv.conf): a query needs a
    /// route before the rules above send it to the gateway; nothing else goes that way.
    static func nameserverRoutes(namespace: String, host: String, environment: String) -> String {
        let servers = ((try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line -> String? in
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            var parsed = in_addr()
            guard words.count >= 2, words[0] == "nameserver", inet_pton(AF_INET, String(words[1]), &parsed) == 1, !words[1].hasPrefix("127.") else { return nil }
            return String(words[1])
        }
        return servers.map { "ip -n \(namespace) route replace \($0)/32 via \(host) src \(environment) &&" }.joined(separator: "\n") + (servers.isEmpty ? "" : "\n")
    }

    /// Writes `innerRules` with `gatewayPorts` in the namespaces of `uids` (one script; a
    /// namespace that cannot be entered is skipped: it is remade before its next process starts).
    func allowGatewayPorts(_ gatewayPorts: GatewayPorts, inside uids: [uid_t]) {
        guard enabled, !uids.isEmpty else { return }
        let rules = Self.innerRules(gatewayPorts: gatewayPorts)
        let script = uids.map { uid in
            "nsenter --net=\(Self.namespacePath(uid)) -- nft -f - <<'RULES' || echo 'could not write the rules of uid \(uid)' >&2\n\(rules)\nRULES"
        }.joined(separator: "\n")
        _ = try? Self.run(["/bin/sh", "-c", script + "\ntrue"])
    }

    /// The host's rules for every environment's link (the links in the set `envs`, `links` added
    /// to those already there), allowing the gateway's `gatewayPorts`: written as one transaction.
    /// Whatever the set holds, nothing arriving on a link named like an environment's opens a
    /// connection to any host address but the gateway (every Gantry's environments share that rule).
    func hostRules(gatewayPorts: GatewayPorts, links: [uid_t] = [], sharedLimits: [Int: Int] = [:]) -> String {
        let table = "inet \(hostTable)"
        let ports = gatewayPorts.tcp.sorted()
        let match = ports.count == 1 ? "\(ports[0])" : "{ \(ports.map(String.init).joined(separator: ", ")) }"
        // Each port at most `connectionsPerPort` connections at once per environment (its address:
        // one environment cannot take every PostgreSQL connection slot, even without a password).
        // And some ports at most so many from every environment together (PostgreSQL's: a slot
        // is taken before a password is asked, and Gantry's own connections need slots left).
        let shared = sharedLimits.sorted { $0.key < $1.key }.map { port, limit in
            "add rule \(table) input ip daddr \(Self.gateway) tcp dport \(port) add @totals { tcp dport ct count over \(limit) } reject with tcp reset\n"
        }.joined()
        let allowed = ports.isEmpty ? "" : """
            \(shared)add rule \(table) input ip daddr \(Self.gateway) tcp dport \(match) add @connections { ip saddr . tcp dport ct count over \(Self.connectionsPerPort) } reject with tcp reset
            add rule \(table) input ip daddr \(Self.gateway) tcp dport \(match) accept

            """
        let dns = gatewayPorts.dns.map { "add rule \(table) input ip daddr \(Self.gateway) udp dport \($0) add @queries { ip saddr limit rate over 100/second burst 200 packets } drop\nadd rule \(table) input ip daddr \(Self.gateway) udp dport \($0) accept\n" } ?? ""
        let members = links.isEmpty ? "" : "add element \(table) envs { \(links.map { "\"\(Self.hostInterface($0))\"" }.joined(separator: ", ")) }\n"
        return """
            table \(table) {
              comment "\(owner)"
              set envs { type ifname; }
              set connections { type ipv4_addr . inet_service; size 65535; flags dynamic; }
              set totals { type inet_service; size 64; flags dynamic; }
              set queries { type ipv4_addr; size 65535; flags dynamic,timeout; timeout 10s; }
              chain input { type filter hook input priority 0; policy accept; }
              chain forward { type filter hook forward priority 0; policy accept; }
            }
            flush chain \(table) input
            flush chain \(table) forward
            \(members)add rule \(table) input ct state established,related accept
            add rule \(table) input iifname "\(Self.interfacePrefix)*" ip daddr != \(Self.gateway) drop
            add rule \(table) input iifname "\(Self.interfacePrefix)*" meta nfproto ipv6 drop
            add rule \(table) input iifname != @envs accept
            \(allowed)\(dns)add rule \(table) input drop
            add rule \(table) forward iifname @envs drop
            add rule \(table) forward oifname @envs drop

            """
    }

    /// Whether this Gantry's host table is there with its rules (a firewall reload removes it).
    func hostTableIsWhole() -> Bool {
        guard enabled else { return true }
        guard let listed = try? Self.run(["nft", "list", "chain", "inet", hostTable, "input"]) else { return false }
        return listed.contains("@envs") && listed.contains("drop")
    }

    /// The host's IPv4 addresses and the device of each (getifaddrs: the kernel's own list).
    static func hostAddresses() -> [String: String] {
        var first: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&first) == 0 else { return [:] }
        defer { freeifaddrs(first) }
        var found: [String: String] = [:]
        var cursor = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) else { continue }
            var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { inet in
                var raw = inet.pointee.sin_addr
                _ = inet_ntop(AF_INET, &raw, &text, socklen_t(INET_ADDRSTRLEN))
            }
            found[String(cString: text)] = String(cString: entry.pointee.ifa_name)
        }
        return found
    }

    /// Adds the gateway address to the host's loopback device unless it is there (another Gantry
    /// may add it at the same moment).
    static let gatewayScript = "ip -o -4 addr show dev lo | grep -q ' \(gateway)/' || ip addr add \(gateway)/32 dev lo 2>/dev/null || ip -o -4 addr show dev lo | grep -q ' \(gateway)/'"

    /// The gateway address on the host's loopback device (shared by every Gantry of the host).
    static func ensureGateway() throws {
        try run(["/bin/sh", "-c", gatewayScript])
    }

    /// Removes the environment's link, namespace and place in the host table (each may already
    /// be gone); `everywhere` also takes the link out of every other Gantry's table (a uid whose
    /// Gantry is gone: that table's rules must never reach the uid's next owner).
    func remove(uid: uid_t, everywhere: Bool = false) {
        guard enabled else { return }
        let interface = Self.hostInterface(uid)
        let tables = everywhere ? "$(nft list tables | sed -n 's/^table inet \\(\(Self.hostTablePrefix)[0-9a-f]*\\)$/\\1/p')" : hostTable
        _ = try? Self.run(["/bin/sh", "-c", """
            for table in \(tables); do nft delete element inet "$table" envs '{ "\(interface)" }' 2>/dev/null; done
            nft delete table inet \(Self.legacyTable(uid)) 2>/dev/null
            ip link del \(interface) 2>/dev/null
            ip netns del \(Self.namespace(uid)) 2>/dev/null
            true
            """])
    }

    /// Removes this Gantry's host table (every network is gone: `LocalDriver.shutdown`).
    func removeHostTable() {
        guard enabled else { return }
        _ = try? Self.run(["/bin/sh", "-c", "nft delete table inet \(hostTable) 2>/dev/null; true"])
    }

    /// The host tables of other Gantry instances whose state directory is gone, by name.
    func abandonedHostTables(isStale: (String) -> Bool) -> [String] {
        guard enabled, let listed = try? Self.run(["nft", "list", "tables"]) else { return [] }
        return listed.split(separator: "\n").compactMap { line -> String? in
            let prefix = "table inet " + Self.hostTablePrefix
            guard line.hasPrefix(prefix), String(line.dropFirst("table inet ".count)) != hostTable else { return nil }
            let name = String(line.dropFirst("table inet ".count))
            guard let text = try? Self.run(["nft", "list", "table", "inet", name]),
                  let comment = text.split(separator: "\n").first(where: { $0.trimmingCharacters(in: .whitespaces).hasPrefix("comment ") })
            else { return nil }
            let owner = comment.trimmingCharacters(in: .whitespaces).dropFirst("comment ".count).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            return isStale(owner) ? name : nil
        }
    }

    /// Whether the environment of `uid` has its namespace.
    static func exists(_ uid: uid_t) -> Bool { FileManager.default.fileExists(atPath: namespacePath(uid)) }

    /// Whether it has both its namespace and its link (a crash can leave one without the other).
    static func isComplete(_ uid: uid_t) -> Bool {
        exists(uid) && FileManager.default.fileExists(atPath: "/sys/class/net/\(hostInterface(uid))")
    }

    /// The uids whose namespaces exist on this host.
    static func existing() -> [uid_t] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []).compactMap { name in
            name.hasPrefix("gantry-") ? uid_t(name.dropFirst("gantry-".count)) : nil
        }
    }
}
