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
        _ = try store.issuePlan(environment: "shop", action: "apply") { _ in Data("{}".utf8) }
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
        #expect(try switchesPlans().last?.killSwitches?.keys.sorted() == ["shop"])
        // No word from the agent since: nothing is sent again (an agent away gets it when it reports).
        _ = driver.supervise(correct: true)
        #expect(try switchesPlans().count == 2)
        // The agent reports it enforces nothing (it refused the plan as stale): sent again, fresh.
        Thread.sleep(forTimeInterval: 0.01)
        try store.setDataPlaneHealth(#"{"switches":{}}"#)
        _ = driver.supervise(correct: true)
        let plans = try switchesPlans()
        #expect(plans.count == 3 && plans.last?.killSwitches?.keys.sorted() == ["shop"] && plans[2].sequence > plans[1].sequence)
        // It enforces them: nothing more.
        Thread.sleep(forTimeInterval: 0.01)
        try store.setDataPlaneHealth(#"{"switches":{"shop":"kill switch env shop"}}"#)
        _ = driver.supervise(correct: true)
        _ = driver.supervise(correct: true)
        #expect(try switchesPlans().count == 3)
    }
}

extension PlanVerifier {
    /// A plan's contents without judging it (the test reads what the control plane issued).
    func decodeUnverified(_ envelope: PlanEnvelope) throws -> Plan { try Plan.decode(Data(base64Encoded: envelope.plan)!) }
}
