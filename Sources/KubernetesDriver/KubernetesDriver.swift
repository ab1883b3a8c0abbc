import Crypto
import Foundation
import Logging
import Reconciler
import SpecModel
import StateStore

/// Converges environments on a Kubernetes cluster: each environment's objects (`KubernetesRenderer`)
/// applied server-side as the field manager `gantry`, in stages (the namespace, then what
/// configures, then what runs), each object dry-run first and applied only when the answer differs
/// from what is live; objects a revision no longer renders pruned by the inventory kept in the
/// state DB (only those carrying Gantry's labels for the environment); rollouts awaited with a
/// bound, and the reason given when one stalls; teardown by deleting the namespace.
public final class KubernetesDriver: Driver, @unchecked Sendable {
    public struct Options: Sendable {
        public var renderer = KubernetesRenderer.Options()
        /// Whether CloudNativePG's `Cluster` is served; nil: ask the API server at each apply.
        public var cloudNativePG: Bool?
        public var rolloutTimeout: TimeInterval = 300
        public var teardownTimeout: TimeInterval = 120
        /// How often drift is looked for (per environment, in the background).
        public var driftInterval: TimeInterval = 30
        public init() {}
    }

    /// Its name in gantry.yaml's `drivers` and in the state DB's inventory.
    public static let name = "kubernetes"

    let client: KubeClient?
    /// Why there is no client (no kubeconfig given), for every apply that needs one.
    let unconfigured: String
    let state: StateStore
    let logger: Logger
    public let options: Options
    /// Values of secrets and the credentials made for databases and caches (set before the first apply).
    public var secrets: (any SecretResolver)?

    private let lock = NSLock()
    private var lastDriftCheck: [String: Date] = [:]
    private var driftFindings: [String: [String]] = [:]
    /// Environments whose kill switch was lifted and whose workloads are not restored yet.
    private var lifted: Set<String> = []
    private var driftRunning: Set<String> = []
    /// When each environment's last apply began: a drift check that started before it is stale.
    private var applyStarted: [String: Date] = [:]
    /// The environments a kill switch holds, with when that was last asserted on the cluster.
    private var killed: [String: Date] = [:]
    private let killQueue = DispatchQueue(label: "gantry.kubernetes.kill-switch")

    public init(client: KubeClient?, unconfigured: String = "this Gantry was started without a cluster (pass --kubeconfig PATH, or run it in a cluster)",
                state: StateStore, logger: Logger, options: Options = Options()) {
        self.client = client
        self.unconfigured = unconfigured
        self.state = state
        self.logger = logger
        self.options = options
    }

    func requireClient(_ environment: String) throws -> KubeClient {
        guard let client else {
            throw KubeAPIError(operation: "environment \(environment)", status: 0, reason: "NotConfigured",
                               message: "gantry.yaml's drivers put it on kubernetes, but \(unconfigured)")
        }
        return client
    }

    // MARK: Apply

