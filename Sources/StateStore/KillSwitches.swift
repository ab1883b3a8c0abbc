import Foundation
import GRDB

/// A kill switch: every environment (`all`), a team's, or one environment's; on, or lifted.
public struct KillSwitch: Sendable, Equatable, Codable {
    public enum Scope: String, Sendable, Codable, CaseIterable { case all, team, env }
    public let scope: Scope
    /// The team or environment ("" for `all`).
    public let name: String
    public let on: Bool
    /// Who turned it on (or, once lifted, who lifted it).
    public let actor: String
    public let reason: String
    /// When it was last turned on or lifted.
    public let since: Date

    public init(scope: Scope, name: String, on: Bool = true, actor: String, reason: String, since: Date) {
        self.scope = scope
        self.name = name
        self.on = on
        self.actor = actor
        self.reason = reason
        self.since = since
    }

    /// Whether the switch reaches an environment of `team` named `environment`.
    public func covers(environment: String, team: String?) -> Bool {
        switch scope {
        case .all: return true
        case .team: return team == name
        case .env: return environment == name
        }
    }

    /// `all`, `team payments`, `env web` (gantry.yaml's switch: `all (gantry.yaml)`).
    public var label: String { scope == .all ? (name.isEmpty ? "all" : "all (\(name))") : "\(scope.rawValue) \(name)" }
}

extension StateStore {
    /// The switches that are on (with `lifted`, those lifted too), oldest change first.
    public func killSwitches(lifted: Bool = false) throws -> [KillSwitch] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT scope, name, engaged, actor, reason, since FROM killSwitches \(lifted ? "" : "WHERE engaged = 1 ")ORDER BY since, scope, name").compactMap { row in
                KillSwitch.Scope(rawValue: row["scope"]).map {
                    KillSwitch(scope: $0, name: row["name"], on: row["engaged"], actor: row["actor"], reason: row["reason"], since: row["since"])
                }
            }
        }
    }

    /// Turns a switch on (kept as it was if already on) or off; returns the generation the
    /// running Gantry must reach, and whether anything changed.
    public func setKillSwitch(_ scope: KillSwitch.Scope, name: String, on: Bool, actor: String, reason: String,
                              at now: Date = Date()) throws -> (changed: Bool, generation: Int) {
        try pool.write { db in
            if on {
                try db.execute(sql: """
                    INSERT INTO killSwitches(scope, name, engaged, actor, reason, since) VALUES (?, ?, 1, ?, ?, ?)
                    ON CONFLICT(scope, name) DO UPDATE SET engaged = 1, actor = excluded.actor, reason = excluded.reason, since = excluded.since WHERE engaged = 0
                    """, arguments: [scope.rawValue, name, actor, reason, now])
            } else {
                try db.execute(sql: "UPDATE killSwitches SET engaged = 0, actor = ?, reason = ?, since = ? WHERE scope = ? AND name = ? AND engaged = 1",
                               arguments: [actor, reason, now, scope.rawValue, name])
            }
            let changed = db.changesCount > 0
            if changed { try db.execute(sql: "UPDATE killGenerations SET requested = requested + 1 WHERE id = 1") }
            let generation = try Int.fetchOne(db, sql: "SELECT requested FROM killGenerations WHERE id = 1") ?? 0
            return (changed, generation)
        }
    }

    /// The generation asked for and the one the running Gantry has applied.
    public func killGenerations() throws -> (requested: Int, applied: Int) {
        try pool.read { db in
            let row = try Row.fetchOne(db, sql: "SELECT requested, applied FROM killGenerations WHERE id = 1")
            return (row?["requested"] ?? 0, row?["applied"] ?? 0)
        }
    }

    public func markKillApplied(_ generation: Int) throws {
        try pool.write { db in
            try db.execute(sql: "UPDATE killGenerations SET applied = max(applied, ?) WHERE id = 1", arguments: [generation])
        }
    }
}
