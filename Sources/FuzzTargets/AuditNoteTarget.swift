import Audit
import Foundation
import GitStore

/// The input is a note of `refs/notes/gantry`, optionally followed by a `\n%%\n` line and the
/// message of the notes commit that holds it (otherwise a message naming the last record as the
/// chain's head, as Gantry writes it). The note is parsed as `AuditLog.records` does, each record's
/// signature checked and digest taken; a note holding at least one record is then committed on a
/// scratch repository (signed by a fixed key) and judged by the real `AuditVerifier`, the code of
/// `gantry audit verify`, which trusts that key and the key of the first record's signature (so a
/// seed signed by any key, with `ssh-keygen -Y sign -n gantry-audit`, reaches the trusted path).
enum AuditNoteTarget {
    static let notesRef = AuditLog.defaultRef
    /// The commit the note is attached to (notes may name any object id).
    static let target = ObjectID(hex: "0123456789abcdef0123456789abcdef01234567")!
    /// The key that signs the notes commits (Ed25519 seed 0x01 × 32); the seeds' records are signed
    /// by a throwaway key of Fuzz/make-seeds.sh, trusted as the first record's signer.
    static let key = try! SigningKey(privateKey: .init(rawRepresentation: Data(repeating: 1, count: 32)))

    static func run(_ data: Data) {
        let parts = FuzzTarget.parts(data, count: 2)
        let note = String(decoding: parts[0], as: UTF8.self)
        let (records, problems) = AuditRecord.parseNote(note)
        for problem in problems { _ = problem.utf8.count }
        for record in records {
            let signer = try? SSHSignature.verify(record.signature, message: Data(record.signedText.utf8), namespace: "gantry-audit")
            FuzzTarget.trace("record seq \(record.seq) \(record.event): \(signer.map { "signed by \($0.fingerprint)" } ?? "bad signature")")
            _ = record.digest
            _ = record.value("environment")
            _ = record.values("rule")
            _ = AuditEvent(rawValue: record.event)
        }
        guard let last = records.last else { return }
        let message = parts.count > 1 && !parts[1].isEmpty
            ? String(decoding: parts[1], as: UTF8.self)
            : "gantry audit: \(last.event) #\(last.seq)\n\ngantry-audit head: seq \(last.seq) \(last.digest)\n"
        _ = ScratchRepository.shared.use { repository in
            do {
                // A root commit each time (`replacing: []`), so the verifier's walk stays one commit long.
                let tip = try repository.reference(notesRef)
                _ = try repository.commitNotes([target: note], notesRef: notesRef, expectedTip: tip, message: message,
                                               authorName: "gantry", authorEmail: "gantry@localhost", replacing: []) { buffer in
                    try SSHSignature.sign(buffer, namespace: "git", key: key)
                }
                let first = try? SSHSignature.parse(records[0].signature).publicKey
                let report = try AuditVerifier(trustedKeys: [key.publicKey] + (first.map { [$0] } ?? [])).verify(repository: repository, notesRef: notesRef)
                FuzzTarget.trace("verify: \(report.recordCount) record(s), faults: \(report.faults)")
            } catch {
                FuzzTarget.trace("error: \(error)")
            }
        }
    }
}
