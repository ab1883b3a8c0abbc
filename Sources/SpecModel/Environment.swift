/// The class of an environment. Previews are always `preview`; the others come from the spec.
public enum EnvironmentClass: String, Sendable, Codable, CaseIterable {
    case production, staging, development, preview
}

/// One environment as Gantry will run it: the spec after its template is merged.
/// String values may still hold `${...}` references until the driver interpolates them.
public struct EnvironmentSpec: Sendable, Codable, Equatable {
    public var name: String
    public var team: String?
    public var `class`: EnvironmentClass
    public var template: String?
    public var services: [Service] = []
    public var databases: [Database] = []
    public var caches: [Cache] = []
    public var secrets: [String] = []
    public var routes: [Route] = []
    public var jobs: [Job] = []
    public var lifecycle = Lifecycle()
    public var budget: Budget?
    /// `spec.egress`: hosts every service may reach through the egress proxy (nil: none).
    public var egress: [String]?
    /// Credentials the proxy adds for every service (from `{host, inject}` entries of `spec.egress`).
    public var egressInject: [EgressInject]?

    public init(name: String, team: String?, class: EnvironmentClass) {
        self.name = name
        self.team = team
        self.class = `class`
    }

    public func service(named name: String) -> Service? { services.first { $0.name == name } }
}

public struct Service: Sendable, Codable, Equatable {
    public var name: String
    /// Repository path whose files become the working directory; nil runs in an empty directory.
    public var source: String?
    public var command: [String] = []
    public var image: String?
    public var replicas = 1
    public var health: Health?
    public var resources = Resources()
    public var env: [EnvVar] = []
    public var egress: [String] = []
    /// Credentials the proxy adds for this service (from `{host, inject}` entries of its `egress`).
    public var egressInject: [EgressInject]?
    /// Replicas follow the router's in-flight requests between `min` and `max` (the local driver);
    /// `replicas` is then the count a first apply starts with.
    public var autoscale: Autoscale?

    public init(name: String) { self.name = name }
}

/// `spec.services.S.autoscale`: replicas rise with in-flight requests (`targetConcurrency` per
/// replica), up to `max`; `min: 0` lets an idle service sleep until a request wakes it.
public struct Autoscale: Sendable, Codable, Equatable {
    public var min = 1
    public var max = 1
    public var targetConcurrency = 10.0
    public init(min: Int = 1, max: Int = 1, targetConcurrency: Double = 10) {
        self.min = min
        self.max = max
        self.targetConcurrency = targetConcurrency
    }
}

public struct EnvVar: Sendable, Codable, Equatable {
    public var name: String
    public var value: String
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

public struct Health: Sendable, Codable, Equatable {
    /// HTTP path probed with GET; 2xx and 3xx are healthy.
    public var http: String?
    /// Seconds a probe may take.
    public var timeout: Double = 5
    public init(http: String?, timeout: Double = 5) {
        self.http = http
        self.timeout = timeout
    }
}

public struct Resources: Sendable, Codable, Equatable {
    public var cpu: Double?
    /// Bytes.
    public var memory: Int?
    public init() {}
}

public struct Database: Sendable, Codable, Equatable {
    public var name: String
    public var engine: String
    public var seed: String?
    public var cloneFrom: String?
    public init(name: String, engine: String) {
        self.name = name
        self.engine = engine
    }
}

public struct Cache: Sendable, Codable, Equatable {
    public var name: String
    public var engine: String
    public init(name: String, engine: String) {
        self.name = name
        self.engine = engine
    }
}

public struct Route: Sendable, Codable, Equatable {
    public var name: String
    public var service: String
    public init(name: String, service: String) {
        self.name = name
        self.service = service
    }
}

public struct Job: Sendable, Codable, Equatable {
    public var name: String
    public var onCreate: [String]?
    public var onDestroy: [String]?
    public init(name: String) { self.name = name }
}

public struct Lifecycle: Sendable, Codable, Equatable {
    /// Seconds.
    public var idleSleepAfter: Double?
    public var ttl: Double?
    public init() {}
}

public struct Budget: Sendable, Codable, Equatable {
    public var hourly: Double?
    public init() {}
}
