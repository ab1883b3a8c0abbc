import Foundation
import GitStore
@testable import KubernetesDriver
import SpecLoading
import SpecModel
import Testing
import TestSupport

/// The manifests the cluster driver renders, validated by an outside judge: kubernetes-validate
/// (PyPI, `make pydeps`) with the schemas of a current Kubernetes, strict (no unknown field).
@Suite struct RendererTests {
    static let kubernetesVersion = "1.33.0"

    /// A spec with every part a cluster renders, loaded from a real repository as Gantry loads it.
    func rich() throws -> EnvironmentSpec {
        try shopSpec("""
            secrets: [stripe-key]
            services:
              api:
                image: registry.example/api:1.4
                command: [python3, server.py]
                health: {http: /healthz, timeout: 3s}
                resources: {cpu: 0.5, memory: 256Mi}
                env:
                  GREETING: "hello from ${env.name}"
                  DATABASE_URL: "${databases.main.url}"
                  STRIPE_KEY: "${secrets.stripe-key}"
                  AUTH: "Bearer ${secrets.stripe-key} for $(literal)"
                  WORKER_URL: "${services.worker.url}"
                autoscale: {min: 1, max: 4, targetConcurrency: 10}
              worker:
                image: registry.example/worker:2
                replicas: 2
                env: {CACHE: "${caches.sessions.url}"}
            databases:
              main: {engine: postgres}
            caches:
              sessions: {engine: redis}
            routes:
              - {name: www, service: api}
            """)
    }

    func validate(_ yaml: String) throws -> Shell.Result {
        let directory = try TemporaryDirectory()
        let file = directory.path + "/manifests.yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        return try Shell.run(["python3", "-m", "kubernetes_validate", "--strict", "-k", Self.kubernetesVersion, file])
    }

