import Foundation
import Testing
import TestSupport

/// `gantry run` with an environment that gantry.yaml puts on the kubernetes driver, against the
/// test API server (no cluster can run here): applied server-side, pruned, torn down; its secret
/// reaches the cluster's Secret and nothing of Gantry's own (state, notes, logs).
@Suite(.serialized) struct KubernetesRunTests {
    static let secretValue = "sk_live_kube_e2e_0123456789"

    func spec(cache: Bool) -> String {
        """
        apiVersion: gantry/v1
        kind: Environment
        metadata: {name: shop, team: payments, class: development}
        spec:
          secrets: [stripe-key]
          services:
            api:
              image: registry.example/shop-api:1.0
              env:
                STRIPE_KEY: "${secrets.stripe-key}"
                DATABASE_URL: "${databases.main.url}"
          databases:
            main: {engine: postgres}
        \(cache ? "  caches:\n    sessions: {engine: redis}\n" : "")  routes:
            - {name: www, service: api}
        """
    }

    func run(_ repo: TestRepository, _ state: TemporaryDirectory, _ cluster: FakeCluster) throws -> Shell.Result {
        try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--no-router", "--no-api", "--no-egress",
                   "--kubeconfig", cluster.kubeconfig, "--kube-rollout-timeout", "30", "--kube-teardown-timeout", "10")
    }

    @Test func anEnvironmentOnTheClusterIsAppliedPrunedAndTornDown() throws {
        let cluster = try FakeCluster()
        let repo = try TestRepository()
        try repo.seedExample()
        let settings = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
        try repo.write("gantry.yaml", settings + "drivers: {development: kubernetes}\n")
        try repo.write("environments/shop.yaml", spec(cache: true))
        try repo.commitAsOwner("shop on the cluster")
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        #expect(try gantry("secret", "set", "stripe-key", "--env", "shop", "--state", state.path, input: Self.secretValue).status == 0)

        let first = try run(repo, state, cluster)
        #expect(first.status == 0, "\(first.stderr)")
        let deployment = try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/api")
        #expect(deployment != nil, "\(first.stderr.suffix(3000))")
        #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/redis-sessions") != nil)
        // The value is on the cluster's Secret...
        let secret = try #require(try cluster.object("/api/v1/namespaces/gantry-shop/secrets/gantry-secrets"))
        #expect(((secret["data"] as? [String: String])?["stripe-key"]).flatMap { Data(base64Encoded: $0) } == Data(Self.secretValue.utf8))
        // ...and nowhere in Gantry's own: not in its state directory, its notes, its output.
        let needle = Data(Self.secretValue.utf8)
        #expect(contents(under: state.path).range(of: needle) == nil)
        #expect(contents(under: state.path).range(of: Data(Data(Self.secretValue.utf8).base64EncodedString().utf8)) == nil)
        let notes = try repo.git("log", "--notes=gantry", "--format=%N", "main")
        #expect(!notes.contains(Self.secretValue) && !first.stderr.contains(Self.secretValue) && !first.stdout.contains(Self.secretValue))
        #expect(notes.contains("Deployment/api created"), "\(notes.suffix(2000))")
        // Nothing ran on this machine: the local driver holds nothing of it.
        #expect(!markedProcesses(state: state.path).contains { $0.mark.hasPrefix("shop:") })
        let status = try gantry("status", "--state", state.path, "--env", "shop").stdout
        #expect(status.contains("running"), "\(status)")

        // The next revision drops the cache: its objects are pruned, the rest is left alone.
        try repo.write("environments/shop.yaml", spec(cache: false))
        try repo.commitAsOwner("no cache")
        let second = try run(repo, state, cluster)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/redis-sessions") == nil)
        #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/api") != nil)
        let later = try repo.git("log", "--notes=gantry", "--format=%N", "main")
        #expect(later.contains("Deployment/redis-sessions deleted (no longer rendered)"), "\(later.prefix(3000))")

        // The environment file goes: the namespace goes with it.
        try repo.git("rm", "-q", "environments/shop.yaml")
        try repo.commitAsOwner("shop closes")
        let third = try run(repo, state, cluster)
        #expect(third.status == 0, "\(third.stderr)")
        let deadline = Date().addingTimeInterval(10)
        while try cluster.object("/api/v1/namespaces/gantry-shop") != nil, Date() < deadline { Thread.sleep(forTimeInterval: 0.2) }
        #expect(try cluster.object("/api/v1/namespaces/gantry-shop") == nil)
        #expect(try gantry("status", "--state", state.path, "--env", "shop").stdout.contains("destroyed"))
        let verify = try gantry("audit", "verify", "--repo", repo.path, "--state", state.path)
        #expect(verify.status == 0, "\(verify.stdout) \(verify.stderr)")
    }

    /// `gantry kill` reaches an environment on a cluster: cut off (deny-all policy, its own gone)
    /// and scaled to 0; a human's lift brings both back at the next pass.
    @Test func theKillSwitchReachesTheCluster() throws {
        let cluster = try FakeCluster()
        let repo = try TestRepository()
        try repo.seedExample()
        let settings = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
        try repo.write("gantry.yaml", settings + "drivers: {development: kubernetes}\n")
        try repo.write("environments/shop.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: shop, team: payments, class: development}
            spec:
              services:
                api: {image: registry.example/shop-api:1.0, replicas: 2}
            """)
        try repo.commitAsOwner("shop on the cluster")
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--no-router", "--no-api", "--no-egress", "--interval", "0.5",
                                     "--kubeconfig", cluster.kubeconfig, "--kube-drift-interval", "1"], log: state.path + "/run.log")
        defer { run.kill9() }
        let deployment = "/apis/apps/v1/namespaces/gantry-shop/deployments/api"
        let policies = "/apis/networking.k8s.io/v1/namespaces/gantry-shop/networkpolicies/"
        func replicas() -> Int? { ((try? cluster.object(deployment))??["spec"] as? [String: Any])?["replicas"] as? Int }
        #expect(eventually(60) { replicas() == 2 }, "\((try? String(contentsOfFile: state.path + "/run.log", encoding: .utf8))?.suffix(2000) ?? "")")

        let kill = try gantry("kill", "--env", "shop", "--reason", "cluster drill", "--state", state.path, "--repo", repo.path)
        #expect(kill.status == 0, "\(kill.stderr)")
        #expect(eventually(20) { replicas() == 0 && (try? cluster.object(policies + "gantry-kill-switch")) != nil && (try? cluster.object(policies + "gantry-isolation")) == nil })
        // Held: the drift check does not undo it.
        Thread.sleep(forTimeInterval: 2.5)
        #expect(replicas() == 0)

        let lift = try gantry("kill", "--env", "shop", "--off", "--key", repo.ownerKeyPath, "--state", state.path, "--repo", repo.path)
        #expect(lift.status == 0, "\(lift.stderr)")
        #expect(eventually(30) { replicas() == 2 && (try? cluster.object(policies + "gantry-kill-switch")) == nil && (try? cluster.object(policies + "gantry-isolation")) != nil },
                "\((try? String(contentsOfFile: state.path + "/run.log", encoding: .utf8))?.suffix(2000) ?? "")")
    }
}
