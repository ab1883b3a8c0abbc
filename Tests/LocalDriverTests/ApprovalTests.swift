import Audit
import Foundation
import GitStore
import Governance
import Testing
import TestSupport
@testable import Reconciler
import StateStore

/// Human approval for production, on real repositories with real keys.
@Suite(.serialized) struct ApprovalTests {
    func setUp() throws -> (TestRepository, TestRepository, Harness) { try seededWithAlice() }

    /// An agent's branch changing production's greeting, merged into main (signed by `mergeSigner` if given).
    func changeWebOnABranchAndMerge(_ repo: TestRepository, greeting: String, mergeSigner: TestRepository? = nil) throws -> String {
        try repo.checkout("main")
        try repo.checkout("change-\(greeting)", create: true)
        try repo.writeWeb(service: "{env: {GREETING: \"\(greeting) from ${env.name}\"}}")
        try repo.commit("greeting \(greeting)")
        try repo.checkout("main")
        if let mergeSigner { try repo.git("config", "user.signingkey", mergeSigner.keyPath) }
        try repo.git("merge", "-q", "--no-ff", "-m", "Merge \(greeting)", "change-\(greeting)")
        try repo.git("config", "user.signingkey", repo.keyPath)
        return try repo.git("rev-parse", "HEAD")
    }

    @Test func productionWaitsForAHumanApprovalOfThatExactCommit() throws {
        let (repo, alice, harness) = try setUp()
        let merge = try changeWebOnABranchAndMerge(repo, greeting: "howdy")
        let summary = try harness.pass()
        let tail = try harness.records().suffix(3).map(\.signedText)
        #expect(summary.pending == ["web"], "\(summary) \(tail)")
        let pending = try #require(try harness.records().last { $0.event == "pending-approval" })
        #expect(pending.value("decision") == "pending")
        #expect(pending.values("rule").contains { $0.hasPrefix("approval: needs 1 approval of this exact commit by a human with role approver") })
        #expect(pending.values("rule").prefix(2) == ["signature: ok (agent@example.com)", "spec: valid"])
        #expect(try harness.environment("web")?.conditions == [.approvalPending])
        #expect(try harness.get("web")?.contains("hello from web") == true, "\(harness.diagnose("web"))")

        // An approval of another commit does not count.
        try approve(try repo.git("rev-parse", "HEAD~1"), as: alice, in: repo)
        #expect(try harness.pass().pending == ["web"])

        // Alice approves the merge: the next pass converges.
        try approve(merge, as: alice, in: repo)
        let approved = try harness.pass()
        #expect(approved.applied == ["web"])
        #expect(try harness.get("web")?.contains("howdy from web") == true)
        let admitted = try #require(try harness.records().last { $0.event == "admitted" && $0.value("environment") == "web" })
        #expect(admitted.values("rule").contains("approval: ok (alice@example.com)"))

        // The approval binds to that commit: the next change waits again.
        _ = try changeWebOnABranchAndMerge(repo, greeting: "hi")
        #expect(try harness.pass().pending == ["web"])
        #expect(try harness.get("web")?.contains("howdy from web") == true)
    }

    @Test func aMergeSignedByTheApproverApproves() throws {
        let (repo, alice, harness) = try setUp()
        _ = try changeWebOnABranchAndMerge(repo, greeting: "merged", mergeSigner: alice)
        #expect(try harness.pass().pending.isEmpty)
        #expect(try harness.get("web")?.contains("merged from web") == true)
    }

    @Test func selfApprovalAndAgentApprovalDoNotCount() throws {
        let (repo, alice, harness) = try setUp()
        // Alice writes and signs the change herself, then approves it.
        try repo.git("config", "user.signingkey", alice.keyPath)
        let spec = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
        try repo.write("environments/web.yaml", spec.replacingOccurrences(of: "template: python-web", with: "template: python-web\n  lifecycle: {ttl: 1h}"))
        let own = try repo.commit("alice changes production alone")
        try approve(own, as: alice, in: repo)
        // And the agent approves too.
        try approve(own, as: repo, in: repo)
        #expect(try harness.pass().pending == ["web"])
        let pending = try #require(try harness.records().last { $0.event == "pending-approval" })
        #expect(pending.values("rule").contains { $0.contains("alice@example.com (gantry approve) authored, committed, signed or was On-Behalf-Of in the approved changes") })
        #expect(pending.values("rule").contains { $0.contains("agent@example.com (gantry approve) is an agent") })
    }
}
