import CLibgit2
import Foundation

/// One entry of a directory in a commit's tree.
public struct TreeEntry: Sendable, Hashable {
    public enum Kind: Sendable { case file, executable, directory, symlink, submodule }
    public let name: String
    public let kind: Kind
    public let id: ObjectID
}

extension GitRepository {
    /// The object at `path` in `commit`'s tree (blob or tree id), or nil when there is none.
    public func objectID(at path: String, in commit: ObjectID) throws -> ObjectID? {
        try locked {
            try withTree(of: commit) { tree in
                if path.isEmpty || path == "." { return ObjectID(git_tree_id(tree).pointee) }
                var entry: OpaquePointer?
                let status = git_tree_entry_bypath(&entry, tree, path)
                if status == GIT_ENOTFOUND.rawValue { return nil }
                try check("read \(path) at \(commit.short)", status)
                defer { git_tree_entry_free(entry) }
                return ObjectID(git_tree_entry_id(entry).pointee)
            }
        }
    }

    /// What the tree entry at `path` in `commit` is (file, directory, symbolic link...), or nil when absent.
    public func entryKind(at path: String, in commit: ObjectID) throws -> TreeEntry.Kind? {
        let parts = path.split(separator: "/")
        guard let name = parts.last else { return .directory }
        let parent = parts.dropLast().joined(separator: "/")
        return try listDirectory(parent.isEmpty ? "" : parent, at: commit)?.first { $0.name == name }?.kind
    }

    /// The bytes of the file at `path` in `commit`, or nil when there is no such file.
    /// Files larger than `limit` bytes throw, so a hostile repository cannot exhaust memory.
    public func readFile(_ path: String, at commit: ObjectID, limit: Int = 1 << 20) throws -> Data? {
        try locked {
            try withTree(of: commit) { tree in
                var entry: OpaquePointer?
                let status = git_tree_entry_bypath(&entry, tree, path)
                if status == GIT_ENOTFOUND.rawValue { return nil }
                try check("read \(path) at \(commit.short)", status)
                defer { git_tree_entry_free(entry) }
                guard git_tree_entry_type(entry) == GIT_OBJECT_BLOB else { return nil }
                return try blobData(git_tree_entry_id(entry).pointee, path: path, limit: limit)
            }
        }
    }

    /// The entries of the directory at `path` in `commit`, sorted by name; nil when absent.
    public func listDirectory(_ path: String, at commit: ObjectID) throws -> [TreeEntry]? {
        try locked {
            guard let id = try objectID(at: path, in: commit) else { return nil }
            var oid = id.oid
            var tree: OpaquePointer?
            guard git_tree_lookup(&tree, handle, &oid) == 0 else { return nil }
            defer { git_tree_free(tree) }
            return entries(of: tree!)
        }
    }

    /// Writes the directory at `path` in `commit` into `directory` (created), files with their
    /// executable bit. Symbolic links and submodules are skipped: a working directory never points
    /// outside itself.
    /// At most `limit` bytes are written (gigabytes of zeros fit in a small pack): past it, throws.
    public func materialize(_ path: String, at commit: ObjectID, into directory: URL, limit: Int = maxMaterializedBytes) throws {
        try locked {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            guard let id = try objectID(at: path, in: commit) else { return }
            var budget = limit
            do {
                try writeTree(id, into: directory, budget: &budget)
            } catch let error as GitError where error.isTooLarge {
                throw GitError(operation: "check out \(path.isEmpty ? "the repository" : path) at \(commit.short)", code: -1,
                               message: "the files hold more than \(limit) bytes together; keep large artifacts out of the configuration repository")
            }
        }
    }

    /// What one checkout of an environment's code may write.
    public static let maxMaterializedBytes = 1 << 30

