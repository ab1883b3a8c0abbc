import Foundation
import Reconciler
import SpecModel
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// `engine: sqlite` databases: a file in the environment's directory, seeded from the repository
/// or cloned from another environment's file; removed with the environment.
extension LocalDriver {
    /// The environment's data directory (its user's, 0700): SQLite needs to write beside its file.
    func dataDirectory(_ environment: String) -> URL { root.appendingPathComponent(environment).appendingPathComponent("data") }

    func sqlitePath(environment: String, database: String) -> String {
        dataDirectory(environment).appendingPathComponent("db-\(database).sqlite3").path
    }

    func applySQLite(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> [String] {
        var changes: [String] = []
        let databases = environment.spec.databases.filter { $0.engine == "sqlite" }
        guard !databases.isEmpty else { return [] }
        let user = try user(of: environment.name)
        let data = dataDirectory(environment.name)
        try handOver(data, to: user)
        for database in databases {
            let path = sqlitePath(environment: environment.name, database: database.name)
            // Where an earlier Gantry kept it (beside the logs): moved into the data directory.
            let old = root.appendingPathComponent(environment.name).appendingPathComponent("db-\(database.name).sqlite3").path
            if FileManager.default.fileExists(atPath: old), !Self.exists(path) {
                try FileManager.default.moveItem(atPath: old, toPath: path)
                if let user { _ = lchown(path, user, user) }
            }
            guard !Self.exists(path) else { continue }
            let seed = try database.seed.flatMap { try environment.source.readFile($0) }
                .map { String(decoding: $0, as: UTF8.self) }
            if database.seed != nil && seed == nil {
                throw RevisionError("database \(database.name): seed \(database.seed!) does not exist at \(environment.commit.short)" + "; add it, or name another seed")
            }
            // The source is another environment's file, in a directory its user controls: a
            // symbolic link there (to Gantry's state DB, say) is never followed.
            let source = database.cloneFrom.map { sqlitePath(environment: $0, database: database.name) }.flatMap { Self.isRegularFile($0) ? $0 : nil }
            progress(source.map { "cloning database \(database.name) from \($0)" } ?? "creating database \(database.name)")
            // Made in Gantry's own directory, given to the environment's user, then linked into
            // place: link(2) never follows or replaces what the environment put there meanwhile.
            let staging = root.appendingPathComponent(environment.name).appendingPathComponent(".new-db-\(database.name).sqlite3").path
            try? FileManager.default.removeItem(atPath: staging)
            defer { try? FileManager.default.removeItem(atPath: staging) }
            let prepared = try SQLiteFiles.prepare(path: staging, cloneFrom: source)
            if let source { Self.returnSidecars(of: source) }
            guard prepared else { continue }
            if let user { _ = lchown(staging, user, user) }
            if source == nil, let seed, let file = database.seed {
                // The seed is the environment's code (ATTACH, VACUUM INTO... write where they are
                // told): run as the environment would run it, on a file in its own directory.
                try runSQLiteSeed(seed, file: file, database: database.name, staging: staging, environment: environment.name)
            }
            guard link(staging, path) == 0 else {
                if errno == EEXIST { continue }
                throw ProcessControl.SpawnError(description: "cannot place database \(database.name): \(String(cString: strerror(errno)))")
            }
            changes.append("+database \(database.name)")
        }
        return changes
    }

    /// Runs `seed` over the new database (at `staging`, in Gantry's directory) as the environment's
    /// user, in its sandbox, through a link in its data directory; the staging file then holds
    /// the seeded database. A failed seed fails the apply with the tool's message.
    func runSQLiteSeed(_ seed: String, file: String, database: String, staging: String, environment: String) throws {
        let seeding = dataDirectory(environment).appendingPathComponent(".seeding-db-\(database).sqlite3").path
        for suffix in ["", "-journal", "-wal", "-shm"] { unlink(seeding + suffix) }
        guard link(staging, seeding) == 0 else {
            throw ProcessControl.SpawnError(description: "database \(database): cannot prepare its seed: \(String(cString: strerror(errno)))")
        }
        defer { for suffix in ["", "-journal", "-wal", "-shm"] { unlink(seeding + suffix) } }
        let script = "import sqlite3, sys\nconnection = sqlite3.connect(sys.argv[1])\nconnection.executescript(sys.stdin.read())\nconnection.commit()\nconnection.close()\n"
        try runInEnvironment(environment, unit: "seed-\(database)", ["python3", "-c", script, seeding], input: seed,
                             label: "database \(database): seed \(file)", timeout: options.seedTimeout)
        // Written through the link: the staging file is the seeded database (unless the seed put another file there).
        var seeded = stat(), staged = stat()
        guard lstat(seeding, &seeded) == 0, lstat(staging, &staged) == 0, seeded.st_ino == staged.st_ino else {
            throw ProcessControl.SpawnError(description: "database \(database): the seed \(file) replaced the database file; it must only run SQL on it")
        }
    }

    /// Reading another environment's database as root may leave SQLite's -wal/-shm files owned by
    /// root beside it, which its own user could then not open: they go back to the file's owner.
    static func returnSidecars(of database: String) {
        var owner = stat()
        guard geteuid() == 0, lstat(database, &owner) == 0 else { return }
        for suffix in ["-wal", "-shm", "-journal"] where isRegularFile(database + suffix) {
            _ = lchown(database + suffix, owner.st_uid, owner.st_gid)
        }
    }

    /// Whether anything (a dangling link included) is at `path`.
    static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    static func isRegularFile(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
    }
}
