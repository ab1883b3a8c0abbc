import Foundation
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// Each environment's network (see `Networks`): made before its first process starts, recorded in
/// the state DB (`network` allocation: the environment's address), removed at teardown.
extension LocalDriver {
    static let networkAllocation = "network"

    /// True when environments get network namespaces of their own (root, users isolated, the tools present).
    public var isolatesNetwork: Bool { isolatesUsers && networks.enabled }

    /// Why environments would share the host's network here (nil: each gets a namespace), for `gantry diagnose`.
    public static var networkSupport: String? { geteuid() == 0 ? Networks.hostSupport : "not root" }

    /// How environments' networks are laid out.
    public static let networkSummary = "addresses in \(Networks.environmentRange), only route to the gateway \(Networks.gateway) where PostgreSQL and the router listen; nftables rules in each namespace and one host table for the environments' links"

    /// Where the router must also listen for environments in networks of their own to reach
    /// routes (the gateway, made here if needed); nil when environments share the host's network.
    public var routerGateway: String? {
        guard isolatesNetwork, (try? Networks.ensureGateway()) != nil else { return nil }
        return Networks.gateway
    }

    /// The ports an environment's network may open at the gateway: PostgreSQL's, the router's,
    /// the egress proxy's (and its DNS).
    func gatewayPorts() throws -> GatewayPorts {
        gatewayPorts(postgres: try postgresPort())
    }

    func gatewayPorts(postgres: Int?) -> GatewayPorts {
        GatewayPorts(tcp: [postgres, routerPort, egressPort].compactMap { $0 }, dns: egressPort)
    }

    /// The port of this Gantry's PostgreSQL server (nil before it was ever started).
    func postgresPort() throws -> Int? {
        try state.services(of: Self.hostEnvironment).first { $0.name == Self.postgresRecord }?.port
    }

    /// Rewrites the host-side rules when the allowed ports changed (the router started,
    /// PostgreSQL moved; the first pass of a Gantry writes them once, since an earlier Gantry may
    /// have allowed others and its links are not in a fresh table), and every
    /// `hostTableCheckInterval` checks that the table is still there: a firewall reload
    /// (`nft flush ruleset`) removes it, and it is written again with every live link. Every other
    /// pass costs one comparison; a failed write is tried again at the next pass.
    func refreshNetworkRules(now: Date = Date()) {
        guard isolatesNetwork else { return }
        let due = shared.withLock { () -> Bool in
            guard refreshedPorts != nil else { return false }
            if let last = hostTableCheckedAt, now.timeIntervalSince(last) < options.hostTableCheckInterval { return false }
            hostTableCheckedAt = now
            return true
        }
        if due, !networks.hostTableIsWhole() {
            logger.warning("the host table \(networks.hostTable) was gone or changed (a firewall reload?): writing it again with every environment's link")
            shared.withLock { refreshedPorts = nil }
        }
        try? writeHostRules()
    }

    /// The router stopped (`gantry run` exits, its services kept running): its port is closed to
    /// the environments at once, in the host table and in their namespaces, so a server the host
    /// starts on that port later is out of their reach.
    public func routerStopped() {
        routerPort = nil
        try? writeHostRules()
    }

    /// The egress proxy stopped: its port is closed to the environments at once.
    public func egressStopped() {
        egressPort = nil
        try? writeHostRules()
    }

    /// Writes the host table (one transaction, with every live link of this Gantry's environments
    /// in its set: adopted ones after a restart too) and the allowed ports inside each
    /// environment's namespace, unless they already allow exactly the gateway's current ports.
    func writeHostRules() throws {
        guard isolatesNetwork else { return }
        try shared.withLock {
            let postgres = try postgresPort()
            let ports = gatewayPorts(postgres: postgres)
            guard refreshedPorts != ports else { return }
            let links = try state.holders(Self.uidAllocation).compactMap { uid_t($0.name) }.filter(Networks.isComplete)
            try Networks.run(["nft", "-f", "-"], input: networks.hostRules(gatewayPorts: ports, links: links,
                                                                           sharedLimits: postgres.map { [$0: options.environmentConnectionsToPostgres] } ?? [:]))
            networks.allowGatewayPorts(ports, inside: links)
            refreshedPorts = ports
            hostTableCheckedAt = Date()
        }
    }

    /// Where the host reaches an environment's services: its own address, or loopback when it
    /// shares the host's network.
    public static func address(of environment: String, in state: StateStore) -> String {
        (try? state.allocations(networkAllocation, of: environment).first) ?? "127.0.0.1"
    }

