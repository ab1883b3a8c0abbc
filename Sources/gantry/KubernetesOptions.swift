import ArgumentParser
import Foundation
import KubernetesDriver
import Logging
import Reconciler
import StateStore

/// `gantry run`'s cluster options: where the Kubernetes driver applies what gantry.yaml's
/// `drivers` put on it.
struct KubernetesOptions: ParsableArguments {
    @Option(help: "A kubeconfig for the kubernetes driver (default: $KUBECONFIG, else the pod's service account when Gantry runs in a cluster).")
    var kubeconfig: String?
    @Option(help: "The kubeconfig context to use (default: its current-context).")
    var kubeContext: String?
    @Option(help: "Seconds the kubernetes driver waits for a Deployment or StatefulSet to roll out.")
    var kubeRolloutTimeout: Double = 300
    @Option(help: "Seconds the kubernetes driver waits for a deleted namespace to go before it reports what holds it.")
    var kubeTeardownTimeout: Double = 120
    @Option(help: "Seconds between the kubernetes driver's drift checks of an environment.")
    var kubeDriftInterval: Double = 30
    @Option(help: "The ingressClassName of the environments' Ingresses (default: the cluster's default class).")
    var kubeIngressClass: String?

    func validate() throws {
        for (name, value) in [("--kube-rollout-timeout", kubeRolloutTimeout), ("--kube-teardown-timeout", kubeTeardownTimeout),
                              ("--kube-drift-interval", kubeDriftInterval)] where !(value > 0 && value <= 86_400) {
            throw ValidationError("\(name) must be 0 to 86400 seconds")
        }
    }

    /// The driver; without a cluster to reach it refuses each apply and says how to give it one.
    func driver(state: StateStore, logger: Logger) throws -> KubernetesDriver {
        var options = KubernetesDriver.Options()
        options.rolloutTimeout = kubeRolloutTimeout
        options.teardownTimeout = kubeTeardownTimeout
        options.driftInterval = kubeDriftInterval
        options.renderer.ingressClass = kubeIngressClass
        let environment = ProcessInfo.processInfo.environment
        let config: KubeConfig?
        if let path = kubeconfig ?? environment["KUBECONFIG"].flatMap({ $0.split(separator: ":").first.map(String.init) }) {
            config = try KubeConfig.load(path: path, context: kubeContext)
        } else if environment["KUBERNETES_SERVICE_HOST"] != nil {
            config = try KubeConfig.inCluster()
        } else {
            config = nil
        }
        if let config { logger.info("kubernetes driver: \(config.server) (\(config.origin))") }
        return KubernetesDriver(client: try config.map(KubeClient.init), state: state, logger: logger, options: options)
    }
}
