import CLibgit2
import Foundation

/// What Gantry needs to know of one commit.
public struct CommitInfo: Sendable, Hashable {
    public let id: ObjectID
    public let authorName: String
    public let authorEmail: String
    public let committerEmail: String
    public let message: String
    public let time: Date
    public let parents: [ObjectID]

    /// `Key: value` trailers of the message's last paragraph, in order.
    public var trailers: [(key: String, value: String)] {
        let paragraphs = message.trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: "\n\n")
        guard paragraphs.count > 1, let last = paragraphs.last else { return [] }
        var result: [(String, String)] = []
        for line in last.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex else { return [] }
            let key = line[..<colon]
            guard key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) else { return [] }
            result.append((String(key), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        return result
    }

    public static func == (lhs: CommitInfo, rhs: CommitInfo) -> Bool { lhs.id == rhs.id }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }
}

/// A commit's signature block and the exact bytes it signs.
public struct CommitSignature: Sendable {
    public let signature: String
    public let signedData: Data

    public init(signature: String, signedData: Data) {
        self.signature = signature
        self.signedData = signedData
    }
}

extension GitRepository {
    public func commit(_ id: ObjectID) throws -> CommitInfo {
        try locked {
            var oid = id.oid
            var object: OpaquePointer?
            try check("lookup commit \(id.short)", git_commit_lookup(&object, handle, &oid))
            defer { git_commit_free(object) }
            let author = git_commit_author(object)!.pointee
            let committer = git_commit_committer(object)!.pointee
            let parents = (0..<git_commit_parentcount(object)).compactMap { index in
                git_commit_parent_id(object, index).map { ObjectID($0.pointee) }
            }
            return CommitInfo(
                id: id,
                authorName: String(cString: author.name),
                authorEmail: String(cString: author.email),
                committerEmail: String(cString: committer.email),
                message: git_commit_message(object).map { String(cString: $0) } ?? "",
                time: Date(timeIntervalSince1970: TimeInterval(git_commit_time(object))),
                parents: parents)
        }
    }

    /// The commits reachable from `tip` but not from any of `hidden`, oldest first (parents before
    /// children). All of them: callers that bound the work count first and refuse with the count.
    public func newCommits(tip: ObjectID, hiding hidden: [ObjectID], limit: Int = .max) throws -> [ObjectID] {
        try locked {
            var walker: OpaquePointer?
            try check("revwalk", git_revwalk_new(&walker, handle))
            defer { git_revwalk_free(walker) }
            git_revwalk_sorting(walker, GIT_SORT_TOPOLOGICAL.rawValue | GIT_SORT_REVERSE.rawValue)
            var start = tip.oid
            try check("revwalk push", git_revwalk_push(walker, &start))
            for commit in hidden {
                var oid = commit.oid
                _ = git_revwalk_hide(walker, &oid)
            }
            var result: [ObjectID] = []
            var oid = git_oid()
            while git_revwalk_next(&oid, walker) == 0 && result.count < limit {
                result.append(ObjectID(oid))
            }
            return result
        }
    }

    /// The commits of `tip`'s first-parent chain that `new` holds (the commits `tip` brings since
    /// some revision), oldest first: the steps by which a branch moved.
    public func firstParentSteps(tip: ObjectID, within new: [ObjectID]) throws -> [ObjectID] {
        let newSet = Set(new)
        var steps: [ObjectID] = []
        var cursor = tip
        while newSet.contains(cursor) {
            steps.append(cursor)
            guard let parent = try commit(cursor).parents.first else { break }
            cursor = parent
        }
        return steps.reversed()
    }

