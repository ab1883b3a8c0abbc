import Foundation

/// The test API server (Tests/Fixtures/kube-apiserver.py) over TLS with a bearer token, and a
/// kubeconfig that reaches it. No cluster can run on the test machine (no container engine): this
/// server implements the endpoints the driver uses with the API's semantics (see the script).
public final class FakeCluster: @unchecked Sendable {
    public typealias JSONObject = [String: Any]
    public let directory: TemporaryDirectory
    public let port: Int
    public let token: String
    public let kubeconfig: String
    public let certificate: String
    private let process = SpawnedProcess()

    public static var script: String { TestPaths.packageRoot.appendingPathComponent("Tests/Fixtures/kube-apiserver.py").path }

    /// `clientCA`: the server demands a client certificate signed by it (then no token is checked).
    public init(cnpg: Bool = false, clientCA: String? = nil, token: String? = nil) throws {
        directory = TemporaryDirectory("gantry-kube")
        port = try freeLoopbackPort()
        self.token = token ?? "token-\(UInt64.random(in: 1...UInt64.max))"
        certificate = directory.path + "/server.pem"
        let key = directory.path + "/server.key"
        _ = try Shell.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", certificate, "-days", "1",
                             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        var arguments = ["python3", Self.script, "\(port)", "--cert", certificate, "--key", key]
        if let clientCA { arguments += ["--client-ca", clientCA] } else { arguments += ["--token", self.token] }
        if cnpg { arguments.append("--cnpg") }
        process.start(arguments)
        kubeconfig = directory.path + "/kubeconfig"
        let ca = try Data(contentsOf: URL(fileURLWithPath: certificate)).base64EncodedString()
        try """
            apiVersion: v1
            kind: Config
            current-context: test
            clusters:
              - name: fake
                cluster:
                  server: https://127.0.0.1:\(port)
                  certificate-authority-data: \(ca)
            users:
              - name: gantry
                user:
                  token: \(self.token)
            contexts:
              - name: test
                context: {cluster: fake, user: gantry}
            """.write(toFile: kubeconfig, atomically: true, encoding: .utf8)
        try waitUntilListening()
    }

    deinit { process.stop() }

    public func stop() { process.stop() }

    private func waitUntilListening() throws {
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            close(fd)
            if connected == 0 { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw ShellError(description: "the test API server did not start on port \(port)")
    }

    /// A request as another client (kubectl) makes it: `curl` with the CA and token.
    @discardableResult
    public func curl(_ method: String, _ path: String, body: String? = nil, contentType: String = "application/merge-patch+json") throws -> (status: Int, body: JSONObject) {
        var arguments = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--cacert", certificate, "-X", method,
                         "-H", "Authorization: Bearer \(token)", "https://127.0.0.1:\(port)\(path)"]
        if let body { arguments += ["-H", "Content-Type: \(contentType)", "--data-binary", body] }
        let output = try Shell.check(arguments)
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false)
        let status = Int(lines.last ?? "") ?? 0
        let json = lines.dropLast().joined(separator: "\n")
        return (status, ((try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? JSONObject) ?? [:])
    }

    /// The object at `path`, nil when the server answers 404.
    public func object(_ path: String) throws -> JSONObject? {
        let (status, body) = try curl("GET", path)
        return status == 404 ? nil : body
    }

    /// The requests the server saw (method, path, query, content type), in order.
    public func requests() throws -> [[String: String]] {
        let output = try Shell.check(["curl", "-s", "--cacert", certificate, "https://127.0.0.1:\(port)/_requests"])
        return ((try? JSONSerialization.jsonObject(with: Data(output.utf8))) as? [[String: String]]) ?? []
    }
}
