import Audit
import Foundation
import GitStore
import Governance
import SpecLoading
import StateStore

/// The trust anchor: the first admitted protected revision, set by an operator (or, on a first
/// start, found signed by a human holding the governance role). Everything after it is judged
/// with the governance of the last admitted revision, back to the anchor.
public enum Trust {
    public static let namespace = "gantry-trust"

    /// Anchors `commit` of `branch`: its governance comes into force and its environments are
    /// converged as found (the first pass's rule), and a `trust-anchored` record says who did it.
    /// Refuses a commit whose governance files are invalid.
    public static func anchor(_ commit: ObjectID, branch: String, by who: String, how: String, repository: GitRepository,
                              state: StateStore, audit: AuditLog) throws {
        let governance = try GovernanceRevision.load(at: commit, repository: repository)
        guard governance.problems.isEmpty else {
            throw TrustError("cannot anchor \(commit.short): its governance files are invalid:\n" + governance.problems.joined(separator: "\n"))
        }
        var trust = try state.trust() ?? TrustState(protectedBranch: branch)
        let previous = trust.anchor
        if trust.protectedBranch != branch {
            // The live environments belong to the protected branch, whatever its name.
            try state.moveEnvironments(fromBranch: trust.protectedBranch, to: branch)
        }
        trust.protectedBranch = branch
        trust.anchor = commit.hex
        trust.anchoredBy = "\(how) by \(who)"
        trust.anchoredAt = Date()
        trust.revision = commit.hex
        trust.policyRevision = commit.hex
        trust.segmentBase = nil
        trust.halted = nil
        trust.blocked = nil
        if audit.journal == nil { audit.journal = StateJournal(state) }
        try audit.append([AuditEntry(event: .trustAnchored, commit: commit.hex, fields: [
            ("scope", "governance"), ("branch", branch), ("commit", commit.hex), ("anchored-by", who), ("how", how),
            ("previous-anchor", previous ?? "none"), ("policy-revision", commit.hex),
        ])])
        try state.setTrust(trust)
    }

    /// Whether `commit` may be anchored without an operator: it must be signed by a human of its
    /// own identities holding the role of `approvals.governance` (else of `approvals.production`,
    /// else any human), and its governance files must be valid. Returns the signer, or why not.
    public static func firstStartSigner(of commit: ObjectID, repository: GitRepository) throws -> Result<String, TrustError> {
        let governance = try GovernanceRevision.load(at: commit, repository: repository)
        guard governance.problems.isEmpty else {
            return .failure(TrustError("the governance files at \(commit.short) are invalid: \(governance.problems.joined(separator: "; "))"))
        }
        let info = try repository.commit(commit)
        let identity = governance.identity.judge(info, signature: try repository.signature(of: commit), now: Date())
        guard let principal = identity.principal, identity.problem == nil else {
            return .failure(TrustError("\(commit.short) is not signed by a principal of its own identities/ (\(identity.problem ?? "unsigned"))"))
        }
        let role = governance.governanceRule.role
        guard governance.mayAnchor(principal) else {
            return .failure(TrustError("\(commit.short) is signed by \(principal), who is not a human\(role.isEmpty ? "" : " with the role \(role)") in its identities/actors.yaml"))
        }
        return .success(principal)
    }

    /// How to anchor by hand, for messages.
    static func howTo(_ commit: ObjectID?) -> String {
        "an operator anchors it with `gantry trust set \(commit?.short ?? "COMMIT") --key OPERATOR_KEY` (a human with the governance role), or signs the tip as such a human"
    }
}

public struct TrustError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
