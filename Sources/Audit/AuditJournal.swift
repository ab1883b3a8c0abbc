import Foundation

/// One record as the journal keeps it: enough to publish it again, byte for byte.
public struct AuditJournalEntry: Sendable, Equatable {
    public let seq: Int
    public let digest: String
    /// The commit the record's note is attached to (hex).
    public let target: String
    /// The full record, signature included.
    public let text: String

    public init(seq: Int, digest: String, target: String, text: String) {
        self.seq = seq
        self.digest = digest
        self.target = target
        self.text = text
    }
}

/// Gantry's own copy of the audit chain (kept in the state DB), so a notes ref that was reset,
/// truncated or deleted behind Gantry's back is noticed, and the records it lost are published again.
public protocol AuditJournal: AnyObject, Sendable {
    /// The newest record kept, or nil before the first.
    func journalHead() throws -> AuditJournalEntry?
    /// Every record kept, in seq order.
    func journalRecords() throws -> [AuditJournalEntry]
    /// Keeps `entries` (the chain's newest records, in seq order); `notesCommit` now holds the chain.
    func journal(_ entries: [AuditJournalEntry], notesCommit: String) throws
    /// The notes commit that held the chain when the journal was last written.
    func journalNotesCommit() throws -> String?
}

extension AuditJournalEntry {
    init(_ record: AuditRecord, target: String) {
        self.init(seq: record.seq, digest: record.digest, target: target, text: record.text)
    }
}
