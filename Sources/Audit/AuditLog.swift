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
    /// Gantry's own copy of the chain. With one, a notes ref that lost records (reset, truncated,
    /// deleted) is never continued: the records are published again first, and an
    /// `audit-restored` record says what was found.
    public var journal: AuditJournal?
    /// Masks secret values in every field before it is signed and written (see `Redactor`).
    public var redact: (@Sendable (String) -> String)?
    /// The commit the first record being appended concerns (where a restore record can go).
    private var requestedTarget: ObjectID?

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
            // A ref pointed at something that is not a commit (a blob, a tree) is foreign, not fatal.
            guard let info = try? repository.commit(commit) else {
                foreign.append(commit)
                break
            }
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

    /// Checks the notes ref against the journal and publishes again what it lost; returns the
    /// `audit-restored` record when something was restored, nil when the chain was intact.
    @discardableResult
    public func ensureIntact() throws -> AuditRecord? {
        guard journal != nil else { return nil }
        return try repository.withExclusiveLock("gantry-audit.lock") {
            try appendLocked([]).first { $0.event == AuditEvent.auditRestored.rawValue }
        }
    }

    private func appendLocked(_ requested: [AuditEntry]) throws -> [AuditRecord] {
        for attempt in 1...maxAttempts {
            // With a remote, the local notes ref is always the remote's: fetched here, and only
            // ahead of it between the local commit and its push below.
            if let remote { try repository.fetch(url: remote) }
            var head = try Self.head(of: repository, notesRef: notesRef)
            var entries = requested
            do {
                requestedTarget = requested.first.flatMap { ObjectID(hex: $0.commit) }
                if let restored = try checkJournal(head) {
                    head = try Self.head(of: repository, notesRef: notesRef)
                    entries.insert(restored, at: 0)
                }
                guard !entries.isEmpty else { return [] }
                return try write(entries, on: head)
            } catch let error as GitError where error.isConflict && attempt < maxAttempts {
                continue
            }
        }
        throw AuditError.tooManyConflicts(maxAttempts)
    }

    /// Numbers, chains and signs `entries` after `head` and commits them as one notes commit.
    private func write(_ entries: [AuditEntry], on head: (tip: ObjectID?, seq: Int, digest: String, foreignCommits: [ObjectID])) throws -> [AuditRecord] {
        var records: [AuditRecord] = []
        var prev = head.digest
        let at = AuditRecord.timestamp(clock())
        for (index, entry) in entries.enumerated() {
            let unsigned = AuditRecord(seq: head.seq + index + 1, event: entry.event.rawValue, at: at,
                                       fields: entry.fields.map { (AuditRecord.escape($0.key), AuditRecord.escape(redact?($0.value) ?? $0.value)) },
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
            if !notes[target]!.isEmpty { notes[target]!.append("\n") }
            notes[target]!.append(record.text)
        }
        let last = records.last!
        let message = "gantry audit: \(records.map { "\($0.event) #\($0.seq)" }.joined(separator: ", "))\n\ngantry-audit head: seq \(last.seq) \(last.digest)\n"
        let commit = try repository.commitNotes(notes, notesRef: notesRef, expectedTip: head.tip, message: message,
                                                authorName: "gantry", authorEmail: "gantry@localhost") { buffer in
            try SSHSignature.sign(buffer, namespace: "git", key: self.key)
        }
        if let remote { try repository.push(url: remote, reference: notesRef, expected: head.tip) }
        try journal?.journal(zip(entries, records).map { AuditJournalEntry($1, target: $0.commit) }, notesCommit: commit.hex)
        return records
    }

    /// Compares the chain on the notes ref with the journal. A chain that grew (another writer, or
    /// a crash between the notes commit and the journal) is taken into the journal. A chain that
    /// lost records the journal holds is published again from the journal, and the returned entry
    /// records what was found.
    private func checkJournal(_ head: (tip: ObjectID?, seq: Int, digest: String, foreignCommits: [ObjectID])) throws -> AuditEntry? {
        guard let journal else { return nil }
        let notesCommit = try journal.journalNotesCommit()
        if let tip = head.tip, tip.hex == notesCommit { return nil }
        let kept = try journal.journalHead()
        let found = head.tip == nil ? [] : (try? Self.records(in: repository, notesRef: notesRef).records) ?? []
        guard let kept else {
            // A journal that starts now takes the chain as it is only when every record of it is this
            // key's, chained from the first; anything else on the ref (records someone pushed before
            // Gantry's first start, say) is replaced, and the replacement recorded.
            guard let tip = head.tip else { return nil }
            if head.foreignCommits.isEmpty, isOwnChain(found) {
                try journal.journal(found.map { AuditJournalEntry($0.record, target: $0.commit.hex) }, notesCommit: tip.hex)
                return nil
            }
            _ = try restore([], kept: nil, found: found, head: head, notesCommit: nil)
            guard let target = requestedTarget ?? found.first?.commit else { return nil }
            return AuditEntry(event: .auditRestored, commit: target.hex, fields: [
                ("found", "\(notesRef) at \(tip.short) held \(found.count) record(s) and \(head.foreignCommits.count) notes commit(s) that are not this Gantry's chain"),
                ("republished", "none: the state DB holds no record yet; the notes were replaced by an empty chain"),
            ])
        }
        if let tip = head.tip, let newer = try grown(from: kept, to: tip, found: found, notesCommit: notesCommit) {
            try journal.journal(newer, notesCommit: tip.hex)
            return nil
        }
        return try restore(try journal.journalRecords(), kept: kept, found: found, head: head, notesCommit: notesCommit)
    }

    /// True when `found` is a chain this key signed, from seq 1 and `prev: none`, without a gap.
    private func isOwnChain(_ found: [(commit: ObjectID, record: AuditRecord)]) -> Bool {
        var prev = "none"
        for (index, entry) in found.enumerated() {
            guard entry.record.seq == index + 1, entry.record.prev == prev,
                  (try? SSHSignature.verify(entry.record.signature, message: Data(entry.record.signedText.utf8), namespace: "gantry-audit")) == key.publicKey
            else { return false }
            prev = entry.record.digest
        }
        return true
    }

    /// The records another writer (or a crash between a notes commit and the journal) added after
    /// `kept`, when the notes at `tip` are exactly the journal's chain grown by records this key
    /// signed, chained on, in notes commits this key signed; nil when anything of that fails.
    private func grown(from kept: AuditJournalEntry, to tip: ObjectID, found: [(commit: ObjectID, record: AuditRecord)],
                       notesCommit: String?) throws -> [AuditJournalEntry]? {
        guard let journal, let notesCommit = notesCommit.flatMap(ObjectID.init(hex:)) else { return nil }
        // Every notes commit since the journal's is Gantry's.
        var current: ObjectID? = tip
        while let commit = current, commit != notesCommit {
            guard let info = try? repository.commit(commit), let signature = try repository.signature(of: commit),
                  (try? SSHSignature.verify(signature.signature, message: signature.signedData, namespace: "git")) == key.publicKey else { return nil }
            current = info.parents.first
        }
        guard current == notesCommit else { return nil }
        // Every record the journal holds is still there, unchanged.
        let digests = Set(found.map(\.record.digest))
        guard try journal.journalRecords().allSatisfy({ digests.contains($0.digest) }) else { return nil }
        // What is new continues the chain, signed by this key.
        var prev = kept.digest
        var newer: [AuditJournalEntry] = []
        for (commit, record) in found where record.seq > kept.seq {
            guard record.seq == kept.seq + newer.count + 1, record.prev == prev,
                  (try? SSHSignature.verify(record.signature, message: Data(record.signedText.utf8), namespace: "gantry-audit")) == key.publicKey
            else { return nil }
            newer.append(AuditJournalEntry(record, target: commit.hex))
            prev = record.digest
        }
        return newer
    }

    /// Publishes the journal's chain again, exactly as it was written, replacing whatever the notes
    /// ref holds; returns the `audit-restored` entry saying what was found (nil with nothing kept).
    private func restore(_ chain: [AuditJournalEntry], kept: AuditJournalEntry?, found: [(commit: ObjectID, record: AuditRecord)],
                         head: (tip: ObjectID?, seq: Int, digest: String, foreignCommits: [ObjectID]), notesCommit: String?) throws -> AuditEntry? {
        var notes: [ObjectID: String] = [:]
        for entry in chain {
            guard let target = ObjectID(hex: entry.target) else { throw AuditError.badTarget(entry.target) }
            notes[target] = notes[target].map { $0 + "\n" + entry.text } ?? entry.text
        }
        let present = Set(found.map(\.record.digest))
        let missing = chain.filter { !present.contains($0.digest) }.count
        let parent = try notesCommit.flatMap { try repository.resolveCommit($0) }
        let headLine = kept.map { "gantry-audit head: seq \($0.seq) \($0.digest)" } ?? "gantry-audit head: seq 0 none"
        let message = "gantry audit: restored seq 1...\(kept?.seq ?? 0) from the state DB\n\n\(headLine)\n"
        let commit = try repository.commitNotes(notes, notesRef: notesRef, expectedTip: head.tip, message: message,
                                                authorName: "gantry", authorEmail: "gantry@localhost",
                                                replacing: parent.map { [$0] } ?? []) { buffer in
            try SSHSignature.sign(buffer, namespace: "git", key: self.key)
        }
        if let remote { try repository.push(url: remote, reference: notesRef, expected: head.tip) }
        try journal?.journal([], notesCommit: commit.hex)
        guard let kept, let target = chain.last?.target else { return nil }
        let foundText = head.tip.map { "\(notesRef) at \($0.short) ends at seq \(head.seq)" + (head.foreignCommits.isEmpty ? "" : " with \(head.foreignCommits.count) notes commit(s) or objects not written by Gantry") }
            ?? "\(notesRef) was deleted"
        return AuditEntry(event: .auditRestored, commit: target, fields: [
            ("found", "\(foundText) (\(found.count) records on it), but the state DB holds the chain up to seq \(kept.seq) \(kept.digest)"),
            ("republished", "\(missing) record\(missing == 1 ? "" : "s") missing or changed; seq 1...\(kept.seq) published again unchanged"),
        ])
    }

    /// Every record under the notes ref, in `seq` order, with the commit it is attached to.
    public static func records(in repository: GitRepository, notesRef: String = defaultRef) throws
        -> (records: [(commit: ObjectID, record: AuditRecord)], problems: [String]) {
        var all: [(ObjectID, AuditRecord)] = []
        var problems: [String] = []
        for note in try repository.allNotes(notesRef: notesRef) {
            guard let text = note.text else {
                problems.append("note on \(note.target.short): over \(GitRepository.maxNoteBytes) bytes, not read (Gantry writes a few kilobytes per commit)")
                continue
            }
            let parsed = AuditRecord.parseNote(text)
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
