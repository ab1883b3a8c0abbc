import Audit
import Foundation
import GitStore
import SpecModel

/// Signed approvals of exact commits, kept as notes on `refs/notes/gantry-approvals`.
///
/// An approval is the text `gantry-approve: 1\ncommit: <sha>\n` followed by its SSHSIG signature
/// (namespace `gantry-approve`); several approvals of one commit share its note.
public enum Approvals {
    public static let notesRef = "refs/notes/gantry-approvals"
    public static let namespace = "gantry-approve"

    public static func message(for commit: ObjectID) -> String { "gantry-approve: 1\ncommit: \(commit.hex)\n" }

    /// Signs an approval of `commit` with `key` and adds it to the commit's approvals note.
    ///
    /// Only the approval itself is signed (SSHSIG, namespace `gantry-approve`). The notes commit
    /// that carries it is not: it is built on whatever the approvals ref holds, which anyone who can
    /// push may have pointed at a commit of their own, and the approver's `git` signature on it would
    /// make that commit look like the approver's work.
    public static func approve(_ commit: ObjectID, key: SigningKey, in repository: GitRepository) throws {
        let text = message(for: commit) + (try SSHSignature.sign(Data(message(for: commit).utf8), namespace: namespace, key: key))
        try repository.withExclusiveLock("gantry-approvals.lock") {
            for _ in 0..<20 {
                let tip = try repository.reference(notesRef)
                // Only approvals of this commit that verify are kept: padding someone added to the
                // note (to push approvals past the size read) is dropped.
                let kept = (try? repository.note(on: commit, notesRef: notesRef)).flatMap { $0 }.map { approvals(in: $0, of: commit) } ?? []
                let note = (kept.map(\.text) + [text]).joined(separator: "\n")
                // A ref pointed at something that is not a commit holds nothing: start it afresh.
                let fresh = try tip != nil && !repository.notesRefIsCommit(notesRef)
                do {
                    try repository.commitNotes([commit: note], notesRef: notesRef, expectedTip: tip,
                                               message: "gantry approve \(commit.short)\n", authorName: "gantry approve",
                                               authorEmail: key.publicKey.fingerprint, replacing: fresh ? [] : nil, sign: nil)
                    return
                } catch let error as GitError where error.isConflict {
                    continue
                }
            }
            throw GitError(operation: "approve \(commit.short)", code: -1, message: "the approvals ref kept moving")
        }
    }

    /// At most this many bytes of an approvals note are read (a note holds a few signatures of a
    /// few hundred bytes each).
    public static let maxNoteBytes = 1 << 20

    /// The signatures in `commit`'s approvals note that verify over an approval of that very commit:
    /// the keys that approved it. Approvals of other commits, or that do not verify, are ignored.
    /// At most the first `maxNoteBytes` of the note are read, once, line by line.
    public static func approvingKeys(of commit: ObjectID, in repository: GitRepository) throws -> [SSHPublicKey] {
        // A notes ref pointed at something that is not a notes commit holds no approval; it must not stop judging.
        guard let note = (try? repository.note(on: commit, notesRef: notesRef)) ?? nil else { return [] }
        var keys: [SSHPublicKey] = []
        for approval in approvals(in: note, of: commit) where !keys.contains(approval.key) { keys.append(approval.key) }
        return keys
    }

    /// The verified approvals of `commit` in a note's text (its first `maxNoteBytes`), each with
    /// its text as written.
    static func approvals(in note: String, of commit: ObjectID) -> [(key: SSHPublicKey, text: String)] {
        let bounded = note.utf8.count <= maxNoteBytes ? note : String(decoding: note.utf8.prefix(maxNoteBytes), as: UTF8.self)
        let expected = Data(message(for: commit).utf8)
        var found: [(SSHPublicKey, String)] = []
        var block: [Substring]?
        for line in bounded.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "-----BEGIN SSH SIGNATURE-----" { block = [line]; continue }
            guard block != nil else { continue }
            block!.append(line)
            guard line == "-----END SSH SIGNATURE-----" else { continue }
            let armored = block!.joined(separator: "\n") + "\n"
            block = nil
            if let key = try? SSHSignature.verify(armored, message: expected, namespace: namespace) {
                found.append((key, message(for: commit) + armored))
            }
        }
        return found
    }
}

