import Foundation

/// What an environment costs per hour under `gantry.yaml`'s `pricing`, item by item.
public struct CostBreakdown: Sendable, Codable, Equatable {
    public struct Line: Sendable, Codable, Equatable {
        /// `service api`, `database main`, `cache sessions`.
        public var item: String
        /// How the figure is made (`2 × (0.25 cpu × 0.04 + 0.25 GiB × 0.005)`).
        public var detail: String
        public var hourly: Double
    }

    public var lines: [Line] = []
    public var hourly: Double { lines.reduce(0) { $0 + $1.hourly } }
    public init() {}
}

/// Prices an environment: each service's cpu × replicas × `cpuHour` plus its memory in GiB ×
/// replicas × `memoryGiBHour`; each PostgreSQL database `postgresHour` and each Redis cache
/// `redisHour` (a SQLite file costs nothing). A service that declares no size is priced at
/// `defaultCPU` and `defaultMemory`: leaving `resources` out never makes it free.
public enum CostModel {
    public static let defaultCPU = 0.25
    public static let defaultMemory = 256 << 20
    /// The `pricing` keys Gantry reads.
    public static let pricingKeys = ["cpuHour", "memoryGiBHour", "postgresHour", "redisHour"]

    /// `running` gives the replicas that run now per service (a sleeping service 0); without it,
    /// the count an apply starts (the spec's `replicas`, within an autoscaled service's range).
    /// With `ceiling`, an autoscaled service is priced at its `max` (what admission judges: the
    /// most it may cost once the router's load scales it).
    public static func breakdown(_ spec: EnvironmentSpec, pricing: [String: Double], running: [String: Int]? = nil,
                                 ceiling: Bool = false) -> CostBreakdown {
        var result = CostBreakdown()
        let cpuHour = pricing["cpuHour"] ?? 0, memoryHour = pricing["memoryGiBHour"] ?? 0
        for service in spec.services {
            let replicas = running?[service.name] ?? (ceiling ? service.autoscale?.max : nil) ?? initialReplicas(service)
            let cpu = service.resources.cpu ?? defaultCPU
            let gib = Double(service.resources.memory ?? defaultMemory) / Double(1 << 30)
            let each = cpu * cpuHour + gib * memoryHour
            result.lines.append(.init(item: "service \(service.name)",
                                      detail: "\(replicas) × (\(format(cpu)) cpu × \(format(cpuHour)) + \(format(gib)) GiB × \(format(memoryHour)))",
                                      hourly: Double(replicas) * each))
        }
        for database in spec.databases {
            let price = database.engine == "postgres" ? pricing["postgresHour"] ?? 0 : 0
            result.lines.append(.init(item: "database \(database.name)", detail: "\(database.engine) \(format(price))/h", hourly: price))
        }
        for cache in spec.caches {
            let price = pricing["redisHour"] ?? 0
            result.lines.append(.init(item: "cache \(cache.name)", detail: "\(cache.engine) \(format(price))/h", hourly: price))
        }
        return result
    }

    /// The replicas an apply starts: `replicas`, kept within an autoscaled service's `min`…`max`
    /// (at least 1: a service asleep at `min: 0` starts when a request comes).
    public static func initialReplicas(_ service: Service) -> Int {
        guard let scale = service.autoscale else { return service.replicas }
        return Swift.min(Swift.max(service.replicas, scale.min, 1), scale.max)
    }

    public static func format(_ value: Double) -> String {
        var text = String(format: "%.4f", value)
        while text.hasSuffix("0") && !text.hasSuffix(".0") { text.removeLast() }
        return text
    }
}

/// A budget's period, in UTC: calendar hours, days and months. A month counts as 730 hours when
/// the spend of what runs is projected over what is left of it (730 × the fraction left).
public enum BudgetPeriod: String, Sendable, Codable, CaseIterable {
    case hourly, daily, monthly

    static let utc: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    public func start(of date: Date) -> Date {
        let calendar = Self.utc
        switch self {
        case .hourly: return calendar.dateInterval(of: .hour, for: date)!.start
        case .daily: return calendar.startOfDay(for: date)
        case .monthly: return calendar.dateInterval(of: .month, for: date)!.start
        }
    }

    public func end(of date: Date) -> Date {
        let calendar = Self.utc
        switch self {
        case .hourly: return calendar.dateInterval(of: .hour, for: date)!.end
        case .daily: return calendar.dateInterval(of: .day, for: date)!.end
        case .monthly: return calendar.dateInterval(of: .month, for: date)!.end
        }
    }

    /// Hours left in the period at `date` (a month's scaled to 730 h).
    public func hoursLeft(at date: Date) -> Double {
        let left = end(of: date).timeIntervalSince(date)
        guard self == .monthly else { return left / 3600 }
        let whole = end(of: date).timeIntervalSince(start(of: date))
        return 730 * left / whole
    }

    /// The period's name in records and marks: `2026-12`, `2026-12-07`, `2026-12-07T14`.
    public func label(at date: Date) -> String {
        let parts = Self.utc.dateComponents([.year, .month, .day, .hour], from: date)
        let month = String(format: "%04d-%02d", parts.year!, parts.month!)
        switch self {
        case .monthly: return month
        case .daily: return month + String(format: "-%02d", parts.day!)
        case .hourly: return month + String(format: "-%02dT%02d", parts.day!, parts.hour!)
        }
    }
}

extension Settings.BudgetLimit {
    /// Each limit set, shortest period first.
    public var limits: [(period: BudgetPeriod, amount: Double)] {
        [(.hourly, hourly), (.daily, daily), (.monthly, monthly)].compactMap { period, amount in amount.map { (period, $0) } }
    }
}

extension Settings.Budgets {
    /// A team's budget: its own entry, else `default`.
    public func team(_ name: String) -> Settings.BudgetLimit? { teams[name] ?? teams["default"] }
    /// An agent's budget: its own entry, else `default` (each agent has the default to itself).
    public func agent(_ principal: String) -> Settings.BudgetLimit? { agents[principal] ?? agents["default"] }
}
