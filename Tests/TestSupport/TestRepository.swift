import Foundation
import GitStore

/// A real Git repository built with the git CLI, with an SSH signing key made by ssh-keygen.
public final class TestRepository: @unchecked Sendable {
    public let directory: TemporaryDirectory
    public var path: String { directory.path + "/repo" }
    public let keyPath: String
    public let principal: String

    public init(principal: String = "agent@example.com", signing: Bool = true) throws {
        directory = TemporaryDirectory("gantry-repo")
        self.principal = principal
        keyPath = directory.path + "/keys/agent"
        try FileManager.default.createDirectory(atPath: directory.path + "/keys", withIntermediateDirectories: true)
        try Shell.check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", keyPath])
        try Shell.check(["git", "init", "-q", "-b", "main", path])
        if signing {
            for (key, value) in [("gpg.format", "ssh"), ("user.signingkey", keyPath), ("commit.gpgsign", "true")] {
                try git("config", key, value)
            }
        }
    }

    /// The allowed_signers line of this repository's signing key.
    public var allowedSignersLine: String {
        let publicKey = (try? String(contentsOfFile: keyPath + ".pub", encoding: .utf8)) ?? ""
        return "\(principal) \(publicKey.split(separator: " ").prefix(2).joined(separator: " "))"
    }

    @discardableResult
    public func git(_ arguments: String...) throws -> String {
        try Shell.check(["git", "-C", path] + arguments).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    public func write(_ relativePath: String, _ content: String) throws {
        try write(relativePath, Data(content.utf8))
    }

    public func write(_ relativePath: String, _ data: Data) throws {
        let url = URL(fileURLWithPath: path).appendingPathComponent(relativePath)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try data.write(to: url)
    }

    public func remove(_ relativePath: String) throws {
        try git("rm", "-rq", relativePath)
    }

    /// Stages everything and commits; returns the new commit id.
    @discardableResult
    public func commit(_ message: String) throws -> String {
        try git("add", "-A")
        try git("commit", "-q", "--allow-empty", "-m", message)
        return try git("rev-parse", "HEAD")
    }

    public func checkout(_ branch: String, create: Bool = false) throws {
        if create { try git("checkout", "-q", "-b", branch) } else { try git("checkout", "-q", branch) }
    }

    public func open() throws -> GitRepository { try GitRepository.open(path: path) }

    /// Rewrites example-repo's production `web` environment with `service` as its web service's
    /// fields (a YAML flow mapping, e.g. `{replicas: 3}`), on top of the python-web template.
    public func writeWeb(service: String) throws {
        try write("environments/web.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: web, team: payments, class: production}
            spec:
              template: python-web
              services:
                web: \(service)
            """)
    }

    /// The repository owner: a human admin and approver of both teams, whose key signs the seed
    /// commit, so a first start anchors it (an operator would otherwise run `gantry trust set`).
    public static let ownerPrincipal = "owner@example.com"
    public var ownerKeyPath: String { directory.path + "/keys/owner" }

    /// The allowed_signers line of the owner's key (made on first use).
    public func ownerSignersLine() throws -> String {
        if !FileManager.default.fileExists(atPath: ownerKeyPath) {
            try Shell.check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", Self.ownerPrincipal, "-f", ownerKeyPath])
        }
        let publicKey = try String(contentsOfFile: ownerKeyPath + ".pub", encoding: .utf8)
        return "\(Self.ownerPrincipal) \(publicKey.split(separator: " ").prefix(2).joined(separator: " "))"
    }

    /// Runs `body` with commits signed by `keyPath` instead of this repository's agent key.
    public func signing<T>(with keyPath: String, _ body: () throws -> T) throws -> T {
        try git("config", "user.signingkey", keyPath)
        defer { _ = try? git("config", "user.signingkey", self.keyPath) }
        return try body()
    }

    /// Commits as the owner (a human admin): governance changes the tests do not mean to attack.
    @discardableResult
    public func commitAsOwner(_ message: String) throws -> String {
        _ = try ownerSignersLine()
        return try signing(with: ownerKeyPath) { try commit(message) }
    }

    /// Copies the project's example-repo/ into the repository and commits it on main, signed by
    /// the owner (see `ownerPrincipal`).
    @discardableResult
    /// `previews` replaces gantry.yaml's `previews:` settings (a test that runs more previews
    /// than the example's caps allow).
    public func seedExample(extraSigners: [String] = [], previews: String? = nil) throws -> String {
        let source = TestPaths.packageRoot.appendingPathComponent("example-repo").path
        try Shell.check(["cp", "-R", source + "/.", path])
        if let previews {
            let settings = try String(contentsOfFile: path + "/gantry.yaml", encoding: .utf8)
            try write("gantry.yaml", settings.split(separator: "\n", omittingEmptySubsequences: false)
                .map { $0.hasPrefix("previews:") ? "previews: \(previews)" : String($0) }.joined(separator: "\n"))
        }
        try write("identities/allowed_signers", ([allowedSignersLine, try ownerSignersLine()] + extraSigners).joined(separator: "\n") + "\n")
        // The test's own signer is an agent acting for alice, like claude@payments in the example.
        let actors = try String(contentsOfFile: path + "/identities/actors.yaml", encoding: .utf8)
        try write("identities/actors.yaml", actors
            + "  \(principal): {kind: agent, teams: [payments, platform], actsFor: [alice@example.com]}\n"
            + "  \(Self.ownerPrincipal): {kind: human, teams: [payments, platform], roles: [approver, admin]}\n")
        return try commitAsOwner("Seed from example-repo")
    }
}

public enum TestPaths {
    /// The package root, found from this file's location.
    public static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The official CEL conformance vectors the tests run (copied from the CEL suite with its LICENSE).
    public static var conformanceVectors: URL {
        packageRoot.appendingPathComponent("Tests/Fixtures/cel-conformance")
    }

    /// The debug `gantry` binary built by `swift build` (`make test` builds it first).
    public static var gantryBinary: String {
        packageRoot.appendingPathComponent(".build/debug/gantry").path
    }
}

/// Polls `condition` until it holds or `seconds` pass.
public func eventually(_ seconds: Double = 10, interval: Double = 0.05, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        Thread.sleep(forTimeInterval: interval)
    }
    return try condition()
}

/// GET over loopback with curl (an outside client); nil when the connection fails.
public func httpGet(_ url: String) -> String? {
    guard let result = try? Shell.run(["curl", "-s", "--max-time", "3", url]), result.status == 0 else { return nil }
    return result.stdout
}

/// The value of `name` in the environment of process `pid` (read from /proc), as a service received it.
public func processEnvironmentVariable(pid: Int32?, _ name: String) -> String? {
    guard let pid, let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return nil }
    return environ.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        .first { $0.hasPrefix(name + "=") }.map { String($0.dropFirst(name.count + 1)) }
}
