import Foundation
import GRDB

/// What Gantry trusts on the protected branch: the anchor an operator set (or that the first start
/// found signed by a human holding the governance role), and the last admitted protected revision,
/// whose governance judges everything new.
public struct TrustState: Codable, Sendable, Equatable {
    public var protectedBranch: String
    /// The first admitted protected revision.
    public var anchor: String?
    /// Who set the anchor, and how (`first start: signed by alice@example.com`, `gantry trust set by ...`).
    public var anchoredBy: String?
    public var anchoredAt: Date?
    /// The last admitted protected revision: its gantry.yaml, identities/ and policies/ are in force.
    public var revision: String?
    /// The revision whose governance judged the environments at `revision` (the one before it
    /// when `revision` itself changed governance: a commit's rules apply from the next commit on).
    public var policyRevision: String?
    /// The admitted revision the environments were converged at before `revision`; nil right
    /// after anchoring, when the environments at the anchor are taken as found.
    public var segmentBase: String?
    /// Why nothing is admitted at all, when that is so (no anchor, anchor lost, branch missing).
    public var halted: String?
    /// The protected commit admission stopped at (waiting for approval, or denied), when it did.
    public var blocked: Blocked?

    public struct Blocked: Codable, Sendable, Equatable {
        public var commit: String
        /// `pending` or `deny`.
        public var decision: String
        public var rules: [String]
        public var remedies: [String]
        public init(commit: String, decision: String, rules: [String], remedies: [String]) {
            self.commit = commit
            self.decision = decision
            self.rules = rules
            self.remedies = remedies
        }
    }

    public init(protectedBranch: String) { self.protectedBranch = protectedBranch }
}

extension StateStore {
    static let trustKey = "trust"

    /// The trust state, or nil before the first start.
    public func trust() throws -> TrustState? { try meta(Self.trustKey) }

    public func setTrust(_ trust: TrustState) throws { try setMeta(Self.trustKey, trust) }

    /// Saves `trust` unless the anchor was moved meanwhile (by `gantry trust set` while a pass ran):
    /// the operator's act wins, and the next pass starts from it. Returns whether it was saved.
    @discardableResult
    public func updateTrust(_ trust: TrustState, expectedAnchor: String?) throws -> Bool {
        let text = String(decoding: try JSONEncoder().encode(trust), as: UTF8.self)
        return try pool.write { db in
            let current = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = ?", arguments: [Self.trustKey])
                .flatMap { try? JSONDecoder().decode(TrustState.self, from: Data($0.utf8)) }
            guard current?.anchor == expectedAnchor else { return false }
            try db.execute(sql: "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           arguments: [Self.trustKey, text])
            return true
        }
    }
}
