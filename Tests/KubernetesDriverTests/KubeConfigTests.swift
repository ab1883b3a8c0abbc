import Foundation
@testable import KubernetesDriver
import Testing
import TestSupport

/// How the driver finds the cluster and proves who it is: a kubeconfig's token or client
/// certificate, the cluster's CA, a service account in a pod; and what it says when one is wrong.
@Suite struct KubeConfigTests {
    @Test func aClientCertificateIsPresentedWhenTheServerDemandsOne() throws {
        let directory = TemporaryDirectory("gantry-kube-ca")
        let ca = directory.path + "/ca.pem", caKey = directory.path + "/ca.key"
        let cert = directory.path + "/client.pem", key = directory.path + "/client.key", request = directory.path + "/client.csr"
        _ = try Shell.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", caKey, "-out", ca, "-days", "1", "-subj", "/CN=test-ca"])
        _ = try Shell.check(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=gantry/O=gantry"])
        _ = try Shell.check(["openssl", "x509", "-req", "-in", request, "-CA", ca, "-CAkey", caKey, "-CAcreateserial", "-out", cert, "-days", "1"])
        let cluster = try FakeCluster(clientCA: ca)
        let serverCA = try Data(contentsOf: URL(fileURLWithPath: cluster.certificate)).base64EncodedString()
        let config = directory.path + "/kubeconfig"
        // Files named relative to the kubeconfig, as kubectl reads them.
        try """
            apiVersion: v1
            kind: Config
            current-context: other
            clusters: [{name: fake, cluster: {server: "https://127.0.0.1:\(cluster.port)", certificate-authority-data: \(serverCA)}}]
            users:
              - {name: cert, user: {client-certificate: client.pem, client-key: client.key}}
              - {name: nobody, user: {}}
            contexts:
              - {name: other, context: {cluster: fake, user: nobody}}
              - {name: with-cert, context: {cluster: fake, user: cert}}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let ref = ObjectRef(apiVersion: "v1", kind: "Namespace", namespace: nil, name: "anything")
        let withCertificate = try KubeClient(config: try KubeConfig.load(path: config, context: "with-cert"))
        #expect(try withCertificate.get(ref) == nil, "reached: the namespace is simply not there")
        let without = try KubeClient(config: try KubeConfig.load(path: config))
        let error = try #require(throws: KubeAPIError.self) { try without.get(ref) }
        #expect(error.status == 0 && error.description.contains("did not answer"))
    }

    @Test func aWrongTokenOrAnUntrustedServerIsRefused() throws {
        let cluster = try FakeCluster()
        var config = try KubeConfig.load(path: cluster.kubeconfig)
        config.token = "not-the-token"
        let ref = ObjectRef(apiVersion: "v1", kind: "Namespace", namespace: nil, name: "x")
        let refused = try #require(throws: KubeAPIError.self) { try KubeClient(config: config).get(ref) }
        #expect(refused.status == 401 && refused.reason == "Unauthorized")
        // A CA that did not sign the server's certificate: no request goes out.
        var untrusted = try KubeConfig.load(path: cluster.kubeconfig)
        let other = try FakeCluster()
        untrusted.certificateAuthority = Array(try Data(contentsOf: URL(fileURLWithPath: other.certificate)))
        let unverified = try #require(throws: KubeAPIError.self) { try KubeClient(config: untrusted).get(ref) }
        #expect(unverified.status == 0)
    }

    @Test func aBadKubeconfigIsNamedWithItsPosition() throws {
        let directory = TemporaryDirectory("gantry-kubeconfig")
        let path = directory.path + "/config"
        func load(_ text: String, context: String? = nil) throws -> String {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return try #require(throws: KubeConfigError.self) { try KubeConfig.load(path: path, context: context) }.description
        }
        let base = """
            clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443"}}]
            users: [{name: u, user: {token: t}}]
            contexts: [{name: x, context: {cluster: c, user: u}}]
            """
        #expect(try load(base + "\ncurrent-context: y").contains("\(path):4:18: contexts has no entry named 'y' (it has: x)"))
        #expect(try load(base).contains("no current-context: pass --kube-context NAME"))
        try base.write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try KubeConfig.load(path: path, context: "x").token == "t")
        let plugin = try load("""
            current-context: x
            clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443"}}]
            users:
              - name: u
                user:
                  exec: {command: aws, args: [eks, get-token]}
            contexts: [{name: x, context: {cluster: c, user: u}}]
            """)
        #expect(plugin.contains("\(path):6:13:") && plugin.contains("plugin, which Gantry does not run"))
        #expect(try load("current-context: x\nclusters: [}").contains(path))
        #expect(try load(base.replacingOccurrences(of: "{token: t}", with: "{client-certificate-data: QUJD}") + "\ncurrent-context: x")
            .contains("a client certificate without its key"))
        let unreadable = try #require(throws: KubeConfigError.self) { try KubeConfig.load(path: directory.path + "/none") }
        #expect(unreadable.description.contains("cannot be read"))
    }

    @Test func aPodUsesItsServiceAccount() throws {
        let directory = TemporaryDirectory("gantry-sa")
        try "sa-token\n".write(toFile: directory.path + "/token", atomically: true, encoding: .utf8)
        try "-----BEGIN CERTIFICATE-----\n".write(toFile: directory.path + "/ca.crt", atomically: true, encoding: .utf8)
        let config = try KubeConfig.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"],
                                              directory: directory.path)
        #expect(config.server == "https://10.96.0.1:443")
        #expect(try config.currentToken() == "sa-token")
        // The projected token rotates: it is read again for each request.
        try "rotated\n".write(toFile: directory.path + "/token", atomically: true, encoding: .utf8)
        #expect(try config.currentToken() == "rotated")
        #expect(throws: KubeConfigError.self) { try KubeConfig.inCluster(environment: [:], directory: directory.path) }
    }
}