/// Whether a change may converge under `approvals.<class>` of gantry.yaml.
public struct ApprovalVerdict: Sendable {
    public let required: Int
    /// Principals whose approval counts.
    public let approvers: [String]
    /// Why each other candidate did not count.
    public let rejected: [String]
    public var isSatisfied: Bool { approvers.count >= required }
}

public struct ApprovalJudge: Sendable {
    public let signers: AllowedSigners
    public let actors: [String: Actor]

    public init(signers: AllowedSigners, actors: [String: Actor]) {
        self.signers = signers
        self.actors = actors
    }

    /// Who signed the approved commit, and whether that signature approves.
    public struct CommitSigner: Sendable {
        public let principal: String
        /// True for a merge commit made on the protected branch that merges something new: its
        /// signer approves what it merges, like a reviewer pressing "merge".
        public let isProtectedMerge: Bool
        /// The people of the approved range other than the approved commit itself.
        public let others: Set<String>
        public init(principal: String, isProtectedMerge: Bool, others: Set<String>) {
            self.principal = principal
            self.isProtectedMerge = isProtectedMerge
            self.others = others
        }
    }

    /// Counts the approvals of one commit under `rule`: its signer when it is a merge made on the
    /// protected branch (or when the rule lets authors approve), and every signed `gantry approve`
    /// of exactly that commit. An approver must be a human with the rule's role (any human when the
    /// rule names none) and, with `distinctFromAuthors`, none of `people` (the authors, committers,
    /// signers and On-Behalf-Of principals of every commit the approval covers).
    public func judge(rule: Settings.ApprovalRule, commit: CommitInfo, signer: CommitSigner?, approvingKeys: [SSHPublicKey],
                      people: Set<String>, now: Date) -> ApprovalVerdict {
        var candidates: [(principal: String, source: String, excluded: Set<String>)] = []
        var rejected: [String] = []
        if let signer {
            if signer.isProtectedMerge {
                candidates.append((signer.principal, "the signed merge \(commit.id.short)", signer.others))
            } else if !rule.distinctFromAuthors {
                candidates.append((signer.principal, "the signature of \(commit.id.short)", []))
            } else if commit.parents.count > 1 {
                rejected.append("the merge \(commit.id.short) signed by \(signer.principal) was not made on the protected branch on top of its previous tip (or does not itself bring the whole change), so it approves nothing")
            }
        }
        for key in approvingKeys {
            switch signers.lookup(key, namespace: Approvals.namespace, at: now) {
            case .allowed(let principal): candidates.append((principal, "gantry approve", people))
            default: rejected.append("an approval signed by \(key.fingerprint), which allowed_signers on main does not allow for \(Approvals.namespace)")
            }
        }
        var approvers: [String] = []
        for candidate in candidates where !approvers.contains(candidate.principal) {
            let (principal, source) = (candidate.principal, candidate.source)
            guard let actor = actors[principal] else {
                rejected.append("\(principal) (\(source)) has no entry in identities/actors.yaml")
                continue
            }
            guard actor.kind == .human else {
                rejected.append("\(principal) (\(source)) is an agent; approvals need a human")
                continue
            }
            guard rule.role.isEmpty || actor.roles.contains(rule.role) else {
                rejected.append("\(principal) (\(source)) lacks the role \(rule.role)")
                continue
            }
            if rule.distinctFromAuthors && candidate.excluded.contains(principal.lowercased()) {
                rejected.append("\(principal) (\(source)) authored, committed, signed or was On-Behalf-Of in the approved changes; approvals must come from someone else")
                continue
            }
            approvers.append(principal)
        }
        return ApprovalVerdict(required: rule.count, approvers: approvers, rejected: rejected)
    }
}
