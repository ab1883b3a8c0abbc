import Foundation
import GitStore
@testable import KubernetesDriver
import Logging
import Reconciler
import SpecLoading
import SpecModel
import StateStore
import Testing
import TestSupport

/// The cluster driver against the test API server: server-side apply in stages, only what changed,
/// pruning by the inventory, rollouts, drift, teardown. Real TLS, a real state DB and secret store.
@Suite(.serialized) struct ClusterDriverTests {
    let state: TemporaryDirectory
    let store: StateStore
    let secrets: SecretStore

    init() throws {
        state = TemporaryDirectory("gantry-kube-state")
        store = try StateStore(path: state.path + "/state.db")
        secrets = try SecretStore(state: store, keyPath: state.path + "/secrets.key", environment: [:])
    }

    func driver(_ cluster: FakeCluster?, rolloutTimeout: TimeInterval = 20, teardownTimeout: TimeInterval = 10) throws -> KubernetesDriver {
        var options = KubernetesDriver.Options()
        options.rolloutTimeout = rolloutTimeout
        options.teardownTimeout = teardownTimeout
        options.driftInterval = 0.01
        let driver = KubernetesDriver(client: try cluster?.client(), state: store, logger: Logger(label: "test"), options: options)
        driver.secrets = secrets
        return driver
    }

    /// The environment `shop` as Gantry loads it from a real repository, with `spec` as its spec.
    static func plan(_ spec: String, commit: String = String(repeating: "a", count: 40)) throws -> PlannedEnvironment {
        let spec = try shopSpec(spec)
        let id = ObjectID(hex: commit)!
        return PlannedEnvironment(name: "shop", branch: "main", commit: id, spec: spec, fingerprint: "f", domain: "example.com",
                                  source: GitSnapshot(path: "/nonexistent", commit: id))
    }

    static let shop = """
        secrets: [stripe-key]
        services:
          api:
            image: registry.example/api:1.4
            replicas: 2
            health: {http: /healthz}
            env:
              DATABASE_URL: "${databases.main.url}"
              STRIPE_KEY: "${secrets.stripe-key}"
        databases:
          main: {engine: postgres}
        caches:
          sessions: {engine: redis}
        routes:
          - {name: www, service: api}
        """

    static let ns = "/api/v1/namespaces/gantry-shop"

    func applies(_ cluster: FakeCluster) throws -> [[String: String]] {
        try cluster.requests().filter { $0["method"] == "PATCH" && !($0["query"] ?? "").contains("dryRun") }
    }

