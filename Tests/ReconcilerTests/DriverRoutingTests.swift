import Foundation
@testable import Reconciler
import SpecModel
import StateStore
import Testing
import TestSupport

/// gantry.yaml's `drivers` on the protected branch choose where an environment runs; a branch
/// cannot choose for itself; a move applies on the new driver, then removes from the old one.
@Suite(.serialized) struct DriverRoutingTests {
    @Test func theProtectedBranchChoosesTheDriverAndABranchCannot() throws {
        let repo = try TestRepository()
        try repo.seedExample(previews: "{ttl: 72h, idleSleepAfter: 30m, maxPerTeam: 100, maxPerAgent: 100}")
        let settings = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
        try repo.write("gantry.yaml", settings + "drivers: {preview: kubernetes}\n")
        try repo.commitAsOwner("previews run on the cluster")
        let loop = try Loop(repo: repo, routed: true)
        try loop.pass()
        // main's environments (production, and status-page) stay local.
        #expect(Set(loop.driver.finished.filter { $0.kind == "apply" }.map(\.environment)) == ["web", "status-page"])
        #expect(loop.cluster.finished.isEmpty)

        try loop.pushPreview("agents/one")
        try loop.pass()
        #expect(loop.cluster.finished.contains { $0.kind == "apply" && $0.environment == "web--agents-one" }, "\(loop.trail())")
        #expect(!loop.driver.started.contains { $0.environment == "web--agents-one" })

        // A branch that rewrites gantry.yaml to run itself locally is still judged by main's settings.
        try repo.checkout("agents/one")
        let branchSettings = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
        try repo.write("gantry.yaml", branchSettings.replacingOccurrences(of: "drivers: {preview: kubernetes}", with: "drivers: {preview: local}"))
        try repo.writeWeb(service: "{env: {GREETING: \"sneaky\"}}")
        try repo.commit("run me locally\n\nAgent: claude-code")
        try repo.checkout("main")
        try loop.pass()
        #expect(!loop.driver.started.contains { $0.environment == "web--agents-one" }, "\(loop.trail())")
        #expect(loop.cluster.finished.filter { $0.kind == "apply" && $0.environment == "web--agents-one" }.count == 2, "admitted, and applied on the cluster")

        // Its teardown goes to the driver that holds it.
        try repo.git("branch", "-D", "agents/one")
        try loop.pass()
        #expect(loop.cluster.finished.contains { $0.kind == "destroy" && $0.environment == "web--agents-one" }, "\(loop.trail())")
        #expect(!loop.driver.started.contains { $0.environment == "web--agents-one" })
    }

    @Test func aMoveAppliesOnTheNewDriverThenRemovesFromTheOld() throws {
        let local = FakeDriver(), cluster = FakeDriver()
        let router = DriverRouter(drivers: ["local": local, "kubernetes": cluster])
        let repo = try TestRepository()
        try repo.seedExample()
        let commit = try repo.open().resolveCommit("refs/heads/main")!
        var plan = PlannedEnvironment(name: "shop", branch: "main", commit: commit, spec: EnvironmentSpec(name: "shop", team: nil, class: .development), fingerprint: "f",
                                      domain: "localhost", source: GitSnapshot(path: repo.path, commit: commit))
        plan.driver = "kubernetes"
        _ = try router.apply(plan) { _ in }
        #expect(cluster.holds(environment: "shop") && !local.holds(environment: "shop"))
        plan.driver = "local"
        let moved = try router.apply(plan) { _ in }
        #expect(moved.changes.contains("moved from the kubernetes driver to local"))
        #expect(local.holds(environment: "shop") && !cluster.holds(environment: "shop"))
        #expect(cluster.finished.map(\.kind) == ["apply", "destroy"])
        // A revision that runs already (drift, a rotation: no driver named) stays where it is.
        plan.driver = nil
        _ = try router.apply(plan) { _ in }
        #expect(local.finished.map(\.kind) == ["apply", "apply"] && cluster.finished.count == 2)
        // A driver this Gantry does not run is refused until gantry.yaml changes.
        plan.driver = "nomad"
        #expect(throws: RevisionError.self) { try router.apply(plan) { _ in } }
    }
}
