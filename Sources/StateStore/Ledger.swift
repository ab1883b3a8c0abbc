import Foundation
import GRDB

/// What one environment costs per hour now, and whom it is charged to.
public struct Meter: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "meters"
    public var environment: String
    /// Accrued up to here.
    public var since: Date
    public var hourly: Double
    /// "" when none.
    public var team: String
    public var agent: String
    public var onBehalfOf: String
    public var envClass: String

    public init(environment: String, since: Date, hourly: Double, team: String?, agent: String?, onBehalfOf: String?, envClass: String) {
        self.environment = environment
        self.since = since
        self.hourly = hourly
        self.team = team ?? ""
        self.agent = agent ?? ""
        self.onBehalfOf = onBehalfOf ?? ""
        self.envClass = envClass
    }

}

/// Spend accrued in one period, by whom it is charged to.
public struct SpendRow: Sendable, Equatable {
    public let environment: String
    public let team: String
    public let agent: String
    public let onBehalfOf: String
    public let envClass: String
    public let amount: Double
}

/// Why an environment sleeps: idle, asked (`gantry sleep`), or paused by an exhausted budget
/// (a paused one is not woken by requests).
public struct LifecycleState: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "lifecycle"
    public enum State: String, Codable, Sendable { case sleeping, paused }
    public var environment: String
    public var state: State
    public var reason: String
    public var since: Date
    public init(environment: String, state: State, reason: String, since: Date) {
        self.environment = environment
        self.state = state
        self.reason = reason
        self.since = since
    }
}

/// A sleep or wake asked for by a command or the API, for the running Gantry to do.
public struct LifecycleRequest: Sendable, Equatable {
    public let id: Int64
    public let environment: String
    public let action: String
    public let actor: String
    public let at: Date
}

extension StateStore {
    // MARK: Ledger

    public func meters() throws -> [Meter] {
        try pool.read { db in try Meter.fetchAll(db) }
    }

    /// Accrues every meter up to `now` into the ledger (split at UTC hours), then makes `current`
    /// the meters from `now` on (environments absent from it stop costing). One transaction:
    /// nothing is counted twice or lost if Gantry stops in between.
    public func accrue(until now: Date, current: [Meter]) throws {
        try pool.write { db in
            for meter in try Meter.fetchAll(db) where now > meter.since && meter.hourly > 0 {
                var start = meter.since
                while start < now {
                    let hour = floor(start.timeIntervalSince1970 / 3600) * 3600
                    let end = min(now, Date(timeIntervalSince1970: hour + 3600))
                    let seconds = end.timeIntervalSince(start)
                    try db.execute(sql: """
                        INSERT INTO ledger(hour, environment, team, agent, onBehalfOf, envClass, amount, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                        ON CONFLICT(hour, environment, team, agent, onBehalfOf) DO UPDATE SET amount = amount + excluded.amount,
                            seconds = seconds + excluded.seconds, envClass = excluded.envClass
                        """, arguments: [Int64(hour), meter.environment, meter.team, meter.agent, meter.onBehalfOf, meter.envClass,
                                         meter.hourly * seconds / 3600, seconds])
                    start = end
                }
            }
            try db.execute(sql: "DELETE FROM meters")
            for var meter in current {
                meter.since = now
                try meter.insert(db)
            }
        }
    }

    /// What was accrued from `start` (an hour boundary) on, by environment and charge.
    public func spend(since start: Date) throws -> [SpendRow] {
        try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT environment, team, agent, onBehalfOf, envClass, SUM(amount) AS amount FROM ledger WHERE hour >= ?
                GROUP BY environment, team, agent, onBehalfOf, envClass
                """, arguments: [Int64(start.timeIntervalSince1970.rounded(.down))]).map {
                SpendRow(environment: $0["environment"], team: $0["team"], agent: $0["agent"], onBehalfOf: $0["onBehalfOf"],
                         envClass: $0["envClass"], amount: $0["amount"])
            }
        }
    }

    // MARK: Sleep

    public func lifecycleStates() throws -> [String: LifecycleState] {
        try pool.read { db in
            Dictionary(try LifecycleState.fetchAll(db).map { ($0.environment, $0) }, uniquingKeysWith: { a, _ in a })
        }
    }

    public func lifecycleState(of environment: String) throws -> LifecycleState? {
        try pool.read { db in try LifecycleState.fetchOne(db, key: environment) }
    }

    /// Records the environment asleep (`state`), or awake (nil).
    public func setLifecycleState(_ environment: String, _ state: LifecycleState?) throws {
        try pool.write { db in
            try db.execute(sql: "DELETE FROM lifecycle WHERE environment = ?", arguments: [environment])
            try state?.insert(db)
        }
    }

    // MARK: Marks

    /// Sets the mark `key` unless it is set; true when this call set it (say a thing once).
    public func markOnce(_ key: String, at now: Date = Date()) throws -> Bool {
        try pool.write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO marks(key, at) VALUES (?, ?)", arguments: [key, now])
            return db.changesCount > 0
        }
    }

    // MARK: Requests

    public func requestLifecycle(_ environment: String, action: String, actor: String, at now: Date = Date()) throws {
        try pool.write { db in
            try db.execute(sql: "INSERT INTO lifecycleRequests(environment, action, actor, at) VALUES (?, ?, ?, ?)",
                           arguments: [environment, action, actor, now])
        }
    }

    /// The requests not yet taken, oldest first, taken (removed) at once.
    public func takeLifecycleRequests() throws -> [LifecycleRequest] {
        try pool.write { db in
            let rows = try Row.fetchAll(db, sql: "SELECT id, environment, action, actor, at FROM lifecycleRequests ORDER BY id LIMIT 100")
            for row in rows { try db.execute(sql: "DELETE FROM lifecycleRequests WHERE id = ?", arguments: [row["id"] as Int64]) }
            return rows.map { LifecycleRequest(id: $0["id"], environment: $0["environment"], action: $0["action"], actor: $0["actor"], at: $0["at"]) }
        }
    }
}
