import Audit
@testable import DataPlane
import Foundation
import Logging
import Reconciler
import StateStore
import Testing
import TestSupport

/// The control plane's side: kill switches reach the data plane, and are sent again, fresh, until
/// the agent's health shows it enforces them (a plan refused as stale, lost or reordered on the way).
@Suite struct AgentDriverTests {
    @Test func switchesAreSentAgainUntilTheAgentEnforcesThem() throws {
        let directory = TemporaryDirectory("gantry-agent-driver")
        let store = try StateStore(path: directory.path + "/gantry.db")
        let driver = AgentDriver(state: store, key: SigningKey(), logger: Logger(label: "test"))
        driver.switchesResend = 0
        try store.save(EnvironmentRecord(name: "shop", branch: "main", commit: String(repeating: "a", count: 40), envClass: "production", team: "payments"))
        // Held by the data plane (its apply was issued).
        try store.setInventory(["environment"], of: "shop", driver: AgentDriver.name)
        #expect(driver.holds(environment: "shop") && !driver.holds(environment: "other"))
        func switchesPlans() throws -> [Plan] {
            try store.plans(after: 0).filter { $0.action == "switches" }.map { plan in
                let envelope = try JSONDecoder().decode(PlanEnvelope.self, from: plan.envelope)
                return try PlanVerifier(trusted: SigningKey().publicKey).decodeUnverified(envelope)
            }
        }
        _ = driver.supervise(correct: true)
        #expect(try switchesPlans().map { $0.killSwitches ?? [:] } == [[:]], "the first pass says what is in force: nothing")
        _ = try store.setKillSwitch(.env, name: "shop", on: true, actor: "alice@example.com", reason: "drill")
        _ = driver.supervise(correct: true)
        // (A newer switches plan supersedes one not yet carried out: one waits, not a backlog.)
        let sent = try #require(try switchesPlans().last)
        #expect(try switchesPlans().count == 1 && sent.killSwitches?.keys.sorted() == ["shop"])
        // No word from the agent since: nothing is sent again (an agent away gets it when it reports).
        _ = driver.supervise(correct: true)
        #expect(try switchesPlans().last?.sequence == sent.sequence)
        // The agent reports it enforces nothing (it refused the plan as stale): sent again, fresh.
        Thread.sleep(forTimeInterval: 0.01)
        try store.setDataPlaneHealth(#"{"switches":{}}"#)
        _ = driver.supervise(correct: true)
        let again = try #require(try switchesPlans().last)
        #expect(again.sequence > sent.sequence && again.killSwitches?.keys.sorted() == ["shop"])
        // It enforces them: nothing more.
        Thread.sleep(forTimeInterval: 0.01)
        try store.setDataPlaneHealth(#"{"switches":{"shop":"kill switch env shop"}}"#)
        _ = driver.supervise(correct: true)
        _ = driver.supervise(correct: true)
        #expect(try switchesPlans().last?.sequence == again.sequence)
    }

    /// A day on, the plans that ran are pruned; what the data plane holds is not forgotten with them.
    @Test func whatTheDataPlaneHoldsOutlivesItsPlans() throws {
        let directory = TemporaryDirectory("gantry-agent-driver")
        let store = try StateStore(path: directory.path + "/gantry.db")
        let driver = AgentDriver(state: store, key: SigningKey(), logger: Logger(label: "test"))
        try store.setInventory(["environment"], of: "shop", driver: AgentDriver.name)
        let old = try store.issuePlan(environment: "shop", action: "apply", at: Date().addingTimeInterval(-3 * 86_400)) { _ in Data("{}".utf8) }
        try store.addReport(sequence: old, environment: "shop", ok: true, body: "{}")
        _ = try store.issuePlan(environment: "", action: "switches") { _ in Data("{}".utf8) }
        #expect(try store.plans(after: 0).allSatisfy { $0.sequence != old }, "pruned")
        #expect(driver.holds(environment: "shop"))
    }

    @Test func anEnvironmentsNewPlanSupersedesItsUnreportedOnes() throws {
        let directory = TemporaryDirectory("gantry-agent-driver")
        let store = try StateStore(path: directory.path + "/gantry.db")
        let first = try store.issuePlan(environment: "shop", action: "apply") { _ in Data("{}".utf8) }
        try store.addReport(sequence: first, environment: "shop", ok: false, body: "{}")
        let second = try store.issuePlan(environment: "shop", action: "apply") { _ in Data("{}".utf8) }
        let other = try store.issuePlan(environment: "web", action: "apply") { _ in Data("{}".utf8) }
        let third = try store.issuePlan(environment: "shop", action: "destroy") { _ in Data("{}".utf8) }
        #expect(try store.plans(after: 0).map(\.sequence) == [first, other, third], "the reported one stays; the unreported second is superseded")
        #expect(second < third)
    }
}

extension PlanVerifier {
    /// A plan's contents without judging it (the test reads what the control plane issued).
    func decodeUnverified(_ envelope: PlanEnvelope) throws -> Plan { try Plan.decode(Data(base64Encoded: envelope.plan)!) }
}
