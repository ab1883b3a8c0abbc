import Foundation
import Reconciler
import StateStore
import Testing
import TestSupport

/// The summary `status`, `diagnose` and the API read: the phase follows the conditions, what is
/// observed now is folded in, and every condition says what would move the environment on.
@Suite(.serialized) struct EnvironmentSummaryTests {
    func summary(_ loop: Loop, _ name: String, routerPort: Int? = 8080) throws -> EnvironmentSummary? {
        try EnvironmentSummary.read(loop.state, observer: loop.driver, routerPort: routerPort, only: name).first
    }

    @Test func eachPhaseSaysWhyAndWhatWouldMoveItOn() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let loop = try Loop(repo: repo) { $0.retryBackoff = 60 }
        try loop.pass()

        // Running and healthy: no condition, nothing to do; routes go through the router.
        let web = try #require(try summary(loop, "web"))
        #expect(web.phase == .running && web.conditions.isEmpty && web.nextSteps.isEmpty)
        #expect(web.services.map(\.name) == ["web"] && web.services.allSatisfy { $0.phase == "Running" })
        #expect(web.routes.first?.url == "http://www.web.localhost:8080")
        // Without a router, a route has no URL to give (not one on a port nobody listens on).
        #expect(try summary(loop, "web", routerPort: nil)?.routes.first?.url == nil)

        // A service whose process is gone: still Running (the revision is applied), and Unhealthy.
        loop.driver.stop("web", of: "web")
        let unhealthy = try #require(try summary(loop, "web"))
        #expect(unhealthy.phase == .running && unhealthy.conditions == [.unhealthy])
        #expect(unhealthy.nextSteps.first?.contains("not serving: web (Stopped)") == true, "\(unhealthy.nextSteps)")

        // Denied (no signature): nothing ever ran, so the phase is Denied; explain names the commit.
        try repo.checkout("agents/unsigned", create: true)
        try repo.writeWeb(service: "{env: {GREETING: unsigned}}")
        try repo.git("-c", "commit.gpgsign=false", "commit", "-q", "-am", "No signature")
        let unsigned = try repo.git("rev-parse", "HEAD")
        try repo.checkout("main")
        try loop.pass()
        let denied = try #require(try summary(loop, "web--agents-unsigned"))
        #expect(denied.phase == .denied && denied.conditions == [.admissionDenied])
        #expect(denied.nextSteps == ["`gantry explain \(unsigned.prefix(12))` gives every rule's result and what would satisfy it; push a commit that satisfies them"])

        // A failed apply, retried later: Failed, with when.
        loop.driver.fail("web--agents-flaky")
        try loop.pushPreview("agents/flaky")
        try loop.pass()
        let failed = try #require(try summary(loop, "web--agents-flaky"))
        #expect(failed.phase == .failed && failed.conditions == [.applyFailed])
        #expect(failed.nextSteps.first?.contains("the apply is retried at") == true && failed.nextSteps.first?.contains("(attempt 2)") == true,
                "\(failed.nextSteps)")

        // A production change by an agent waits for a human; the revision before keeps running.
        try repo.writeWeb(service: "{env: {GREETING: changed}}")
        let change = try repo.commit("Change production\n\nAgent: claude-code")
        try loop.pass()
        let waiting = try #require(try summary(loop, "web"))
        #expect(waiting.phase == .pendingApproval && waiting.conditions.contains(.approvalPending))
        #expect(waiting.record.appliedCommit != change)
        #expect(waiting.nextSteps.contains { $0.hasPrefix("a human with the approving role signs an approval: `gantry approve \(change.prefix(12))") },
                "\(waiting.nextSteps)")

        // Torn down: Destroyed, kept as history only when asked for.
        try repo.git("branch", "-D", "agents/flaky")
        try loop.pass()
        #expect(try summary(loop, "web--agents-flaky")?.phase == .destroyed)
        let listed = try EnvironmentSummary.read(loop.state, observer: loop.driver, routerPort: nil).map(\.name)
        #expect(!listed.contains("web--agents-flaky") && listed.contains("web"))

        // The JSON form carries the same facts, and the steps.
        let json = failed.plain.json()
        #expect(json.contains("\"phase\":\"Failed\"") && json.contains("\"conditions\":[\"ApplyFailed\"]") && json.contains("\"next\":[\"the apply is retried"), "\(json)")
    }
}
