import Foundation
import GitStore

/// Checks the whole audit log: every signature, `seq` without gaps or repeats, the `prev` chain,
/// the head recorded at the notes ref's tip, and the signature of every notes commit.
public struct AuditVerifier: Sendable {
    public let trustedKeys: [SSHPublicKey]

    public init(trustedKeys: [SSHPublicKey]) { self.trustedKeys = trustedKeys }

    public struct Report: Sendable {
        public var recordCount = 0
        public var faults: [String] = []
        public var isValid: Bool { faults.isEmpty }
    }

    /// With `kept` (the newest record of the state DB's journal), a notes ref that no longer holds
    /// that record — reset, truncated, rewritten or deleted — is a fault too.
    public func verify(repository: GitRepository, notesRef: String = AuditLog.defaultRef, kept: AuditJournalEntry? = nil) throws -> Report {
        var report = Report()
        let (records, problems) = try AuditLog.records(in: repository, notesRef: notesRef)
        report.faults += problems
        report.recordCount = records.count
        var expectedSeq = 1
        var prev = "none"
        for (commit, record) in records {
            let place = "record seq \(record.seq) (\(record.event), on \(commit.short))"
            do {
                let signer = try SSHSignature.verify(record.signature, message: Data(record.signedText.utf8), namespace: "gantry-audit")
                if !trustedKeys.contains(signer) {
                    report.faults.append("\(place): signed by \(signer.fingerprint), which is not the Gantry key")
                }
            } catch {
                report.faults.append("\(place): bad signature: \(error) — the record was edited or forged")
            }
            if record.seq < expectedSeq {
                report.faults.append("\(place): seq \(record.seq) appears more than once")
            } else if record.seq > expectedSeq {
                report.faults.append("\(place): records \(expectedSeq)...\(record.seq - 1) are missing")
            }
            if record.prev != prev {
                report.faults.append("\(place): prev is \(record.prev) but the record before it hashes to \(prev) — a record was removed, edited or reordered")
            }
            // A forged seq of Int.max must be a fault, not an overflow trap.
            expectedSeq = record.seq == Int.max ? Int.max : record.seq + 1
            prev = record.digest
        }
        if let kept, !records.contains(where: { $0.record.seq == kept.seq && $0.record.digest == kept.digest }) {
            let ends = records.last.map { "seq \($0.record.seq)" } ?? "no record"
            report.faults.append("the notes ref \(notesRef) was reset, truncated, rewritten or deleted: the state DB holds the chain up to seq \(kept.seq) \(kept.digest), the notes end at \(ends); `gantry run` publishes the kept records again")
        }
        do {
            let head = try AuditLog.head(of: repository, notesRef: notesRef)
            for commit in head.foreignCommits where (try? repository.commit(commit)) != nil {
                report.faults.append("notes commit \(commit.short) was not written by Gantry (no 'gantry-audit head' line): the notes were changed behind Gantry's back")
            }
            if head.seq != records.count || (head.seq > 0 && head.digest != prev) {
                report.faults.append("the notes ref's head says seq \(head.seq) \(head.digest), but the records end at seq \(records.last?.record.seq ?? 0) \(prev) — records were removed from the end or rewritten")
            }
            // A notes ref must name a commit; anything else (a blob, a tree, a tag) holds no notes.
            if let tip = head.tip, (try? repository.commit(tip)) == nil {
                report.faults.append("the notes ref \(notesRef) points at \(tip.short), which is not a commit: it holds no audit records; restore it from a clone or backup (`gantry run` publishes the records the state DB kept again)")
                return report
            }
            var commit = head.tip
            while let current = commit {
                if let signature = try repository.signature(of: current) {
                    do {
                        let signer = try SSHSignature.verify(signature.signature, message: signature.signedData, namespace: "git")
                        if !trustedKeys.contains(signer) { report.faults.append("notes commit \(current.short) is signed by an unknown key") }
                    } catch {
                        report.faults.append("notes commit \(current.short): bad signature: \(error)")
                    }
                } else {
                    report.faults.append("notes commit \(current.short) is not signed")
                }
                commit = try repository.commit(current).parents.first
            }
        } catch {
            report.faults.append("\(error)")
        }
        return report
    }
}