    /// The commit's `gpgsig` block and signed payload, or nil for an unsigned commit.
    public func signature(of id: ObjectID) throws -> CommitSignature? {
        try locked {
            var signature = git_buf()
            var payload = git_buf()
            var oid = id.oid
            let status = git_commit_extract_signature(&signature, &payload, handle, &oid, nil)
            defer {
                git_buf_dispose(&signature)
                git_buf_dispose(&payload)
            }
            if status == GIT_ENOTFOUND.rawValue { return nil }
            try check("extract signature of \(id.short)", status)
            return CommitSignature(
                signature: String(decoding: Data(bytes: signature.ptr, count: signature.size), as: UTF8.self),
                signedData: Data(bytes: payload.ptr, count: payload.size))
        }
    }

    /// Writes `data` as a blob.
    public func createBlob(_ data: Data) throws -> ObjectID {
        try locked {
            var oid = git_oid()
            _ = try data.withUnsafeBytes { raw in
                try check("write blob", git_blob_create_from_buffer(&oid, handle, raw.baseAddress, raw.count))
            }
            return ObjectID(oid)
        }
    }

    /// Creates a commit object (no ref is moved) whose tree is `tree`, signed by `sign` when given.
    /// `sign` receives the commit buffer and returns an armored signature for its `gpgsig` header.
    public func createCommit(tree: ObjectID, parents: [ObjectID], message: String,
                             authorName: String, authorEmail: String, date: Date = Date(),
                             sign: ((Data) throws -> String)? = nil) throws -> ObjectID {
        try locked {
            var signature: UnsafeMutablePointer<git_signature>?
            try check("signature", git_signature_new(&signature, authorName, authorEmail, git_time_t(date.timeIntervalSince1970), 0))
            defer { git_signature_free(signature) }
            var treeOid = tree.oid
            var treeObject: OpaquePointer?
            try check("lookup tree \(tree.short)", git_tree_lookup(&treeObject, handle, &treeOid))
            defer { git_tree_free(treeObject) }
            var parentObjects: [OpaquePointer?] = []
            defer { parentObjects.forEach { git_commit_free($0) } }
            for parent in parents {
                var oid = parent.oid
                var object: OpaquePointer?
                try check("lookup parent \(parent.short)", git_commit_lookup(&object, handle, &oid))
                parentObjects.append(object)
            }
            var buffer = git_buf()
            defer { git_buf_dispose(&buffer) }
            _ = try parentObjects.withUnsafeMutableBufferPointer { parentsPointer in
                try check("create commit buffer", git_commit_create_buffer(
                    &buffer, handle, signature, signature, nil, message, treeObject,
                    parents.count, parentsPointer.baseAddress))
            }
            let content = String(decoding: Data(bytes: buffer.ptr, count: buffer.size), as: UTF8.self)
            var oid = git_oid()
            if let sign {
                let armored = try sign(Data(content.utf8))
                try check("create signed commit", git_commit_create_with_signature(&oid, handle, content, armored, nil))
            } else {
                try check("create commit", git_commit_create_with_signature(&oid, handle, content, nil, nil))
            }
            return ObjectID(oid)
        }
    }
}

extension GitRepository {
    /// A commit on top of `parent` whose tree is the parent's with `path` set to `content`;
    /// signed by `sign` when given. No ref is moved.
    public func commit(adding content: Data, at path: String, parent: ObjectID, message: String,
                       authorName: String, authorEmail: String, sign: ((Data) throws -> String)? = nil) throws -> ObjectID {
        let tree: ObjectID = try locked {
            let blob = try createBlob(content)
            return try withTree(of: parent) { base in
                var update = git_tree_update()
                update.action = GIT_TREE_UPDATE_UPSERT
                update.id = blob.oid
                update.filemode = GIT_FILEMODE_BLOB
                var out = git_oid()
                try path.withCString { pointer in
                    update.path = pointer
                    try check("update tree", git_tree_create_updated(&out, handle, base, 1, &update))
                }
                return ObjectID(out)
            }
        }
        return try createCommit(tree: tree, parents: [parent], message: message, authorName: authorName, authorEmail: authorEmail, sign: sign)
    }
}