    public func apply(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> ApplyOutcome {
        let client = try requireClient(environment.name)
        lock.withLock {
            applyStarted[environment.name] = Date()
            driftFindings[environment.name] = nil
        }
        let namespace = ObjectRef(apiVersion: "v1", kind: "Namespace", namespace: nil, name: KubernetesRenderer.namespace(of: environment.name))
        if Self.reserved(namespace.name, options: options) {
            throw RevisionError("the environment \(environment.name) would live in namespace \(namespace.name), which Gantry keeps for itself: rename the environment")
        }
        // The namespace is Gantry's only if Gantry made it: its claim (a random value kept in
        // the state DB before the namespace is made) is on it. Labels anyone could set; a
        // namespace made before, by anyone, is never adopted (it could hold their RoleBindings,
        // and would receive the environment's secrets).
        let claim = try claim(of: environment.name, make: true)!
        let objects = try desiredObjects(environment, client: client, claim: claim)
        var outcome = ApplyOutcome()
        if let live = try client.get(namespace) {
            guard Self.claimed(live, by: environment.name, claim: claim) else { throw Self.notOurs(namespace, environment.name) }
        }
        let wanted = objects.map(ObjectRef.init)
        let previous = try inventory(of: environment.name)
        // What is about to exist is in the inventory before it exists: an apply cut short leaves
        // nothing the next one cannot prune.
        try state.setInventory(Set(previous + wanted).map(\.entry), of: environment.name, driver: Self.name)
        if try client.get(namespace) == nil, let made = objects.first(where: { $0.kind == "Namespace" }) {
            progress("creating namespace \(namespace.name)")
            do {
                _ = try client.create(namespace, json: try made.jsonData())
            } catch let error as KubeAPIError where error.status == 409 {
                throw Self.notOurs(namespace, environment.name)
            }
            outcome.changes.append("\(namespace) created")
        }
        for (index, stage) in Self.stages(objects).enumerated() where !stage.isEmpty {
            progress("stage \(index + 1) of 3: \(stage.map { ObjectRef($0).description }.joined(separator: ", "))")
            for object in stage {
                if let change = try converge(object, client: client, progress: progress) { outcome.changes.append(change) }
            }
        }
        // Applied, the environment runs again: a kill switch's deny-all policy goes, now that
        // its own policy is back (never before: no policy at all would let everything through).
        // An apply that was under way when a switch came on cuts it off again at once instead.
        let killPolicy = Self.killPolicy(in: namespace.name)
        if lock.withLock({ killed.removeValue(forKey: environment.name) != nil }) {
            try setKilled(environment.name, true)
            outcome.changes.append("cut off again: a kill switch came on during the apply")
        } else {
            if try client.delete(killPolicy) { outcome.changes.append("\(killPolicy) deleted (the kill switch was lifted)") }
            lock.withLock { _ = lifted.remove(environment.name) }
        }
        var kept = wanted
        for ref in Set(previous).subtracting(wanted).sorted() {
            switch try prune(ref, environment: environment.name, client: client) {
            case .deleted:
                progress("pruned \(ref)")
                outcome.changes.append("\(ref) deleted (no longer rendered)")
            case .gone: break
            case .notOurs(let why):
                outcome.changes.append("\(ref) left in place: \(why)")
            case .failed(let error):
                kept.append(ref)
                logger.warning("could not prune", metadata: ["gantry.env": "\(environment.name)", "object": "\(ref)", "error": "\(error)"])
                outcome.changes.append("\(ref) not pruned yet: \(error)")
            }
        }
        try state.setInventory(kept.map(\.entry), of: environment.name, driver: Self.name)
        for object in objects where ["Deployment", "StatefulSet"].contains(object.kind) {
            try awaitRollout(ObjectRef(object), client: client, progress: progress)
        }
        return outcome
    }

    static func notOurs(_ namespace: ObjectRef, _ environment: String) -> RevisionError {
        RevisionError("namespace \(namespace.name) exists and Gantry did not make it for \(environment) (it lacks Gantry's claim): Gantry never adopts a namespace; rename the environment, or delete that namespace")
    }

    /// The random claim Gantry puts on the namespace it makes for `environment` (made and kept first when `make`).
    func claim(of environment: String, make: Bool) throws -> String? {
        let key = "kubernetes.claim." + environment
        if let known: String = try state.meta(key) { return known }
        guard make else { return nil }
        let made = SymmetricKey(size: .bits128).withUnsafeBytes { Data($0) }.map { String(format: "%02x", $0) }.joined()
        try state.setMeta(key, made)
        return made
    }

    /// Whether a live namespace is the one Gantry made for `environment`.
    static func claimed(_ namespace: JSONObject, by environment: String, claim: String?) -> Bool {
        let annotations = (namespace["metadata"] as? JSONObject)?["annotations"] as? [String: String] ?? [:]
        return owned(namespace, by: environment) && claim != nil && annotations[claimAnnotation] == claim
    }

    static let claimAnnotation = "gantry.dev/claim"

    /// The environment's objects as they should be live, secrets with their values, the namespace with its claim.
    func desiredObjects(_ environment: PlannedEnvironment, client: KubeClient, claim: String) throws -> [KubeObject] {
        var options = self.options.renderer
        options.cloudNativePG = try self.options.cloudNativePG ?? client.serves("postgresql.cnpg.io/v1")
        let objects: [KubeObject]
        do {
            objects = try KubernetesRenderer(options: options).render(environment.spec, commit: environment.commit.hex, domain: environment.domain)
        } catch let error as KubernetesRenderer.RenderError {
            throw RevisionError(error.description)
        }
        return try objects.map { object in
            guard var namespace = object.as(Namespace.self) else { return try materialize(object, environment: environment) }
            namespace.metadata.annotations = (namespace.metadata.annotations ?? [:]).merging([Self.claimAnnotation: claim]) { $1 }
            return KubeObject(namespace)
        }
    }

    /// Namespaces and what defines kinds first, then what configures (secrets, quotas, policies,
    /// services), then what runs (workloads, autoscalers, ingresses): like Flux's
    /// kustomize-controller, nothing is applied before what it needs exists.
    static func stages(_ objects: [KubeObject]) -> [[KubeObject]] {
        let first: Set<String> = ["Namespace", "CustomResourceDefinition"]
        let second: Set<String> = ["Secret", "ResourceQuota", "LimitRange", "NetworkPolicy", "Service", "ServiceAccount"]
        return [objects.filter { first.contains($0.kind) },
                objects.filter { second.contains($0.kind) },
                objects.filter { !first.contains($0.kind) && !second.contains($0.kind) }]
    }

    /// Applies one object when the server says applying it would change what is live; what
    /// changed (field paths, never values), nil when nothing did.
    func converge(_ object: KubeObject, client: KubeClient, progress: (String) -> Void) throws -> String? {
        let ref = ObjectRef(object)
        let json = try object.jsonData()
        do {
            guard let live = try client.get(ref) else {
                progress("creating \(ref)")
                _ = try client.apply(ref, json: json)
                return "\(ref) created"
            }
            let preview = try client.apply(ref, json: json, dryRun: true)
            let changed = Self.differences(Self.comparable(live), Self.comparable(preview))
            guard !changed.isEmpty else { return nil }
            progress("updating \(ref): \(changed.joined(separator: ", "))")
            _ = try client.apply(ref, json: json)
            return "\(ref) configured (\(changed.joined(separator: ", ")))"
        } catch let error as KubeAPIError where ref.kind == "Secret" && error.status != 0 {
            // (What the server says of a Secret may quote it.)
            throw KubeAPIError(operation: error.operation, status: error.status, reason: error.reason, message: "the server refused the Secret (its message is withheld: it may hold a value)")
        }
    }

    enum Pruned { case deleted, gone, notOurs(String), failed(any Error) }

    /// Deletes an object a revision no longer renders, if it still carries Gantry's labels for
    /// this environment (someone may have taken it over since).
    func prune(_ ref: ObjectRef, environment: String, client: KubeClient) throws -> Pruned {
        guard ref.kind != "Namespace" else { return .notOurs("the namespace goes only with the environment") }
        do {
            guard let live = try client.get(ref) else { return .gone }
            guard Self.owned(live, by: environment) else {
                return .notOurs("it no longer carries Gantry's labels for \(environment)")
            }
            return try client.delete(ref) ? .deleted : .gone
        } catch {
            return .failed(error)
        }
    }

    /// Namespaces no environment may have: Gantry's own (its Deployment, the egress proxy).
    static func reserved(_ namespace: String, options: Options) -> Bool {
        [KubernetesRenderer.systemNamespace, options.renderer.egressNamespace].contains(namespace)
    }

    static func owned(_ object: JSONObject, by environment: String) -> Bool {
        let labels = (object["metadata"] as? JSONObject)?["labels"] as? [String: String] ?? [:]
        return labels["app.kubernetes.io/managed-by"] == KubernetesRenderer.managedBy && labels["gantry.dev/environment"] == environment
    }

    func inventory(of environment: String) throws -> [ObjectRef] {
        try state.inventory(of: environment, driver: Self.name).compactMap(ObjectRef.init(entry:))
    }

    // MARK: Secrets

    /// A rendered Secret with its values (from the secret store, and the credentials Gantry makes);
    /// everything else as rendered.
    func materialize(_ object: KubeObject, environment: PlannedEnvironment) throws -> KubeObject {
        guard var secret = object.as(Secret.self) else { return object }
        let keys = (secret.stringData ?? [:]).keys.sorted()
        var data: [String: String] = [:]
        let namespace = KubernetesRenderer.namespace(of: environment.name)
        for key in keys {
            let value: Data
            if secret.metadata.name == "gantry-secrets" {
                guard let secrets else { throw KubeAPIError(operation: "secrets of \(environment.name)", status: 0, reason: "NotConfigured", message: "no secret store") }
                guard let found = try secrets.resolve(key, for: environment.spec) else {
                    throw RevisionError("secret \(key) is not set for \(environment.name): set it with `gantry secret set \(key) --env \(environment.name)`")
                }
                value = found.value
            } else {
                value = Data(try credential(key, spec: environment.spec, namespace: namespace).utf8)
            }
            data[key] = value.base64EncodedString()
        }
        secret.stringData = nil
        secret.data = data
        return KubeObject(secret)
    }

    /// `<name>-password` (made once, kept by the secret store) or `<name>-url` for a database or
    /// cache of `spec`. With CloudNativePG a database's URL is the operator's own (`<cluster>-app`).
    func credential(_ key: String, spec: EnvironmentSpec, namespace: String) throws -> String {
        guard let secrets else { throw KubeAPIError(operation: "credentials of \(spec.name)", status: 0, reason: "NotConfigured", message: "no secret store") }
        func password(_ name: String) throws -> String {
            let found = try secrets.credential("kubernetes.\(name)", environment: spec.name) {
                SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }.map { String(format: "%02x", $0) }.joined()
            }
            return String(decoding: found.value, as: UTF8.self)
        }
        if key.hasSuffix("-password") { return try password(String(key.dropLast("-password".count))) }
        let name = String(key.dropLast("-url".count))
        if spec.caches.contains(where: { $0.name == name }) {
            return "redis://default:\(try password(name))@redis-\(name).\(namespace).svc.cluster.local:6379/0"
        }
        return "postgres://\(name):\(try password(name))@postgres-\(name).\(namespace).svc.cluster.local:5432/\(name)"
    }

