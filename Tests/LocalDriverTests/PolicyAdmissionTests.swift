import Foundation
import Testing
import TestSupport
@testable import Reconciler
import StateStore

/// Policies read from main only, on real repositories.
@Suite(.serialized) struct PolicyAdmissionTests {
    /// A branch whose web environment runs 3 replicas: example-repo's preview-limits denies it.
    func greedyBranch(_ repo: TestRepository, _ name: String) throws {
        try repo.checkout("main")
        try repo.checkout(name, create: true)
        try repo.writeWeb(service: "{replicas: 3}")
    }

    @Test func aPolicyOnMainDeniesAPreview() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        try greedyBranch(repo, "greedy")
        try repo.commit("three replicas")
        let summary = try harness.pass()
        #expect(summary.denied == ["web--greedy"])
        let denial = try #require(try harness.records().last { $0.event == "denied" })
        #expect(denial.values("rule").contains("policy preview-limits: fail: a preview may run at most 2 replicas of a service"))
        #expect(denial.values("rule").contains("signature: ok (agent@example.com)"))
        #expect(try harness.service("web--greedy") == nil)
        // One replica to start, autoscaled up to 5: the policy reads autoscale.max too.
        try repo.checkout("main")
        try repo.checkout("scaly", create: true)
        try repo.writeWeb(service: "{replicas: 1, autoscale: {min: 1, max: 5}}")
        try repo.commit("one replica, up to five")
        #expect(try harness.pass().denied == ["web--scaly"])
    }

    @Test func aBranchThatDeletesThePolicyIsStillJudgedByMain() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        try greedyBranch(repo, "lawless")
        try repo.remove("policies/preview-limits.yaml")
        try repo.commit("no more limits")
        #expect(try harness.pass().denied == ["web--lawless"])
    }

    @Test func aBrokenPolicyOnMainIsDeniedWithItsPositionAndThePreviousPoliciesStayInForce() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        // Even the owner (a human admin) cannot bring a policy that does not parse into force.
        try repo.write("policies/broken.yaml", """
            apiVersion: gantry/v1
            kind: Policy
            metadata: {name: broken}
            spec:
              action: deny
              rules:
                - expr: "env.spec.services.all(s, "
                  message: "never parses"
            """)
        let broken = try repo.commitAsOwner("a policy with a syntax error")
        let summary = try harness.pass()
        #expect(summary.blocked == broken)
        let denial = try #require(try harness.records().last { $0.event == "denied" && $0.value("scope") == "governance" })
        #expect(denial.value("commit") == broken)
        #expect(denial.values("rule").contains { $0.contains("policies/broken.yaml:7:13: rule 1 of policy broken does not parse (at 1:26: unexpected end of expression)") }, "\(denial.values("rule"))")
        // Branches are still judged, by the policies of the last admitted revision.
        try greedyBranch(repo, "greedy")
        try repo.commit("greedy")
        #expect(try harness.pass().denied == ["web--greedy"])
        let verdict = try #require(try harness.records().last { $0.event == "denied" && $0.value("environment") == "web--greedy" })
        #expect(verdict.values("rule").contains("policy preview-limits: fail: a preview may run at most 2 replicas of a service"))
        #expect(!verdict.values("rule").contains { $0.contains("broken") })
    }

    @Test func aWarningPolicyAdmitsWithTheWarningRecorded() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("policies/ticket.yaml", """
            apiVersion: gantry/v1
            kind: Policy
            metadata: {name: needs-ticket}
            spec:
              match: "!branch.protected"
              action: warn
              rules:
                - {expr: "task != null", message: "changes should name a Task: trailer"}
            """)
        try repo.commit("warn about missing tasks")
        let harness = try Harness(repo: repo)
        try harness.pass()
        try repo.checkout("no-task", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("touch without a task")
        let summary = try harness.pass()
        #expect(summary.applied.sorted() == ["status-page--no-task", "web--no-task"])
        let admitted = try #require(try harness.records().last { $0.event == "admitted" })
        #expect(admitted.values("rule").contains("policy needs-ticket: warn: changes should name a Task: trailer"))
        #expect(admitted.values("rule").contains("policy preview-limits: pass"))
    }

    @Test func aPolicyThatLoopsOverAHugeListEndsAndFailsClosed() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let ten = "[0,1,2,3,4,5,6,7,8,9]"
        try repo.write("policies/hostile.yaml", """
            apiVersion: gantry/v1
            kind: Policy
            metadata: {name: hostile}
            spec:
              action: deny
              rules:
                - expr: "\(ten).all(a, \(ten).all(b, \(ten).all(c, \(ten).all(d, \(ten).all(e, \(ten).all(f, a + b + c + d + e + f >= 0))))))"
                  message: "a million iterations"
            """)
        try repo.commit("a policy that would run for a long time")
        let harness = try Harness(repo: repo)
        let start = Date()
        let summary = try harness.pass()
        #expect(Date().timeIntervalSince(start) < 30)
        // Fail closed: the live environments are denied (they never started), with the reason.
        #expect(summary.denied.sorted() == ["status-page", "web"])
        let denial = try #require(try harness.records().last { $0.event == "denied" })
        #expect(denial.values("rule").contains { $0.contains("policy hostile: fail: a million iterations (evaluation error, fails closed: evaluation cost limit of 100000 exceeded)") })
    }
}
