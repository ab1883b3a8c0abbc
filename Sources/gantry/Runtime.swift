import Audit
import Foundation
import GitStore
import LocalDriver
import Logging
import StateStore

/// The composition root's paths inside a state directory.
struct StatePaths {
    let root: URL
    var database: String { root.appendingPathComponent("gantry.db").path }
    var key: String { root.appendingPathComponent("keys/gantry_ed25519").path }
    var secretsKey: String { root.appendingPathComponent("keys/secrets.key").path }
    var pidFile: String { root.appendingPathComponent("gantry.pid").path }
    var routerPortFile: String { root.appendingPathComponent("router.port").path }
    var egressPortFile: String { root.appendingPathComponent("egress.port").path }
    /// The port the running Gantry's router listens on; nil when it runs none (`--no-router`).
    var routerPort: Int? {
        (try? String(contentsOfFile: routerPortFile, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
    var lockFile: String { root.appendingPathComponent("gantry.lock").path }
    /// Where the running Gantry's API listens (`http://HOST:PORT`), written while it does.
    var apiAddressFile: String { root.appendingPathComponent("api.address").path }
    var apiAddress: String? {
        (try? String(contentsOfFile: apiAddressFile, encoding: .utf8)).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.flatMap { $0.isEmpty ? nil : $0 }
    }
    var repositoryFile: String { root.appendingPathComponent("repository").path }
    var mirror: String { root.appendingPathComponent("mirror.git").path }
}

enum RepositoryLocation {
    static func isRemote(_ location: String) -> Bool {
        location.contains("://") || (location.contains("@") && location.contains(":") && !location.hasPrefix("/"))
    }

    /// Opens a local path, or mirrors a URL into the state directory.
    static func open(_ location: String, paths: StatePaths) throws -> GitRepository {
        if isRemote(location) { return try GitRepository.mirror(url: location, at: paths.mirror) }
        return try GitRepository.open(path: location)
    }

    /// `--repo`, else the repository the last `gantry run` with this state directory watched.
    static func resolve(_ option: String?, paths: StatePaths) throws -> String {
        if let option { return option }
        if let saved = try? String(contentsOfFile: paths.repositoryFile, encoding: .utf8) {
            return saved.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if FileManager.default.fileExists(atPath: ".git") { return "." }
        throw Failure("no repository given: pass --repo PATH (or run `gantry run --repo PATH` once with this --state)")
    }
}

enum Logs {
    nonisolated(unsafe) static var bootstrapped = false

    static func bootstrap(level: Logger.Level = .info) {
        guard !bootstrapped else { return }
        bootstrapped = true
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return RedactingLogHandler(inner: handler)
        }
    }

    /// Set once the secret store is open: from then on every log line has secret values masked.
    nonisolated(unsafe) static var redactor: Redactor?
}

/// A log handler that masks secret values in messages and metadata before they are written.
struct RedactingLogHandler: LogHandler {
    var inner: any LogHandler

    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    func log(event: LogEvent) {
        guard let redactor = Logs.redactor else { return inner.log(event: event) }
        var event = event
        event.message = "\(redactor.redact(event.message.description))"
        event.metadata = event.metadata?.mapValues { .string(redactor.redact("\($0)")) }
        inner.log(event: event)
    }
}

/// Resolves a revision named on the command line for acts that bind to one commit (approve,
/// explain, trust set): a branch name means the branch, even when a tag of the same name points
/// elsewhere (that is refused as ambiguous, never resolved silently to the tag).
enum Revision {
    static func resolve(_ text: String, in repository: GitRepository) throws -> ObjectID {
        // Hex digits are a commit id, found by object id alone: no ref of that name (a branch, a
        // tag, refs/remotes/<id>/HEAD...) can stand in for it. A ref named like hex is reached by
        // its full name (refs/heads/...).
        if (4...40).contains(text.count), text.allSatisfy(\.isHexDigit) {
            guard let id = try repository.commit(idPrefix: text.lowercased()) else {
                throw Failure("\(text) is not a commit of this repository (a ref with that name is given as refs/heads/\(text))")
            }
            return id
        }
        let branch = try repository.resolveCommit("refs/heads/\(text)")
        let tag = try repository.resolveCommit("refs/tags/\(text)")
        if let branch, let tag, branch != tag {
            throw Failure("'\(text)' names both branch \(text) (\(branch.short)) and tag \(text) (\(tag.short)); give refs/heads/\(text) or a full commit id")
        }
        if let branch { return branch }
        guard let commit = try repository.resolveCommit(text) else { throw Failure("\(text) does not name a commit") }
        return commit
    }
}
