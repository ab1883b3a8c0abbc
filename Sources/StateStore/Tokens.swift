import Crypto
import Foundation
import GRDB

/// A bearer token of the API as stored: its public id, whom it acts as, and the SHA-256 of its
/// value. The value itself is shown once, when it is made, and kept nowhere.
public struct TokenRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "tokens"
    public var id: String
    public var actor: String
    public var hash: String
    public var createdAt: Date
    public var expiresAt: Date?
    public var revokedAt: Date?
    public var lastUsedAt: Date?

    /// Usable at `now`: not revoked, not expired.
    public func isValid(at now: Date) -> Bool {
        revokedAt == nil && (expiresAt.map { now < $0 } ?? true)
    }
}

/// Why a presented token does not authenticate.
public enum TokenProblem: Error, Equatable, CustomStringConvertible {
    case malformed, unknown, revoked(Date), expired(Date)

    public var description: String {
        switch self {
        case .malformed: return "the bearer token is not a Gantry token (gnt_ID_SECRET)"
        case .unknown: return "the bearer token is not known (wrong value, or its state directory differs)"
        case .revoked(let at): return "the bearer token was revoked at \(ISO8601DateFormatter().string(from: at))"
        case .expired(let at): return "the bearer token expired at \(ISO8601DateFormatter().string(from: at))"
        }
    }
}

extension StateStore {
    /// Makes a token for `actor`: returns the value (to print once) and its record.
    public func createToken(actor: String, ttl: TimeInterval?, now: Date = Date()) throws -> (value: String, record: TokenRecord) {
        var idBytes = [UInt8](repeating: 0, count: 6)
        var secretBytes = [UInt8](repeating: 0, count: 32)
        for index in idBytes.indices { idBytes[index] = UInt8.random(in: 0...255) }
        for index in secretBytes.indices { secretBytes[index] = UInt8.random(in: 0...255) }
        let id = idBytes.map { String(format: "%02x", $0) }.joined()
        let secret = Data(secretBytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        let value = "gnt_\(id)_\(secret)"
        let record = TokenRecord(id: id, actor: actor, hash: Self.tokenHash(value), createdAt: now,
                                 expiresAt: ttl.map { now.addingTimeInterval($0) }, revokedAt: nil, lastUsedAt: nil)
        try pool.write { db in try record.insert(db) }
        return (value, record)
    }

    public func tokens() throws -> [TokenRecord] {
        try pool.read { db in try TokenRecord.order(Column("createdAt")).fetchAll(db) }
    }

    /// Revokes token `id` (its id, or a unique prefix of it); false when none matches.
    public func revokeToken(_ id: String, now: Date = Date()) throws -> Bool {
        try pool.write { db in
            let matches = try TokenRecord.fetchAll(db).filter { !id.isEmpty && $0.id.hasPrefix(id) }
            guard matches.count == 1, var record = matches.first else { return false }
            if record.revokedAt == nil { record.revokedAt = now }
            try record.update(db)
            return true
        }
    }

    /// The token whose value is `value`, if it is known and valid at `now` (its last use noted).
    public func authenticate(_ value: String, now: Date = Date()) throws -> Result<TokenRecord, TokenProblem> {
        let parts = value.split(separator: "_", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "gnt", parts[1].count == 12, parts[1].allSatisfy(\.isHexDigit), parts[2].count >= 32 else {
            return .failure(.malformed)
        }
        let presented = Self.tokenHash(value)
        return try pool.write { db in
            guard var record = try TokenRecord.fetchOne(db, key: String(parts[1])),
                  Self.constantTimeEqual(record.hash, presented) else { return .failure(.unknown) }
            if let revoked = record.revokedAt { return .failure(.revoked(revoked)) }
            if let expires = record.expiresAt, now >= expires { return .failure(.expired(expires)) }
            // Noted at most once a minute: a busy agent does not turn every read into a write.
            if record.lastUsedAt.map({ now.timeIntervalSince($0) > 60 }) ?? true {
                record.lastUsedAt = now
                try record.update(db)
            }
            return .success(record)
        }
    }

    static func tokenHash(_ value: String) -> String {
        SHA256.hash(data: Data(value.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }
}
