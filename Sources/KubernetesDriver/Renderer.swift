import Crypto
import Foundation
import SpecModel

/// Renders an environment as the Kubernetes objects the cluster driver applies: a Namespace; per
/// service a Deployment and Service (an HPA when it autoscales, and then no `replicas`); an
/// Ingress per route; Secrets (values are materialized on the data plane only, so rendered
/// empty); a NetworkPolicy (egress to DNS and the egress proxy only, ingress from the ingress
/// controller and the namespace itself); a ResourceQuota and LimitRange; PostgreSQL as a
/// CloudNativePG `Cluster` when that CRD is present, else a StatefulSet with a volume; Redis as a
/// Deployment. Every object is labelled with the environment, and annotated with the commit.
public struct KubernetesRenderer: Sendable {
    public struct Options: Sendable {
        /// Whether the cluster has CloudNativePG's `Cluster` CRD.
        public var cloudNativePG = false
        public var ingressClass: String?
        /// Where the egress proxy runs in the cluster (its namespace, pod label, port).
        public var egressNamespace = "gantry-system"
        public var egressPort = 3128
        public var ingressNamespace = "ingress-nginx"
        public var postgresImage = "postgres:16"
        public var redisImage = "redis:7"
        public init() {}
    }

    public struct RenderError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    public let options: Options
    public init(options: Options = Options()) { self.options = options }

    /// The port a service's container listens on (its `PORT`), and its Service's port.
    static let containerPort = 8080
    static let servicePort = 80
    public static let managedBy = "gantry"

    /// Where Gantry itself runs (deploy/kubernetes): no environment's namespace.
    public static let systemNamespace = "gantry-system"

    /// The namespace of an environment: `gantry-<name>` up to 62 characters; past that, exactly
    /// 63: the name cut to 43 characters, `-`, and 48 bits of its SHA-256. The two forms never
    /// meet (their lengths differ), and no name can be made to land on another's hashed form
    /// short of a 48-bit second preimage.
    public static func namespace(of environment: String) -> String {
        let name = "gantry-" + environment
        guard name.count > 62 else { return name }
        let digest = SHA256.hash(data: Data(environment.utf8)).prefix(6).map { String(format: "%02x", $0) }.joined()
        return "gantry-" + environment.prefix(43) + "-" + digest
    }

