import Crypto
import Foundation
import Reconciler
import SpecModel
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// `engine: postgres` databases: one PostgreSQL server per host under `<state>/postgres` (initdb on
/// first use, loopback only, supervised like a service), and a database and role per environment
/// with a generated password kept in the secret store. SQL carrying passwords goes through psql's
/// standard input, never its command line.
extension LocalDriver {
    static let hostEnvironment = "_host"
    static let postgresRecord = "postgres"

    var postgresRoot: URL { root.deletingLastPathComponent().appendingPathComponent("postgres") }
    var postgresSocketDirectory: String { postgresRoot.appendingPathComponent("run").path }

    /// Debian's PostgreSQL binaries (the newest installed major version).
    static var postgresBinaries: String? {
        let base = "/usr/lib/postgresql"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
        let versions = entries.compactMap { Int($0) }.sorted(by: >)
        for version in versions where FileManager.default.isExecutableFile(atPath: "\(base)/\(version)/bin/postgres") {
            return "\(base)/\(version)/bin"
        }
        return nil
    }

    /// Runs as the `postgres` user when Gantry is root (PostgreSQL refuses to run as root).
    func asPostgresUser(_ command: [String]) -> [String] {
        getuid() == 0 ? ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] + command : command
    }

    /// Starts the host's server if it is not running; returns its port.
    func ensurePostgres(progress: (String) -> Void) throws -> Int {
        guard let bin = Self.postgresBinaries else {
            throw ProcessControl.SpawnError(description: "PostgreSQL is not installed (apt-get install postgresql, or `make deps`)")
        }
        if let record = try state.services(of: Self.hostEnvironment).first(where: { $0.name == Self.postgresRecord }),
           let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) {
            return record.port
        }
        let data = postgresRoot.appendingPathComponent("data").path
        let manager = FileManager.default
        try manager.createDirectory(atPath: postgresSocketDirectory, withIntermediateDirectories: true)
        if getuid() == 0 {
            _ = chown(postgresRoot.path, postgresUID, postgresGID)
            _ = chown(postgresSocketDirectory, postgresUID, postgresGID)
        }
        if !manager.fileExists(atPath: data + "/PG_VERSION") {
            progress("initializing the PostgreSQL cluster (initdb)")
            try? manager.removeItem(atPath: data)
            try runTool(asPostgresUser(["\(bin)/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]))
        }
        var record = try state.services(of: Self.hostEnvironment).first { $0.name == Self.postgresRecord }
            ?? ServiceRecord(environment: Self.hostEnvironment, name: Self.postgresRecord, port: try ProcessControl.freePort(excluding: try state.allocatedPorts()))
        record.workdir = postgresRoot.path
        record.phase = "Starting"
        try state.save(record)
        progress("starting PostgreSQL on 127.0.0.1:\(record.port)")
        let command = asPostgresUser(["\(bin)/postgres", "-D", data, "-p", String(record.port), "-k", postgresSocketDirectory,
                                      "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        try start(&record, resolved: ResolvedService(command: command, environment: [:]), progress: progress)
        let deadline = Date().addingTimeInterval(30)
        while (try? psql(port: record.port, sql: "SELECT 1")) == nil {
            guard Date() < deadline, let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) else {
                throw ProcessControl.SpawnError(description: "PostgreSQL did not start; last log lines:\n\(tail(record))")
            }
            usleep(50_000)
        }
        record.phase = "Running"
        try state.save(record)
        return record.port
    }

    var postgresUID: uid_t { getpwnam("postgres")?.pointee.pw_uid ?? 0 }
    var postgresGID: gid_t { getpwnam("postgres")?.pointee.pw_gid ?? 0 }

    /// A database/role name for an environment's database: `g_<env>_<db>`, within 63 bytes.
    static func postgresName(environment: String, database: String) -> String {
        let raw = "g_\(environment)_\(database)".lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }
        let name = String(raw)
        guard name.count > 63 else { return name }
        let hash = SHA256.hash(data: Data(name.utf8)).prefix(4).map { String(format: "%02x", $0) }.joined()
        return String(name.prefix(54)) + "_" + hash
    }

    func postgresPassword(environment: String, database: String) throws -> (value: String, version: String) {
        try generatedPassword("gantry.postgres.\(database)", environment: environment)
    }

    func postgresURL(environment: String, database: String) throws -> String? {
        guard let record = try state.services(of: Self.hostEnvironment).first(where: { $0.name == Self.postgresRecord }) else { return nil }
        let name = Self.postgresName(environment: environment, database: database)
        return "postgres://\(name):\(try postgresPassword(environment: environment, database: database).value)@127.0.0.1:\(record.port)/\(name)"
    }

    /// Creates each postgres database (and role) of the environment that does not exist yet.
    func applyPostgres(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> [String] {
        let databases = environment.spec.databases.filter { $0.engine == "postgres" }
        guard !databases.isEmpty else { return [] }
        let port = try ensurePostgres(progress: progress)
        var changes: [String] = []
        for database in databases {
            let name = Self.postgresName(environment: environment.name, database: database.name)
            if try psql(port: port, sql: "SELECT 1 FROM pg_database WHERE datname = '\(name)'").contains("1") { continue }
            let password = try postgresPassword(environment: environment.name, database: database.name).value
            progress("creating PostgreSQL database \(name)")
            try psql(port: port, sql: """
                DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '\(name)') THEN CREATE ROLE "\(name)" LOGIN; END IF; END $$;
                ALTER ROLE "\(name)" PASSWORD '\(password)';
                CREATE DATABASE "\(name)" OWNER "\(name)";
                """)
            if let source = database.cloneFrom {
                let sourceName = Self.postgresName(environment: source, database: database.name)
                if try psql(port: port, sql: "SELECT 1 FROM pg_database WHERE datname = '\(sourceName)'").contains("1") {
                    progress("cloning \(sourceName) into \(name) (pg_dump | psql, works while the source is in use)")
                    // Streamed: the dump never sits in Gantry's memory.
                    try runTool(["bash", "-c", "set -o pipefail; pg_dump -h \"$1\" -p \"$2\" -U postgres --no-owner --no-privileges \"$3\" | psql -q -X -v ON_ERROR_STOP=1 -h \"$1\" -p \"$2\" -U \"$4\" -d \"$4\"",
                                 "clone", postgresSocketDirectory, String(port), sourceName, name])
                    changes.append("+database \(database.name) (cloned from \(source))")
                    continue
                }
            }
            if let seed = database.seed {
                guard let sql = try environment.repository.readFile(seed, at: environment.commit) else {
                    throw ProcessControl.SpawnError(description: "database \(database.name): seed \(seed) does not exist at \(environment.commit.short)")
                }
                progress("seeding \(name) from \(seed)")
                try psql(port: port, sql: String(decoding: sql, as: UTF8.self), database: name, user: name)
            }
            changes.append("+database \(database.name)")
        }
        return changes
    }

    /// Every database of the host's server (one psql call), or nil when the server is not running.
    func listPostgresDatabases() -> Set<String>? {
        guard let record = try? state.services(of: Self.hostEnvironment).first(where: { $0.name == Self.postgresRecord }),
              let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart),
              let names = try? psql(port: record.port, sql: "SELECT datname FROM pg_database") else { return nil }
        return Set(names.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) })
    }

    /// Drops the environment's databases and roles (the server stays for the others).
    func dropPostgres(environment: String) -> [String] {
        guard let record = try? state.services(of: Self.hostEnvironment).first(where: { $0.name == Self.postgresRecord }),
              let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) else { return [] }
        let prefix = Self.postgresName(environment: environment, database: "")
        do {
            let names = try psql(port: record.port, sql: "SELECT datname FROM pg_database WHERE starts_with(datname, '\(prefix)')")
                .split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            for name in names {
                try psql(port: record.port, sql: "DROP DATABASE IF EXISTS \"\(name)\" WITH (FORCE); DROP ROLE IF EXISTS \"\(name)\";")
            }
            return []
        } catch {
            return ["could not drop the PostgreSQL databases of \(environment): \(error)"]
        }
    }

    /// Runs SQL through psql's standard input; returns the unaligned output.
    @discardableResult
    func psql(port: Int, sql: String, database: String = "postgres", user: String = "postgres") throws -> String {
        try runTool(["psql", "-h", postgresSocketDirectory, "-p", String(port), "-U", user, "-d", database,
                     "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-X"], input: sql)
    }

    @discardableResult
    func runTool(_ arguments: [String], input: String? = nil) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: "/")
        let output = Pipe(), errors = Pipe(), stdin = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try? stdin.fileHandleForWriting.close()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ProcessControl.SpawnError(description: "\(arguments.first { !$0.hasPrefix("-") && $0 != "setpriv" } ?? "tool") failed: \(String(decoding: err, as: UTF8.self).prefix(500))")
        }
        return String(decoding: out, as: UTF8.self)
    }
}