    // MARK: Rollouts

    enum Rollout: Equatable { case ready, progressing(String), stalled(String) }

    /// Where a Deployment's or StatefulSet's rollout stands.
    static func rollout(_ object: JSONObject?) -> Rollout {
        guard let object else { return .progressing("it is gone") }
        let metadata = object["metadata"] as? JSONObject ?? [:], spec = object["spec"] as? JSONObject ?? [:]
        let status = object["status"] as? JSONObject ?? [:]
        func int(_ dictionary: JSONObject, _ key: String) -> Int { (dictionary[key] as? NSNumber)?.intValue ?? 0 }
        let generation = int(metadata, "generation"), observed = int(status, "observedGeneration")
        for condition in status["conditions"] as? [JSONObject] ?? [] where condition["type"] as? String == "Progressing" {
            if condition["status"] as? String == "False" || condition["reason"] as? String == "ProgressDeadlineExceeded" {
                return .stalled("\(condition["reason"] as? String ?? "not progressing"): \(condition["message"] as? String ?? "")")
            }
        }
        guard observed >= generation else { return .progressing("the controller has not seen generation \(generation) yet") }
        let wanted = spec["replicas"] != nil ? int(spec, "replicas") : max(1, int(status, "replicas"))
        let updated = int(status, "updatedReplicas"), ready = int(status, "readyReplicas"), total = int(status, "replicas")
        if object["kind"] as? String == "StatefulSet" {
            let revisions = (status["currentRevision"] as? String) == (status["updateRevision"] as? String)
            return ready >= wanted && revisions ? .ready : .progressing("\(ready) of \(wanted) replicas ready")
        }
        let available = int(status, "availableReplicas")
        if updated < wanted { return .progressing("\(updated) of \(wanted) replicas updated") }
        if total > updated { return .progressing("\(total - updated) old replicas still running") }
        if available < updated { return .progressing("\(available) of \(updated) updated replicas available") }
        _ = ready
        return .ready
    }