    @Test func appliesServerSideInStagesWithSecretsOnTheDataPlaneOnly() throws {
        let cluster = try FakeCluster()
        let driver = try driver(cluster)
        try secrets.set("stripe-key", value: Data("sk_live_kube_test_value".utf8), scope: .environment("shop"))
        var steps: [String] = []
        let outcome = try driver.apply(try Self.plan(Self.shop)) { steps.append($0) }

        // Every object is there, labelled as Gantry's, in the environment's namespace.
        let namespace = try #require(try cluster.object(Self.ns))
        #expect(((namespace["metadata"] as? JSONObject)?["labels"] as? [String: String])?["app.kubernetes.io/managed-by"] == "gantry")
        let deployment = try #require(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/api"))
        #expect((deployment["spec"] as? JSONObject)?["replicas"] as? Int == 2)
        #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/statefulsets/postgres-main") != nil)
        #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/redis-sessions") != nil)
        #expect(try cluster.object("/apis/networking.k8s.io/v1/namespaces/gantry-shop/ingresses/route-www") != nil)
        #expect(try cluster.object("/apis/networking.k8s.io/v1/namespaces/gantry-shop/networkpolicies/gantry-isolation") != nil)
        #expect(outcome.changes.contains("Deployment/api created"))

        // The Secret holds the value on the cluster (the data plane); the manifests name it only.
        let secret = try #require(try cluster.object("/api/v1/namespaces/gantry-shop/secrets/gantry-secrets"))
        let encoded = try #require((secret["data"] as? [String: String])?["stripe-key"])
        #expect(Data(base64Encoded: encoded) == Data("sk_live_kube_test_value".utf8))
        let credentials = try #require(try cluster.object("/api/v1/namespaces/gantry-shop/secrets/gantry-credentials"))
        let url = String(decoding: Data(base64Encoded: (credentials["data"] as? [String: String])?["main-url"] ?? "") ?? Data(), as: UTF8.self)
        #expect(url.hasPrefix("postgres://main:") && url.hasSuffix("@postgres-main.gantry-shop.svc.cluster.local:5432/main"))
        #expect(!steps.joined().contains("sk_live") && !outcome.changes.joined().contains("sk_live"))

        // The namespace made first (created, never adopted: a POST), then server-side apply as the
        // field manager gantry, forced; workloads last.
        let writes = try cluster.requests().filter { $0["method"] == "POST" || ($0["method"] == "PATCH" && !($0["query"] ?? "").contains("dryRun")) }
        #expect(writes.first?["method"] == "POST" && writes.first?["path"] == "/api/v1/namespaces")
        let patches = try applies(cluster)
        #expect(patches.allSatisfy { $0["contentType"] == "application/apply-patch+yaml" && $0["query"]!.contains("fieldManager=gantry") && $0["query"]!.contains("force=true") })
        let order = patches.map { $0["path"]! }
        let firstWorkload = try #require(order.firstIndex { $0.contains("/deployments/") || $0.contains("/statefulsets/") })
        let lastConfiguration = try #require(order.lastIndex { $0.contains("/secrets/") || $0.contains("/services/") || $0.contains("/resourcequotas/") })
        #expect(lastConfiguration < firstWorkload)

        // The inventory lists what was applied (references only, no values).
        let inventory = try store.inventory(of: "shop", driver: "kubernetes")
        #expect(inventory.contains("apps/v1|Deployment|gantry-shop|api") && inventory.contains("v1|Namespace||gantry-shop"))
        #expect(!inventory.joined().contains("sk_live"))
    }

    @Test func appliesOnlyWhatChangedAndPrunesWhatIsNoLongerRendered() throws {
        let cluster = try FakeCluster()
        let driver = try driver(cluster)
        try secrets.set("stripe-key", value: Data("v1".utf8), scope: .environment("shop"))
        _ = try driver.apply(try Self.plan(Self.shop)) { _ in }
        let before = try applies(cluster).count

        // The same spec at a new commit: dry-runs only, nothing applied.
        let again = try driver.apply(try Self.plan(Self.shop, commit: String(repeating: "b", count: 40))) { _ in }
        #expect(again.changes.isEmpty)
        #expect(try applies(cluster).count == before)

        // One replica more and no cache: the Deployment is configured, the cache's objects pruned.
        let smaller = Self.shop.replacingOccurrences(of: "replicas: 2", with: "replicas: 3")
            .replacingOccurrences(of: "caches:\n  sessions: {engine: redis}\n", with: "")
        let outcome = try driver.apply(try Self.plan(smaller, commit: String(repeating: "c", count: 40))) { _ in }
        #expect(outcome.changes.contains("Deployment/api configured (spec.replicas)"))
        #expect(outcome.changes.contains("Deployment/redis-sessions deleted (no longer rendered)"))
        #expect(outcome.changes.contains("Service/redis-sessions deleted (no longer rendered)"))
        #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/redis-sessions") == nil)
        #expect(try applies(cluster).count == before + 2, "the Deployment and the credentials' Secret (its cache keys went) only")
        #expect(!(try store.inventory(of: "shop", driver: "kubernetes")).contains { $0.contains("redis-sessions") })
        let annotations = try #require(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/api")?["metadata"] as? JSONObject)["annotations"]
        #expect((annotations as? [String: String])?["gantry.dev/commit"] == String(repeating: "c", count: 40))
    }

