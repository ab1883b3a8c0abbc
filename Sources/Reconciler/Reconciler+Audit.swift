import Audit
import Foundation
import GitStore
import Governance
import SpecLoading
import SpecModel
import StateStore

extension Reconciler {
    /// The lines every record of a judged commit starts with. The actor is the verified signer;
    /// without one, the commit's author e-mail marked `actor-kind: unverified`.
    func baseFields(_ environment: String?, branch: String, commit: CommitInfo, identity: CommitIdentity,
                    policyRevision: ObjectID?) -> [(String, String)] {
        var fields: [(String, String)] = environment.map { [("environment", $0)] } ?? []
        fields += [("branch", branch), ("commit", commit.id.hex)]
        if let principal = identity.principal, identity.problem == nil {
            fields += [("actor", principal), ("actor-kind", identity.actor?.kind.rawValue ?? "unknown")]
            if identity.viaAPI { fields.append(("via", "api")) }
        } else {
            fields += [("actor", commit.authorEmail), ("actor-kind", "unverified")]
        }
        // Trailers are the committer's words: at most 256 characters of each reach a record.
        func bounded(_ value: String) -> String { value.count <= 256 ? value : String(value.prefix(256)) + "… (\(value.utf8.count) bytes)" }
        if let agent = identity.agent { fields.append(("agent", bounded(agent))) }
        if let onBehalfOf = identity.onBehalfOf { fields.append(("on-behalf-of", bounded(onBehalfOf))) }
        if let task = identity.task { fields.append(("task", bounded(task))) }
        fields.append(("policy-revision", policyRevision?.hex ?? "none"))
        return fields
    }

    /// Appends a record unless a pass redone after a crash already wrote it: the commit's note is
    /// the evidence. Within the environment's records on that note, an `admitted`/`denied` counts
    /// as written while no `destroyed` follows it; `applied`/`failed` while no new admission
    /// follows; `destroyed` when it is the latest. An environment destroyed and re-created on the
    /// same commit is therefore recorded again.
    /// A `pending-approval` whose rules changed (the wait for governance became the wait for the
    /// class's approver, say) is recorded again.
    ///
    /// Denials and waits are deferred and written together (`flushRecords`): a commit that asks for a
    /// thousand environments costs one notes commit, not a thousand rewrites of a growing note.
    ///
    /// With `fresh` (an environment destroyed and taken up again at a commit it ran before) what
    /// the note holds from before the teardown does not count.
    func appendOnce(_ event: AuditEvent, _ environment: String, _ commit: ObjectID, _ fields: [(String, String)], fresh: Bool = false) throws {
        let entry = AuditEntry(event: event, commit: commit.hex, fields: fields.map { (key: $0.0, value: $0.1) })
        let sameRules = { (candidate: AuditEntry) in
            candidate.fields.filter { $0.key == "rule" }.map(\.value) == entry.fields.filter { $0.key == "rule" }.map(\.value)
        }
        if deferredRecords.contains(where: { $0.event == event && $0.commit == entry.commit && sameRules($0)
                && $0.fields.first { $0.key == "environment" }?.value == environment }) { return }
        if !fresh, let note = try recordedNote(on: commit, environment: environment) {
            let records = AuditRecord.parseNote(note).records
            if event == .pendingApproval {
                let rules = fields.filter { $0.0 == "rule" }.map { AuditRecord.escape($0.1) }
                let cycle = records.lastIndex { [AuditEvent.admitted.rawValue, AuditEvent.denied.rawValue].contains($0.event) }
                    .map { records[($0 + 1)...] } ?? records[...]
                if cycle.contains(where: { $0.event == event.rawValue && $0.values("rule") == rules }) { return }
            } else if Self.alreadyRecorded(event.rawValue, in: records.map(\.event)) {
                return
            }
        }
        if event == .denied || event == .pendingApproval {
            deferredRecords.append(entry)
            return
        }
        try flushRecords()
        try audit.append([entry])
    }

    /// Writes the deferred denials and waits, in the order they were judged, as one notes commit.
    func flushRecords() throws {
        if !deferredRecords.isEmpty {
            let batch = deferredRecords
            deferredRecords = []
            try audit.append(batch)
        }
        let processed = pendingProcessed
        pendingProcessed = []
        for mark in processed { try setProcessed(branch: mark.branch, commit: mark.commit) }
    }

    /// Denials of many branches are written together, at most `deferredBatch` at a time: each
    /// notes commit rewrites the notes it touches, and thousands of branches denied at one commit
    /// would rewrite its growing note thousands of times.
    func flushRecordsWhenDue() throws {
        if deferredRecords.count >= Self.deferredBatch { try flushRecords() }
    }

    static let deferredBatch = 100

    /// The records Gantry itself wrote on `commit` about `environment` (nil: about the protected
    /// branch itself), from the state DB's journal — never from the notes ref, which anyone who can
    /// push may have edited — as one note's text; nil when none.
    func recordedNote(on commit: ObjectID, environment: String?) throws -> String? {
        let texts = try state.auditTexts(target: commit.hex, environment: environment)
        return texts.isEmpty ? nil : texts.joined(separator: "\n")
    }

    /// True when a verdict (admitted, denied, pending-approval) on `commit` for `environment` is
    /// recorded: an environment judged at a commit is not judged again unless it was not.
    func hasVerdict(_ environment: String, on commit: String) throws -> Bool {
        guard let id = ObjectID(hex: commit), let note = try recordedNote(on: id, environment: environment) else { return false }
        let verdicts: Set<String> = [AuditEvent.admitted.rawValue, AuditEvent.denied.rawValue, AuditEvent.pendingApproval.rawValue]
        return AuditRecord.parseNote(note).records.contains { verdicts.contains($0.event) }
    }

    /// The last verdict (admitted, denied, pending-approval) recorded on `commit` for `environment`.
    func lastVerdict(_ environment: String, on commit: String) throws -> String? {
        guard let id = ObjectID(hex: commit), let note = try recordedNote(on: id, environment: environment) else { return nil }
        let verdicts: Set<String> = [AuditEvent.admitted.rawValue, AuditEvent.denied.rawValue, AuditEvent.pendingApproval.rawValue]
        return AuditRecord.parseNote(note).records.last { verdicts.contains($0.event) }?.event
    }

    static func alreadyRecorded(_ event: String, in events: [String]) -> Bool {
        let judged: Set<String> = [AuditEvent.admitted.rawValue, AuditEvent.denied.rawValue]
        let verdicts = judged.union([AuditEvent.pendingApproval.rawValue])
        let destroyed = AuditEvent.destroyed.rawValue
        switch event {
        case destroyed:
            return events.last == destroyed
        case _ where judged.contains(event):
            // Written when the latest verdict is this very one (a denial or a wait before it means
            // this is a new decision: an admission after them is always recorded).
            guard let last = events.lastIndex(where: { verdicts.contains($0) }), events[last] == event else { return false }
            return !events[last...].contains(destroyed)
        default:
            let cycle = events.lastIndex(where: { judged.contains($0) }).map { events[($0 + 1)...] } ?? events[...]
            return cycle.contains(event)
        }
    }
}