    /// Waits (at most `rolloutTimeout`) until the workload runs its new revision; else throws
    /// with the reason: the controller's condition and what its pods are waiting on.
    func awaitRollout(_ ref: ObjectRef, client: KubeClient, progress: (String) -> Void) throws {
        // (Most applies change no workload: one GET says so without opening a watch.)
        var last = try client.get(ref)
        if !Self.settled(Self.rollout(last)) {
            progress("waiting for \(ref) to roll out")
            let version = (last?["metadata"] as? JSONObject)?["resourceVersion"] as? String
            last = try client.watch(ref, timeout: options.rolloutTimeout, after: version) { Self.settled(Self.rollout($0)) } ?? last
        }
        let state = Self.rollout(last)
        switch state {
        case .ready:
            return
        case .progressing(let why), .stalled(let why):
            let pods = (try? podProblems(last, ref: ref, client: client)) ?? []
            let stalled: String
            if case .stalled = state { stalled = "has stalled" } else { stalled = "did not roll out within \(Int(options.rolloutTimeout)) s" }
            throw RolloutError(description: "\(ref) \(stalled): \(why)" + (pods.isEmpty ? "" : "; " + pods.joined(separator: "; ")))
        }
    }

    static func settled(_ state: Rollout) -> Bool {
        if case .progressing = state { return false }
        return true
    }

