import Foundation

/// The Kubernetes objects the cluster driver renders, typed (Codable) for these kinds only: the
/// fields Gantry sets, in the API's own names. Optional fields left nil are not encoded.

public struct ObjectMeta: Codable, Sendable, Equatable {
    public var name: String
    public var namespace: String?
    public var labels: [String: String]?
    public var annotations: [String: String]?
}

public struct LabelSelector: Codable, Sendable, Equatable {
    public var matchLabels: [String: String]
}

/// What every kind here has: its kind and metadata.
public protocol KubernetesObject: Encodable, Sendable {
    var apiVersion: String { get }
    var kind: String { get }
    var metadata: ObjectMeta { get }
}

/// One object of any kind: what `gantry render --format kubernetes` prints and the driver applies.
public struct KubeObject: Sendable {
    public let object: any KubernetesObject
    public init(_ object: any KubernetesObject) { self.object = object }

    public var apiVersion: String { object.apiVersion }
    public var kind: String { object.kind }
    public var metadata: ObjectMeta { object.metadata }

    /// The object as `type`, when it is one.
    public func `as`<T: KubernetesObject>(_ type: T.Type) -> T? { object as? T }

    /// The object as JSON (a YAML document too), keys sorted.
    public func json() throws -> String { String(decoding: try jsonData(pretty: true), as: UTF8.self) }

    /// The object as JSON: what the driver sends as an apply patch.
    public func jsonData(pretty: Bool = false) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(object)
    }
}

public struct Namespace: KubernetesObject, Codable, Equatable {
    public var apiVersion = "v1"
    public var kind = "Namespace"
    public var metadata: ObjectMeta
}

public struct EnvVarSource: Codable, Sendable, Equatable {
    public struct SecretKeySelector: Codable, Sendable, Equatable {
        public var name: String
        public var key: String
    }
    public var secretKeyRef: SecretKeySelector
}

public struct ContainerEnv: Codable, Sendable, Equatable {
    public var name: String
    public var value: String?
    public var valueFrom: EnvVarSource?
}

public struct ContainerPort: Codable, Sendable, Equatable {
    public var name: String?
    public var containerPort: Int
}

public struct Probe: Codable, Sendable, Equatable {
    public struct HTTPGet: Codable, Sendable, Equatable {
        public var path: String
        public var port: Int
    }
    public var httpGet: HTTPGet
    public var timeoutSeconds: Int
    public var periodSeconds: Int
    public var failureThreshold: Int
}

public struct Resources: Codable, Sendable, Equatable {
    public var requests: [String: String]?
    public var limits: [String: String]?
}

public struct Container: Codable, Sendable, Equatable {
    public struct SecurityContext: Codable, Sendable, Equatable {
        public var allowPrivilegeEscalation = false
        public var runAsNonRoot: Bool?
    }
    public var name: String
    public var image: String
    public var command: [String]?
    public var args: [String]?
    public var env: [ContainerEnv]?
    public var ports: [ContainerPort]?
    public var resources: Resources?
    public var readinessProbe: Probe?
    public var livenessProbe: Probe?
    public var volumeMounts: [VolumeMount]?
    public var securityContext = SecurityContext()
}

public struct VolumeMount: Codable, Sendable, Equatable {
    public var name: String
    public var mountPath: String
}

public struct PodSpec: Codable, Sendable, Equatable {
    public var containers: [Container]
    public var automountServiceAccountToken = false
    public var enableServiceLinks = false
}

public struct PodTemplate: Codable, Sendable, Equatable {
    public var metadata: ObjectMeta
    public var spec: PodSpec
}

public struct Deployment: KubernetesObject, Codable, Equatable {
    public struct Spec: Codable, Sendable, Equatable {
        /// Nil when an autoscaler owns the count.
        public var replicas: Int?
        public var selector: LabelSelector
        public var template: PodTemplate
    }
    public var apiVersion = "apps/v1"
    public var kind = "Deployment"
    public var metadata: ObjectMeta
    public var spec: Spec
}

public struct KubeService: KubernetesObject, Codable, Equatable {
    public struct Port: Codable, Sendable, Equatable {
        public var name: String
        public var port: Int
        public var targetPort: Int
    }
    public struct Spec: Codable, Sendable, Equatable {
        public var selector: [String: String]
        public var ports: [Port]
        /// "None" for a StatefulSet's headless service.
        public var clusterIP: String?
    }
    public var apiVersion = "v1"
    public var kind = "Service"
    public var metadata: ObjectMeta
    public var spec: Spec
}

public struct Ingress: KubernetesObject, Codable, Equatable {
    public struct Backend: Codable, Sendable, Equatable {
        public struct ServiceBackend: Codable, Sendable, Equatable {
            public struct Port: Codable, Sendable, Equatable { public var number: Int }
            public var name: String
            public var port: Port
        }
        public var service: ServiceBackend
    }
    public struct Path: Codable, Sendable, Equatable {
        public var path = "/"
        public var pathType = "Prefix"
        public var backend: Backend
    }
    public struct Rule: Codable, Sendable, Equatable {
        public struct HTTP: Codable, Sendable, Equatable { public var paths: [Path] }
        public var host: String
        public var http: HTTP
    }
    public struct Spec: Codable, Sendable, Equatable {
        public var ingressClassName: String?
        public var rules: [Rule]
    }
    public var apiVersion = "networking.k8s.io/v1"
    public var kind = "Ingress"
    public var metadata: ObjectMeta
    public var spec: Spec
}

