import CLibgit2
import Foundation

extension GitRepository {
    /// The note attached to `target` under `notesRef`, or nil when there is none.
    public func note(on target: ObjectID, notesRef: String) throws -> String? {
        try locked {
            // libgit2 1.5 may crash on a notes ref that does not point at a commit: no such ref holds notes.
            guard try notesRefIsCommit(notesRef) else { return nil }
            var note: OpaquePointer?
            var oid = target.oid
            let status = git_note_read(&note, handle, notesRef, &oid)
            if status == GIT_ENOTFOUND.rawValue { return nil }
            try check("read note on \(target.short)", status)
            defer { git_note_free(note) }
            return git_note_message(note).map { String(cString: $0) }
        }
    }

    /// Every note under `notesRef` as (annotated object, note text).
    public func allNotes(notesRef: String) throws -> [(target: ObjectID, text: String)] {
        try locked {
            guard try notesRefIsCommit(notesRef) else { return [] }
            var iterator: OpaquePointer?
            let status = git_note_iterator_new(&iterator, handle, notesRef)
            if status == GIT_ENOTFOUND.rawValue { return [] }
            try check("list notes \(notesRef)", status)
            defer { git_note_iterator_free(iterator) }
            var result: [(ObjectID, String)] = []
            var noteBlob = git_oid()
            var annotated = git_oid()
            while git_note_next(&noteBlob, &annotated, iterator) == 0 {
                let data = try blobData(noteBlob, path: "note", limit: Int.max)
                result.append((ObjectID(annotated), String(decoding: data, as: UTF8.self)))
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
