import Foundation
import GRDB

/// A plan the control plane issued for its data-plane agent, as stored (the envelope is signed JSON).
public struct DataPlanePlan: Sendable, Equatable {
    public let sequence: Int
    public let environment: String
    public let action: String
    public let envelope: Data
    public let issuedAt: Date
}

/// What the agent said of a plan: applied (with the changes) or not (with why).
public struct DataPlaneReport: Sendable, Equatable {
    public let sequence: Int
    public let environment: String
    public let ok: Bool
    /// The report's JSON as the agent sent it.
    public let body: String
    public let receivedAt: Date
}

extension StateStore {
    /// Stores a plan made by `make(sequence)` under the next sequence number; returns that number.
    /// Plans reported on more than a day ago are forgotten.
    public func issuePlan(environment: String, action: String, at now: Date = Date(), make: (Int) throws -> Data) throws -> Int {
        try pool.write { db in
            // (The newest plan is never forgotten: numbers are not handed out twice.)
            let sequence = (try Int.fetchOne(db, sql: "SELECT MAX(sequence) FROM dataPlanePlans") ?? 0) + 1
            try db.execute(sql: "INSERT INTO dataPlanePlans(sequence, environment, action, envelope, issuedAt) VALUES (?, ?, ?, ?, ?)",
                           arguments: [sequence, environment, action, try make(sequence), now])
            // A plan supersedes the environment's earlier ones not yet carried out (the kill
            // switches' likewise): an agent that was away finds one plan each, not a backlog.
            try db.execute(sql: """
                DELETE FROM dataPlanePlans WHERE environment = ? AND sequence < ? AND sequence NOT IN (SELECT sequence FROM dataPlaneReports)
                """, arguments: [environment, sequence])
            try db.execute(sql: """
                DELETE FROM dataPlanePlans WHERE issuedAt < ? AND sequence < ? AND sequence IN (SELECT sequence FROM dataPlaneReports)
                """, arguments: [now.addingTimeInterval(-86_400), sequence])
            return sequence
        }
    }

    /// The plans after `sequence`, oldest first (at most `limit`).
    public func plans(after sequence: Int, limit: Int = 100) throws -> [DataPlanePlan] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT sequence, environment, action, envelope, issuedAt FROM dataPlanePlans WHERE sequence > ? ORDER BY sequence LIMIT ?",
                             arguments: [sequence, limit]).map {
                DataPlanePlan(sequence: $0["sequence"], environment: $0["environment"], action: $0["action"], envelope: $0["envelope"], issuedAt: $0["issuedAt"])
            }
        }
    }

    /// The last plan issued for `environment`, if any.
    public func lastPlan(of environment: String) throws -> DataPlanePlan? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT sequence, environment, action, envelope, issuedAt FROM dataPlanePlans WHERE environment = ? ORDER BY sequence DESC LIMIT 1",
                             arguments: [environment]).map {
                DataPlanePlan(sequence: $0["sequence"], environment: $0["environment"], action: $0["action"], envelope: $0["envelope"], issuedAt: $0["issuedAt"])
            }
        }
    }

    /// Keeps the agent's report of a plan (the first one: a report is not rewritten).
    public func addReport(sequence: Int, environment: String, ok: Bool, body: String, at now: Date = Date()) throws {
        try pool.write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO dataPlaneReports(sequence, environment, ok, body, receivedAt) VALUES (?, ?, ?, ?, ?)",
                           arguments: [sequence, environment, ok, body, now])
        }
    }

    public func report(of sequence: Int) throws -> DataPlaneReport? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT sequence, environment, ok, body, receivedAt FROM dataPlaneReports WHERE sequence = ?", arguments: [sequence]).map {
                DataPlaneReport(sequence: $0["sequence"], environment: $0["environment"], ok: $0["ok"], body: $0["body"], receivedAt: $0["receivedAt"])
            }
        }
    }

    /// The agent's last health report (JSON) and when it came.
    public func dataPlaneHealth() throws -> (body: String, receivedAt: Date)? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT body, receivedAt FROM dataPlaneHealth WHERE id = 1").map { ($0["body"], $0["receivedAt"]) }
        }
    }

    public func setDataPlaneHealth(_ body: String, at now: Date = Date()) throws {
        try pool.write { db in
            try db.execute(sql: "INSERT INTO dataPlaneHealth(id, body, receivedAt) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET body = excluded.body, receivedAt = excluded.receivedAt",
                           arguments: [body, now])
        }
    }
}