/// A Secret; its values are materialized on the data plane only (rendered with empty values).
public struct Secret: KubernetesObject, Codable, Equatable {
    public var apiVersion = "v1"
    public var kind = "Secret"
    public var metadata: ObjectMeta
    public var type = "Opaque"
    /// As rendered: the keys, with empty values (values are filled in on the data plane).
    public var stringData: [String: String]?
    /// As applied: base64 values.
    public var data: [String: String]?
}

public struct NetworkPolicy: KubernetesObject, Codable, Equatable {
    public struct Port: Codable, Sendable, Equatable {
        public var `protocol`: String
        public var port: Int
    }
    public struct Peer: Codable, Sendable, Equatable {
        public var namespaceSelector: LabelSelector?
        public var podSelector: LabelSelector?
    }
    public struct IngressRule: Codable, Sendable, Equatable {
        public var from: [Peer]
        public var ports: [Port]?
    }
    public struct EgressRule: Codable, Sendable, Equatable {
        public var to: [Peer]
        public var ports: [Port]?
    }
    public struct Spec: Codable, Sendable, Equatable {
        public var podSelector: LabelSelector
        public var policyTypes: [String]
        public var ingress: [IngressRule]
        public var egress: [EgressRule]
    }
    public var apiVersion = "networking.k8s.io/v1"
    public var kind = "NetworkPolicy"
    public var metadata: ObjectMeta
    public var spec: Spec
}

public struct ResourceQuota: KubernetesObject, Codable, Equatable {
    public struct Spec: Codable, Sendable, Equatable { public var hard: [String: String] }
    public var apiVersion = "v1"
    public var kind = "ResourceQuota"
    public var metadata: ObjectMeta
    public var spec: Spec
}

public struct LimitRange: KubernetesObject, Codable, Equatable {
    public struct Item: Codable, Sendable, Equatable {
        public var type = "Container"
        public var `default`: [String: String]
        public var defaultRequest: [String: String]
    }
    public struct Spec: Codable, Sendable, Equatable { public var limits: [Item] }
    public var apiVersion = "v1"
    public var kind = "LimitRange"
    public var metadata: ObjectMeta
    public var spec: Spec
}

public struct HorizontalPodAutoscaler: KubernetesObject, Codable, Equatable {
    public struct Target: Codable, Sendable, Equatable {
        public var apiVersion = "apps/v1"
        public var kind = "Deployment"
        public var name: String
    }
    public struct Metric: Codable, Sendable, Equatable {
        public struct ResourceMetric: Codable, Sendable, Equatable {
            public struct MetricTarget: Codable, Sendable, Equatable {
                public var type = "Utilization"
                public var averageUtilization: Int
            }
            public var name = "cpu"
            public var target: MetricTarget
        }
        public var type = "Resource"
        public var resource: ResourceMetric
    }
    public struct Spec: Codable, Sendable, Equatable {
        public var scaleTargetRef: Target
        public var minReplicas: Int
        public var maxReplicas: Int
        public var metrics: [Metric]
    }
    public var apiVersion = "autoscaling/v2"
    public var kind = "HorizontalPodAutoscaler"
    public var metadata: ObjectMeta
    public var spec: Spec
}

public struct StatefulSet: KubernetesObject, Codable, Equatable {
    public struct Claim: Codable, Sendable, Equatable {
        public struct Spec: Codable, Sendable, Equatable {
            public var accessModes = ["ReadWriteOnce"]
            public var resources: Resources
        }
        public var metadata: ObjectMeta
        public var spec: Spec
    }
    public struct Spec: Codable, Sendable, Equatable {
        public var serviceName: String
        public var replicas = 1
        public var selector: LabelSelector
        public var template: PodTemplate
        public var volumeClaimTemplates: [Claim]
    }
    public var apiVersion = "apps/v1"
    public var kind = "StatefulSet"
    public var metadata: ObjectMeta
    public var spec: Spec
}

/// CloudNativePG's `Cluster` (when that CRD is installed).
public struct PostgresCluster: KubernetesObject, Codable, Equatable {
    public struct Spec: Codable, Sendable, Equatable {
        public struct Storage: Codable, Sendable, Equatable { public var size: String }
        public struct Bootstrap: Codable, Sendable, Equatable {
            public struct InitDB: Codable, Sendable, Equatable {
                public var database: String
                public var owner: String
            }
            public var initdb: InitDB
        }
        public var instances = 1
        public var storage: Storage
        public var bootstrap: Bootstrap
    }
    public var apiVersion = "postgresql.cnpg.io/v1"
    public var kind = "Cluster"
    public var metadata: ObjectMeta
    public var spec: Spec
}
