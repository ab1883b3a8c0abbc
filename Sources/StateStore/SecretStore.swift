import Crypto
import Foundation
import GRDB

/// Where a secret applies. Lookup for an environment tries its exact name, then its class, then its team.
public enum SecretScope: Sendable, Equatable, CustomStringConvertible {
    case environment(String)
    case `class`(String)
    case team(String)

    var kind: String {
        switch self {
        case .environment: "env"
        case .class: "class"
        case .team: "team"
        }
    }

    var value: String {
        switch self {
        case .environment(let v), .class(let v), .team(let v): v
        }
    }

    public var description: String { "--\(kind) \(value)" }
}

/// Secrets encrypted at rest with AES-GCM in the state DB. Only ciphertext is stored; values are
/// decrypted in memory for the processes that use them and never logged. Immutable after init.
public final class SecretStore: @unchecked Sendable {
    let state: StateStore
    let key: SymmetricKey
    /// Moves on whenever this process sets, removes or reads a value (see `Redactor`).
    let generation = Generation()

    /// The key comes from `$GANTRY_SECRET_KEY` (base64 of 32 bytes), else from `keyPath` (created, 0600).
    public init(state: StateStore, keyPath: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        self.state = state
        if let encoded = environment["GANTRY_SECRET_KEY"] {
            guard let data = Data(base64Encoded: encoded), data.count == 32 else {
                throw SecretError("GANTRY_SECRET_KEY must be the base64 of 32 bytes (head -c 32 /dev/urandom | base64)")
            }
            key = SymmetricKey(data: data)
        } else if let data = FileManager.default.contents(atPath: keyPath) {
            guard data.count == 32 else { throw SecretError("\(keyPath) must hold 32 bytes") }
            key = SymmetricKey(data: data)
        } else {
            let fresh = SymmetricKey(size: .bits256)
            try FileManager.default.createDirectory(atPath: (keyPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            let bytes = fresh.withUnsafeBytes { Data($0) }
            guard FileManager.default.createFile(atPath: keyPath, contents: bytes, attributes: [.posixPermissions: 0o600]) else {
                throw SecretError("cannot write the secrets key to \(keyPath)")
            }
            key = fresh
        }
    }

    /// Stores (or replaces) a secret; the version counts replacements, for rotation.
    public func set(_ name: String, value: Data, scope: SecretScope) throws {
        defer { generation.bump() }
        let sealed = try AES.GCM.seal(value, using: key, authenticating: Data("\(name)|\(scope.kind)|\(scope.value)".utf8))
        guard let combined = sealed.combined else { throw SecretError("encryption failed") }
        try state.pool.write { db in
            let version = try Int.fetchOne(db, sql: "SELECT version FROM secrets WHERE name = ? AND scopeKind = ? AND scopeValue = ?",
                                           arguments: [name, scope.kind, scope.value]) ?? 0
            try db.execute(sql: """
                INSERT INTO secrets(name, scopeKind, scopeValue, sealed, version, updatedAt) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT(name, scopeKind, scopeValue) DO UPDATE SET sealed = excluded.sealed, version = excluded.version, updatedAt = excluded.updatedAt
                """, arguments: [name, scope.kind, scope.value, combined, version + 1, Date()])
        }
    }

    /// Removes a secret; false when there was none.
    @discardableResult
    public func remove(_ name: String, scope: SecretScope) throws -> Bool {
        defer { generation.bump() }
        return try state.pool.write { db in
            try db.execute(sql: "DELETE FROM secrets WHERE name = ? AND scopeKind = ? AND scopeValue = ?", arguments: [name, scope.kind, scope.value])
            return db.changesCount > 0
        }
    }

    /// Removes every secret of an environment whose name starts with `prefix` (Gantry's own, at teardown).
    public func removeAll(prefix: String, environment: String) throws {
        defer { generation.bump() }
        try state.pool.write { db in
            try db.execute(sql: "DELETE FROM secrets WHERE scopeKind = 'env' AND scopeValue = ? AND substr(name, 1, ?) = ?",
                           arguments: [environment, prefix.count, prefix])
        }
    }

    /// Names, scopes and versions — never values.
    public func list() throws -> [(name: String, scope: String, version: Int, updatedAt: Date)] {
        try state.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT name, scopeKind, scopeValue, version, updatedAt FROM secrets ORDER BY name, scopeKind, scopeValue").map {
                ($0["name"], "--\($0["scopeKind"] as String) \($0["scopeValue"] as String)", $0["version"], $0["updatedAt"])
            }
        }
    }

    /// The secret an environment sees: its own, else its class's, else its team's.
    public func lookup(_ name: String, environment: String, class envClass: String, team: String?) throws -> (value: Data, version: String)? {
        defer { generation.bump() }
        let candidates: [SecretScope] = [.environment(environment), .class(envClass)] + (team.map { [.team($0)] } ?? [])
        for scope in candidates {
            let row = try state.pool.read { db in
                try Row.fetchOne(db, sql: "SELECT sealed, version FROM secrets WHERE name = ? AND scopeKind = ? AND scopeValue = ?",
                                 arguments: [name, scope.kind, scope.value])
            }
            guard let row else { continue }
            let box = try AES.GCM.SealedBox(combined: row["sealed"] as Data)
            let value = try AES.GCM.open(box, using: key, authenticating: Data("\(name)|\(scope.kind)|\(scope.value)".utf8))
            return (value, "\(scope.kind):\(scope.value):v\(row["version"] as Int)")
        }
        return nil
    }
}

public struct SecretError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A counter shared by a secret store and its redactors.
final class Generation: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func bump() { lock.withLock { count += 1 } }
}