    public func render(_ spec: EnvironmentSpec, commit: String, domain: String) throws -> [KubeObject] {
        let namespace = Self.namespace(of: spec.name)
        let labels = ["app.kubernetes.io/managed-by": Self.managedBy, "gantry.dev/environment": spec.name]
        func meta(_ name: String, _ extra: [String: String] = [:]) -> ObjectMeta {
            ObjectMeta(name: name, namespace: namespace, labels: labels.merging(extra) { $1 }, annotations: ["gantry.dev/commit": commit])
        }
        var objects: [KubeObject] = [KubeObject(Namespace(metadata: ObjectMeta(name: namespace, namespace: nil, labels: labels,
                                                                                   annotations: ["gantry.dev/commit": commit])))]
        // Secrets: the environment's (`${secrets.X}`) and the credentials Gantry makes for its
        // databases and caches; their values are filled in on the data plane.
        // (CloudNativePG makes a database's credentials itself: its `<cluster>-app` Secret.)
        let credentials = spec.databases.filter { $0.engine == "postgres" && !options.cloudNativePG }.flatMap { ["\($0.name)-url", "\($0.name)-password"] }
            + spec.caches.flatMap { ["\($0.name)-url", "\($0.name)-password"] }
        if !spec.secrets.isEmpty {
            objects.append(KubeObject(Secret(metadata: meta("gantry-secrets"), stringData: Dictionary(uniqueKeysWithValues: spec.secrets.map { ($0, "") }))))
        }
        if !credentials.isEmpty {
            objects.append(KubeObject(Secret(metadata: meta("gantry-credentials"), stringData: Dictionary(uniqueKeysWithValues: credentials.map { ($0, "") }))))
        }
        var quota = (cpu: 0.0, memory: 0, pods: 0)
        for service in spec.services {
            guard let image = service.image, !image.isEmpty else {
                throw RenderError(description: "spec.services.\(service.name).image is required for the kubernetes driver (the local driver runs the source; a cluster runs an image)")
            }
            let own = ["gantry.dev/service": service.name]
            let cpu = service.resources.cpu ?? 0.25, memory = service.resources.memory ?? 256 << 20
            let replicas = service.autoscale.map { max($0.max, 1) } ?? service.replicas
            quota.cpu += cpu * Double(replicas)
            quota.memory += memory * replicas
            quota.pods += replicas
            var container = Container(name: service.name, image: image, command: service.command.isEmpty ? nil : service.command,
                                      env: try environment(of: service, in: spec, domain: domain, namespace: namespace),
                                      ports: [ContainerPort(name: "http", containerPort: Self.containerPort)],
                                      resources: Resources(requests: ["cpu": Self.cpu(cpu), "memory": "\(memory)"],
                                                           limits: ["cpu": Self.cpu(cpu), "memory": "\(memory)"]))
            container.securityContext.runAsNonRoot = true
            if let path = service.health?.http {
                let timeout = max(1, Int((service.health?.timeout ?? 5).rounded(.up)))
                container.readinessProbe = Probe(httpGet: .init(path: path, port: Self.containerPort), timeoutSeconds: timeout, periodSeconds: 5, failureThreshold: 3)
                container.livenessProbe = Probe(httpGet: .init(path: path, port: Self.containerPort), timeoutSeconds: timeout, periodSeconds: 10, failureThreshold: 6)
            }
            let selector = labels.merging(own) { $1 }
            objects.append(KubeObject(Deployment(metadata: meta(service.name, own), spec: .init(
                replicas: service.autoscale == nil ? service.replicas : nil, selector: LabelSelector(matchLabels: selector),
                template: PodTemplate(metadata: ObjectMeta(name: service.name, namespace: nil, labels: selector, annotations: nil),
                                      spec: PodSpec(containers: [container]))))))
            objects.append(KubeObject(KubeService(metadata: meta(service.name, own), spec: .init(
                selector: selector, ports: [.init(name: "http", port: Self.servicePort, targetPort: Self.containerPort)], clusterIP: nil))))
            if let scale = service.autoscale {
                // An HPA follows CPU (70% of the request): in-flight requests are the router's measure,
                // which a cluster does not have; it never goes below one replica.
                objects.append(KubeObject(HorizontalPodAutoscaler(metadata: meta(service.name, own), spec: .init(
                    scaleTargetRef: .init(name: service.name), minReplicas: max(1, scale.min), maxReplicas: max(1, scale.max),
                    metrics: [.init(resource: .init(target: .init(averageUtilization: 70)))]))))
            }
        }
        for route in spec.routes {
            let host = "\(route.name).\(spec.name).\(domain)".lowercased()
            objects.append(KubeObject(Ingress(metadata: meta("route-\(route.name)"), spec: .init(ingressClassName: options.ingressClass, rules: [
                .init(host: host, http: .init(paths: [.init(backend: .init(service: .init(name: route.service, port: .init(number: Self.servicePort))))]))]))))
        }
        for database in spec.databases where database.engine == "postgres" {
            objects += postgres(database, meta: meta, labels: labels, commit: commit)
            quota.cpu += 0.5
            quota.memory += 512 << 20
            quota.pods += 1
        }
        for cache in spec.caches {
            let own = ["gantry.dev/cache": cache.name]
            let selector = labels.merging(own) { $1 }
            var container = Container(name: "redis", image: options.redisImage, command: ["redis-server"],
                                      args: ["--requirepass", "$(REDIS_PASSWORD)", "--port", "6379"],
                                      env: [ContainerEnv(name: "REDIS_PASSWORD", value: nil, valueFrom: .init(secretKeyRef: .init(name: "gantry-credentials", key: "\(cache.name)-password")))],
                                      ports: [ContainerPort(name: "redis", containerPort: 6379)],
                                      resources: Resources(requests: ["cpu": "100m", "memory": "\(128 << 20)"], limits: ["cpu": "250m", "memory": "\(256 << 20)"]))
            container.securityContext.runAsNonRoot = nil
            objects.append(KubeObject(Deployment(metadata: meta("redis-\(cache.name)", own), spec: .init(
                replicas: 1, selector: LabelSelector(matchLabels: selector),
                template: PodTemplate(metadata: ObjectMeta(name: "redis-\(cache.name)", namespace: nil, labels: selector, annotations: nil),
                                      spec: PodSpec(containers: [container]))))))
            objects.append(KubeObject(KubeService(metadata: meta("redis-\(cache.name)", own), spec: .init(
                selector: selector, ports: [.init(name: "redis", port: 6379, targetPort: 6379)], clusterIP: nil))))
            quota.cpu += 0.25
            quota.memory += 256 << 20
            quota.pods += 1
        }
        objects.append(KubeObject(networkPolicy(meta: meta("gantry-isolation"), namespace: namespace)))
        // Room for a rolling update: twice what the environment asks, at least 2 pods more.
        objects.append(KubeObject(ResourceQuota(metadata: meta("gantry-quota"), spec: .init(hard: [
            "limits.cpu": Self.cpu(quota.cpu * 2), "limits.memory": "\(quota.memory * 2)",
            "requests.cpu": Self.cpu(quota.cpu * 2), "requests.memory": "\(quota.memory * 2)", "pods": "\(quota.pods * 2 + 2)"]))))
        objects.append(KubeObject(LimitRange(metadata: meta("gantry-defaults"), spec: .init(limits: [
            .init(default: ["cpu": "250m", "memory": "\(256 << 20)"], defaultRequest: ["cpu": "250m", "memory": "\(256 << 20)"])]))))
        return objects
    }