    /// Gantry's own Deployment, service account and least-privilege ClusterRole (deploy/kubernetes/).
    @Test func theDeployManifestsValidate() throws {
        let text = try String(contentsOfFile: TestPaths.packageRoot.appendingPathComponent("deploy/kubernetes/gantry.yaml").path, encoding: .utf8)
        let result = try validate(text)
        #expect(result.status == 0 && !result.stdout.contains("INVALID"), "\(result.stdout)\(result.stderr)")
        for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "PersistentVolumeClaim", "Deployment", "Service"] {
            #expect(text.contains("kind: \(kind)\n"))
        }
        // The role grants no rights over RBAC, nodes or CRDs, and no wildcard.
        #expect(!text.contains("\"*\"") && !text.contains("[*]") && !text.contains("rolebindings") && !text.contains("customresourcedefinitions"))
    }

    /// A Secret as the driver applies it (values in `data`, base64) is as valid as the rendered one.
    @Test func aMaterializedSecretValidates() throws {
        let secret = KubeObject(Secret(metadata: ObjectMeta(name: "gantry-secrets", namespace: "gantry-shop", labels: ["a": "b"], annotations: nil),
                                       stringData: nil, data: ["stripe-key": Data("v".utf8).base64EncodedString()]))
        let result = try validate(try KubernetesRenderer().yaml([secret]))
        #expect(result.status == 0 && !result.stdout.contains("INVALID"), "\(result.stdout)\(result.stderr)")
    }

    @Test func everyRenderedObjectValidatesAgainstKubernetes() throws {
        let renderer = KubernetesRenderer()
        let objects = try renderer.render(try rich(), commit: String(repeating: "a", count: 40), domain: "example.com")
        #expect(Set(objects.map(\.kind)) == ["Namespace", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "Ingress",
                                            "StatefulSet", "NetworkPolicy", "ResourceQuota", "LimitRange"])
        let result = try validate(try renderer.yaml(objects))
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(!result.stdout.contains("INVALID") && !result.stderr.contains("INVALID"), "\(result.stdout)")
        // Every object names its environment and commit, and lives in the environment's namespace.
        for object in objects {
            #expect(object.metadata.labels?["gantry.dev/environment"] == "shop" && object.metadata.annotations?["gantry.dev/commit"] != nil)
            if object.kind != "Namespace" { #expect(object.metadata.namespace == "gantry-shop") }
        }
    }

    @Test func secretsAreReferencesNeverValues() throws {
        let renderer = KubernetesRenderer()
        let objects = try renderer.render(try rich(), commit: "c", domain: "example.com")
        guard let api = objects.first(where: { $0.kind == "Deployment" && $0.metadata.name == "api" })?.as(Deployment.self) else {
            Issue.record("no api deployment"); return
        }
        let env = Dictionary(api.spec.template.spec.containers[0].env!.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        #expect(env["STRIPE_KEY"]?.valueFrom?.secretKeyRef == .init(name: "gantry-secrets", key: "stripe-key") && env["STRIPE_KEY"]?.value == nil)
        #expect(env["DATABASE_URL"]?.valueFrom?.secretKeyRef == .init(name: "gantry-credentials", key: "main-url"))
        // A secret inside text: a variable of its own, expanded by Kubernetes; literal $( escaped.
        #expect(env["AUTH"]?.value == "Bearer $(GANTRY_REF_0) for $$(literal)")
        #expect(env["GANTRY_REF_0"]?.valueFrom?.secretKeyRef.key == "stripe-key")
        #expect(env["GREETING"]?.value == "hello from shop")
        #expect(env["WORKER_URL"]?.value == "http://worker.gantry-shop.svc.cluster.local")
        #expect(env["HTTPS_PROXY"]?.value?.contains("gantry-egress") == true)
        // Autoscaled: the Deployment leaves replicas to its HPA.
        #expect(api.spec.replicas == nil)
        let yaml = try renderer.yaml(objects)
        #expect(!yaml.contains("${"))
        guard let secrets = objects.first(where: { $0.kind == "Secret" && $0.metadata.name == "gantry-secrets" })?.as(Secret.self) else {
            Issue.record("no secret"); return
        }
        #expect(secrets.stringData == ["stripe-key": ""])
    }

    @Test func theNetworkPolicyLetsOutDNSAndTheProxyOnly() throws {
        let objects = try KubernetesRenderer().render(try rich(), commit: "c", domain: "example.com")
        guard let policy = objects.first(where: { $0.kind == "NetworkPolicy" })?.as(NetworkPolicy.self) else { Issue.record("no policy"); return }
        #expect(policy.spec.policyTypes == ["Ingress", "Egress"] && policy.spec.podSelector.matchLabels.isEmpty)
        let out = policy.spec.egress.flatMap(\.to).compactMap { $0.namespaceSelector?.matchLabels["kubernetes.io/metadata.name"] }
        #expect(Set(out) == ["gantry-shop", "kube-system", "gantry-system"])
    }

    @Test func aServiceWithoutAnImageIsRefusedAndCloudNativePGIsUsedWhenPresent() throws {
        var spec = try rich()
        var options = KubernetesRenderer.Options()
        options.cloudNativePG = true
        let objects = try KubernetesRenderer(options: options).render(spec, commit: "c", domain: "example.com")
        #expect(objects.contains { $0.kind == "Cluster" } && !objects.contains { $0.kind == "StatefulSet" })
        spec.services[0].image = nil
        #expect(throws: KubernetesRenderer.RenderError.self) { try KubernetesRenderer().render(spec, commit: "c", domain: "example.com") }
        #expect(KubernetesRenderer.namespace(of: String(repeating: "a", count: 60)).count <= 63)
        // Up to 62 characters the name as is; past that exactly 63, with 48 bits of a hash: the two
        // forms never meet, so a short name cannot squat a long one's namespace.
        let long = "payments-ledger-reconciliation-service-europe-region-west1"
        let hashed = KubernetesRenderer.namespace(of: long)
        #expect(hashed.count == 63 && hashed.hasPrefix("gantry-" + long.prefix(43) + "-"))
        let squat = String(hashed.dropFirst("gantry-".count))
        #expect(KubernetesRenderer.namespace(of: squat) != hashed)
        #expect(KubernetesRenderer.namespace(of: String(repeating: "b", count: 55)).count == 62)
        #expect(KubernetesRenderer.namespace(of: String(repeating: "b", count: 56)).count == 63)
    }
}