    /// What the workload's pods are waiting on (`ErrImagePull`, `CrashLoopBackOff`...), from their container statuses.
    func podProblems(_ workload: JSONObject?, ref: ObjectRef, client: KubeClient) throws -> [String] {
        let selector = ((workload?["spec"] as? JSONObject)?["selector"] as? JSONObject)?["matchLabels"] as? [String: String] ?? [:]
        guard !selector.isEmpty else { return [] }
        var problems: [String] = []
        for pod in try client.list(apiVersion: "v1", kind: "Pod", namespace: ref.namespace, labels: selector).prefix(5) {
            let name = (pod["metadata"] as? JSONObject)?["name"] as? String ?? "?"
            for container in (pod["status"] as? JSONObject)?["containerStatuses"] as? [JSONObject] ?? [] {
                let state = container["state"] as? JSONObject ?? [:]
                let label = "pod \(name): container \(container["name"] as? String ?? "?")"
                // Reasons only, and the kubelet's own words for an image it cannot pull: a
                // container's messages (its termination log) are the workload's to write, and
                // nothing it writes goes into Gantry's records.
                if let waiting = state["waiting"] as? JSONObject, let reason = waiting["reason"] as? String {
                    let kubelets = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"]
                    let message = kubelets.contains(reason) ? (waiting["message"] as? String).map { ": " + String($0.prefix(300)) } ?? "" : ""
                    problems.append("\(label) waiting: \(reason)\(message)")
                }
                if let terminated = state["terminated"] as? JSONObject, let reason = terminated["reason"] as? String {
                    let code = (terminated["exitCode"] as? NSNumber).map { " (exit code \($0.intValue))" } ?? ""
                    problems.append("\(label) terminated: \(reason)\(code)")
                }
            }
        }
        return problems
    }

    // MARK: The kill switch

    /// The field manager of what the kill switch changes (replicas at 0): the next apply after
    /// the lift takes the fields back.
    public static let killSwitchManager = "gantry-kill-switch"

    /// `setKilled` on a queue of its own (a cluster that answers slowly holds no caller), logged.
    public func killSwitch(_ environment: String, _ on: Bool) {
        killQueue.async { [self] in
            do { try setKilled(environment, on) } catch {
                lock.withLock { killed[environment] = nil }
                logger.error("kill switch: the cluster did not follow", metadata: ["gantry.env": "\(environment)", "on": "\(on)", "error": "\(error)"])
            }
        }
    }