    /// Multi-document YAML (each document JSON, which YAML reads as is).
    public func yaml(_ objects: [KubeObject]) throws -> String {
        try objects.map { "---\n" + (try $0.json()) + "\n" }.joined()
    }

    static func cpu(_ cores: Double) -> String { "\(max(1, Int((cores * 1000).rounded())))m" }

    /// A service's variables: `PORT`, then its `env` with references resolved for the cluster;
    /// a reference to a secret (a secret, a database's or cache's URL) comes from the namespace's
    /// Secret, never written in the manifest.
    func environment(of service: Service, in spec: EnvironmentSpec, domain: String, namespace: String) throws -> [ContainerEnv] {
        let proxy = "http://gantry-egress.\(options.egressNamespace).svc.cluster.local:\(options.egressPort)"
        var variables = [ContainerEnv(name: "PORT", value: "\(Self.containerPort)", valueFrom: nil)]
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] { variables.append(ContainerEnv(name: name, value: proxy, valueFrom: nil)) }
        for name in ["NO_PROXY", "no_proxy"] { variables.append(ContainerEnv(name: name, value: ".svc,.cluster.local,localhost,127.0.0.1", valueFrom: nil)) }
        var hidden: [ContainerEnv] = []
        for variable in service.env {
            // The value in pieces: text as is, references resolved (a secret stays a reference).
            var pieces: [Resolved] = [], rest = Substring(variable.value)
            while let open = rest.range(of: "${"), let close = rest[open.upperBound...].firstIndex(of: "}") {
                if !rest[..<open.lowerBound].isEmpty { pieces.append(.text(String(rest[..<open.lowerBound]))) }
                pieces.append(try resolve(String(rest[open.upperBound..<close]), spec: spec, domain: domain, namespace: namespace))
                rest = rest[rest.index(after: close)...]
            }
            if !rest.isEmpty { pieces.append(.text(String(rest))) }
            if pieces.count == 1, case .secret(let source) = pieces[0] {
                variables.append(ContainerEnv(name: variable.name, value: nil, valueFrom: source))
                continue
            }
            // Kubernetes expands $(NAME) of a variable defined before this one.
            let text = pieces.map { piece -> String in
                switch piece {
                case .text(let value): return value.replacingOccurrences(of: "$(", with: "$$(")
                case .secret(let source):
                    let name = "GANTRY_REF_\(hidden.count)"
                    hidden.append(ContainerEnv(name: name, value: nil, valueFrom: source))
                    return "$(\(name))"
                }
            }.joined()
            variables.append(ContainerEnv(name: variable.name, value: text, valueFrom: nil))
        }
        return hidden + variables
    }

    enum Resolved { case text(String), secret(EnvVarSource) }

    func resolve(_ reference: String, spec: EnvironmentSpec, domain: String, namespace: String) throws -> Resolved {
        let parts = reference.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        func secret(_ name: String, _ key: String) -> Resolved { .secret(EnvVarSource(secretKeyRef: .init(name: name, key: key))) }
        switch (parts.first, parts.count) {
        case ("env", 2) where parts[1] == "name": return .text(spec.name)
        case ("env", 2) where parts[1] == "domain": return .text(domain)
        case ("env", 2) where parts[1] == "class": return .text(spec.class.rawValue)
        case ("services", 3):
            let host = "\(parts[1]).\(namespace).svc.cluster.local"
            switch parts[2] {
            case "url": return .text("http://\(host)")
            case "host": return .text(host)
            case "port": return .text("\(Self.servicePort)")
            default: break
            }
        case ("databases", 3) where parts[2] == "url":
            if spec.databases.first(where: { $0.name == parts[1] })?.engine == "sqlite" {
                return .text("sqlite:///data/\(parts[1]).sqlite")
            }
            if options.cloudNativePG { return secret("postgres-\(parts[1])-app", "uri") }
            return secret("gantry-credentials", "\(parts[1])-url")
        case ("caches", 3) where parts[2] == "url": return secret("gantry-credentials", "\(parts[1])-url")
        case ("secrets", 2): return secret("gantry-secrets", parts[1])
        default: break
        }
        throw RenderError(description: "the reference ${\(reference)} has no meaning on a cluster")
    }

    func postgres(_ database: Database, meta: (String, [String: String]) -> ObjectMeta, labels: [String: String], commit: String) -> [KubeObject] {
        let name = "postgres-\(database.name)"
        let own = ["gantry.dev/database": database.name]
        if options.cloudNativePG {
            return [KubeObject(PostgresCluster(metadata: meta(name, own), spec: .init(
                storage: .init(size: "1Gi"), bootstrap: .init(initdb: .init(database: database.name, owner: database.name)))))]
        }
        let selector = labels.merging(own) { $1 }
        var container = Container(name: "postgres", image: options.postgresImage,
                                  env: [ContainerEnv(name: "POSTGRES_DB", value: database.name, valueFrom: nil),
                                        ContainerEnv(name: "POSTGRES_USER", value: database.name, valueFrom: nil),
                                        ContainerEnv(name: "POSTGRES_PASSWORD", value: nil, valueFrom: .init(secretKeyRef: .init(name: "gantry-credentials", key: "\(database.name)-password"))),
                                        ContainerEnv(name: "PGDATA", value: "/var/lib/postgresql/data/pgdata", valueFrom: nil)],
                                  ports: [ContainerPort(name: "postgres", containerPort: 5432)],
                                  resources: Resources(requests: ["cpu": "250m", "memory": "\(256 << 20)"], limits: ["cpu": "500m", "memory": "\(512 << 20)"]),
                                  volumeMounts: [VolumeMount(name: "data", mountPath: "/var/lib/postgresql/data")])
        container.securityContext.runAsNonRoot = nil
        return [
            KubeObject(KubeService(metadata: meta(name, own), spec: .init(selector: selector, ports: [.init(name: "postgres", port: 5432, targetPort: 5432)], clusterIP: "None"))),
            KubeObject(StatefulSet(metadata: meta(name, own), spec: .init(
                serviceName: name, selector: LabelSelector(matchLabels: selector),
                template: PodTemplate(metadata: ObjectMeta(name: name, namespace: nil, labels: selector, annotations: nil),
                                      spec: PodSpec(containers: [container])),
                volumeClaimTemplates: [.init(metadata: ObjectMeta(name: "data", namespace: nil, labels: nil, annotations: nil),
                                             spec: .init(resources: Resources(requests: ["storage": "1Gi"], limits: nil)))]))),
        ]
    }

    /// Everything denied but DNS, the egress proxy, the namespace itself, and the ingress controller.
    func networkPolicy(meta: ObjectMeta, namespace: String) -> NetworkPolicy {
        func namespaceNamed(_ name: String) -> LabelSelector { LabelSelector(matchLabels: ["kubernetes.io/metadata.name": name]) }
        let own = NetworkPolicy.Peer(namespaceSelector: namespaceNamed(namespace), podSelector: nil)
        return NetworkPolicy(metadata: meta, spec: .init(
            podSelector: LabelSelector(matchLabels: [:]), policyTypes: ["Ingress", "Egress"],
            ingress: [.init(from: [own, .init(namespaceSelector: namespaceNamed(options.ingressNamespace), podSelector: nil)], ports: nil)],
            egress: [
                .init(to: [own], ports: nil),
                .init(to: [.init(namespaceSelector: namespaceNamed("kube-system"), podSelector: LabelSelector(matchLabels: ["k8s-app": "kube-dns"]))],
                      ports: [.init(protocol: "UDP", port: 53), .init(protocol: "TCP", port: 53)]),
                .init(to: [.init(namespaceSelector: namespaceNamed(options.egressNamespace),
                                 podSelector: LabelSelector(matchLabels: ["app.kubernetes.io/name": "gantry-egress"]))],
                      ports: [.init(protocol: "TCP", port: options.egressPort)]),
            ]))
    }
}
