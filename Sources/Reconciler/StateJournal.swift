import Audit
import StateStore

/// The state DB as the audit log's journal: every record Gantry wrote, so a notes ref that lost
/// records is noticed and published again.
public final class StateJournal: AuditJournal {
    let state: StateStore

    public init(_ state: StateStore) { self.state = state }

    public func journalHead() throws -> AuditJournalEntry? {
        try state.lastAuditRecord().map { AuditJournalEntry(seq: $0.seq, digest: $0.digest, target: $0.target, text: $0.text) }
    }

    public func journalRecords() throws -> [AuditJournalEntry] {
        try state.auditRecords().map { AuditJournalEntry(seq: $0.seq, digest: $0.digest, target: $0.target, text: $0.text) }
    }

    public func journal(_ entries: [AuditJournalEntry], notesCommit: String) throws {
        try state.keepAuditRecords(entries.map { entry in
            let environment = AuditRecord.parseNote(entry.text).records.first?.value("environment")
            return (entry.seq, entry.digest, entry.target, environment, entry.text)
        }, notesCommit: notesCommit)
    }

    public func journalNotesCommit() throws -> String? { try state.auditNotesCommit() }
}
