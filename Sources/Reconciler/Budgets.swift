import CEL
import Foundation
import Governance
import SpecLoading
import SpecModel
import StateStore

/// One budget of `gantry.yaml` in its current period: what was spent, what runs now costs, and
/// where that leads by the period's end.
public struct BudgetStatus: Sendable, Codable, Equatable {
    /// `team` or `agent`.
    public let scope: String
    public let name: String
    public let period: BudgetPeriod
    /// `2026-12`, `2026-12-07`, `2026-12-07T14`.
    public let label: String
    public let limit: Double
    public let spent: Double
    /// What the scope's environments cost per hour now.
    public let hourly: Double
    public let hoursLeft: Double
    /// `spent` + `hourly` × `hoursLeft`.
    public var projected: Double { spent + hourly * hoursLeft }
    public var remaining: Double { limit - spent }
    public var fraction: Double { limit > 0 ? spent / limit : (spent > 0 ? .infinity : 1) }
    public var exhausted: Bool { spent >= limit }
    /// The environments that spent most of it this period.
    public let top: [TopSpender]

    public struct TopSpender: Sendable, Codable, Equatable {
        public let environment: String
        public let amount: Double
    }

    public init(scope: String, name: String, period: BudgetPeriod, label: String, limit: Double, spent: Double, hourly: Double,
                hoursLeft: Double, top: [TopSpender]) {
        self.scope = scope
        self.name = name
        self.period = period
        self.label = label
        self.limit = limit
        self.spent = spent
        self.hourly = hourly
        self.hoursLeft = hoursLeft
        self.top = top
    }

    /// `team payments monthly (2026-12)`.
    public var title: String { "\(scope) \(name) \(period.rawValue) (\(label))" }
}

/// Spend this period for every budget period, from the ledger and the meters running now.
public struct Spending: Sendable {
    public let now: Date
    let rows: [BudgetPeriod: [SpendRow]]
    let meters: [Meter]

    public init(now: Date, rows: [BudgetPeriod: [SpendRow]] = [:], meters: [Meter] = []) {
        self.now = now
        self.rows = rows
        self.meters = meters
    }

    public static func load(_ state: StateStore, now: Date) throws -> Spending {
        var rows: [BudgetPeriod: [SpendRow]] = [:]
        for period in BudgetPeriod.allCases { rows[period] = try state.spend(since: period.start(of: now)) }
        return Spending(now: now, rows: rows, meters: try state.meters())
    }

    /// Spent in the current `period` by what `matches` (the ledger, plus what the meters ran up
    /// since their last accrual).
    func spent(_ period: BudgetPeriod, _ matches: (String, String) -> Bool) -> (total: Double, byEnvironment: [String: Double]) {
        var byEnvironment: [String: Double] = [:]
        for row in rows[period] ?? [] where matches(row.team, row.agent) { byEnvironment[row.environment, default: 0] += row.amount }
        let start = period.start(of: now)
        for meter in meters where matches(meter.team, meter.agent) {
            let from = max(meter.since, start)
            if now > from { byEnvironment[meter.environment, default: 0] += meter.hourly * now.timeIntervalSince(from) / 3600 }
        }
        return (byEnvironment.values.reduce(0, +), byEnvironment)
    }

    func hourly(_ matches: (String, String) -> Bool) -> Double {
        meters.filter { matches($0.team, $0.agent) }.reduce(0) { $0 + $1.hourly }
    }

    /// The status of each budget `settings` sets for a team or agent that has spent or runs
    /// something (and for every team and agent named there).
    public func statuses(_ settings: Settings.Budgets) -> [BudgetStatus] {
        var teams = Set(settings.teams.keys.filter { $0 != "default" })
        var agents = Set(settings.agents.keys.filter { $0 != "default" })
        for row in rows.values.joined() { if !row.team.isEmpty { teams.insert(row.team) }; if !row.agent.isEmpty { agents.insert(row.agent) } }
        for meter in meters { if !meter.team.isEmpty { teams.insert(meter.team) }; if !meter.agent.isEmpty { agents.insert(meter.agent) } }
        var result: [BudgetStatus] = []
        for team in teams.sorted() { result += status(scope: "team", name: team, limit: settings.team(team)) }
        for agent in agents.sorted() { result += status(scope: "agent", name: agent, limit: settings.agent(agent)) }
        return result
    }

    public func status(scope: String, name: String, limit: Settings.BudgetLimit?) -> [BudgetStatus] {
        guard let limit else { return [] }
        let matches: (String, String) -> Bool = scope == "team" ? { team, _ in team == name } : { _, agent in agent == name }
        return limit.limits.map { period, amount in
            let spent = self.spent(period, matches)
            let top = spent.byEnvironment.sorted { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }.prefix(5)
                .map { BudgetStatus.TopSpender(environment: $0.key, amount: $0.value) }
            return BudgetStatus(scope: scope, name: name, period: period, label: period.label(at: now), limit: amount, spent: spent.total,
                                hourly: hourly(matches), hoursLeft: period.hoursLeft(at: now), top: Array(top))
        }
    }
}