    /// Makes (or checks) the network of `environment`, whose user is `uid` (`user(of:)`), and
    /// returns the uid whose namespace its processes enter; nil when environments share the
    /// host's network.
    @discardableResult
    func network(of environment: String, user uid: uid_t?) throws -> uid_t? {
        guard isolatesNetwork, environment != Self.hostEnvironment, let uid else { return nil }
        try writeHostRules()
        if shared.withLock({ networksMade.contains(uid) }), Networks.isComplete(uid) { return uid }
        let address = Networks.addresses(index: Networks.index(of: uid)).environment
        // The network of an earlier uid of the environment (its claim was lost) goes.
        for stale in try state.allocations(Self.networkAllocation, of: environment) where stale != address {
            try state.release(Self.networkAllocation, stale)
        }
        for other in try state.allocations(Self.uidAllocation, of: environment).compactMap({ uid_t($0) }) where other != uid {
            networks.remove(uid: other)
        }
        try state.allocate(Self.networkAllocation, address, to: environment)
        _ = try networks.ensure(uid: uid, gatewayPorts: shared.withLock { refreshedPorts } ?? gatewayPorts())
        shared.withLock { _ = networksMade.insert(uid) }
        return uid
    }

    /// Removes the environment's network (its processes are gone) and, unless `keepingAddress`,
    /// gives its address back.
    func removeNetwork(of environment: String, keepingAddress: Bool = false) {
        for uid in ((try? state.allocations(Self.uidAllocation, of: environment)) ?? []).compactMap({ uid_t($0) }) {
            networks.remove(uid: uid)
            shared.withLock { _ = networksMade.remove(uid) }
        }
        guard !keepingAddress else { return }
        for address in (try? state.allocations(Self.networkAllocation, of: environment)) ?? [] {
            try? state.release(Self.networkAllocation, address)
        }
    }

    /// What a state directory deleted without a teardown (its Gantry killed) left on this host:
    /// every uid whose claim names a state directory that is gone has its processes killed, its
    /// network removed and its claim given back; a namespace no claim names and nothing runs in
    /// goes too. (Gantry-marked processes whose working directory is gone, such as that state
    /// directory's PostgreSQL, are stopped by `recover`.)
    func collectAbandoned() {
        guard isolatesUsers else { return }
        let registry = options.uidRegistry
        // Namespaces listed before the claims: a namespace is made after its claim, so one that no
        // claim names here is no environment's (and it is checked again under the lock).
        let namespaces = Networks.existing()
        var owners: [uid_t: String] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: registry)) ?? [] {
            guard let uid = uid_t(entry) else { continue }
            owners[uid] = (try? String(contentsOfFile: registry + "/" + entry, encoding: .utf8)) ?? ""
        }
        // The host table of a Gantry whose state directory is gone (its comment names it, as a claim does).
        for table in networks.abandonedHostTables(isStale: { owner in
            guard let space = owner.lastIndex(of: " ") else { return false }
            return Self.claimIsStale("\(owner[..<space])\n\n\(owner[owner.index(after: space)...])\n")
        }) {
            logger.notice("removing the host table of a Gantry whose state directory is gone", metadata: ["table": "\(table)"])
            _ = try? Networks.run(["nft", "delete", "table", "inet", table])
        }
        // (An empty claim is one being written: left to the claimers.)
        let abandoned = owners.filter { !$0.value.isEmpty && Self.claimIsStale($0.value) }.map(\.key)
        let orphans = Set(namespaces).subtracting(owners.keys)
        guard !abandoned.isEmpty || !orphans.isEmpty else { return }
        let running = ProcessControl.processesByUID()
        for uid in abandoned {
            // Checked again under the registry's lock: another Gantry may have taken the claim over
            // (and started its own processes as the uid) since the listing above.
            withRegistryLock(otherwise: ()) {
                let path = registry + "/\(uid)"
                guard let claim = try? String(contentsOfFile: path, encoding: .utf8), claim == owners[uid] else { return }
                if running[uid] != nil {
                    let owner = claim.split(separator: "\n").first.map(String.init) ?? ""
                    logger.warning("stopping the processes of uid \(uid): the state directory that ran them (\(owner)) is gone")
                    ProcessControl.killEveryProcess(of: uid)
                }
                networks.remove(uid: uid, everywhere: true)
                Self.scrubSharedFiles(of: uid)
                unlink(path)
            }
        }
        for uid in orphans where running[uid] == nil {
            withRegistryLock(otherwise: ()) {
                // Claimed meanwhile: another Gantry's environment is being made in it.
                guard !FileManager.default.fileExists(atPath: registry + "/\(uid)"), ProcessControl.processes(ownedBy: uid).isEmpty else { return }
                networks.remove(uid: uid, everywhere: true)
            }
        }
    }
}
