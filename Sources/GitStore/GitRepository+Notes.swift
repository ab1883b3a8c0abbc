import CLibgit2
import Foundation

extension GitRepository {
    /// What one note may hold when read: past it, the note is refused unread.
    public static let maxNoteBytes = 16 << 20

    /// The note attached to `target` under `notesRef`, or nil when there is none. A note over
    /// `limit` bytes throws (its size is read from the object header, nothing of it is inflated).
    public func note(on target: ObjectID, notesRef: String, limit: Int = maxNoteBytes) throws -> String? {
        try locked {
            // libgit2 1.5 may crash on a notes ref that does not point at a commit: no such ref holds notes.
            guard try notesRefIsCommit(notesRef), let tip = try reference(notesRef),
                  let blob = try withTree(of: tip, { try noteBlob(for: target.hex[...], in: $0) }) else { return nil }
            let data = try blobData(blob.oid, path: "note on \(target.short)", limit: limit)
            return String(decoding: data, as: UTF8.self)
        }
    }

    /// The blob of the note for `hex` in a notes tree, flat or fanned out into directories of two
    /// hex digits (as git writes large notes trees).
    private func noteBlob(for hex: Substring, in tree: OpaquePointer) throws -> ObjectID? {
        if let entry = git_tree_entry_byname(tree, String(hex)), git_tree_entry_type(entry) == GIT_OBJECT_BLOB {
            return ObjectID(git_tree_entry_id(entry).pointee)
        }
        guard hex.count > 2, let entry = git_tree_entry_byname(tree, String(hex.prefix(2))),
              git_tree_entry_type(entry) == GIT_OBJECT_TREE else { return nil }
        var oid = git_tree_entry_id(entry).pointee
        var subtree: OpaquePointer?
        try check("read notes tree", git_tree_lookup(&subtree, handle, &oid))
        defer { git_tree_free(subtree) }
        return try noteBlob(for: hex.dropFirst(2), in: subtree!)
    }

    /// Every note under `notesRef` as (annotated object, note text); the text is nil for a note
    /// over `limit` bytes, which is not read.
    public func allNotes(notesRef: String, limit: Int = maxNoteBytes) throws -> [(target: ObjectID, text: String?)] {
        try locked {
            guard try notesRefIsCommit(notesRef) else { return [] }
            var iterator: OpaquePointer?
            let status = git_note_iterator_new(&iterator, handle, notesRef)
            if status == GIT_ENOTFOUND.rawValue { return [] }
            try check("list notes \(notesRef)", status)
            defer { git_note_iterator_free(iterator) }
            var result: [(ObjectID, String?)] = []
            var noteBlob = git_oid()
            var annotated = git_oid()
            while git_note_next(&noteBlob, &annotated, iterator) == 0 {
                let data: Data?
                do { data = try blobData(noteBlob, path: "note", limit: limit) } catch let error as GitError where error.isTooLarge { data = nil }
                result.append((ObjectID(annotated), data.map { String(decoding: $0, as: UTF8.self) }))
            }
            return result
        }
    }

    /// True when `notesRef` exists and points at a commit (anything else holds no notes).
    public func notesRefIsCommit(_ notesRef: String) throws -> Bool {
        guard let tip = try reference(notesRef) else { return false }
        var oid = tip.oid
        var object: OpaquePointer?
        guard git_object_lookup(&object, handle, &oid, GIT_OBJECT_ANY) == 0 else { return false }
        defer { git_object_free(object) }
        return git_object_type(object) == GIT_OBJECT_COMMIT
    }

    /// Sets the notes of several objects in one new commit on `notesRef`, moved only if the ref is
    /// still at `expectedTip` (compare-and-swap). Notes live flat at the tree's top level, as git
    /// writes them for small notes trees. Throws a conflict `GitError` when the ref moved.
    ///
    /// With `replacing` the new commit holds exactly `notes` (nothing of the old tree) and has the
    /// given parents instead of `expectedTip`: used to publish again a history that was cut.
    @discardableResult
    public func commitNotes(_ notes: [ObjectID: String], notesRef: String, expectedTip: ObjectID?,
                            message: String, authorName: String, authorEmail: String,
                            replacing parents: [ObjectID]? = nil,
                            sign: ((Data) throws -> String)?) throws -> ObjectID {
        try locked {
            var builder: OpaquePointer?
            var baseTree: OpaquePointer?
            if let expectedTip, parents == nil {
                var oid = expectedTip.oid
                var commitObject: OpaquePointer?
                try check("lookup notes commit", git_commit_lookup(&commitObject, handle, &oid))
                defer { git_commit_free(commitObject) }
                try check("notes tree", git_commit_tree(&baseTree, commitObject))
            }
            defer { git_tree_free(baseTree) }
            try check("tree builder", git_treebuilder_new(&builder, handle, baseTree))
            defer { git_treebuilder_free(builder) }
            for (target, text) in notes {
                var blob = try createBlob(Data(text.utf8)).oid
                try check("insert note", git_treebuilder_insert(nil, builder, target.hex, &blob, GIT_FILEMODE_BLOB))
            }
            var treeOid = git_oid()
            try check("write notes tree", git_treebuilder_write(&treeOid, builder))
            let commit = try createCommit(tree: ObjectID(treeOid), parents: parents ?? expectedTip.map { [$0] } ?? [],
                                          message: message, authorName: authorName, authorEmail: authorEmail, sign: sign)
            try updateReference(notesRef, to: commit, expected: expectedTip, message: "gantry: notes")
            return commit
        }
    }
}
