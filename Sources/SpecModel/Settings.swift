/// `gantry.yaml`: settings and built-in governance, read from the protected branch only.
public struct Settings: Sendable, Codable, Equatable {
    public var protectedBranch: String = "main"
    public var ignoreBranches: [String] = []
    public var domain: String = "localhost"
    public var signing = Signing()
    public var approvals: [String: ApprovalRule] = [:]
    public var previews = PreviewSettings()
    public var pricing: [String: Double] = [:]
    public var budgets = Budgets()
    public var egress = Egress()
    public var killSwitch = false
    /// `drivers.<class or environment>`: the driver that runs those environments (`local`,
    /// `kubernetes`, `agent`: the data plane); an environment's own name wins over its class; absent: `local`.
    public var drivers: [String: String] = [:]
    public static let driverNames = ["local", "kubernetes", "agent"]
    /// `clones.<class>`: the classes an environment of that class may `cloneFrom` (absent: every
    /// class but production).
    public var clones: [String: [String]] = [:]

    public init() {}

    /// Whether an environment of class `target` may clone the data of one of class `source`.
    public func mayClone(from source: String, into target: String) -> Bool {
        clones[target].map { $0.contains(source) } ?? (source != "production")
    }

    /// The driver of the environment `name` of class `envClass`.
    public func driver(for name: String, class envClass: String) -> String {
        drivers[name] ?? drivers[envClass] ?? "local"
    }

    /// The `approvals` key for changes to gantry.yaml, identities/ and policies/ on the protected branch.
    public static let governanceApprovals = "governance"

    public struct Signing: Sendable, Codable, Equatable {
        public var required = false
        public init(required: Bool = false) { self.required = required }
    }

    public struct ApprovalRule: Sendable, Codable, Equatable {
        public var count = 1
        public var role = "approver"
        public var distinctFromAuthors = true
        public init() {}
    }

    public struct PreviewSettings: Sendable, Codable, Equatable {
        /// Seconds.
        public var ttl: Double?
        public var idleSleepAfter: Double?
        public var maxPerTeam: Int?
        public var maxPerAgent: Int?
        public init() {}
    }

    public struct Budgets: Sendable, Codable, Equatable {
        public var alertAt: Double = 0.8
        public var teams: [String: BudgetLimit] = [:]
        public var agents: [String: BudgetLimit] = [:]
        public init() {}
    }

    public struct BudgetLimit: Sendable, Codable, Equatable {
        public var monthly: Double?
        public var daily: Double?
        public var hourly: Double?
        public init() {}
    }

    public struct Egress: Sendable, Codable, Equatable {
        public var `default` = "deny"
        public var allow: [String] = []
        public var deny: [String] = []
        public init() {}
    }

    /// True when `branch` matches one of `ignoreBranches` (glob: `*` matches anything, `?` one character).
    public func ignores(branch: String) -> Bool {
        ignoreBranches.contains { Glob.matches($0, branch) }
    }
}

/// Shell-style glob matching where `*` also crosses `/`, as branch filters are written.
public enum Glob {
    public static func matches(_ pattern: String, _ text: String) -> Bool {
        matches(Array(pattern), 0, Array(text), 0)
    }

    private static func matches(_ p: [Character], _ pi: Int, _ t: [Character], _ ti: Int) -> Bool {
        var pi = pi, ti = ti
        var star: (Int, Int)? = nil
        while ti < t.count {
            if pi < p.count && (p[pi] == "?" || p[pi] == t[ti]) {
                pi += 1; ti += 1
            } else if pi < p.count && p[pi] == "*" {
                star = (pi, ti); pi += 1
            } else if let (sp, st) = star {
                pi = sp + 1; ti = st + 1; star = (sp, st + 1)
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }
}