    @Test func pruningSparesAnObjectSomeoneTookOver() throws {
        let cluster = try FakeCluster()
        let driver = try driver(cluster)
        try secrets.set("stripe-key", value: Data("v1".utf8), scope: .environment("shop"))
        _ = try driver.apply(try Self.plan(Self.shop)) { _ in }
        // Someone relabels the cache's Service as theirs; the next revision drops the cache.
        try cluster.curl("PATCH", "/api/v1/namespaces/gantry-shop/services/redis-sessions?fieldManager=kubectl-label",
                         body: #"{"metadata":{"labels":{"app.kubernetes.io/managed-by":"helm"}}}"#)
        let smaller = Self.shop.replacingOccurrences(of: "caches:\n  sessions: {engine: redis}\n", with: "")
        let outcome = try driver.apply(try Self.plan(smaller)) { _ in }
        #expect(outcome.changes.contains { $0.hasPrefix("Service/redis-sessions left in place: it no longer carries Gantry's labels") })
        #expect(try cluster.object("/api/v1/namespaces/gantry-shop/services/redis-sessions") != nil)
        #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/redis-sessions") == nil)
    }

    @Test func driftByOthersIsFoundAndHealedByTheForcedApply() throws {
        let cluster = try FakeCluster()
        let driver = try driver(cluster)
        try secrets.set("stripe-key", value: Data("v1".utf8), scope: .environment("shop"))
        let plan = try Self.plan(Self.shop)
        _ = try driver.apply(plan) { _ in }
        #expect(try findings(driver, plan, expectNone: true).isEmpty)

        // kubectl scale: the API would refuse Gantry's apply without force (409, a field of another manager).
        try cluster.curl("PATCH", "/apis/apps/v1/namespaces/gantry-shop/deployments/api?fieldManager=kubectl-scale", body: #"{"spec":{"replicas":5}}"#)
        let rendered = try #require(try KubernetesRenderer().render(plan.spec, commit: "x", domain: "example.com")
            .first { $0.kind == "Deployment" && $0.metadata.name == "api" })
        let body = String(decoding: try rendered.jsonData(), as: UTF8.self)
        let refused = try cluster.curl("PATCH", "/apis/apps/v1/namespaces/gantry-shop/deployments/api?fieldManager=gantry", body: body,
                                       contentType: "application/apply-patch+yaml")
        #expect(refused.status == 409 && (refused.body["message"] as? String ?? "").contains(#"conflict with "kubectl-scale": .spec.replicas"#))
        // And someone deletes the route.
        try cluster.curl("DELETE", "/apis/networking.k8s.io/v1/namespaces/gantry-shop/ingresses/route-www")

        let found = try findings(driver, plan)
        #expect(found.contains("Deployment/api: spec.replicas changed (by kubectl-scale)"))
        #expect(found.contains("Ingress/route-www is missing"))
        let healed = try driver.apply(plan) { _ in }
        #expect(healed.changes.contains("Deployment/api configured (spec.replicas)") && healed.changes.contains("Ingress/route-www created"))
        #expect((try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/api")?["spec"] as? JSONObject)?["replicas"] as? Int == 2)
        #expect(try findings(driver, plan, expectNone: true).isEmpty)
    }

    /// A kill switch on a cluster: nothing in or out (a deny-all policy first, then the
    /// environment's own goes), every workload at 0; lifted, the next apply restores both and
    /// removes the deny-all policy last.
    @Test func theKillSwitchCutsAnEnvironmentOffAndTheLiftRestoresIt() throws {
        let cluster = try FakeCluster()
        let driver = try driver(cluster)
        try secrets.set("stripe-key", value: Data("v1".utf8), scope: .environment("shop"))
        let plan = try Self.plan(Self.shop)
        _ = try driver.apply(plan) { _ in }
        let policies = "/apis/networking.k8s.io/v1/namespaces/gantry-shop/networkpolicies/"
        func replicas(_ path: String) throws -> Int? { (try cluster.object(path)?["spec"] as? [String: Any])?["replicas"] as? Int }
        try driver.setKilled("shop", true)
        let deny = try #require(try cluster.object(policies + "gantry-kill-switch"))
        let spec = try #require(deny["spec"] as? [String: Any])
        #expect((spec["ingress"] as? [Any])?.isEmpty == true && (spec["egress"] as? [Any])?.isEmpty == true && spec["policyTypes"] as? [String] == ["Ingress", "Egress"])
        #expect(try cluster.object(policies + "gantry-isolation") == nil, "its own policy (DNS, the proxy) no longer adds to it")
        #expect(try replicas("/apis/apps/v1/namespaces/gantry-shop/deployments/api") == 0)
        #expect(try replicas("/apis/apps/v1/namespaces/gantry-shop/deployments/redis-sessions") == 0)
        #expect(try replicas("/apis/apps/v1/namespaces/gantry-shop/statefulsets/postgres-main") == 0)
        // An apply that was under way when the switch came on does not open it again.
        let during = try driver.apply(plan) { _ in }
        #expect(during.changes.contains("cut off again: a kill switch came on during the apply"))
        #expect(try cluster.object(policies + "gantry-kill-switch") != nil && cluster.object(policies + "gantry-isolation") == nil)
        #expect(try replicas("/apis/apps/v1/namespaces/gantry-shop/deployments/api") == 0)
        // Lifted: the next pass finds it to restore, and the apply does, the deny-all policy last.
        #expect(!driver.restoresOwnCut(plan))
        try driver.setKilled("shop", false)
        #expect(try findings(driver, plan).contains { $0.contains("the kill switch was lifted") })
        #expect(driver.restoresOwnCut(plan), "restored even with --detect-only: the cut was Gantry's")
        let restored = try driver.apply(plan) { _ in }
        #expect(!driver.restoresOwnCut(plan))
        #expect(restored.changes.contains("NetworkPolicy/gantry-kill-switch deleted (the kill switch was lifted)"), "\(restored.changes)")
        #expect(try cluster.object(policies + "gantry-isolation") != nil && cluster.object(policies + "gantry-kill-switch") == nil)
        #expect(try replicas("/apis/apps/v1/namespaces/gantry-shop/deployments/api") == 2)
        let writes = try cluster.requests().filter { ($0["method"] == "PATCH" && !($0["query"] ?? "").contains("dryRun")) || $0["method"] == "DELETE" }.map { "\($0["method"]!) \($0["path"]!)" }
        let isolation = try #require(writes.lastIndex { $0.hasPrefix("PATCH") && $0.hasSuffix("/gantry-isolation") })
        let lift = try #require(writes.lastIndex { $0.hasPrefix("DELETE") && $0.hasSuffix("/gantry-kill-switch") })
        #expect(isolation < lift, "never a moment without a policy")
    }

    /// The findings of the driver's background drift check (it runs on a queue; a pass collects them).
    func findings(_ driver: KubernetesDriver, _ plan: PlannedEnvironment, expectNone: Bool = false) throws -> [String] {
        let deadline = Date().addingTimeInterval(expectNone ? 1.5 : 10)
        while Date() < deadline {
            let found = driver.drift(plan)
            if !found.isEmpty { return found }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return []
    }

    @Test func aStalledRolloutSaysWhyAndATimeoutIsBounded() throws {
        let cluster = try FakeCluster()
        let driver = try driver(cluster, rolloutTimeout: 15)
        let plan = try Self.plan("""
            services:
              api: {image: "registry.example/unpullable:9"}
            """)
        let started = Date()
        #expect(throws: RolloutError.self) { try driver.apply(plan) { _ in } }
        #expect(Date().timeIntervalSince(started) < 10, "a stall ends the wait before its bound")
        // A pod of the workload whose container wrote its own termination message: the workload's
        // words never reach Gantry's records (reasons only).
        try cluster.curl("PATCH", "/api/v1/namespaces/gantry-shop/pods/api-old?fieldManager=kubelet", body: """
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"api-old","labels":{"app.kubernetes.io/managed-by":"gantry","gantry.dev/environment":"shop","gantry.dev/service":"api"}},
             "status":{"containerStatuses":[{"name":"api","state":{"terminated":{"reason":"Error","exitCode":3,"message":"EXFIL-9f8e7d"}}}]}}
            """, contentType: "application/apply-patch+yaml")
        let error = try #require(throws: RolloutError.self) { try driver.apply(plan) { _ in } }
        #expect(error.description.contains("Deployment/api has stalled: ProgressDeadlineExceeded"))
        #expect(error.description.contains("container api waiting: ErrImagePull"))
        #expect(error.description.contains("container api terminated: Error (exit code 3)") && !error.description.contains("EXFIL"), "\(error)")
        #expect(ErrorDisposition.of(error) == .retryWithBackoff)
    }

    @Test func invalidObjectsAreRefusedUntilANewCommit() throws {
        let cluster = try FakeCluster()
        let client = try cluster.client()
        let ref = ObjectRef(apiVersion: "v1", kind: "Namespace", namespace: nil, name: "Not_A_Label")
        let error = try #require(throws: KubeAPIError.self) {
            try client.apply(ref, json: Data(#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"Not_A_Label"}}"#.utf8))
        }
        #expect(error.status == 422 && error.reason == "Invalid" && error.description.contains("RFC 1123"))
        #expect(ErrorDisposition.of(error) == .stallUntilNewCommit)
        // Without the namespace, a namespaced object is refused (404), as the API does: hence the stages.
        let orphan = ObjectRef(apiVersion: "v1", kind: "Service", namespace: "nowhere", name: "x")
        let missing = try #require(throws: KubeAPIError.self) {
            try client.apply(orphan, json: Data(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"},"spec":{}}"#.utf8))
        }
        #expect(missing.status == 404 && missing.message.contains(#"namespaces "nowhere" not found"#))
    }

    @Test func teardownDeletesTheNamespaceAndReportsWhatFinalizersHold() throws {
        let cluster = try FakeCluster()
        let driver = try driver(cluster, teardownTimeout: 1.5)
        try secrets.set("stripe-key", value: Data("v1".utf8), scope: .environment("shop"))
        _ = try driver.apply(try Self.plan(Self.shop)) { _ in }
        #expect(driver.holds(environment: "shop"))
        // Someone's controller holds the route with a finalizer.
        try cluster.curl("PATCH", "/apis/networking.k8s.io/v1/namespaces/gantry-shop/ingresses/route-www?fieldManager=lb-controller",
                         body: #"{"metadata":{"finalizers":["example.com/load-balancer"]}}"#)
        let left = try driver.destroy(environment: "shop", sources: nil) { _ in }
        #expect(left.count == 1)
        #expect(left.first?.contains("namespace gantry-shop is still terminating") == true)
        #expect(left.first?.contains("finalizers remaining: example.com/load-balancer") == true)
        #expect(try store.inventory(of: "shop", driver: "kubernetes").isEmpty && !driver.holds(environment: "shop"))
        #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/api") == nil)
        // Once the finalizer goes, the namespace goes.
        try cluster.curl("PATCH", "/apis/networking.k8s.io/v1/namespaces/gantry-shop/ingresses/route-www?fieldManager=lb-controller",
                         body: #"{"metadata":{"finalizers":null}}"#)
        let deadline = Date().addingTimeInterval(5)
        while try cluster.object(Self.ns) != nil, Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        #expect(try cluster.object(Self.ns) == nil)
        // A second teardown has nothing to do.
        #expect(try driver.destroy(environment: "shop", sources: nil) { _ in }.isEmpty)
    }

    @Test func teardownLeavesANamespaceThatIsNoLongerGantrys() throws {
        let cluster = try FakeCluster()
        let driver = try driver(cluster)
        _ = try driver.apply(try Self.plan("services:\n  api: {image: registry.example/api:1}")) { _ in }
        try cluster.curl("PATCH", "\(Self.ns)?fieldManager=kubectl-label", body: #"{"metadata":{"labels":{"gantry.dev/environment":"other"}}}"#)
        let left = try driver.destroy(environment: "shop", sources: nil) { _ in }
        #expect(left == ["namespace gantry-shop is not the one Gantry made for shop (its labels or claim changed): left in place"])
        #expect(try cluster.object(Self.ns) != nil)
    }

    /// A namespace that exists before Gantry makes it is never adopted: one of another team (no
    /// labels), and one a squatter labelled as Gantry's (it could hold their RoleBindings, and
    /// would receive the environment's secrets).
    @Test func aNamespaceGantryDidNotMakeIsNeverAdopted() throws {
        for labels in [#"{"app.kubernetes.io/name":"gantry"}"#, #"{"app.kubernetes.io/managed-by":"gantry","gantry.dev/environment":"shop"}"#] {
            let cluster = try FakeCluster()
            let driver = try driver(cluster)
            try secrets.set("stripe-key", value: Data("sk_live_squatted".utf8), scope: .environment("shop"))
            try cluster.curl("PATCH", "/api/v1/namespaces/gantry-shop?fieldManager=squatter", body: #"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"gantry-shop","labels":\#(labels)}}"#,
                             contentType: "application/apply-patch+yaml")
            let error = try #require(throws: RevisionError.self) { try driver.apply(try Self.plan(Self.shop)) { _ in } }
            #expect(error.description.contains("namespace gantry-shop exists and Gantry did not make it for shop"))
            #expect(try cluster.object("/api/v1/namespaces/gantry-shop/secrets/gantry-secrets") == nil, "no secret reaches a squatted namespace")
            #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/api") == nil)
            #expect(!driver.holds(environment: "shop"))
            #expect(try driver.destroy(environment: "shop", sources: nil) { _ in }.isEmpty)
            #expect(try cluster.object(Self.ns) != nil, "and a teardown leaves it")
        }
    }

    /// Gantry's own namespace is no environment's, even before it exists.
    @Test func anEnvironmentCannotLiveInGantrysOwnNamespace() throws {
        let cluster = try FakeCluster()
        let driver = try driver(cluster)
        var plan = try Self.plan("services:\n  api: {image: registry.example/api:1}")
        plan = PlannedEnvironment(name: "system", branch: "main", commit: plan.commit, spec: plan.spec, fingerprint: "f", domain: "example.com", source: plan.source)
        let error = try #require(throws: RevisionError.self) { try driver.apply(plan) { _ in } }
        #expect(error.description.contains("namespace gantry-system, which Gantry keeps for itself"))
        #expect(try cluster.object("/api/v1/namespaces/gantry-system") == nil)
    }

    @Test func cloudNativePGIsUsedWhenItsAPIIsServed() throws {
        let cluster = try FakeCluster(cnpg: true)
        let driver = try driver(cluster)
        _ = try driver.apply(try Self.plan("""
            services:
              api:
                image: registry.example/api:1
                env: {DATABASE_URL: "${databases.main.url}"}
            databases:
              main: {engine: postgres}
            """)) { _ in }
        #expect(try cluster.object("/apis/postgresql.cnpg.io/v1/namespaces/gantry-shop/clusters/postgres-main") != nil)
        #expect(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/statefulsets/postgres-main") == nil)
        let deployment = try #require(try cluster.object("/apis/apps/v1/namespaces/gantry-shop/deployments/api"))
        let text = String(decoding: try JSONSerialization.data(withJSONObject: deployment), as: UTF8.self)
        #expect(text.contains(#""name":"postgres-main-app""#) && text.contains(#""key":"uri""#))
    }

    @Test func withoutAClusterAnApplySaysHowToGiveItOne() throws {
        let driver = try driver(nil)
        let error = try #require(throws: KubeAPIError.self) { try driver.apply(try Self.plan("services:\n  api: {image: x}")) { _ in } }
        #expect(error.description.contains("gantry.yaml's drivers put it on kubernetes") && error.description.contains("--kubeconfig"))
        #expect(try driver.destroy(environment: "shop", sources: nil) { _ in }.isEmpty, "nothing applied: nothing to reach")
    }
}

extension FakeCluster {
    func client() throws -> KubeClient { try KubeClient(config: try KubeConfig.load(path: kubeconfig)) }
}
