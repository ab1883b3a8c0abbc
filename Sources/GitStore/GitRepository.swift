import CLibgit2
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Owner of one libgit2 repository handle.
///
/// A handle must not be used from two threads at once: every call takes the repository's lock.
public final class GitRepository: @unchecked Sendable {
    let handle: OpaquePointer
    let lock = NSRecursiveLock()
    /// The path the repository was opened at.
    public let path: String
    /// Merge bases already computed (under `lock`): commits never change, so neither does the
    /// merge base of two of them, and a pass asks for the same pair several times (is the branch
    /// merged, since where is it judged, which files changed).
    var mergeBases: [MergeBasePair: ObjectID?] = [:]

    private static let initialized: Void = {
        git_libgit2_init()
        // A daemon opens repositories it may not own; libgit2 1.5 has no `safe.directory = *`.
        _ = gantry_git_disable_owner_validation()
    }()

    private init(handle: OpaquePointer, path: String) {
        self.handle = handle
        self.path = path
    }

    deinit { git_repository_free(handle) }

    /// Opens an existing repository, bare or not, at `path`.
    public static func open(path: String) throws -> GitRepository {
        _ = initialized
        var repo: OpaquePointer?
        try check("open \(path)", git_repository_open_ext(&repo, path, UInt32(GIT_REPOSITORY_OPEN_NO_SEARCH.rawValue), nil))
        return GitRepository(handle: repo!, path: path)
    }

    /// Creates a new repository whose initial branch is `initialBranch`.
    public static func create(path: String, bare: Bool, initialBranch: String = "main") throws -> GitRepository {
        _ = initialized
        var options = git_repository_init_options()
        git_repository_init_options_init(&options, UInt32(GIT_REPOSITORY_INIT_OPTIONS_VERSION))
        options.flags = UInt32(GIT_REPOSITORY_INIT_MKPATH.rawValue) | (bare ? UInt32(GIT_REPOSITORY_INIT_BARE.rawValue) : 0)
        var repo: OpaquePointer?
        try initialBranch.withCString { branch in
            options.initial_head = branch
            try check("init \(path)", git_repository_init_ext(&repo, path, &options))
        }
        return GitRepository(handle: repo!, path: path)
    }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// The commit whose id starts with `hex` (4 to 40 hex digits), found by object id only — never
    /// through a ref of that name. Nil when there is none; throws when the prefix is ambiguous.
    public func commit(idPrefix hex: String) throws -> ObjectID? {
        guard (4...40).contains(hex.count), hex.allSatisfy(\.isHexDigit) else { return nil }
        return try locked {
            var oid = git_oid()
            guard git_oid_fromstrn(&oid, hex, hex.count) == 0 else { return nil }
            var object: OpaquePointer?
            let status = git_object_lookup_prefix(&object, handle, &oid, hex.count, GIT_OBJECT_COMMIT)
            if status == GIT_ENOTFOUND.rawValue || status == GIT_EINVALIDSPEC.rawValue { return nil }
            if status == GIT_EAMBIGUOUS.rawValue {
                throw GitError(operation: "resolve \(hex)", code: status, message: "the id prefix \(hex) is ambiguous; give more digits")
            }
            try check("resolve \(hex)", status)
            defer { git_object_free(object) }
            return ObjectID(git_object_id(object).pointee)
        }
    }

    /// Resolves a revision (ref name, short or full sha) to the commit it names, or nil when absent.
    public func resolveCommit(_ revision: String) throws -> ObjectID? {
        try locked {
            var object: OpaquePointer?
            let result = git_revparse_single(&object, handle, revision + "^{commit}")
            if result == GIT_ENOTFOUND.rawValue || result == GIT_EINVALIDSPEC.rawValue || result == GIT_EAMBIGUOUS.rawValue {
                return nil
            }
            try check("resolve \(revision)", result)
            defer { git_object_free(object) }
            return ObjectID(git_object_id(object).pointee)
        }
    }
}

