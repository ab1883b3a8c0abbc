import Foundation
import GRDB

/// Gantry's state: SQLite in WAL mode through GRDB. Safe to read from other processes
/// (`gantry status`) while the reconciler writes.
public final class StateStore: Sendable {
    public let pool: DatabasePool

    public init(path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        // WAL with synchronous=NORMAL: a commit is not flushed to the disk on its own (the WAL is
        // at checkpoints), so a killed process loses nothing and the database stays consistent,
        // while a power cut may lose the last moments. Those are what the audit journal already
        // recovers from: a notes commit without its journal rows is taken into the journal, rows
        // the notes lack are published again, and a branch not marked processed is judged again.
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
        pool = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(pool)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "environments") { t in
                t.primaryKey("name", .text)
                t.column("branch", .text).notNull()
                t.column("commit", .text).notNull()
                t.column("appliedCommit", .text)
                t.column("envClass", .text).notNull()
                t.column("team", .text)
                t.column("domain", .text)
                t.column("phase", .text).notNull()
                t.column("fingerprint", .text)
                t.column("specJSON", .text)
                t.column("message", .text)
                t.column("conditions", .text).notNull().defaults(to: "[]")
                t.column("createdAt", .datetime).notNull()
                t.column("updatedAt", .datetime).notNull()
                t.column("destroyedAt", .datetime)
            }
            try db.create(table: "services") { t in
                t.column("environment", .text).notNull()
                t.column("name", .text).notNull()
                t.column("port", .integer).notNull().unique()
                t.column("pid", .integer)
                t.column("pidStart", .integer)
                t.column("workdir", .text)
                t.column("fingerprint", .text)
                t.column("phase", .text).notNull()
                t.column("restarts", .integer).notNull()
                t.column("lastExit", .text)
                t.primaryKey(["environment", "name"])
            }
            try db.create(table: "refs") { t in
                t.primaryKey("branch", .text)
                t.column("commit", .text).notNull()
            }
            try db.create(table: "admittedRefs") { t in
                t.primaryKey("branch", .text)
                t.column("commit", .text).notNull()
            }
            try db.create(table: "secrets") { t in
                t.column("name", .text).notNull()
                t.column("scopeKind", .text).notNull()
                t.column("scopeValue", .text).notNull()
                t.column("sealed", .blob).notNull()
                t.column("version", .integer).notNull()
                t.column("updatedAt", .datetime).notNull()
                t.primaryKey(["name", "scopeKind", "scopeValue"])
            }
            try db.create(table: "events") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("at", .datetime).notNull()
                t.column("environment", .text).notNull().indexed()
                t.column("kind", .text).notNull()
                t.column("message", .text).notNull()
            }
        }
        migrator.registerMigration("v2") { db in
            try db.create(table: "meta") { t in
                t.primaryKey("key", .text)
                t.column("value", .text).notNull()
            }
            try db.create(table: "auditRecords") { t in
                t.primaryKey("seq", .integer)
                t.column("digest", .text).notNull()
                t.column("target", .text).notNull()
                t.column("environment", .text)
                t.column("text", .text).notNull()
            }
            try db.create(index: "auditRecordsByTarget", on: "auditRecords", columns: ["target", "environment"])
            try db.alter(table: "environments") { t in
                t.add(column: "source", .text)
                t.add(column: "baseCommit", .text)
            }
            try db.create(index: "environmentsByOwner", on: "environments", columns: ["branch", "source"])
            try db.create(table: "protectedMerges") { t in
                t.primaryKey("commit", .text)
            }
        }
        migrator.registerMigration("v3") { db in
            // What the driver made outside its own directories for an environment (database names,
            // roles, user ids): teardown removes exactly these, never what merely looks alike.
            try db.create(table: "allocations") { t in
                t.column("kind", .text).notNull()
                t.column("name", .text).notNull()
                t.column("environment", .text).notNull().indexed()
                t.column("createdAt", .datetime).notNull()
                t.column("releasedAt", .datetime)
                t.primaryKey(["kind", "name"])
            }
        }
        migrator.registerMigration("v4") { db in
            try db.alter(table: "environments") { t in
                t.add(column: "attempts", .integer).notNull().defaults(to: 0)
                t.add(column: "nextAttemptAt", .datetime)
            }
        }
        migrator.registerMigration("v5") { db in
            // API bearer tokens: the SHA-256 of the token, never the token itself.
            try db.create(table: "tokens") { t in
                t.primaryKey("id", .text)
                t.column("actor", .text).notNull()
                t.column("hash", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("expiresAt", .datetime)
                t.column("revokedAt", .datetime)
                t.column("lastUsedAt", .datetime)
            }
            // The branches the API made, for whom, at which commit: what "the API made it for
            // you" means (a branch name alone proves nothing: anyone who can push can name one).
            try db.create(table: "apiBranches") { t in
                t.primaryKey("branch", .text)
                t.column("principal", .text).notNull()
                t.column("commit", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            // An environment's latest records, for `diagnose` and the API's audit reads.
            try db.create(index: "auditRecordsByEnvironment", on: "auditRecords", columns: ["environment", "seq"])
        }
        migrator.registerMigration("v6") { db in
            // Who last changed an environment (its spend is theirs), and when its branch last
            // brought a new commit (its TTL counts from then).
            try db.alter(table: "environments") { t in
                t.add(column: "actor", .text)
                t.add(column: "actorKind", .text)
                t.add(column: "onBehalfOf", .text)
                t.add(column: "lastCommitAt", .datetime)
            }
            // Environments known before: their TTL counts from the upgrade (never a teardown at
            // the first pass for a preview older than its TTL whose last commit is not known).
            try db.execute(sql: "UPDATE environments SET lastCommitAt = ?", arguments: [Date()])
            // Spend, by UTC hour (epoch seconds of its start), environment and whom it is charged to.
            try db.create(table: "ledger") { t in
                t.column("hour", .integer).notNull()
                t.column("environment", .text).notNull()
                t.column("team", .text).notNull()
                t.column("agent", .text).notNull()
                t.column("onBehalfOf", .text).notNull()
                t.column("envClass", .text).notNull()
                t.column("amount", .double).notNull()
                t.column("seconds", .double).notNull()
                t.primaryKey(["hour", "environment", "team", "agent", "onBehalfOf"])
            }
            // What each environment costs per hour now, and since when it was last accrued.
            try db.create(table: "meters") { t in
                t.primaryKey("environment", .text)
                t.column("since", .datetime).notNull()
                t.column("hourly", .double).notNull()
                t.column("team", .text).notNull()
                t.column("agent", .text).notNull()
                t.column("onBehalfOf", .text).notNull()
                t.column("envClass", .text).notNull()
            }
            // Environments asleep (idle, by hand, or paused by a budget); absent: awake.
            try db.create(table: "lifecycle") { t in
                t.primaryKey("environment", .text)
                t.column("state", .text).notNull()
                t.column("reason", .text).notNull()
                t.column("since", .datetime).notNull()
            }
            // What was said once (a budget alert per threshold and period, a TTL warning per commit).
            try db.create(table: "marks") { t in
                t.primaryKey("key", .text)
                t.column("at", .datetime).notNull()
            }
            // Sleep and wake asked for by `gantry sleep|wake` and the API, done by `gantry run`.
            try db.create(table: "lifecycleRequests") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("environment", .text).notNull()
                t.column("action", .text).notNull()
                t.column("actor", .text).notNull()
                t.column("at", .datetime).notNull()
            }
        }
        migrator.registerMigration("v7") { db in
            // Kill switches turned on and off by `gantry kill` and the API (the one on main is
            // gantry.yaml's `killSwitch`): each switch's state, who changed it last, and when.
            try db.create(table: "killSwitches") { t in
                t.column("scope", .text).notNull()
                t.column("name", .text).notNull()
                t.column("engaged", .boolean).notNull()
                t.column("actor", .text).notNull()
                t.column("reason", .text).notNull()
                t.column("since", .datetime).notNull()
                t.primaryKey(["scope", "name"])
            }
            // Each change bumps `requested`; the running Gantry sets `applied` once the proxy and
            // the processes follow it (a command waits for that).
            try db.create(table: "killGenerations") { t in
                t.primaryKey("id", .integer)
                t.column("requested", .integer).notNull()
                t.column("applied", .integer).notNull()
            }
            try db.execute(sql: "INSERT INTO killGenerations(id, requested, applied) VALUES (1, 0, 0)")
        }
        migrator.registerMigration("v8") { db in
            // What a cluster driver applied for an environment (object references, never their
            // content): pruning deletes what a new revision no longer renders, teardown knows
            // where to look.
            try db.create(table: "clusterInventory") { t in
                t.column("environment", .text).notNull()
                t.column("driver", .text).notNull()
                t.column("entry", .text).notNull()
                t.primaryKey(["environment", "driver", "entry"])
            }
        }
        migrator.registerMigration("v9") { db in
            // The data plane: signed plans the control plane issued for its agent (no secret
            // values: a plan names secrets), the agent's reports of each, and its last health.
            try db.create(table: "dataPlanePlans") { t in
                t.primaryKey("sequence", .integer)
                t.column("environment", .text).notNull()
                t.column("action", .text).notNull()
                t.column("envelope", .blob).notNull()
                t.column("issuedAt", .datetime).notNull()
            }
            try db.create(table: "dataPlaneReports") { t in
                t.primaryKey("sequence", .integer)
                t.column("environment", .text).notNull()
                t.column("ok", .boolean).notNull()
                t.column("body", .text).notNull()
                t.column("receivedAt", .datetime).notNull()
            }
            try db.create(table: "dataPlaneHealth") { t in
                t.primaryKey("id", .integer)
                t.column("body", .text).notNull()
                t.column("receivedAt", .datetime).notNull()
            }
        }
        return migrator
    }

    // MARK: Allocations

    /// Records that `environment` owns `name` of `kind` (a PostgreSQL database, a uid...). Owned by
    /// another environment, live or released, it throws: a name is never handed to two owners.
    public func allocate(_ kind: String, _ name: String, to environment: String) throws {
        try pool.write { db in
            if let owner = try String.fetchOne(db, sql: "SELECT environment FROM allocations WHERE kind = ? AND name = ?",
                                               arguments: [kind, name]) {
                guard owner == environment else { throw AllocationConflict(kind: kind, name: name, owner: owner, wanted: environment) }
                try db.execute(sql: "UPDATE allocations SET releasedAt = NULL WHERE kind = ? AND name = ?", arguments: [kind, name])
                return
            }
            try db.execute(sql: "INSERT INTO allocations(kind, name, environment, createdAt) VALUES (?, ?, ?, ?)",
                           arguments: [kind, name, environment, Date()])
        }
    }

    /// The names of `kind` that `environment` holds (not released).
    public func allocations(_ kind: String, of environment: String) throws -> [String] {
        try pool.read { db in
            try String.fetchAll(db, sql: "SELECT name FROM allocations WHERE kind = ? AND environment = ? AND releasedAt IS NULL ORDER BY name",
                                arguments: [kind, environment])
        }
    }

    /// The names of `kind` held (not released), with the environment holding each.
    public func holders(_ kind: String) throws -> [(environment: String, name: String)] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT environment, name FROM allocations WHERE kind = ? AND releasedAt IS NULL ORDER BY environment, name",
                             arguments: [kind]).map { (environment: $0["environment"], name: $0["name"]) }
        }
    }

    /// Every name of `kind` ever allocated (released ones included): names never handed out again.
    public func allocatedNames(_ kind: String) throws -> Set<String> {
        try pool.read { db in Set(try String.fetchAll(db, sql: "SELECT name FROM allocations WHERE kind = ?", arguments: [kind])) }
    }

    /// The thing is gone (dropped, deleted); its name stays recorded so it is never given to another owner.
    public func release(_ kind: String, _ name: String) throws {
        try pool.write { db in
            try db.execute(sql: "UPDATE allocations SET releasedAt = ? WHERE kind = ? AND name = ?", arguments: [Date(), kind, name])
        }
    }

    // MARK: Environments

    public func environments(includeDestroyed: Bool = false) throws -> [EnvironmentRecord] {
        try pool.read { db in
            let request = EnvironmentRecord.order(Column("name"))
            return try (includeDestroyed ? request : request.filter(Column("phase") != EnvironmentPhase.destroyed.rawValue)).fetchAll(db)
        }
    }

    /// The live environments of one branch (a query by branch: a pass over thousands of branches
    /// must not read every record once per branch).
    public func environments(branch: String) throws -> [EnvironmentRecord] {
        try pool.read { db in
            try EnvironmentRecord.filter(Column("branch") == branch && Column("phase") != EnvironmentPhase.destroyed.rawValue)
                .order(Column("name")).fetchAll(db)
        }
    }

    public func environment(_ name: String) throws -> EnvironmentRecord? {
        try pool.read { db in try EnvironmentRecord.fetchOne(db, key: name) }
    }

    /// The environment (live or destroyed) that `branch` runs for the environment file named `source`.
    public func environment(branch: String, source: String) throws -> EnvironmentRecord? {
        try pool.read { db in
            try EnvironmentRecord.filter(Column("branch") == branch && Column("source") == source).fetchOne(db)
        }
    }

    /// Moves every environment of `old` (destroyed ones included) to `new`: the protected branch
    /// changed name, and its live environments with it. Both branches' processed tips are forgotten.
    public func moveEnvironments(fromBranch old: String, to new: String) throws {
        try pool.write { db in
            try db.execute(sql: "UPDATE environments SET branch = ? WHERE branch = ?", arguments: [new, old])
            try db.execute(sql: "DELETE FROM refs WHERE branch IN (?, ?)", arguments: [old, new])
        }
    }

    public func save(_ environment: EnvironmentRecord) throws {
        var environment = environment
        environment.message = environment.message.map(redact)
        environment.phase = environment.derivedPhase
        try pool.write { db in try environment.save(db) }
    }

    // MARK: Redaction

    private let redactorSlot = RedactorSlot()

    /// From now on, messages saved here have every secret value masked (see `Redactor`).
    public func useRedactor(_ redactor: Redactor) { redactorSlot.set(redactor) }

    /// `text` with secret values masked (unchanged when no redactor is set).
    public func redact(_ text: String) -> String { redactorSlot.get()?.redact(text) ?? text }

    // MARK: Services

    public func services(of environment: String) throws -> [ServiceRecord] {
        try pool.read { db in
            try ServiceRecord.filter(Column("environment") == environment).order(Column("name")).fetchAll(db)
        }
    }

    public func allServices() throws -> [ServiceRecord] {
        try pool.read { db in try ServiceRecord.order(Column("environment"), Column("name")).fetchAll(db) }
    }

    public func save(_ service: ServiceRecord) throws {
        var service = service
        service.lastExit = service.lastExit.map(redact)
        try pool.write { db in try service.save(db) }
    }

    public func deleteService(environment: String, name: String) throws {
        try pool.write { db in _ = try ServiceRecord.deleteOne(db, key: ["environment": environment, "name": name]) }
    }

    /// Every port held by a service record.
    public func allocatedPorts() throws -> Set<Int> {
        try pool.read { db in Set(try Int.fetchAll(db, sql: "SELECT port FROM services")) }
    }

    // MARK: Refs

    /// The last tip processed per branch.
    public func processedRefs() throws -> [String: String] {
        try pool.read { db in
            Dictionary(uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT branch, \"commit\" FROM refs").map {
                ($0["branch"] as String, $0["commit"] as String)
            })
        }
    }

    public func setProcessed(branch: String, commit: String?) throws {
        try pool.write { db in
            if let commit {
                try db.execute(sql: "INSERT INTO refs(branch, \"commit\") VALUES (?, ?) ON CONFLICT(branch) DO UPDATE SET \"commit\" = excluded.\"commit\"",
                               arguments: [branch, commit])
            } else {
                try db.execute(sql: "DELETE FROM refs WHERE branch = ?", arguments: [branch])
            }
        }
    }

    /// The last commit of `branch` whose identity was admitted: the next judgement starts after it.
    public func admittedCommit(branch: String) throws -> String? {
        try pool.read { db in try String.fetchOne(db, sql: "SELECT \"commit\" FROM admittedRefs WHERE branch = ?", arguments: [branch]) }
    }

    public func setAdmitted(branch: String, commit: String) throws {
        try pool.write { db in
            try db.execute(sql: "INSERT INTO admittedRefs(branch, \"commit\") VALUES (?, ?) ON CONFLICT(branch) DO UPDATE SET \"commit\" = excluded.\"commit\"",
                           arguments: [branch, commit])
        }
    }

    // MARK: Protected merges

    /// Merge commits made on the protected branch (their signers approve what they merge).
    public func protectedMerges() throws -> Set<String> {
        try pool.read { db in Set(try String.fetchAll(db, sql: "SELECT \"commit\" FROM protectedMerges")) }
    }

    public func addProtectedMerge(_ commit: String) throws {
        try pool.write { db in try db.execute(sql: "INSERT OR IGNORE INTO protectedMerges(\"commit\") VALUES (?)", arguments: [commit]) }
    }

    // MARK: Meta

    /// A JSON value kept under `key` (the trust state, the audit journal's notes commit).
    public func meta<T: Decodable>(_ key: String, as type: T.Type = T.self) throws -> T? {
        try pool.read { db in
            try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = ?", arguments: [key])
        }.flatMap { try JSONDecoder().decode(T.self, from: Data($0.utf8)) }
    }

    public func setMeta<T: Encodable>(_ key: String, _ value: T?) throws {
        let text = try value.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
        try pool.write { db in
            if let text {
                try db.execute(sql: "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                               arguments: [key, text])
            } else {
                try db.execute(sql: "DELETE FROM meta WHERE key = ?", arguments: [key])
            }
        }
    }

    // MARK: Audit journal

    /// Every audit record Gantry wrote or found on its chain, as (seq, digest, target commit, text).
    public func auditRecords(from seq: Int = 1) throws -> [(seq: Int, digest: String, target: String, text: String)] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT seq, digest, target, text FROM auditRecords WHERE seq >= ? ORDER BY seq", arguments: [seq])
                .map { ($0["seq"], $0["digest"], $0["target"], $0["text"]) }
        }
    }

    /// The texts of the records kept on `target`'s note about `environment` (nil: the protected
    /// branch's own records), in seq order.
    public func auditTexts(target: String, environment: String?) throws -> [String] {
        try pool.read { db in
            try String.fetchAll(db, sql: "SELECT text FROM auditRecords WHERE target = ? AND environment IS ? ORDER BY seq",
                                arguments: [target, environment])
        }
    }

    /// The commit and text of the newest record kept about `environment` (on any commit).
    public func lastAuditRecord(environment: String) throws -> (target: String, text: String)? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT target, text FROM auditRecords WHERE environment = ? ORDER BY seq DESC LIMIT 1",
                             arguments: [environment]).map { ($0["target"], $0["text"]) }
        }
    }

    /// The newest record kept.
    public func lastAuditRecord() throws -> (seq: Int, digest: String, target: String, text: String)? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT seq, digest, target, text FROM auditRecords ORDER BY seq DESC LIMIT 1")
                .map { ($0["seq"], $0["digest"], $0["target"], $0["text"]) }
        }
    }

    /// Keeps records (with the environment each concerns, nil for the protected branch's own) and
    /// the notes commit that holds them, in one transaction.
    public func keepAuditRecords(_ records: [(seq: Int, digest: String, target: String, environment: String?, text: String)], notesCommit: String) throws {
        try pool.write { db in
            for record in records {
                try db.execute(sql: "INSERT OR REPLACE INTO auditRecords(seq, digest, target, environment, text) VALUES (?, ?, ?, ?, ?)",
                               arguments: [record.seq, record.digest, record.target, record.environment, record.text])
            }
            try db.execute(sql: "INSERT INTO meta(key, value) VALUES ('audit.notesCommit', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           arguments: [notesCommit])
        }
    }

    /// The newest records, newest first: of `environment` only when given, at most `limit`,
    /// and only those before `beforeSeq` when given (to page back).
    public func recentAuditRecords(environment: String?, limit: Int, beforeSeq: Int? = nil) throws -> [(seq: Int, target: String, text: String)] {
        try pool.read { db in
            var sql = "SELECT seq, target, text FROM auditRecords WHERE seq < ?"
            var arguments: StatementArguments = [beforeSeq ?? Int.max]
            if let environment {
                sql += " AND environment = ?"
                arguments += [environment]
            }
            sql += " ORDER BY seq DESC LIMIT ?"
            arguments += [limit]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map { ($0["seq"], $0["target"], $0["text"]) }
        }
    }

    public func auditNotesCommit() throws -> String? {
        try pool.read { db in try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'audit.notesCommit'") }
    }

    // MARK: Events

    public func record(_ event: EventRecord) throws {
        var event = event
        event.message = redact(event.message)
        try pool.write { db in
            try event.insert(db)
        }
    }

    public func events(of environment: String, limit: Int = 50) throws -> [EventRecord] {
        try pool.read { db in
            try EventRecord.filter(Column("environment") == environment).order(Column("id").desc).limit(limit).fetchAll(db)
        }
    }
}

/// A name already belongs to another environment.
public struct AllocationConflict: Error, CustomStringConvertible {
    public let kind: String
    public let name: String
    public let owner: String
    public let wanted: String
    public var description: String {
        "\(kind) '\(name)' belongs to environment \(owner) (recorded in the state DB); \(wanted) cannot use it"
    }
}

final class RedactorSlot: @unchecked Sendable {
    private let lock = NSLock()
    private var redactor: Redactor?
    func set(_ value: Redactor) { lock.withLock { redactor = value } }
    func get() -> Redactor? { lock.withLock { redactor } }
}
