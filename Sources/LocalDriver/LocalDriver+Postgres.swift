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

    /// `<state>/postgres`, unless the server's user cannot reach it (as root with the state
    /// directory inside a private directory such as /root): then beside the relocated environments.
    var postgresRoot: URL {
        let inside = stateDirectory.appendingPathComponent("postgres")
        guard getuid() == 0, !Self.searchable(stateDirectory.path, uid: postgresUID, gid: postgresGID) else { return inside }
        return URL(fileURLWithPath: options.fallbackDirectory).appendingPathComponent(instance).appendingPathComponent("postgres")
    }

    var postgresSocketDirectory: String { postgresRoot.appendingPathComponent("run").path }

    /// Debian's PostgreSQL binaries (the newest installed major version).
    public static var postgresBinaries: String? {
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

    /// The superuser's password: generated on first use, kept encrypted in the secret store under
    /// the host's scope (no environment can name it), handed to tools in `PGPASSWORD` only.
    func postgresSuperuserPassword() throws -> String {
        try generatedPassword("postgres.superuser", environment: Self.hostEnvironment).value
    }

    /// Every connection authenticates with SCRAM-SHA-256: over the socket, over loopback TCP and
    /// from the environments' networks (through the gateway).
    static let hostBasedAuthentication = """
        # Written by Gantry at every start: no connection is trusted. Over TCP a role reaches only
        # the database of its own name (an environment's role, its database); a role that makes a
        # seed template (member of \(seedingGroup)) comes in over the server's socket only.
        local all all scram-sha-256
        host all +\(seedingGroup) 0.0.0.0/0 reject
        host all +\(seedingGroup) ::/0 reject
        host sameuser all 127.0.0.1/32 scram-sha-256
        host sameuser all ::1/128 scram-sha-256
        host sameuser all \(Networks.environmentRange) scram-sha-256
        host sameuser all \(Networks.gateway)/32 scram-sha-256

        """

    /// Connection slots of the server, and how many one environment's role may hold (a network's
    /// rules also cap its connections before they authenticate: `Networks.connectionsPerPort`).
    static let postgresMaxConnections = 300
    /// The group of the roles that make seed templates (refused over TCP: see `hostBasedAuthentication`).
    static let seedingGroup = "gantry_seeding"
    static let roleConnectionLimit = 32

    /// Where the server listens: loopback, and the gateway when environments have networks of their own.
    var postgresListenAddresses: String { isolatesNetwork ? "127.0.0.1,\(Networks.gateway)" : "127.0.0.1" }

    /// Starts the host's server if it is not running; returns its port.
    func ensurePostgres(progress: (String) -> Void) throws -> Int {
        try shared.withLock { try startPostgres(progress: progress) }
    }

    private func startPostgres(progress: (String) -> Void) throws -> Int {
        guard let bin = Self.postgresBinaries else {
            throw ProcessControl.SpawnError(description: "PostgreSQL is not installed (apt-get install postgresql, or `make deps`)")
        }
        // (What the server was started with: a server started otherwise is restarted with it.)
        let listening = "listen:\(postgresListenAddresses) socket:0700 connections:\(Self.postgresMaxConnections) hba:sameuser checks:2s"
        if let record = try state.services(of: Self.hostEnvironment).first(where: { $0.name == Self.postgresRecord }),
           let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) {
            if record.fingerprint == listening { return record.port }
            // Started by a Gantry that listened elsewhere (no gateway yet): restarted where the environments reach it.
            progress("restarting PostgreSQL to listen on \(postgresListenAddresses)")
            ProcessControl.stopGroup(pid, grace: options.stopGrace)
        }
        if isolatesNetwork { try Networks.ensureGateway() }
        let data = postgresRoot.appendingPathComponent("data").path
        let manager = FileManager.default
        try manager.createDirectory(atPath: postgresSocketDirectory, withIntermediateDirectories: true)
        // The cluster and its socket are the server's alone (Gantry, as root, passes anyway): an
        // environment reaches PostgreSQL at the gateway only, where its connections are counted.
        _ = chmod(postgresRoot.path, 0o700)
        _ = chmod(postgresSocketDirectory, 0o700)
        if postgresRoot.path.hasPrefix(options.fallbackDirectory) {
            // The way down to it is open to the postgres user; the cluster itself is its alone (0700).
            Self.openForTraversal(postgresRoot.deletingLastPathComponent(), options: options)
            progress("the state directory is not reachable by the postgres user: the cluster lives in \(postgresRoot.path)")
        }
        if getuid() == 0 {
            _ = chown(postgresRoot.path, postgresUID, postgresGID)
            _ = chown(postgresSocketDirectory, postgresUID, postgresGID)
        }
        let password = try postgresSuperuserPassword()
        let marker = postgresRoot.appendingPathComponent("auth").path
        if !manager.fileExists(atPath: data + "/PG_VERSION") {
            progress("initializing the PostgreSQL cluster (initdb, SCRAM-SHA-256 authentication)")
            try? manager.removeItem(atPath: data)
            // The password reaches initdb in a file only the server's user can read, removed at once.
            let passwordFile = postgresRoot.appendingPathComponent("initdb-password").path
            guard manager.createFile(atPath: passwordFile, contents: Data((password + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
                throw ProcessControl.SpawnError(description: "cannot write \(passwordFile)")
            }
            defer { try? manager.removeItem(atPath: passwordFile) }
            if getuid() == 0 { _ = chown(passwordFile, postgresUID, postgresGID) }
            try ProcessControl.run(asPostgresUser(["\(bin)/initdb", "-D", data, "-U", "postgres", "--auth=scram-sha-256", "--pwfile=\(passwordFile)",
                                        "-E", "UTF8", "--no-sync"]))
            manager.createFile(atPath: marker, contents: Data("scram-sha-256\n".utf8))
        } else if !manager.fileExists(atPath: marker) {
            // A cluster made by an earlier Gantry (trust authentication): its superuser gets the
            // password in single-user mode (no network, the SQL on standard input), before it listens.
            progress("securing the existing PostgreSQL cluster (superuser password, SCRAM-SHA-256)")
            try ProcessControl.run(asPostgresUser(["\(bin)/postgres", "--single", "-D", data, "postgres"]),
                        input: "ALTER ROLE postgres PASSWORD '\(password)'\n")
            manager.createFile(atPath: marker, contents: Data("scram-sha-256\n".utf8))
        }
        // Whatever the file said before (an old Gantry's trust, a hand edit), the server starts with ours.
        try Data(Self.hostBasedAuthentication.utf8).write(to: URL(fileURLWithPath: data + "/pg_hba.conf"))
        if getuid() == 0 { _ = chown(data + "/pg_hba.conf", postgresUID, postgresGID) }
        var record = try state.services(of: Self.hostEnvironment).first { $0.name == Self.postgresRecord }
            ?? ServiceRecord(environment: Self.hostEnvironment, name: Self.postgresRecord, port: try ProcessControl.freePort(excluding: try state.allocatedPorts()))
        record.workdir = postgresRoot.path
        record.fingerprint = listening
        record.phase = "Starting"
        try state.save(record)
        progress("starting PostgreSQL on \(postgresListenAddresses) port \(record.port)")
        let command = asPostgresUser(["\(bin)/postgres", "-D", data, "-p", String(record.port), "-k", postgresSocketDirectory,
                                      "-c", "listen_addresses=\(postgresListenAddresses)", "-c", "unix_socket_permissions=0700",
                                      "-c", "max_connections=\(Self.postgresMaxConnections)", "-c", "authentication_timeout=10s",
                                      // A session whose client went away (a reset connection, no longer counted by the
                                      // network's caps) is ended within 2 s, even mid-query; Gantry keeps 10 slots.
                                      "-c", "client_connection_check_interval=2s", "-c", "superuser_reserved_connections=10", "-c", "fsync=off", "-c", "password_encryption=scram-sha-256",
                                      "-c", "hba_file=\(data)/pg_hba.conf"])
        try start(&record, resolved: ResolvedService(command: command, environment: [:]), progress: progress)
        let deadline = Date().addingTimeInterval(30)
        while (try? psql(port: record.port, sql: "SELECT 1")) == nil {
            guard Date() < deadline, let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) else {
                throw ProcessControl.SpawnError(description: "PostgreSQL did not start; last log lines:\n\(tail(record))")
            }
            usleep(50_000)
        }
        // No environment's role connects to the server's own databases.
        try psql(port: record.port, sql: """
            REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC; REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
            DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '\(Self.seedingGroup)') THEN CREATE ROLE \(Self.seedingGroup) NOLOGIN; END IF; END $$;
            """)
        record.phase = "Running"
        try state.save(record)
        return record.port
    }

    var postgresUID: uid_t { getpwnam("postgres")?.pointee.pw_uid ?? 0 }
    var postgresGID: gid_t { getpwnam("postgres")?.pointee.pw_gid ?? 0 }

    /// A database/role name for an environment's database: `g_<env>_<db>_<hash>` (`-` as `_`),
    /// within 63 bytes. The hash of the exact (environment, database) pair keeps `a-b`/`c` and
    /// `a`/`b-c` apart; the state DB records every name with its owner besides.
    public static func postgresName(environment: String, database: String) -> String {
        let readable = String("g_\(environment)_\(database)".lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }).prefix(54)
        let hash = SHA256.hash(data: Data("\(environment)\u{0}\(database)".utf8)).prefix(4).map { String(format: "%02x", $0) }.joined()
        return "\(readable)_\(hash)"
    }

    static let databaseAllocation = "postgres-database"

    func postgresPassword(environment: String, database: String) throws -> (value: String, version: String) {
        try generatedPassword("postgres.\(database)", environment: environment)
    }

    func postgresURL(environment: String, database: String) throws -> String? {
        guard let record = try state.services(of: Self.hostEnvironment).first(where: { $0.name == Self.postgresRecord }) else { return nil }
        let name = Self.postgresName(environment: environment, database: database)
        // From an environment's own network, the server is at the gateway.
        let host = isolatesNetwork ? Networks.gateway : "127.0.0.1"
        return "postgres://\(name):\(try postgresPassword(environment: environment, database: database).value)@\(host):\(record.port)/\(name)"
    }

    /// Creates each postgres database (and role) of the environment that does not exist yet.
    func applyPostgres(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> [String] {
        let databases = environment.spec.databases.filter { $0.engine == "postgres" }
        guard !databases.isEmpty else { return [] }
        let port = try ensurePostgres(progress: progress)
        var changes: [String] = []
        // The environment's sessions are shared among its roles: a role per database, each with a
        // share of `roleConnectionLimit` (the server counts sessions, which a reset connection
        // leaves behind for a moment; the network's cap counts connections).
        let sessionsPerRole = max(2, Self.roleConnectionLimit / databases.count)
        for database in databases {
            let name = Self.postgresName(environment: environment.name, database: database.name)
            // Recorded before it exists: a crash after CREATE still leaves it owned (and dropped at teardown).
            try state.allocate(Self.databaseAllocation, name, to: environment.name)
            // The role is made (or kept as it is) in the same call that asks whether the database exists.
            let password = try postgresPassword(environment: environment.name, database: database.name).value
            let exists = try psql(port: port, sql: """
                DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '\(name)') THEN CREATE ROLE "\(name)" LOGIN; END IF; END $$;
                ALTER ROLE "\(name)" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT \(sessionsPerRole) PASSWORD '\(password)';
                SELECT 'exists' FROM pg_database WHERE datname = '\(name)';
                """).contains("exists")
            if exists { continue }
            progress("creating PostgreSQL database \(name)")
            func fill() throws -> Bool {
                if let source = database.cloneFrom {
                    let sourceName = Self.postgresName(environment: source, database: database.name)
                    if try psql(port: port, sql: "SELECT 1 FROM pg_database WHERE datname = '\(sourceName)'").contains("1") {
                        if try copyDatabase(port: port, source: sourceName, target: name, progress: progress) {
                            changes.append("+database \(database.name) (cloned from \(source): file copy)")
                            return true
                        }
                        try createDatabase(port: port, name)
                        progress("cloning \(sourceName) into \(name) (pg_dump | psql, works while the source is in use)")
                        // Streamed: the dump never sits in Gantry's memory.
                        // Passwords in the two tools' environments (readable by root only), never in argv.
                        // The dump is read by Gantry (the superuser, over the socket); it is restored
                        // the way the target environment's code would run: as its role, from its
                        // network, as its user (a dump is data an environment wrote).
                        let unit = "clone-\(database.name)"
                        defer { cgroups.kill(environment.name, unit: unit, remove: true) }
                        try ProcessControl.run(["bash", "-c",
                            "set -o pipefail; PGPASSWORD=\"$GANTRY_SOURCE_PASSWORD\" pg_dump -h \"$1\" -p \"$2\" -U postgres --no-owner --no-privileges \"$3\" | \"${@:4}\"",
                            "clone", postgresSocketDirectory, String(port), sourceName]
                            + (try sandboxed(environment.name, unit: unit, environmentPsql(port: port, name: name))),
                            environment: Self.sandboxVariables(["GANTRY_SOURCE_PASSWORD": try postgresSuperuserPassword(), "PGPASSWORD": password],
                                                               environment: environment.name), inherit: false,
                            label: "database \(database.name): clone from \(source)", timeout: options.cloneTimeout)
                        changes.append("+database \(database.name) (cloned from \(source): streamed dump, the source was in use)")
                        return true
                    }
                }
                if let seed = database.seed {
                    guard let sql = try environment.source.readFile(seed) else {
                        throw RevisionError("database \(database.name): seed \(seed) does not exist at \(environment.commit.short)" + "; add it, or name another seed")
                    }
                    if let template = try seedTemplate(port: port, sql: sql, label: "database \(database.name): seed \(seed)", progress: progress) {
                        if try takeSpareSeed(port: port, template: template, target: name, progress: progress)
                            || copyDatabase(port: port, source: template, target: name, progress: progress) {
                            refillSpareSeeds(port: port, template: template)
                            return false
                        }
                        // (Gone, or never there: it is looked for again next time.)
                        seedTemplateLock.withLock { _ = knownSeedTemplates.remove(template) }
                    }
                    try createDatabase(port: port, name)
                    progress("seeding \(name) from \(seed)")
                    // The seed is the environment's code (psql runs its `\\!` and `\\copy ... program`):
                    // it runs as the environment would, as its role, from its network, as its user.
                    try runInEnvironment(environment.name, unit: "seed-\(database.name)", environmentPsql(port: port, name: name),
                                         input: String(decoding: sql, as: UTF8.self), variables: ["PGPASSWORD": password],
                                         label: "database \(database.name): seed \(seed)", timeout: options.seedTimeout)
                    return false
                }
                try createDatabase(port: port, name)
                return false
            }
            // A database whose clone or seed failed is dropped again: the next attempt starts from
            // nothing, never from a half-filled database it would take for done.
            let cloned: Bool
            do {
                cloned = try fill()
            } catch {
                _ = try? psql(port: port, sql: "DROP DATABASE IF EXISTS \"\(name)\" WITH (FORCE);")
                throw error
            }
            if cloned { continue }
            changes.append("+database \(database.name)")
        }
        return changes
    }

    /// An empty database owned by its role, which alone may connect to it. (Made closed, and
    /// opened once PUBLIC's default right to connect is gone: no other role gets in meanwhile.)
    func createDatabase(port: Int, _ name: String) throws {
        try psql(port: port, sql: """
            CREATE DATABASE "\(name)" OWNER "\(name)" ALLOW_CONNECTIONS false;
            \(Self.opening(name))
            """)
    }

    /// Takes PUBLIC's default rights on a new database (made with ALLOW_CONNECTIONS false), grants
    /// them to the role of its name, then allows connections.
    static func opening(_ name: String) -> String {
        """
        REVOKE CONNECT, TEMPORARY ON DATABASE "\(name)" FROM PUBLIC;
        GRANT CONNECT, TEMPORARY ON DATABASE "\(name)" TO "\(name)";
        ALTER DATABASE "\(name)" ALLOW_CONNECTIONS true;
        """
    }

    /// Makes `target` (owned by its role, which exists) a copy of `source` with `CREATE DATABASE
    /// ... TEMPLATE`, a copy of the files, when nothing is connected to the source: new connections
    /// to it wait for the copy (the source is paused for it). Everything in the copy then belongs
    /// to the target's role, and the source's role keeps nothing in it. False, with nothing made,
    /// when the source is in use (the caller streams a dump instead, which works while it is).
    func copyDatabase(port: Int, source: String, target: String, progress: (String) -> Void) throws -> Bool {
        // (Another session on the source would make CREATE DATABASE wait 5 s, then fail.)
        let sessions = try psql(port: port, sql: "SELECT count(*) FROM pg_stat_activity WHERE datname = '\(source)'")
        guard sessions.trimmingCharacters(in: .whitespacesAndNewlines) == "0" else { return false }
        progress("copying \(source) into \(target) (CREATE DATABASE ... TEMPLATE: the source is idle)")
        do {
            try psql(port: port, sql: "CREATE DATABASE \"\(target)\" OWNER \"\(target)\" TEMPLATE \"\(source)\" ALLOW_CONNECTIONS false;")
        } catch {
            // Someone connected to the source meanwhile.
            return false
        }
        try psql(port: port, sql: Self.opening(target))
        try reassignmentLock.withLock {
            _ = try psql(port: port, sql: Self.reassignment(from: source, to: target), database: target)
        }
        return true
    }

    /// The template database a plain-SQL seed made (see `Options.seedTemplates`), made now if it
    /// is not there yet; nil when the seed is not plain SQL, or fails (the environment then runs it
    /// itself, and reports the failure). A seed that runs past `Options.seedTimeout` throws (named
    /// by `label`): running it again as the environment would only wait as long again.
    ///
    /// A seed with no backslash at all has no psql meta-command (`\\!`, `\\copy ... program`,
    /// `\\getenv`...): it is SQL only, run by the server as a role that owns nothing else, and its
    /// result cannot depend on which environment runs it, beyond `current_user` and
    /// `current_database()`. It runs once per content, as the template's own role, into
    /// `g_seed_<sha256 of the seed>`; the role then loses its login and the database its connections.
    func seedTemplate(port: Int, sql: Data, label: String, progress: (String) -> Void) throws -> String? {
        guard options.seedTemplates, !sql.contains(UInt8(ascii: "\\")) else { return nil }
        let name = "g_seed_" + SHA256.hash(data: sql).prefix(8).map { String(format: "%02x", $0) }.joined()
        // Two environments with one seed: the second waits for the first's template; environments
        // with other seeds do not wait.
        let (maker, known) = seedTemplateLock.withLock { () -> (NSLock, Bool) in
            noteSeedTemplateUse(name)
            let maker = seedTemplateMakers[name] ?? NSLock()
            seedTemplateMakers[name] = maker
            return (maker, knownSeedTemplates.contains(name))
        }
        if known { return name }
        return try maker.withLock {
            if seedTemplateLock.withLock({ knownSeedTemplates.contains(name) }) { return name }
            if (try? psql(port: port, sql: "SELECT 1 FROM pg_database WHERE datname = '\(name)' AND datistemplate AND NOT datallowconn"))?
                .contains("1") == true {
                seedTemplateLock.withLock { _ = knownSeedTemplates.insert(name) }
                return name
            }
            let password = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }.map { String(format: "%02x", $0) }.joined()
            do {
                try state.allocate(Self.seedTemplateAllocation, name, to: Self.hostEnvironment)
                progress("running the seed once into its template \(name)")
                try psql(port: port, sql: """
                    DROP DATABASE IF EXISTS "\(name)" WITH (FORCE);
                    DROP ROLE IF EXISTS "\(name)";
                    CREATE ROLE "\(name)" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 1 PASSWORD '\(password)' IN ROLE \(Self.seedingGroup);
                    CREATE DATABASE "\(name)" OWNER "\(name)" ALLOW_CONNECTIONS false;
                    \(Self.opening(name))
                    """)
                try ProcessControl.run(["psql", "-h", postgresSocketDirectory, "-p", String(port), "-U", name, "-d", name,
                                        "-v", "ON_ERROR_STOP=1", "-q", "-X"], input: String(decoding: sql, as: UTF8.self),
                                       environment: ["PGPASSWORD": password], label: label, timeout: options.seedTimeout)
                // No session of the role may outlive the seed (it could change the template after
                // it was made): the role loses its login, then every session of it or in it ends.
                try psql(port: port, sql: """
                    ALTER ROLE "\(name)" NOLOGIN PASSWORD NULL;
                    ALTER DATABASE "\(name)" ALLOW_CONNECTIONS false;
                    SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE (usename = '\(name)' OR datname = '\(name)') AND pid <> pg_backend_pid();
                    ALTER DATABASE "\(name)" IS_TEMPLATE true;
                    """)
                seedTemplateLock.withLock { _ = knownSeedTemplates.insert(name) }
                dropIdleSeedTemplates(port: port, keeping: name)
                return name
            } catch {
                discardSeedTemplate(port: port, name)
                if (error as? ProcessControl.SpawnError)?.timedOut == true { throw error }
                return nil
            }
        }
    }

    /// Removes a template whose seed failed or ran too long. Its seed may still be running in the
    /// server (stopping psql does not stop the query): its role loses its login first, its
    /// sessions are ended, then the database and the role go. Nothing of it is left able to log in.
    func discardSeedTemplate(port: Int, _ name: String) {
        do {
            try dropDatabaseAndRole(port: port, name)
            try? state.release(Self.seedTemplateAllocation, name)
        } catch {
            // (Its allocation stays: the idle-template sweep finds it.)
            logger.warning("could not remove the template of a failed seed", metadata: ["database": "\(name)", "error": "\(error)"])
        }
    }

    /// Drops the database `name` and the role of the same name, whatever the role did meanwhile
    /// (made the database a template, held sessions open, a lock on its own row, logged in again)
    /// and whatever other roles granted to it: its sessions end, it loses its login, they end
    /// again, the database goes, then what was granted to the role (`revokeGrants`), then the role.
    /// Either may already be gone.
    func dropDatabaseAndRole(port: Int, _ name: String) throws {
        try psql(port: port, sql: """
            SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = '\(name)' AND pid <> pg_backend_pid();
            SELECT format('ALTER ROLE %I NOLOGIN PASSWORD NULL', rolname) FROM pg_roles WHERE rolname = '\(name)' \\gexec
            SELECT format('ALTER DATABASE %I IS_TEMPLATE false', datname) FROM pg_database WHERE datname = '\(name)' AND datistemplate \\gexec
            SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE (usename = '\(name)' OR datname = '\(name)') AND pid <> pg_backend_pid();
            DROP DATABASE IF EXISTS "\(name)" WITH (FORCE);
            """)
        try revokeGrants(port: port, to: name)
        try psql(port: port, sql: "DROP ROLE IF EXISTS \"\(name)\";")
    }

    static let seedTemplateAllocation = "postgres-seed-template"
    /// When each seed template was last asked for (state DB meta: name → seconds since 1970).
    static let seedTemplateUseKey = "postgres-seed-templates-used"

    /// Records that `template` is being used now (under `seedTemplateLock`).
    func noteSeedTemplateUse(_ template: String) {
        var used = ((try? state.meta(Self.seedTemplateUseKey, as: [String: Double].self)) ?? nil) ?? [:]
        used[template] = Date().timeIntervalSince1970
        try? state.setMeta(Self.seedTemplateUseKey, used)
    }

    /// Beyond `Options.keptSeedTemplates`, drops the templates used least recently (with their
    /// ready copies and their roles), each only when unused for `Options.seedTemplateIdle`
    /// seconds: a copy being made from one, or handed over, asked for it moments ago. Every agent
    /// branch that edits a seed makes a template; without this they would pile up.
    func dropIdleSeedTemplates(port: Int, keeping current: String) {
        seedTemplateLock.withLock { dropIdleSeedTemplatesLocked(port: port, keeping: current) }
    }

    private func dropIdleSeedTemplatesLocked(port: Int, keeping current: String) {
        var used = ((try? state.meta(Self.seedTemplateUseKey, as: [String: Double].self)) ?? nil) ?? [:]
        let templates = ((try? state.allocations(Self.seedTemplateAllocation, of: Self.hostEnvironment)) ?? []).filter { $0.hasPrefix("g_seed_") }
        guard templates.count > options.keptSeedTemplates else { return }
        let idleSince = Date().timeIntervalSince1970 - options.seedTemplateIdle
        let oldestFirst = templates.filter { $0 != current }.sorted { (used[$0] ?? 0) < (used[$1] ?? 0) }
        for template in oldestFirst.prefix(templates.count - options.keptSeedTemplates) where (used[template] ?? 0) < idleSince {
            spareRefillLock.withLock {
                let stem = "g_spare_" + template.dropFirst("g_seed_".count) + "_"
                let spares = (0..<max(options.spareSeedCopies, 1)).map { stem + String($0) }
                do {
                    try psql(port: port, sql: spares.map { "DROP DATABASE IF EXISTS \"\($0)\";\n" }.joined())
                    try dropDatabaseAndRole(port: port, template)
                } catch {
                    logger.warning("could not drop an idle seed template", metadata: ["database": "\(template)", "error": "\(error)"])
                    return
                }
                for name in spares + [template] { try? state.release(Self.seedTemplateAllocation, name) }
                spareSeedsLock.withLock { spareSeeds[template] = nil }
                knownSeedTemplates.remove(template)
                seedTemplateMakers[template] = nil
                used[template] = nil
                logger.info("dropped an idle seed template and its ready copies", metadata: ["database": "\(template)"])
            }
        }
        try? state.setMeta(Self.seedTemplateUseKey, used)
    }

    /// Makes `target` (whose role exists) out of a ready copy of `template`, renamed: the
    /// copy's files were made ahead, so this costs a rename and the ownership change of
    /// `copyDatabase`. False, with nothing made, when no copy is ready.
    func takeSpareSeed(port: Int, template: String, target: String, progress: (String) -> Void) throws -> Bool {
        guard let spare = spareSeedsLock.withLock({ spareSeeds[template]?.popFirst() }) else { return false }
        progress("taking \(spare), a copy of \(template) made ahead, as \(target)")
        do {
            // (The copy allowed no connection and belonged to the superuser: nobody used it.)
            _ = try reassignmentLock.withLock { try psql(port: port, sql: """
                ALTER DATABASE "\(spare)" RENAME TO "\(target)";
                ALTER DATABASE "\(target)" OWNER TO "\(target)";
                \(Self.opening(target))
                \\connect "\(target)"
                \(Self.reassignment(from: template, to: target))
                """) }
        } catch {
            // Renamed but not handed over: the caller drops it. Not renamed (the copy was gone): copy otherwise.
            if try psql(port: port, sql: "SELECT 1 FROM pg_database WHERE datname = '\(target)'").contains("1") { throw error }
            try? state.release(Self.seedTemplateAllocation, spare)
            return false
        }
        try? state.release(Self.seedTemplateAllocation, spare)
        return true
    }

    /// In the copy, the template's role owns what the seed made and holds grants: all of it goes
    /// to the target's role. (REASSIGN and DROP OWNED also reach shared objects, so the source
    /// database is the superuser's for the moment, and its role's grant on it is given back; the
    /// transaction holds the source's row, so two of these never interleave.) Run in the target.
    static func reassignment(from source: String, to target: String) -> String {
        """
        BEGIN;
        ALTER DATABASE "\(source)" OWNER TO postgres;
        REASSIGN OWNED BY "\(source)" TO "\(target)";
        DROP OWNED BY "\(source)";
        ALTER DATABASE "\(source)" OWNER TO "\(source)";
        GRANT CONNECT, TEMPORARY ON DATABASE "\(source)" TO "\(source)";
        COMMIT;
        """
    }

    /// Makes `Options.spareSeedCopies` ready copies of `template` in the background (the ones
    /// already there, from before a restart, are counted).
    func refillSpareSeeds(port: Int, template: String) {
        guard options.spareSeedCopies > 0 else { return }
        spareRefill.enter()
        Thread.detachNewThread { [self] in
            defer { spareRefill.leave() }
            spareRefillLock.withLock {
                let stem = "g_spare_" + template.dropFirst("g_seed_".count) + "_"
                guard let listed = try? psql(port: port, sql: "SELECT datname FROM pg_database WHERE datname LIKE '\(stem)%'") else { return }
                let present = Set(listed.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) })
                for index in 0..<options.spareSeedCopies {
                    let spare = stem + String(index)
                    let ready = spareSeedsLock.withLock { spareSeeds[template, default: []].contains(spare) }
                    if ready { continue }
                    if !present.contains(spare) {
                        do {
                            try state.allocate(Self.seedTemplateAllocation, spare, to: Self.hostEnvironment)
                            try psql(port: port, sql: """
                                CREATE DATABASE "\(spare)" TEMPLATE "\(template)" ALLOW_CONNECTIONS false;
                                REVOKE CONNECT, TEMPORARY ON DATABASE "\(spare)" FROM PUBLIC;
                                """)
                        } catch {
                            _ = try? psql(port: port, sql: "DROP DATABASE IF EXISTS \"\(spare)\";")
                            try? state.release(Self.seedTemplateAllocation, spare)
                            logger.warning("could not make a ready copy of a seed template", metadata: ["database": "\(spare)", "error": "\(error)"])
                            return
                        }
                    }
                    spareSeedsLock.withLock { _ = spareSeeds[template, default: []].insert(spare) }
                }
            }
        }
    }

    /// psql as an environment's code would run it: to its own database as its role, at the address
    /// its network reaches the server (the password in `PGPASSWORD`).
    func environmentPsql(port: Int, name: String) -> [String] {
        ["psql", "-h", isolatesNetwork ? Networks.gateway : "127.0.0.1", "-p", String(port), "-U", name, "-d", name,
         "-v", "ON_ERROR_STOP=1", "-q", "-X"]
    }

    /// The host's PostgreSQL server's record, when it runs (nothing starts it).
    static func runningPostgres(state: StateStore) -> ServiceRecord? {
        guard let record = try? state.services(of: hostEnvironment).first(where: { $0.name == postgresRecord }),
              let pid = record.pid, ProcessControl.isAlive(pid, start: record.pidStart) else { return nil }
        return record
    }

    /// Every database of the host's server (one psql call): nil when the server is not running,
    /// or, with why, when it runs but could not be listed.
    func listPostgresDatabases() -> (databases: Set<String>?, unlisted: String?) {
        guard let record = Self.runningPostgres(state: state) else { return (nil, nil) }
        do {
            let names = try psql(port: record.port, sql: "SELECT datname FROM pg_database")
            return (Set(names.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }), nil)
        } catch {
            return (nil, "\(error)")
        }
    }

    /// Drops exactly the databases and roles the state DB records for the environment (never by
    /// name pattern); the server is started for it when needed, and stays for the others. What
    /// could not be dropped keeps its allocation, and `retryFailedDrops` tries again.
    func dropPostgres(environment: String) -> [String] {
        guard let names = try? state.allocations(Self.databaseAllocation, of: environment), !names.isEmpty else { return [] }
        let port: Int
        do { port = try ensurePostgres { _ in } } catch {
            shared.withLock { dropsPending = true }
            return ["could not drop the PostgreSQL databases of \(environment) (tried again at the next passes): \(error)"]
        }
        var problems: [String] = []
        for name in names {
            do {
                try dropDatabaseAndRole(port: port, name)
                try state.release(Self.databaseAllocation, name)
            } catch {
                problems.append("could not drop PostgreSQL database \(name) of \(environment) (tried again at the next passes): \(error)")
            }
        }
        if !problems.isEmpty { shared.withLock { dropsPending = true } }
        return problems
    }

    /// Revokes what other roles granted to `role`, wherever they did (another environment may grant
    /// on its own database and objects to a role whose name it can work out, and DROP ROLE then
    /// fails): DROP OWNED BY in each database that records a dependency on it (one closed to
    /// connections is opened for the moment), then for shared objects.
    func revokeGrants(port: Int, to role: String) throws {
        let listed = try psql(port: port, sql: """
            SELECT DISTINCT d.datname || ' ' || d.datallowconn FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
            WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = '\(role)')
            """)
        for line in listed.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2 else { continue }
            let database = String(parts[0]), closed = parts[1] == "f"
            if closed { try psql(port: port, sql: "ALTER DATABASE \"\(database)\" ALLOW_CONNECTIONS true;") }
            defer { if closed { _ = try? psql(port: port, sql: "ALTER DATABASE \"\(database)\" ALLOW_CONNECTIONS false;") } }
            try psql(port: port, sql: "DROP OWNED BY \"\(role)\";", database: database)
        }
        try psql(port: port, sql: "SELECT format('DROP OWNED BY %I', rolname) FROM pg_roles WHERE rolname = '\(role)' \\gexec")
    }

    /// Drops the databases of destroyed environments that their teardown could not drop (the
    /// server was down or full), at most every `Options.dropRetryInterval`, twice as long after each
    /// retry that left something (up to 64 times: a lock another environment holds on the role
    /// makes each attempt wait `lock_timeout`, on this thread). Runs on the reconciler's
    /// thread (`supervise`), so no apply of a new environment of the same name starts meanwhile;
    /// one under way (busy) is left alone.
    func retryFailedDrops(now: Date) -> [DriverEvent] {
        let due = shared.withLock { () -> Bool in
            guard dropsPending, (nextDropAttempt ?? .distantPast) <= now else { return false }
            nextDropAttempt = now.addingTimeInterval(options.dropRetryInterval)
            return true
        }
        guard due, postgresDatabases != nil, let held = try? state.holders(Self.databaseAllocation) else { return [] }
        var events: [DriverEvent] = []
        var left = false
        for environment in Set(held.map(\.environment)).sorted() where environment != Self.hostEnvironment {
            let record = try? state.environment(environment)
            guard record == nil || record?.phase == .destroyed else { continue }
            let claimed = shared.withLock { busy.insert(environment).inserted }
            guard claimed else { left = true; continue }
            defer { shared.withLock { _ = busy.remove(environment) } }
            let problems = dropPostgres(environment: environment)
            if problems.isEmpty {
                events.append(DriverEvent(environment: environment, kind: "cleaned-up",
                                          message: "dropped the PostgreSQL databases its teardown could not drop"))
            } else {
                left = true
                logger.warning("could not drop the databases of a destroyed environment yet", metadata: ["gantry.env": "\(environment)", "error": "\(problems.joined(separator: "; "))"])
            }
        }
        shared.withLock {
            if left {
                dropFailures = min(dropFailures + 1, 6)
                nextDropAttempt = Date().addingTimeInterval(options.dropRetryInterval * Double(1 << dropFailures))
            } else {
                dropsPending = false
                dropFailures = 0
            }
        }
        return events
    }

    /// Runs SQL through psql's standard input; returns the unaligned output.
    @discardableResult
    /// As the superuser, or as `user` with `password`; the password goes in `PGPASSWORD`.
    func psql(port: Int, sql: String, database: String = "postgres", user: String = "postgres", password: String? = nil) throws -> String {
        // (Bounded: a server that stops answering must not hold Gantry for ever; a copy of a
        // large database is given the clone time limit. A lock held by an environment's session
        // — its role's row, say — makes a statement fail after 10 s rather than wait. What an
        // environment set on its own database for sessions in it — read-only, a 1 ms statement
        // timeout, a role to become — would stop Gantry revoking what it granted: a client's
        // settings win.)
        try ProcessControl.run(["psql", "-h", postgresSocketDirectory, "-p", String(port), "-U", user, "-d", database,
                     "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-X"], input: sql,
                    environment: ["PGPASSWORD": try password ?? postgresSuperuserPassword(), "PGOPTIONS": "-c lock_timeout=10s -c statement_timeout=0 -c default_transaction_read_only=off -c idle_in_transaction_session_timeout=0 -c role=none"],
                    label: "psql", timeout: options.cloneTimeout)
    }
}