extension GitRepository {
    /// Creates (or opens) a bare mirror of `url` at `path` holding the remote's branches.
    public static func mirror(url: String, at path: String) throws -> GitRepository {
        let repository = FileManager.default.fileExists(atPath: path + "/HEAD")
            ? try open(path: path) : try create(path: path, bare: true)
        try repository.fetch(url: url)
        return repository
    }

    /// Fetches every branch of `url` into `refs/heads/*` and its notes into `refs/notes/*`,
    /// force-updating and pruning what the remote no longer has.
    public func fetch(url: String) throws {
        try withRemote(url) { remote in
            var options = git_fetch_options()
            git_fetch_options_init(&options, UInt32(GIT_FETCH_OPTIONS_VERSION))
            options.prune = GIT_FETCH_PRUNE
            _ = try withStrings(["+refs/heads/*:refs/heads/*", "+refs/notes/*:refs/notes/*"]) { specs in
                try check("fetch \(url)", git_remote_fetch(remote, &specs, &options, "gantry: fetch"))
            }
        }
    }

    /// Pushes the local `reference` to the same name on `url`, only if the remote still has it at
    /// `expected` (nil: must not exist) — a compare-and-swap that the receiving side checks under
    /// its ref lock. A remote that moved throws a `GitError` whose `isConflict` is true.
    ///
    /// This uses the git CLI (`push --force-with-lease`): libgit2 1.5 has no leases, and git's
    /// transports bring the user's credential helpers and ssh agent along.
    /// With `delete`, the remote's `reference` is deleted (if it still points at `expected`).
    public func push(url: String, reference: String, expected: ObjectID?, delete: Bool = false) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["git", "--git-dir", gitDirectory, "push", "--porcelain", "--quiet",
                             "--force-with-lease=\(reference):\(expected?.hex ?? "")", url, delete ? ":\(reference)" : "\(reference):\(reference)"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus != 0 else { return }
        let moved = ["stale info", "rejected", "fetch first", "non-fast-forward"].contains { text.contains($0) }
        throw GitError(operation: "push \(reference) to \(url)", code: moved ? GIT_EMODIFIED.rawValue : -1,
                       message: moved ? "the remote moved: \(text.trimmingCharacters(in: .whitespacesAndNewlines))"
                                      : text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// The repository's git directory (`.git`, or the repository itself when bare).
    public var gitDirectory: String {
        locked { String(cString: git_repository_path(handle)) }
    }

    /// Runs `body` holding an exclusive `flock` on `<git dir>/<name>`: serialises writers on this
    /// machine (threads and processes alike) around a read-modify-write of a ref.
    public func withExclusiveLock<T>(_ name: String, _ body: () throws -> T) throws -> T {
        let path = gitDirectory + "/" + name
        let descriptor = Glibc.open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw GitError(operation: "lock \(path)", code: -1, message: String(cString: strerror(errno)))
        }
        defer { close(descriptor) }
        while flock(descriptor, LOCK_EX) != 0 {
            guard errno == EINTR else { throw GitError(operation: "lock \(path)", code: -1, message: String(cString: strerror(errno))) }
        }
        defer { flock(descriptor, LOCK_UN) }
        return try body()
    }

    private func withRemote<T>(_ url: String, _ body: (OpaquePointer) throws -> T) throws -> T {
        try locked {
            var remote: OpaquePointer?
            try check("remote \(url)", git_remote_create_anonymous(&remote, handle, url))
            defer { git_remote_free(remote) }
            return try body(remote!)
        }
    }

    private func withStrings<T>(_ strings: [String], _ body: (inout git_strarray) throws -> T) rethrows -> T {
        var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
        defer { pointers.forEach { free($0) } }
        return try pointers.withUnsafeMutableBufferPointer { buffer in
            var array = git_strarray(strings: buffer.baseAddress, count: strings.count)
            return try body(&array)
        }
    }
}