    private func writeTree(_ id: ObjectID, into directory: URL, budget: inout Int) throws {
        var oid = id.oid
        var tree: OpaquePointer?
        try check("lookup tree \(id.short)", git_tree_lookup(&tree, handle, &oid))
        defer { git_tree_free(tree) }
        for entry in entries(of: tree!) {
            let target = directory.appendingPathComponent(entry.name)
            switch entry.kind {
            case .directory:
                try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
                try writeTree(entry.id, into: target, budget: &budget)
            case .file, .executable:
                let data = try blobData(entry.id.oid, path: entry.name, limit: budget)
                budget -= data.count
                try data.write(to: target)
                let mode: Int = entry.kind == .executable ? 0o755 : 0o644
                try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: target.path)
            case .symlink, .submodule:
                continue
            }
        }
    }

    func entries(of tree: OpaquePointer) -> [TreeEntry] {
        (0..<git_tree_entrycount(tree)).compactMap { index in
            guard let entry = git_tree_entry_byindex(tree, index) else { return nil }
            let kind: TreeEntry.Kind
            switch git_tree_entry_filemode(entry) {
            case GIT_FILEMODE_TREE: kind = .directory
            case GIT_FILEMODE_BLOB_EXECUTABLE: kind = .executable
            case GIT_FILEMODE_LINK: kind = .symlink
            case GIT_FILEMODE_COMMIT: kind = .submodule
            default: kind = .file
            }
            return TreeEntry(name: String(cString: git_tree_entry_name(entry)), kind: kind,
                             id: ObjectID(git_tree_entry_id(entry).pointee))
        }
    }

    /// The size of the object `oid` from its header, without inflating it: a blob of gigabytes of
    /// zeros is a few megabytes in a pack, and its size is known before any of it is read.
    func objectSize(_ oid: git_oid) throws -> Int {
        var copy = oid
        var odb: OpaquePointer?
        try check("open object database", git_repository_odb(&odb, handle))
        defer { git_odb_free(odb) }
        var size = 0
        var type = GIT_OBJECT_ANY
        try check("read object header \(ObjectID(oid).short)", git_odb_read_header(&size, &type, odb, &copy))
        return size
    }

    func blobData(_ oid: git_oid, path: String, limit: Int) throws -> Data {
        let declared = try objectSize(oid)
        if declared > limit {
            throw GitError(operation: "read \(path)", code: GitError.tooLargeCode,
                           message: "file is \(declared) bytes, over the limit of \(limit) bytes")
        }
        var copy = oid
        var blob: OpaquePointer?
        try check("read blob \(path)", git_blob_lookup(&blob, handle, &copy))
        defer { git_blob_free(blob) }
        let size = Int(git_blob_rawsize(blob))
        guard size > 0, let raw = git_blob_rawcontent(blob) else { return Data() }
        return Data(bytes: raw, count: size)
    }

    func withTree<T>(of commit: ObjectID, _ body: (OpaquePointer) throws -> T) throws -> T {
        var oid = commit.oid
        var commitObject: OpaquePointer?
        try check("lookup commit \(commit.short)", git_commit_lookup(&commitObject, handle, &oid))
        defer { git_commit_free(commitObject) }
        var tree: OpaquePointer?
        try check("tree of \(commit.short)", git_commit_tree(&tree, commitObject))
        defer { git_tree_free(tree) }
        return try body(tree!)
    }

    /// Paths (files) that differ between two commits' trees; with `from` nil, every file of `to`.
    /// A rename reports both the old and the new path.
    /// At most this many files are compared between two commits: a commit that changes more cannot
    /// be judged file by file (its `change.files` alone would be megabytes) and is refused whole.
    public static let maxChangedPaths = 100_000

    public func changedPaths(from: ObjectID?, to: ObjectID, limit: Int = maxChangedPaths) throws -> Set<String> {
        try locked {
            var oldTree: OpaquePointer?
            if let from {
                var oid = from.oid
                var commitObject: OpaquePointer?
                try check("lookup commit \(from.short)", git_commit_lookup(&commitObject, handle, &oid))
                defer { git_commit_free(commitObject) }
                try check("tree of \(from.short)", git_commit_tree(&oldTree, commitObject))
            }
            defer { git_tree_free(oldTree) }
            return try withTree(of: to) { newTree in
                var diff: OpaquePointer?
                try check("diff \(from?.short ?? "empty")..\(to.short)", git_diff_tree_to_tree(&diff, handle, oldTree, newTree, nil))
                defer { git_diff_free(diff) }
                let count = git_diff_num_deltas(diff)
                guard count <= limit else { throw TooManyChanges(from: from, to: to, count: count, limit: limit) }
                var paths = Set<String>()
                for index in 0..<count {
                    guard let delta = git_diff_get_delta(diff, index) else { continue }
                    if let old = delta.pointee.old_file.path { paths.insert(String(cString: old)) }
                    if let new = delta.pointee.new_file.path { paths.insert(String(cString: new)) }
                }
                return paths
            }
        }
    }
}

/// Two commits differ in more files than are compared at once.
public struct TooManyChanges: Error, CustomStringConvertible, Sendable {
    public let from: ObjectID?
    public let to: ObjectID
    public let count: Int
    public let limit: Int

    public var description: String {
        "\(to.short) changes \(count) files\(from.map { " since \($0.short)" } ?? ""), more than the \(limit) Gantry compares at once; split the change into smaller commits"
    }
}