/// What admission knows of what runs and what it costs: the spend against budgets, and the
/// previews that hold a slot (`previews.maxPerTeam`, `maxPerAgent`). A pass loads it once and
/// notes each preview it admits, so one pass never admits more than the caps allow.
public final class Usage: @unchecked Sendable {
    public struct Preview: Sendable, Equatable {
        public let name: String
        public let branch: String
        public let team: String?
        public let agent: String?
    }

    private let lock = NSLock()
    private var previews: [String: Preview]
    /// Read from the ledger the first time a budget rule asks (most passes judge nothing).
    private var loaded: Spending?
    private let loadSpending: @Sendable () -> Spending

    public var spending: Spending {
        lock.withLock {
            if let loaded { return loaded }
            let made = loadSpending()
            loaded = made
            return made
        }
    }

    public init(spending: Spending = Spending(now: Date()), previews: [Preview] = []) {
        self.loaded = spending
        self.loadSpending = { spending }
        self.previews = Dictionary(previews.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    init(previews: [Preview], spending: @escaping @Sendable () -> Spending) {
        self.loadSpending = spending
        self.previews = Dictionary(previews.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// The previews that hold a slot: not destroyed, and applied or being applied (asleep too:
    /// a sleeping preview keeps its databases).
    public static func load(_ state: StateStore, now: Date) throws -> Usage {
        let previews = try state.environments().filter { $0.envClass == EnvironmentClass.preview.rawValue
            && ($0.appliedCommit != nil || $0.conditions.contains(.applying)) }
            .map { Preview(name: $0.name, branch: $0.branch, team: $0.team, agent: $0.agent) }
        // (A ledger that cannot be read counts as nothing spent for this pass: the pass that
        // follows reads it again.)
        return Usage(previews: previews) { (try? Spending.load(state, now: now)) ?? Spending(now: now) }
    }

    public func note(_ preview: Preview) { lock.withLock { previews[preview.name] = preview } }

    func previews(where matches: (Preview) -> Bool, except name: String) -> [Preview] {
        lock.withLock { previews.values.filter { $0.name != name && matches($0) }.sorted { $0.name < $1.name } }
    }
}

extension Admission {
    /// The environment's cost under `pricing`, for the policies' `cost` and the budget rules.
    /// `hourly`: the most it may cost (an autoscaled service at its max); `initial`: what it
    /// costs as first applied; `items`: the most, item by item.
    static func costValue(_ cost: CostBreakdown, initial: CostBreakdown) -> CELValue {
        .map(PolicyInput.map([("hourly", .double(cost.hourly)), ("initial", .double(initial.hourly)),
                              ("items", .map(PolicyInput.map(cost.lines.map { ($0.item, .double($0.hourly)) })))]))
    }

    /// The policies' `budget`: the spec's `hourly`, and each team and agent budget's period,
    /// limit, spent, remaining and projection.
    static func budgetValue(spec: EnvironmentSpec, team: [BudgetStatus], agent: [BudgetStatus]) -> CELValue {
        func scope(_ statuses: [BudgetStatus]) -> CELValue {
            .map(PolicyInput.map(statuses.map { status in
                (status.period.rawValue, .map(PolicyInput.map([("limit", .double(status.limit)), ("spent", .double(status.spent)),
                                                                ("remaining", .double(status.remaining)), ("projected", .double(status.projected)),
                                                                ("period", .string(status.label))])))
            }))
        }
        return .map(PolicyInput.map([("hourly", spec.budget?.hourly.map { .double($0) } ?? .null),
                                     ("team", scope(team)), ("agent", scope(agent))]))
    }

    /// `spec.budget.hourly`, the team's and the agent's budgets, and the preview caps.
    /// Production is only told (a budget never denies or pauses it); a preview beyond a cap, or
    /// any other environment whose spend to the period's end would pass what is left, is denied.
    /// `movesToAgent`: a running preview another agent changes becomes that agent's (its slot with it).
    func budgetRules(spec: EnvironmentSpec, cost: CostBreakdown, agent: String?, chargedTeam: String?, isNew: Bool, movesToAgent: Bool = false,
                     movesToTeam: Bool = false,
                     team: [BudgetStatus],
                     agentStatus: [BudgetStatus], context: Context) -> (rules: [String], remedies: [String]) {
        var rules: [String] = []
        var remedies: [String] = []
        let money = CostModel.format
        let settings = context.settings
        let items = cost.lines.filter { $0.hourly > 0 }.map { "\($0.item) \(money($0.hourly))" }.joined(separator: ", ")
        if let ceiling = spec.budget?.hourly {
            let most = spec.services.contains { $0.autoscale != nil } ? " at most (autoscaled services at their max)" : ""
            if cost.hourly > ceiling + 1e-9 {
                rules.append("budget: \(spec.name) costs \(money(cost.hourly))/h\(most) (\(items)), over its spec.budget.hourly of \(money(ceiling))")
                remedies.append("lower the replicas or resources of \(spec.name) to at most \(money(ceiling))/h (`gantry cost --env \(spec.name)` shows the breakdown), or raise spec.budget.hourly")
            } else {
                rules.append("budget: \(spec.name) costs \(money(cost.hourly))/h, within its spec.budget.hourly of \(money(ceiling)): ok")
            }
        }
        let isProduction = spec.class == .production
        for status in team + agentStatus {
            let more = cost.hourly * status.hoursLeft
            let over = status.exhausted || more > status.remaining + 1e-9
            let figures = "spent \(money(status.spent)) of \(money(status.limit)); \(spec.name) would spend \(money(more)) more by the period's end (\(money(cost.hourly))/h × \(String(format: "%.1f", status.hoursLeft)) h), \(money(max(0, status.remaining))) is left"
            if !over {
                rules.append("budget: \(status.title): \(figures): ok")
            } else if isProduction {
                rules.append("budget: \(status.title): \(figures): over, but production is alerted, never denied or paused by a budget")
            } else {
                rules.append("budget: \(status.title): \(figures)\(status.exhausted ? "; the budget is spent" : "")")
                remedies.append("wait for the \(status.period.rawValue) period after \(status.label), lower the cost of \(spec.name), free budget by destroying other environments of \(status.scope) \(status.name) (`gantry budget` lists them), or have an admin raise budgets.\(status.scope)s.\(status.name).\(status.period.rawValue) on \(context.protectedBranch)")
            }
        }
        guard spec.class == .preview, isNew || movesToAgent || movesToTeam else { return (rules, remedies) }
        let usage = context.usage
        if isNew || movesToTeam, let cap = settings.previews.maxPerTeam, let team = chargedTeam {
            let held = usage.previews(where: { $0.team == team }, except: spec.name)
            if held.count >= cap {
                rules.append("previews: team \(team) already runs \(held.count) previews, its cap (previews.maxPerTeam \(cap)): \(Self.listing(held))")
                remedies.append("free a slot: merge or delete the branch of one of team \(team)'s previews (or `DELETE /v1/environments/NAME` for one the API made), or have an admin raise previews.maxPerTeam on \(context.protectedBranch)")
            } else {
                rules.append("previews: team \(team) runs \(held.count) of at most \(cap): ok")
            }
        }
        if isNew || movesToAgent, let cap = settings.previews.maxPerAgent, let agent {
            let held = usage.previews(where: { $0.agent == agent }, except: spec.name)
            if held.count >= cap {
                rules.append("previews: agent \(agent) already runs \(held.count) previews, its cap (previews.maxPerAgent \(cap)): \(Self.listing(held))")
                remedies.append("free a slot: merge or delete the branch of one of \(agent)'s previews (or `DELETE /v1/environments/NAME` for one the API made), or have an admin raise previews.maxPerAgent on \(context.protectedBranch)")
            } else {
                rules.append("previews: agent \(agent) runs \(held.count) of at most \(cap): ok")
            }
        }
        return (rules, remedies)
    }

    static func listing(_ previews: [Usage.Preview]) -> String {
        let shown = previews.prefix(20).map { "\($0.name) (branch \($0.branch))" }.joined(separator: ", ")
        return shown + (previews.count > 20 ? ", and \(previews.count - 20) more" : "")
    }
}

/// A server several environments share on the host (the local driver's PostgreSQL), and what
/// running one per environment instead would cost more.
public struct SharedServer: Sendable, Equatable {
    public let name: String
    /// Environments that use it.
    public let environments: Int
    /// Its resident memory now, in bytes (measured).
    public let memory: Int
    public init(name: String, environments: Int, memory: Int) {
        self.name = name
        self.environments = environments
        self.memory = memory
    }

    /// One server per environment would run `environments - 1` more, each needing at least this
    /// one's memory: priced with `memoryGiBHour`.
    public func savedHourly(pricing: [String: Double]) -> Double {
        Double(max(0, environments - 1)) * Double(memory) / Double(1 << 30) * (pricing["memoryGiBHour"] ?? 0)
    }
}

/// `gantry budget` and `GET /v1/budgets`: every budget in its period, what runs and costs now,
/// and what sharing saves.
public struct BudgetReport: Sendable {
    public struct Running: Sendable, Equatable {
        public let name: String
        public let team: String?
        public let agent: String?
        public let envClass: String
        public let hourly: Double
        public let asleep: Bool
    }

    public let now: Date
    public let budgets: [BudgetStatus]
    public let environments: [Running]
    public let shared: [SharedServer]
    public let pricing: [String: Double]

    public init(now: Date, budgets: [BudgetStatus], environments: [Running], shared: [SharedServer], pricing: [String: Double]) {
        self.now = now
        self.budgets = budgets
        self.environments = environments
        self.shared = shared
        self.pricing = pricing
    }

    public static func build(_ state: StateStore, settings: Settings, shared: [SharedServer], now: Date = Date()) throws -> BudgetReport {
        let spending = try Spending.load(state, now: now)
        let sleeping = try state.lifecycleStates()
        let meters = Dictionary(try state.meters().map { ($0.environment, $0.hourly) }, uniquingKeysWith: { a, _ in a })
        let running = try state.environments().filter { $0.appliedCommit != nil }.map {
            Running(name: $0.name, team: $0.team, agent: $0.agent, envClass: $0.envClass, hourly: meters[$0.name] ?? 0, asleep: sleeping[$0.name] != nil)
        }
        return BudgetReport(now: now, budgets: spending.statuses(settings.budgets), environments: running, shared: shared, pricing: settings.pricing)
    }

    public var plain: PlainValue {
        let money = { (value: Double) in PlainValue.double((value * 10_000).rounded() / 10_000) }
        let budgets: [PlainValue] = self.budgets.map { status in
            let top: [PlainValue] = status.top.map { PlainValue.map([("environment", .string($0.environment)), ("amount", money($0.amount))]) }
            let fraction = status.fraction.isFinite ? (status.fraction * 1000).rounded() / 1000 : 1
            var fields: [(key: String, value: PlainValue)] = [("scope", .string(status.scope)), ("name", .string(status.name))]
            fields += [("period", .string(status.period.rawValue)), ("label", .string(status.label))]
            fields += [("limit", money(status.limit)), ("spent", money(status.spent)), ("remaining", money(status.remaining))]
            fields += [("hourly", money(status.hourly)), ("projected", money(status.projected)), ("fraction", .double(fraction))]
            fields += [("exhausted", .bool(status.exhausted)), ("top", .list(top))]
            return PlainValue.map(fields)
        }
        let environments: [PlainValue] = self.environments.map {
            .map([("name", .string($0.name)), ("team", $0.team.map { .string($0) } ?? .null), ("agent", $0.agent.map { .string($0) } ?? .null),
                  ("class", .string($0.envClass)), ("hourly", money($0.hourly)), ("asleep", .bool($0.asleep))])
        }
        let shared: [PlainValue] = self.shared.map {
            .map([("server", .string($0.name)), ("environments", .int($0.environments)), ("memoryBytes", .int($0.memory)),
                  ("savedHourly", money($0.savedHourly(pricing: pricing))), ("savedMonthly", money($0.savedHourly(pricing: pricing) * 730))])
        }
        return .map([("at", .string(ISO8601DateFormatter().string(from: now))), ("budgets", .list(budgets)),
                     ("environments", .list(environments)), ("hourly", money(self.environments.reduce(0) { $0 + $1.hourly })),
                     ("sharing", .list(shared))])
    }

    /// The report as lines for a terminal.
    public var lines: [String] {
        let money = CostModel.format
        var lines: [String] = []
        if budgets.isEmpty { lines.append("no budgets apply (budgets.teams / budgets.agents in gantry.yaml set them)") }
        for status in budgets {
            let percent = status.fraction.isFinite ? "\(Int((status.fraction * 100).rounded()))%" : "spent"
            lines.append("\(status.title): spent \(money(status.spent)) of \(money(status.limit)) (\(percent)), now \(money(status.hourly))/h, projected \(money(status.projected))\(status.exhausted ? " — SPENT: its previews are paused, new ones denied" : status.projected > status.limit ? " — projected over" : "")")
            for top in status.top { lines.append("    \(top.environment): \(money(top.amount))") }
        }
        let total = environments.reduce(0) { $0 + $1.hourly }
        lines.append("running now: \(environments.count) environments, \(money(total))/h (\(environments.filter(\.asleep).count) asleep)")
        for environment in environments.sorted(by: { $0.hourly > $1.hourly }).prefix(10) {
            lines.append("    \(environment.name) (\(environment.envClass), team \(environment.team ?? "none")\(environment.agent.map { ", agent \($0)" } ?? "")): \(money(environment.hourly))/h\(environment.asleep ? " asleep" : "")")
        }
        for server in shared {
            let saved = server.savedHourly(pricing: pricing)
            lines.append("sharing: one \(server.name) server (\(server.memory >> 20) MiB) serves \(server.environments) environments; one per environment would cost about \(money(saved))/h (\(money(saved * 730))/month) more")
        }
        return lines
    }
}
