import Foundation
import GRDB

/// The branches the API made, for whom and at which commit: what "the API made it for you"
/// means (a branch name alone proves nothing).
extension StateStore {
    /// Notes that the API made `branch` for `principal` at `commit`.
    public func recordAPIBranch(_ branch: String, principal: String, commit: String, now: Date = Date()) throws {
        try pool.write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO apiBranches(branch, principal, \"commit\", createdAt) VALUES (?, ?, ?, ?)",
                           arguments: [branch, principal, commit, now])
        }
    }

    /// For whom, and at which commit, the API made `branch` (nil: it did not).
    public func apiBranch(_ branch: String) throws -> (principal: String, commit: String)? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT principal, \"commit\" FROM apiBranches WHERE branch = ?", arguments: [branch])
                .map { ($0["principal"], $0["commit"]) }
        }
    }

    /// The branches the API made for `principal` (some may be gone from the repository).
    public func apiBranches(principal: String) throws -> [String] {
        try pool.read { db in try String.fetchAll(db, sql: "SELECT branch FROM apiBranches WHERE principal = ?", arguments: [principal]) }
    }

    public func forgetAPIBranch(_ branch: String) throws {
        try pool.write { db in try db.execute(sql: "DELETE FROM apiBranches WHERE branch = ?", arguments: [branch]) }
    }
}