    static func killPolicy(in namespace: String) -> ObjectRef {
        ObjectRef(apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", namespace: namespace, name: "gantry-kill-switch")
    }

    /// A kill switch on an environment on the cluster: first a policy that lets nothing in or
    /// out (and then the environment's own, which lets DNS and the egress proxy through, goes:
    /// policies add up), then every workload scaled to 0 (an HPA stands still at 0). Lifted,
    /// the next pass applies the running revision again (through the reconciler, one operation
    /// at a time), which restores both and removes the deny-all policy last.
    public func setKilled(_ environment: String, _ on: Bool) throws {
        guard let client, holds(environment: environment) else { return }
        let namespace = KubernetesRenderer.namespace(of: environment)
        guard on else {
            lock.withLock {
                killed[environment] = nil
                lifted.insert(environment)
                driftFindings[environment] = ["the kill switch was lifted: its replicas and network policy are restored"]
                lastDriftCheck[environment] = Date()
            }
            return
        }
        // (Asserted again every 10 s while on: an apply that was under way when the switch came
        // on may have put something back.)
        let due: Bool = lock.withLock {
            lifted.remove(environment)
            guard killed[environment].map({ Date().timeIntervalSince($0) >= 10 }) ?? true else { return false }
            killed[environment] = Date()
            return true
        }
        guard due else { return }
        let labels = ["app.kubernetes.io/managed-by": KubernetesRenderer.managedBy, "gantry.dev/environment": environment]
        let deny = NetworkPolicy(metadata: ObjectMeta(name: "gantry-kill-switch", namespace: namespace, labels: labels, annotations: nil),
                                 spec: .init(podSelector: LabelSelector(matchLabels: [:]), policyTypes: ["Ingress", "Egress"], ingress: [], egress: []))
        _ = try client.apply(Self.killPolicy(in: namespace), json: try KubeObject(deny).jsonData(), manager: Self.killSwitchManager)
        try client.delete(ObjectRef(apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", namespace: namespace, name: "gantry-isolation"))
        for ref in try inventory(of: environment) where ["Deployment", "StatefulSet"].contains(ref.kind) {
            let body = #"{"apiVersion":"\#(ref.apiVersion)","kind":"\#(ref.kind)","metadata":{"name":"\#(ref.name)"},"spec":{"replicas":0}}"#
            _ = try client.apply(ref, json: Data(body.utf8), manager: Self.killSwitchManager)
        }
    }

    // MARK: Teardown

    public func destroy(environment name: String, sources: (any SourceStore)?, progress: (String) -> Void) throws -> [String] {
        let held = try inventory(of: name)
        guard !held.isEmpty else { return [] }
        let client = try requireClient(name)
        var left: [String] = []
        let namespace = ObjectRef(apiVersion: "v1", kind: "Namespace", namespace: nil, name: KubernetesRenderer.namespace(of: name))
        if let live = try client.get(namespace) {
            if Self.claimed(live, by: name, claim: try claim(of: name, make: false)), !Self.reserved(namespace.name, options: options) {
                progress("deleting namespace \(namespace.name)")
                try client.delete(namespace)
                if let stuck = try awaitDeletion(namespace, client: client) { left.append(stuck) }
            } else {
                left.append("namespace \(namespace.name) is not the one Gantry made for \(name) (its labels or claim changed): left in place")
            }
        }
        try state.setInventory([], of: name, driver: Self.name)
        try state.setMeta("kubernetes.claim." + name, String?.none)
        try secrets?.forgetCredentials(of: name)
        lock.withLock {
            lastDriftCheck[name] = nil
            driftFindings[name] = nil
            lifted.remove(name)
        }
        return left
    }

    /// Waits (at most `teardownTimeout`) for a deleted namespace to go; what keeps it, if it stays.
    func awaitDeletion(_ namespace: ObjectRef, client: KubeClient) throws -> String? {
        let deadline = Date().addingTimeInterval(options.teardownTimeout)
        var last: JSONObject?
        repeat {
            guard let live = try client.get(namespace) else { return nil }
            last = live
            Thread.sleep(forTimeInterval: 0.25)
        } while Date() < deadline
        let conditions = ((last?["status"] as? JSONObject)?["conditions"] as? [JSONObject] ?? [])
            .filter { $0["status"] as? String == "True" }.compactMap { $0["message"] as? String }
        return "namespace \(namespace.name) is still terminating after \(Int(options.teardownTimeout)) s"
            + (conditions.isEmpty ? "" : ": " + conditions.joined(separator: "; "))
            + " (Kubernetes removes it once those finalizers are done)"
    }

    // MARK: Drift

    /// A lifted kill switch is undone even with `--detect-only`: the workloads Gantry scaled to 0
    /// and the policy it removed are its own doing, not drift by others.
    public func restoresOwnCut(_ environment: PlannedEnvironment) -> Bool {
        lock.withLock { lifted.contains(environment.name) }
    }

    /// What of the environment differs from what Gantry applied (found by a background check at
    /// most every `driftInterval`); the findings are handed over once.
    public func drift(_ environment: PlannedEnvironment) -> [String] {
        guard let client else { return [] }
        let name = environment.name
        let (found, due): ([String], Bool) = lock.withLock {
            let found = driftFindings.removeValue(forKey: name) ?? []
            let due = !driftRunning.contains(name) && (lastDriftCheck[name].map { Date().timeIntervalSince($0) >= options.driftInterval } ?? true)
            if due {
                driftRunning.insert(name)
                lastDriftCheck[name] = Date()
            }
            return (found, due)
        }
        if due {
            let started = Date()
            DispatchQueue.global().async { [self] in
                let findings = (try? differences(environment, client: client)) ?? []
                lock.withLock {
                    driftRunning.remove(name)
                    let stale = applyStarted[name].map { $0 >= started } ?? false
                    if !findings.isEmpty, !stale { driftFindings[name] = findings }
                }
            }
        }
        return found
    }

    public func checksDrift(_ environment: PlannedEnvironment) -> Bool { client != nil }

    public func holds(environment name: String) -> Bool { (try? !inventory(of: name).isEmpty) ?? true }

    /// Each object that is missing or that applying again would change, with the fields and who changed them.
    func differences(_ environment: PlannedEnvironment, client: KubeClient) throws -> [String] {
        var found: [String] = []
        guard let claim = try claim(of: environment.name, make: false) else { return [] }
        for object in try desiredObjects(environment, client: client, claim: claim) {
            let ref = ObjectRef(object)
            guard let live = try client.get(ref) else {
                found.append("\(ref) is missing")
                continue
            }
            let preview = try client.apply(ref, json: try object.jsonData(), dryRun: true)
            let changed = Self.differences(Self.comparable(live), Self.comparable(preview))
            guard !changed.isEmpty else { continue }
            let managers = ((live["metadata"] as? JSONObject)?["managedFields"] as? [JSONObject] ?? [])
                .compactMap { $0["manager"] as? String }.filter { $0 != KubeClient.fieldManager }
            found.append("\(ref): \(changed.joined(separator: ", ")) changed" + (managers.isEmpty ? "" : " (by \(managers.sorted().joined(separator: ", ")))"))
        }
        return found
    }

    /// An object without what the server keeps for itself (status, versions, field owners) nor
    /// the commit annotation (a new commit alone changes nothing).
    static func comparable(_ object: JSONObject) -> JSONObject {
        var object = object
        object["status"] = nil
        var metadata = object["metadata"] as? JSONObject ?? [:]
        for key in ["resourceVersion", "managedFields", "generation", "uid", "creationTimestamp", "selfLink"] { metadata[key] = nil }
        if var annotations = metadata["annotations"] as? JSONObject {
            annotations["gantry.dev/commit"] = nil
            metadata["annotations"] = annotations.isEmpty ? nil : annotations
        }
        object["metadata"] = metadata
        return object
    }

    /// The paths (`spec.replicas`) where two objects differ; lists compare whole.
    static func differences(_ a: JSONObject, _ b: JSONObject, prefix: String = "") -> [String] {
        var paths: [String] = []
        for key in Set(a.keys).union(b.keys).sorted() {
            let path = prefix.isEmpty ? key : prefix + "." + key
            switch (a[key], b[key]) {
            case let (left as JSONObject, right as JSONObject): paths += differences(left, right, prefix: path)
            case (nil, nil): break
            case let (left?, right?) where jsonEqual(left, right): break
            default: paths.append(path)
            }
        }
        return paths
    }

    /// Whether two decoded JSON values are the same.
    static func jsonEqual(_ a: Any, _ b: Any) -> Bool {
        switch (a, b) {
        case let (left as JSONObject, right as JSONObject):
            return left.count == right.count && left.allSatisfy { key, value in right[key].map { jsonEqual(value, $0) } ?? false }
        case let (left as [Any], right as [Any]):
            return left.count == right.count && zip(left, right).allSatisfy { jsonEqual($0, $1) }
        case let (left as String, right as String): return left == right
        case let (left as NSNumber, right as NSNumber): return left == right
        case (is NSNull, is NSNull): return true
        default: return false
        }
    }

    // MARK: The rest of the driver's duties

    /// The cluster keeps what survived Gantry; nothing to adopt.
    public func recover(desired: Set<String>) -> [DriverEvent] { [] }

    /// The cluster restarts what crashes itself.
    public func supervise(correct: Bool) -> [DriverEvent] { [] }

    /// What runs on the cluster keeps running when Gantry stops.
    public func shutdown() {}
}

/// A workload that did not roll out: retried with backoff (an image may yet be pushed).
public struct RolloutError: Error, CustomStringConvertible {
    public let description: String
}

extension KubeAPIError: ClassifiedError {
    /// What the server refuses as invalid stays refused until a new commit; the rest is retried.
    public var disposition: ErrorDisposition { status == 422 || status == 400 ? .stallUntilNewCommit : .retryWithBackoff }
}
