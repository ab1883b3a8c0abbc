import Foundation
import SpecLoading

/// Where the cluster is and how to prove who Gantry is: read from a kubeconfig file (one context
/// of it) or, inside a pod, from its service account.
public struct KubeConfig: Sendable {
    /// `https://host:port` (no trailing slash).
    public var server: String
    public var token: String?
    /// A token read again for every request (a projected service-account token rotates).
    public var tokenFile: String?
    /// PEM.
    public var certificateAuthority: [UInt8]?
    public var clientCertificate: [UInt8]?
    public var clientKey: [UInt8]?
    public var insecureSkipTLSVerify = false
    /// Where this came from, for messages: `~/.kube/config (context kind-gantry)`, `in-cluster`.
    public var origin: String

    public init(server: String, origin: String) {
        self.server = server.hasSuffix("/") ? String(server.dropLast()) : server
        self.origin = origin
    }

    /// The token to send now, if any.
    func currentToken() throws -> String? {
        if let tokenFile {
            guard let data = FileManager.default.contents(atPath: tokenFile) else {
                throw KubeConfigError("\(origin): the token file \(tokenFile) cannot be read")
            }
            return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return token
    }

    /// The service account of the pod Gantry runs in (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 directory: String = "/var/run/secrets/kubernetes.io/serviceaccount") throws -> KubeConfig {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], let port = environment["KUBERNETES_SERVICE_PORT"] else {
            throw KubeConfigError("not in a cluster (KUBERNETES_SERVICE_HOST is not set): pass --kubeconfig PATH")
        }
        var config = KubeConfig(server: "https://\(host.contains(":") ? "[\(host)]" : host):\(port)", origin: "in-cluster service account")
        config.tokenFile = directory + "/token"
        guard let ca = FileManager.default.contents(atPath: directory + "/ca.crt") else {
            throw KubeConfigError("in-cluster: \(directory)/ca.crt cannot be read (is a service account mounted?)")
        }
        config.certificateAuthority = Array(ca)
        return config
    }

    /// The context `context` (else `current-context`) of the kubeconfig at `path`.
    public static func load(path: String, context wanted: String? = nil) throws -> KubeConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KubeConfigError("\(path): cannot be read (pass --kubeconfig with a readable file)")
        }
        let root: YAMLNode
        do {
            root = try YAMLParser().parse(data, file: path)
        } catch let problem as Diagnostic {
            throw KubeConfigError("\(problem)")
        }
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        func fail(_ node: YAMLNode, _ message: String) -> KubeConfigError { KubeConfigError("\(node.mark): \(message)") }
        func field(_ node: YAMLNode, _ key: String) -> YAMLNode? {
            guard case .mapping(let pairs, _) = node else { return nil }
            return pairs.first(where: { $0.key.scalarText == key })?.value
        }
        func text(_ node: YAMLNode, _ key: String) throws -> String? {
            guard let value = field(node, key), !value.isNull else { return nil }
            guard let text = value.scalarText else { throw fail(value, "\(key) must be a string, found \(value.kindDescription)") }
            return text
        }
        /// The entry named `name` of the list `list` (clusters, users, contexts), its `inner` mapping.
        func entry(_ list: String, _ name: String, _ inner: String, at reference: YAMLNode) throws -> YAMLNode {
            guard case .sequence(let items, _)? = field(root, list) else {
                throw fail(root, "\(list) is missing (a kubeconfig lists clusters, users and contexts)")
            }
            guard let item = items.first(where: { (try? text($0, "name")) == name }), let body = field(item, inner) else {
                let known = items.compactMap { try? text($0, "name") }
                throw fail(reference, "\(list) has no entry named '\(name)' (it has: \(known.isEmpty ? "none" : known.joined(separator: ", ")))")
            }
            return body
        }
        func bytes(_ node: YAMLNode, data key: String, file fileKey: String) throws -> [UInt8]? {
            if let encoded = try text(node, key) {
                guard let decoded = Data(base64Encoded: encoded, options: .ignoreUnknownCharacters) else {
                    throw fail(field(node, key)!, "\(key) is not base64")
                }
                return Array(decoded)
            }
            guard let file = try text(node, fileKey) else { return nil }
            let resolved = file.hasPrefix("/") ? file : directory + "/" + file
            guard let contents = FileManager.default.contents(atPath: resolved) else {
                throw fail(field(node, fileKey)!, "\(fileKey) \(resolved) cannot be read")
            }
            return Array(contents)
        }

        let contextNode = field(root, "current-context") ?? root
        guard let name = try wanted ?? text(root, "current-context") else {
            throw fail(root, "no current-context: pass --kube-context NAME")
        }
        let context = try entry("contexts", name, "context", at: contextNode)
        guard let clusterName = try text(context, "cluster"), let userName = try text(context, "user") else {
            throw fail(context, "context '\(name)' must name a cluster and a user")
        }
        let cluster = try entry("clusters", clusterName, "cluster", at: context)
        let user = try entry("users", userName, "user", at: context)
        guard let server = try text(cluster, "server"), server.hasPrefix("https://") || server.hasPrefix("http://") else {
            throw fail(cluster, "cluster '\(clusterName)' needs a server (https://host:port)")
        }
        if let exec = field(user, "exec") ?? field(user, "auth-provider") {
            throw fail(exec, "user '\(userName)' authenticates with a plugin, which Gantry does not run: give it a token (a ServiceAccount's, see deploy/kubernetes/) or a client certificate")
        }
        var config = KubeConfig(server: server, origin: "\(path) (context \(name))")
        config.certificateAuthority = try bytes(cluster, data: "certificate-authority-data", file: "certificate-authority")
        config.insecureSkipTLSVerify = try text(cluster, "insecure-skip-tls-verify") == "true"
        config.token = try text(user, "token")
        if let file = try text(user, "tokenFile") { config.tokenFile = file.hasPrefix("/") ? file : directory + "/" + file }
        config.clientCertificate = try bytes(user, data: "client-certificate-data", file: "client-certificate")
        config.clientKey = try bytes(user, data: "client-key-data", file: "client-key")
        if (config.clientCertificate == nil) != (config.clientKey == nil) {
            throw fail(user, "user '\(userName)' has a client certificate without its key, or a key without its certificate")
        }
        return config
    }
}

public struct KubeConfigError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
