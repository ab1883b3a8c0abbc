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
    var pidFile: String { root.appendingPathComponent("gantry.pid").path }
    var routerPortFile: String { root.appendingPathComponent("router.port").path }
    var lockFile: String { root.appendingPathComponent("gantry.lock").path }
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
            return handler
        }
    }
}

/// Resolves a revision named on the command line for acts that bind to one commit (approve,
/// explain, trust set): a branch name means the branch, even when a tag of the same name points
/// elsewhere (that is refused as ambiguous, never resolved silently to the tag).
enum Revision {
    static func resolve(_ text: String, in repository: GitRepository) throws -> ObjectID {
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
