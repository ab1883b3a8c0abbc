import Foundation
import GitStore

/// The signed audit log kept as Git notes on `refs/notes/gantry`.
///
/// Records are chained by `seq` and `prev` in write order. The chain's head is kept in the message
/// of each notes commit (`gantry-audit head: seq N sha256:...`), so a writer needs only the tip to
/// continue it, and a removed last record is detectable. Concurrent writers are serialised by a
/// compare-and-swap update of the notes ref, retried with the new head.
public final class AuditLog: @unchecked Sendable {
    public static let defaultRef = "refs/notes/gantry"
    public let repository: GitRepository
    public let key: SigningKey
    public let notesRef: String
    public var clock: @Sendable () -> Date = { Date() }
    public var maxAttempts = 50
    /// When the repository mirrors a remote: every append is published there, and a remote that
    /// moved (another writer) makes the append start over from the remote's head.
    public var remote: String?

    public init(repository: GitRepository, key: SigningKey, notesRef: String = AuditLog.defaultRef) {
        self.repository = repository
        self.key = key
        self.notesRef = notesRef
    }

    /// The chain head: last seq and its digest, from the newest notes commit Gantry wrote (the tip,
    /// unless someone committed to the notes ref behind Gantry's back). `tip` is the ref's target.
    public static func head(of repository: GitRepository, notesRef: String) throws
        -> (tip: ObjectID?, seq: Int, digest: String, foreignCommits: [ObjectID]) {
        guard let tip = try repository.reference(notesRef) else { return (nil, 0, "none", []) }
        var foreign: [ObjectID] = []
        var current: ObjectID? = tip
        while let commit = current {
            let info = try repository.commit(commit)
            if let line = info.message.split(separator: "\n").first(where: { $0.hasPrefix("gantry-audit head: ") }) {
                let parts = line.dropFirst("gantry-audit head: ".count).split(separator: " ")
                if parts.count == 3, parts[0] == "seq", let seq = Int(parts[1]) {
                    return (tip, seq, String(parts[2]), foreign)
                }
            }
            foreign.append(commit)
            current = info.parents.first
        }
        return (tip, 0, "none", foreign)
    }

    /// Appends `entries` in order, as one signed notes commit. Returns the records written.
    @discardableResult
    public func append(_ entries: [AuditEntry]) throws -> [AuditRecord] {
        guard !entries.isEmpty else { return [] }
        return try repository.withExclusiveLock("gantry-audit.lock") { try appendLocked(entries) }
    }

    private func appendLocked(_ entries: [AuditEntry]) throws -> [AuditRecord] {
        for attempt in 1...maxAttempts {
            // With a remote, the local notes ref is always the remote's: fetched here, and only
            // ahead of it between the local commit and its push below.
            if let remote { try repository.fetch(url: remote) }
            let head = try Self.head(of: repository, notesRef: notesRef)
            var records: [AuditRecord] = []
            var prev = head.digest
            let at = AuditRecord.timestamp(clock())
            for (index, entry) in entries.enumerated() {
                let unsigned = AuditRecord(seq: head.seq + index + 1, event: entry.event.rawValue, at: at,
                                           fields: entry.fields.map { (AuditRecord.sanitize($0.key), AuditRecord.sanitize($0.value)) },
                                           prev: prev, signature: "")
                let signature = try SSHSignature.sign(Data(unsigned.signedText.utf8), namespace: "gantry-audit", key: key)
                let record = AuditRecord(seq: unsigned.seq, event: unsigned.event, at: at, fields: unsigned.fields,
                                         prev: prev, signature: signature)
                records.append(record)
                prev = record.digest
            }
            var notes: [ObjectID: String] = [:]
            for (entry, record) in zip(entries, records) {
                guard let target = ObjectID(hex: entry.commit) else { throw AuditError.badTarget(entry.commit) }
                if notes[target] == nil { notes[target] = try repository.note(on: target, notesRef: notesRef) ?? "" }
                notes[target] = notes[target]!.isEmpty ? record.text : notes[target]! + "\n" + record.text
            }
            let last = records.last!
            let message = "gantry audit: \(records.map { "\($0.event) #\($0.seq)" }.joined(separator: ", "))\n\ngantry-audit head: seq \(last.seq) \(last.digest)\n"
            do {
                try repository.commitNotes(notes, notesRef: notesRef, expectedTip: head.tip, message: message,
                                           authorName: "gantry", authorEmail: "gantry@localhost") { buffer in
                    try SSHSignature.sign(buffer, namespace: "git", key: self.key)
                }
                if let remote { try repository.push(url: remote, reference: notesRef, expected: head.tip) }
                return records
            } catch let error as GitError where error.isConflict && attempt < maxAttempts {
                continue
            }
        }
        throw AuditError.tooManyConflicts(maxAttempts)
    }

    /// Every record under the notes ref, in `seq` order, with the commit it is attached to.
    public static func records(in repository: GitRepository, notesRef: String = defaultRef) throws
        -> (records: [(commit: ObjectID, record: AuditRecord)], problems: [String]) {
        var all: [(ObjectID, AuditRecord)] = []
        var problems: [String] = []
        for note in try repository.allNotes(notesRef: notesRef) {
            let parsed = AuditRecord.parseNote(note.text)
            all += parsed.records.map { (note.target, $0) }
            problems += parsed.problems.map { "note on \(note.target.short): \($0)" }
        }
        return (all.sorted { $0.1.seq < $1.1.seq }.map { (commit: $0.0, record: $0.1) }, problems)
    }
}

public enum AuditError: Error, CustomStringConvertible {
    case badTarget(String)
    case tooManyConflicts(Int)

    public var description: String {
        switch self {
        case .badTarget(let value): "cannot attach an audit record to '\(value)': not a commit id"
        case .tooManyConflicts(let count): "the notes ref kept moving: gave up after \(count) compare-and-swap attempts"
        }
    }
}
