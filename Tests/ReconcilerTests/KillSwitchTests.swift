import Foundation
@testable import Reconciler
import StateStore
import Testing
import TestSupport

/// The kill switch's reach and what it holds: applies and teardowns of the environments it covers
/// wait, with the reason, until it is lifted; others go on.
@Suite(.serialized) struct KillSwitchTests {
    @Test func coverageFollowsScopeTeamAndMain() {
        let switches = [KillSwitch(scope: .team, name: "payments", actor: "op", reason: "leak", since: Date()),
                        KillSwitch(scope: .env, name: "solo", actor: "alice", reason: "", since: Date()),
                        KillSwitch(scope: .all, name: "", on: false, actor: "alice", reason: "lifted", since: Date())]
        let environments: [(name: String, team: String?)] = [("web", "payments"), ("status", "platform"), ("solo", nil), ("web--x", "payments")]
        let covered = KillSwitchBoard.coverage(switches: switches, onMain: false, environments: environments)
        #expect(Set(covered.keys) == ["web", "solo", "web--x"])
        #expect(covered["web"]?.contains("team payments") == true && covered["web"]?.contains("op: leak") == true)
        let all = KillSwitchBoard.coverage(switches: [], onMain: true, environments: environments)
        #expect(all.count == 4 && all["status"]?.contains("gantry.yaml") == true)
    }

    @Test func anApplyAndATeardownWaitUntilTheSwitchIsLifted() throws {
        let loop = try Loop.seeded { $0.retryBackoff = 0.2 }
        loop.reconciler.killSwitches.set(["web--agents-frozen": "kill switch env web--agents-frozen"])
        try loop.pushPreview("agents/frozen")
        try loop.pushPreview("agents/free")
        try loop.pass()
        let held = try #require(try loop.state.environment("web--agents-frozen"))
        #expect(held.phase == .failed && held.message?.contains("held by the kill switch") == true, "\(held.message ?? "")")
        #expect(!loop.driver.finished.contains { $0.environment == "web--agents-frozen" && $0.kind == "apply" })
        #expect(try loop.state.environment("web--agents-free")?.phase == .running)
        // Lifted: the next attempt applies it.
        loop.reconciler.killSwitches.set([:])
        Thread.sleep(forTimeInterval: 0.25)
        try loop.pass()
        #expect(try loop.state.environment("web--agents-frozen")?.phase == .running, "\(loop.trail())")
        // A teardown waits too.
        loop.reconciler.killSwitches.set(["web--agents-frozen": "kill switch all"])
        try loop.repo.git("branch", "-D", "agents/frozen")
        try loop.pass()
        #expect(!loop.driver.finished.contains { $0.environment == "web--agents-frozen" && $0.kind == "destroy" })
        #expect(try loop.state.environment("web--agents-frozen")?.phase != .destroyed)
        loop.reconciler.killSwitches.set([:])
        #expect(eventually(10) { (try? loop.pass()) != nil && (try? loop.state.environment("web--agents-frozen"))??.phase == .destroyed }, "\(loop.trail())")
    }
}
