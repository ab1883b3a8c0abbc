import API
import Audit
import Foundation
import GitStore
import Governance
import Logging
import Reconciler
import StateStore
import Testing
import TestSupport

/// A real configuration repository (example-repo, signed), a state DB anchored at its main,
/// `gantry api` on a free port, and curl as the client.
final class APIFixture: @unchecked Sendable {
    let repo: TestRepository
    let state: TemporaryDirectory
    let store: StateStore
    let key: SigningKey
    let process = Process()
    let base: String

    /// Environments the state knows: production `web` (payments), staging `status-page` (platform),
    /// and a preview the API made for agent@example.com.
    static let preview = "p1--agents-agent-example-com-p1"

    /// `gantry api` (the real binary, in a process of its own) over a seeded repository;
    /// `rate`: requests per second and burst of each token.
    init(listGantrysKey: Bool = true, rate: (Double, Double)? = nil, dataPlaneToken: String? = nil) throws {
        repo = try TestRepository()
        state = TemporaryDirectory("gantry-api")
        // Gantry's key, made as `gantry run` makes it, listed on main as principal gantry.
        key = try SigningKey.loadOrCreate(at: state.path + "/keys/gantry_ed25519")
        let gantryLine = "\(IdentityJudge.apiPrincipal) namespaces=\"git\" \(key.publicKey.authorizedKey)"
        let tip = try repo.seedExample(extraSigners: listGantrysKey ? [gantryLine] : [])
        store = try StateStore(path: state.path + "/gantry.db")
        var trust = TrustState(protectedBranch: "main")
        trust.anchor = tip
        trust.revision = tip
        trust.policyRevision = tip
        try store.setTrust(trust)
        try store.save(EnvironmentRecord(name: "web", branch: "main", commit: tip, envClass: "production", team: "payments"))
        try store.save(EnvironmentRecord(name: "status-page", branch: "main", commit: tip, envClass: "staging", team: "platform"))
        try store.save(EnvironmentRecord(name: Self.preview, branch: "agents/agent@example.com/p1", commit: tip, envClass: "preview", team: "payments"))
        var arguments = ["api", "--repo", repo.path, "--state", state.path, "--api", "127.0.0.1:0"]
        if let rate { arguments += ["--api-rate", String(rate.0), "--api-burst", String(rate.1)] }
        if let dataPlaneToken {
            try dataPlaneToken.write(toFile: state.path + "/dataplane.token", atomically: true, encoding: .utf8)
            arguments += ["--data-plane-token-file", state.path + "/dataplane.token"]
        }
        process.executableURL = URL(fileURLWithPath: TestPaths.gantryBinary)
        process.arguments = arguments
        process.environment = Shell.gitEnvironment
        let log = FileHandle(forWritingAtPath: "/dev/null")
        process.standardOutput = log
        process.standardError = log
        try process.run()
        let addressFile = state.path + "/api.address"
        guard eventually(30, { ((try? String(contentsOfFile: addressFile, encoding: .utf8)) ?? "").hasSuffix("\n") }),
              let address = try? String(contentsOfFile: addressFile, encoding: .utf8) else {
            process.terminate()
            throw TestFailure("gantry api did not start within 30 s")
        }
        base = address.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    func token(_ actor: String, ttl: TimeInterval? = nil, now: Date = Date()) throws -> String {
        try store.createToken(actor: actor, ttl: ttl, now: now).value
    }

    struct Answer {
        let status: Int
        let body: String
        let headers: String
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:] }
        var error: [String: Any]? { json["error"] as? [String: Any] }
    }

    /// One request with curl (an outside client).
    func call(_ method: String, _ path: String, token: String? = nil, body: String? = nil, bodyFile: String? = nil) throws -> Answer {
        let headers = state.path + "/headers-\(UUID().uuidString)"
        var arguments = ["curl", "-s", "--max-time", "60", "-X", method, "-D", headers, "-w", "\n%{http_code}", base + path]
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
        if let bodyFile { arguments += ["-H", "Content-Type: application/json", "--data-binary", "@" + bodyFile] }
        let output = try Shell.check(arguments)
        let split = output.range(of: "\n", options: .backwards)
        let status = Int(output[(split?.upperBound ?? output.startIndex)...].trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        let text = split.map { String(output[..<$0.lowerBound]) } ?? ""
        let headerText = (try? String(contentsOfFile: headers, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(atPath: headers)
        return Answer(status: status, body: text, headers: headerText)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
