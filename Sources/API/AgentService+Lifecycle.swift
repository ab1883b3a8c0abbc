import Foundation
import Reconciler
import SpecLoading
import StateStore
#if canImport(Glibc)
import Glibc
#endif

extension AgentService {
    /// Puts an environment to sleep or wakes it (`action` is `sleep` or `wake`): asked of the
    /// running `gantry run` through the state DB, then waited for. Whoever may see inside the
    /// environment may; production only by a human with the production approval role (an agent
    /// never sleeps production).
    public func lifecycle(_ caller: Caller, _ name: String, action: String) throws -> PlainValue {
        let record = try inspectable(caller, name)
        if record.envClass == "production" {
            let role = try trustedGovernance().settings.approvals["production"]?.role ?? "approver"
            guard caller.actor.kind == .human, caller.actor.roles.contains(role) else {
                throw APIError.forbidden("\(record.name) is production: \(caller.actor.kind == .agent ? "an agent never puts it to sleep or wakes it" : "only humans with role \(role) do")",
                                         fix: "a human with role \(role) runs `gantry \(action) \(record.name)`")
            }
        }
        if let why = killSwitch(record) {
            throw APIError.conflict("\(record.name) is frozen by the \(why): it is not put to sleep or woken meanwhile",
                                    fix: "a human with a role lifts the switch (POST /v1/kill with \"on\": false)")
        }
        guard record.phase == .running, !record.conditions.contains(.destroying) else {
            throw APIError.conflict("\(record.name) is \(record.phase.rawValue), not running: nothing to \(action)",
                                    fix: "wait until it is Running (GET /v1/environments/\(record.name))")
        }
        let current = try store.lifecycleState(of: record.name)
        if action == "wake", current?.state == .paused {
            throw APIError.conflict("\(record.name) is paused: \(current!.reason)",
                                    fix: "wait for the budget's next period, or have an admin raise the budget on the protected branch (GET /v1/budgets)")
        }
        let done = { (state: LifecycleState?) in action == "sleep" ? state != nil : state == nil }
        if !done(current) {
            try store.requestLifecycle(record.name, action: action, actor: caller.principal)
            if let wakeReconciler { wakeReconciler() } else { try signalRunningGantry() }
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline, !done(try store.lifecycleState(of: record.name)) { usleep(25_000) }
            guard done(try store.lifecycleState(of: record.name)) else {
                throw APIError.conflict("\(record.name) did not \(action) within 60 s", fix: "GET /v1/environments/\(record.name)/diagnose shows its history")
            }
        }
        return try environment(caller, record.name)
    }

    /// `gantry api` beside a `gantry run`: the request is the run's to do.
    private func signalRunningGantry() throws {
        guard signalRunning(SIGUSR1) else {
            throw APIError.conflict("no `gantry run` runs for this state directory: it is the one that puts environments to sleep and wakes them",
                                    fix: "start `gantry run`")
        }
    }

    /// Spend against budgets. An admin sees every budget and environment; anyone else the
    /// budgets of their teams and their own, and the environments they may see inside.
    public func budgets(_ caller: Caller) throws -> PlainValue {
        let governance = try trustedGovernance()
        let report = try BudgetReport.build(store, settings: governance.settings, shared: sharedServers())
        guard !caller.isAdmin else { return report.plain }
        let records = Dictionary(try store.environments().map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let visible = Set(records.values.filter { mayInspect(caller, $0) }.map(\.name))
        let filtered = BudgetReport(
            now: report.now,
            budgets: report.budgets.filter { ($0.scope == "team" && caller.actor.teams.contains($0.name)) || ($0.scope == "agent" && $0.name == caller.principal) }
                .map { status in
                    BudgetStatus(scope: status.scope, name: status.name, period: status.period, label: status.label, limit: status.limit, spent: status.spent,
                                 hourly: status.hourly, hoursLeft: status.hoursLeft, top: status.top.filter { visible.contains($0.environment) })
                },
            environments: report.environments.filter { visible.contains($0.name) }, shared: report.shared, pricing: report.pricing)
        return filtered.plain
    }
}
