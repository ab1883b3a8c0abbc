import Foundation
import Testing
import TestSupport
@testable import LocalDriver
@testable import Reconciler
import Logging
import StateStore

/// A real PostgreSQL server (Debian's), started by Gantry under the state directory.
@Suite(.serialized) struct PostgresTests {
    func databaseURL(_ harness: Harness, _ environment: String) throws -> String {
        try #require(processEnvironmentVariable(pid: try harness.service(environment)?.pid, "DATABASE_URL"))
    }

    /// An environment on the python-web template with one PostgreSQL database, whose URL its
    /// service gets as DATABASE_URL; `options` are the database's further fields.
    func writeEnvironment(_ repo: TestRepository, _ name: String, database: String = "main", options: String = "") throws {
        try repo.write("environments/\(name).yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: \(name), class: development}
            spec:
              template: python-web
              databases:
                \(database): {engine: postgres\(options.isEmpty ? "" : ", " + options)}
              services:
                web:
                  env: {DATABASE_URL: "${databases.\(database).url}"}
            """)
    }

    @Test func seededIsolatedClonedAndDroppedDatabases() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "CREATE TABLE users(name text); INSERT INTO users VALUES ('ada'), ('grace');")
        for (name, extra) in [("shop", "seed: db/seed.sql"), ("shop-copy", "cloneFrom: shop")] {
            try writeEnvironment(repo, name, options: extra)
        }
        try repo.commit("environments with PostgreSQL")
        let harness = try Harness(repo: repo)
        let summary = try harness.pass()
        #expect(summary.applied.contains("shop") && summary.applied.contains("shop-copy"), "\(summary) \(harness.diagnose("shop")) \(harness.diagnose("shop-copy"))")
        let url = try databaseURL(harness, "shop")
        let role = String(url.dropFirst("postgres://".count).prefix { $0 != ":" })
        #expect(role.hasPrefix("g_shop_main_") && role.count == "g_shop_main_".count + 8 && url.hasSuffix("/\(role)"), "\(url)")
        #expect(try Shell.check(try harness.inEnvironment("shop", ["psql", url, "-At", "-c", "select count(*) from users"])).trimmingCharacters(in: .whitespacesAndNewlines) == "2")
        let copy = try databaseURL(harness, "shop-copy")
        #expect(try Shell.check(try harness.inEnvironment("shop-copy", ["psql", copy, "-At", "-c", "select count(*) from users"])).trimmingCharacters(in: .whitespacesAndNewlines) == "2")
        // Both environments share the host's one PostgreSQL server: what one server each would cost more.
        let shared = try #require(LocalDriver.sharedServers(state: harness.state).first)
        #expect(shared.environments == 2 && shared.memory > 1 << 20, "\(shared)")
        #expect(abs(shared.savedHourly(pricing: ["memoryGiBHour": 1.0]) - Double(shared.memory) / Double(1 << 30)) < 1e-12)
        // The password is in no file Gantry wrote.
        let password = String(url.dropFirst("postgres://\(role):".count).prefix { $0 != "@" })
        #expect(try Shell.run(["grep", "-r", "-l", "-a", password, harness.stateDirectory.path + "/envs", harness.stateDirectory.path + "/gantry.db"]).status == 1)

        // A preview has its own database: writes there do not reach the live one.
        try repo.checkout("agents/shop", create: true)
        try repo.write("environments/shop.yaml", try String(contentsOfFile: repo.path + "/environments/shop.yaml", encoding: .utf8) + "# preview\n")
        try repo.commit("preview shop")
        try harness.pass()
        let preview = try databaseURL(harness, "shop--agents-shop")
        #expect(preview != url)
        try Shell.check(try harness.inEnvironment("shop--agents-shop", ["psql", preview, "-c", "insert into users values ('x')"]))
        #expect(try Shell.check(try harness.inEnvironment("shop--agents-shop", ["psql", preview, "-At", "-c", "select count(*) from users"])).contains("3"))
        #expect(try Shell.check(try harness.inEnvironment("shop", ["psql", url, "-At", "-c", "select count(*) from users"])).contains("2"))

        // The preview's role reaches its own database only: not production's, not the server's own.
        let port = try #require(try harness.service("_host", "postgres")).port
        let previewRole = String(preview.dropFirst("postgres://".count).prefix { $0 != ":" })
        let previewPassword = String(preview.dropFirst("postgres://\(previewRole):".count).prefix { $0 != "@" })
        for database in [role, "postgres", "template1"] {
            // From the host, and from inside the preview (through the gateway, as its own user).
            let reach = try Shell.run(["psql", "postgres://\(previewRole):\(previewPassword)@127.0.0.1:\(port)/\(database)", "-At", "-c", "select 1"])
            #expect(reach.status != 0 && (reach.stderr.contains("permission denied for database") || reach.stderr.contains("no pg_hba.conf entry")), "\(database): \(reach.stderr)")
            let inside = try Shell.run(try harness.inEnvironment("shop--agents-shop", ["psql", String(preview.dropLast(previewRole.count)) + database, "-At", "-c", "select 1"]))
            #expect(inside.status != 0 && (inside.stderr.contains("permission denied for database") || inside.stderr.contains("no pg_hba.conf entry")), "\(database): \(inside.stderr)")
        }
        // No connection is trusted: the superuser without its password, over TCP and the socket, is refused.
        let superuser = "postgres://postgres@127.0.0.1:\(port)/postgres"
        let anonymous = try Shell.run(["psql", superuser, "-At", "-w", "-c", "select 1"])
        #expect(anonymous.status != 0 && anonymous.stderr.contains("password"), "\(anonymous.stderr)")
        let socket = try Shell.run(["psql", "-h", harness.stateDirectory.path + "/postgres/run", "-p", "\(port)", "-U", "postgres", "-w", "-At", "-c", "select 1"])
        #expect(socket.status != 0 && socket.stderr.contains("password"), "\(socket.stderr)")
        // pg_hba.conf trusts nothing.
        let hba = try String(contentsOfFile: harness.stateDirectory.path + "/postgres/data/pg_hba.conf", encoding: .utf8)
        #expect(!hba.split(separator: "\n").contains { !$0.hasPrefix("#") && $0.contains("trust") } && hba.contains("scram-sha-256"))

        // Teardown drops the preview's database and role, and only those.
        try repo.checkout("main")
        try repo.git("branch", "-D", "agents/shop")
        try harness.pass()
        let superPassword = try #require(try harness.secrets.lookup("gantry.postgres.superuser", environment: "_host", class: "", team: nil))
        let count = try Shell.run(["psql", superuser, "-At", "-c", "select count(*) from pg_database where datname = '\(previewRole)'"],
                                  environment: ["PGPASSWORD": String(decoding: superPassword.value, as: UTF8.self), "PATH": "/usr/bin:/bin"])
        #expect(count.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(count.stdout)\(count.stderr)")
        #expect(try Shell.check(try harness.inEnvironment("shop", ["psql", url, "-At", "-c", "select count(*) from users"])).contains("2"))
    }

    /// An idle source is cloned as a file copy (CREATE DATABASE ... TEMPLATE) whose every object
    /// belongs to the clone's role and none to the source's; a source in use is cloned by a
    /// streamed dump instead (a template copy would wait for its sessions, then fail).
    @Test func anIdleSourceIsClonedAsAFileCopyAndABusyOneAsAStreamedDump() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "CREATE TABLE users(name text); INSERT INTO users VALUES ('ada'), ('grace'); CREATE VIEW names AS SELECT name FROM users;")
        try writeEnvironment(repo, "shop", options: "seed: db/seed.sql")
        try repo.commit("a shop")
        let harness = try Harness(repo: repo)
        try harness.pass()
        let source = try databaseURL(harness, "shop")
        let sourceRole = String(source.dropFirst("postgres://".count).prefix { $0 != ":" })
        func changes(_ environment: String) throws -> [String] {
            try harness.records().last { $0.event == "applied" && $0.value("environment") == environment }?.values("change") ?? []
        }
        func query(_ environment: String, _ url: String, _ sql: String) throws -> Shell.Result {
            try Shell.run(try harness.inEnvironment(environment, ["psql", url, "-At", "-c", sql]))
        }

        try writeEnvironment(repo, "shop-a", options: "cloneFrom: shop")
        try repo.commit("an idle clone")
        try harness.pass()
        let changedA = try changes("shop-a")
        #expect(changedA.contains("+database main (cloned from shop: file copy)"), "\(changedA)")
        let copy = try databaseURL(harness, "shop-a")
        let copyRole = String(copy.dropFirst("postgres://".count).prefix { $0 != ":" })
        #expect(try query("shop-a", copy, "select count(*) from names").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "2")
        let owners = try query("shop-a", copy, "select string_agg(distinct pg_get_userbyid(relowner), ',') from pg_class where relname in ('users', 'names')")
        #expect(owners.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == copyRole, "\(owners.stdout)\(owners.stderr)")
        #expect(try query("shop-a", copy, "insert into users values ('x')").status == 0)
        // The source's role reaches nothing of the copy, and keeps its own database.
        let reach = try Shell.run(try harness.inEnvironment("shop", ["psql", String(source.dropLast(sourceRole.count)) + copyRole, "-At", "-c", "select 1"]))
        #expect(reach.status != 0 && (reach.stderr.contains("permission denied for database") || reach.stderr.contains("no pg_hba.conf entry")), "\(reach.stderr)")
        #expect(try query("shop", source, "select count(*) from users").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "2")
        #expect(try query("shop", source, "select pg_get_userbyid(datdba) from pg_database where datname = current_database()").stdout
            .trimmingCharacters(in: .whitespacesAndNewlines) == sourceRole)

        // A session on the source: the clone streams a dump and leaves the session alone.
        let session = Process()
        session.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        session.arguments = try harness.inEnvironment("shop", ["psql", source, "-At", "-c", "select pg_sleep(30)"])
        try session.run()
        defer { if session.isRunning { kill(session.processIdentifier, SIGKILL) }; session.waitUntilExit() }
        let port = try #require(try harness.service("_host", "postgres")).port
        #expect(eventually(10) {
            (try? harness.driver.psql(port: port, sql: "select count(*) from pg_stat_activity where datname = '\(sourceRole)'"))?
                .trimmingCharacters(in: .whitespacesAndNewlines) == "1"
        })
        try writeEnvironment(repo, "shop-b", options: "cloneFrom: shop")
        try repo.commit("a clone of a busy source")
        try harness.pass()
        let changedB = try changes("shop-b")
        #expect(changedB.contains("+database main (cloned from shop: streamed dump, the source was in use)"), "\(changedB)")
        #expect(try query("shop-b", try databaseURL(harness, "shop-b"), "select count(*) from names").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "2")
        #expect(session.isRunning, "the source's session was ended by the clone")
    }

    /// A plain-SQL seed runs once, into a template that nobody can log in to or connect to; each
    /// environment seeded with it gets a copy owned by its own role.
    @Test func aPlainSeedRunsOnceIntoATemplateThatEachEnvironmentCopies() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "CREATE TABLE users(name text); INSERT INTO users VALUES ('ada'), ('grace'); CREATE SEQUENCE ids;")
        for name in ["shop", "store"] { try writeEnvironment(repo, name, options: "seed: db/seed.sql") }
        try repo.commit("two shops with one seed")
        let harness = try Harness(repo: repo)
        let summary = try harness.pass()
        #expect(summary.applied.contains("shop") && summary.applied.contains("store"), "\(harness.diagnose("shop")) \(harness.diagnose("store"))")
        let port = try #require(try harness.service("_host", "postgres")).port
        let templates = try harness.driver.psql(port: port, sql: "SELECT datname || ' ' || datistemplate || ' ' || datallowconn FROM pg_database WHERE datname LIKE 'g_seed_%'")
            .split(separator: "\n").map(String.init)
        #expect(templates.count == 1 && templates.first?.hasSuffix(" true false") == true, "\(templates)")
        let template = String(templates.first?.split(separator: " ").first ?? "")
        #expect(try harness.driver.psql(port: port, sql: "SELECT rolcanlogin FROM pg_roles WHERE rolname = '\(template)'").trimmingCharacters(in: .whitespacesAndNewlines) == "f")
        for environment in ["shop", "store"] {
            let url = try databaseURL(harness, environment)
            let role = String(url.dropFirst("postgres://".count).prefix { $0 != ":" })
            let owners = try Shell.check(try harness.inEnvironment(environment, ["psql", url, "-At", "-c",
                "select string_agg(distinct pg_get_userbyid(relowner), ',') || ' ' || (select count(*) from users) from pg_class where relname in ('users', 'ids')"]))
            #expect(owners.trimmingCharacters(in: .whitespacesAndNewlines) == "\(role) 2", "\(environment): \(owners)")
        }
        // Writes to one copy reach neither the template nor the other copy.
        let shop = try databaseURL(harness, "shop")
        try Shell.check(try harness.inEnvironment("shop", ["psql", shop, "-c", "insert into users values ('x')"]))
        #expect(try Shell.check(try harness.inEnvironment("store", ["psql", try databaseURL(harness, "store"), "-At", "-c", "select count(*) from users"])).contains("2"))

        // Copies of the template are made ahead, closed to everyone; the next environment seeded
        // with it is one of them, renamed and handed over like any copy.
        func spares() throws -> [String: String] {
            let rows = try harness.driver.psql(port: port, sql: "SELECT datname || ' ' || oid || ' ' || datallowconn FROM pg_database WHERE datname LIKE 'g_spare_%'")
            return Dictionary(uniqueKeysWithValues: rows.split(separator: "\n").map { line in
                let parts = line.split(separator: " ").map(String.init)
                return (parts[0], parts[1] + " " + parts[2])
            })
        }
        let filled = try eventually(20) { try spares().count == 2 }
        let seen = (try? spares()) ?? [:]
        #expect(filled, "\(seen)")
        let ready = try spares()
        #expect(ready.values.allSatisfy { $0.hasSuffix(" false") }, "\(ready)")
        try writeEnvironment(repo, "stall", options: "seed: db/seed.sql")
        try repo.commit("a third shop with the same seed")
        #expect(try harness.pass().applied.contains("stall"), "\(harness.diagnose("stall"))")
        let stall = LocalDriver.postgresName(environment: "stall", database: "main")
        let oid = try harness.driver.psql(port: port, sql: "SELECT oid FROM pg_database WHERE datname = '\(stall)'").trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(ready.values.map { String($0.split(separator: " ")[0]) }.contains(oid), "\(oid) is not one of \(ready)")
        let url = try databaseURL(harness, "stall")
        let role = String(url.dropFirst("postgres://".count).prefix { $0 != ":" })
        let owners = try Shell.check(try harness.inEnvironment("stall", ["psql", url, "-At", "-c",
            "select string_agg(distinct pg_get_userbyid(relowner), ',') || ' ' || (select count(*) from users) from pg_class where relname in ('users', 'ids')"]))
        #expect(owners.trimmingCharacters(in: .whitespacesAndNewlines) == "\(role) 2", "stall: \(owners)")
        // The template's role owns nothing in it, and the template is still the template.
        let leftovers = try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_shdepend d JOIN pg_database b ON b.oid = d.dbid WHERE b.datname = '\(stall)' AND d.refobjid = (SELECT oid FROM pg_roles WHERE rolname = '\(template)')")
        #expect(leftovers.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        #expect(try harness.driver.psql(port: port, sql: "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '\(template)'").trimmingCharacters(in: .whitespacesAndNewlines) == template)
        // Another copy is made to take its place.
        #expect(try eventually(20) { try spares().count == 2 && !spares().values.contains { $0.hasPrefix(oid + " ") } })
    }

    /// Each edit of a seed makes a template (and its ready copies): beyond the number kept, the
    /// one idle longest goes with its copies and role; the environments made from it keep their data.
    @Test func idleSeedTemplatesBeyondTheKeptNumberAreDropped() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/one.sql", "CREATE TABLE one(x int); INSERT INTO one VALUES (1);")
        try repo.write("db/two.sql", "CREATE TABLE two(x int); INSERT INTO two VALUES (2);")
        try writeEnvironment(repo, "first", options: "seed: db/one.sql")
        try repo.commit("a first seed")
        let harness = try Harness(repo: repo) { options in
            options.keptSeedTemplates = 1
            options.seedTemplateIdle = 0
        }
        #expect(try harness.pass().applied.contains("first"), "\(harness.diagnose("first"))")
        let port = try #require(try harness.service("_host", "postgres")).port
        func listed(_ pattern: String, _ table: String = "pg_database", _ column: String = "datname") throws -> [String] {
            try harness.driver.psql(port: port, sql: "SELECT \(column) FROM \(table) WHERE \(column) LIKE '\(pattern)' ORDER BY 1")
                .split(separator: "\n").map(String.init)
        }
        let first = try listed("g_seed_%")
        #expect(first.count == 1)
        let copiesMade = try eventually(20) { try listed("g_spare_%").count == 2 }
        #expect(copiesMade)
        try writeEnvironment(repo, "second", options: "seed: db/two.sql")
        try repo.commit("a second seed")
        #expect(try harness.pass().applied.contains("second"), "\(harness.diagnose("second"))")
        // The first template, its copies and its role are gone; the second is there.
        let templates = try listed("g_seed_%")
        #expect(templates.count == 1 && templates != first, "\(templates)")
        let firstStem = "g_spare_" + (first.first?.dropFirst("g_seed_".count) ?? "") + "%"
        #expect(try listed(firstStem).isEmpty)
        #expect(try listed(first.first ?? "", "pg_roles", "rolname").isEmpty)
        // The environment made from it still has its data.
        let url = try databaseURL(harness, "first")
        #expect(try Shell.check(try harness.inEnvironment("first", ["psql", url, "-At", "-c", "select x from one"])).contains("1"))
    }

    /// A seed is the environment's code: psql's `\\!` and `\\copy ... to program` in it run as the
    /// environment's user inside its network, never as root on the host; the cluster's socket is
    /// closed to environments; an environment cannot hold every connection slot.
    @Test(.enabled(if: getuid() == 0)) func aSeedRunsAsTheEnvironmentAndItsConnectionsAreCapped() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let out = TemporaryDirectory("gantry-seed-out").writableByEveryone()
        try repo.write("db/seed.sql", """
            CREATE TABLE t(x int);
            \\! sh -c 'id -u > \(out.path)/bang-uid; readlink /proc/self/ns/net > \(out.path)/bang-net'
            \\copy (select 1) to program 'sh -c "cat > /dev/null; id -u > \(out.path)/program-uid"'
            """)
        try writeEnvironment(repo, "seedy", options: "seed: db/seed.sql")
        try repo.commit("a seed that runs shell commands")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("seedy"), "\(harness.diagnose("seedy"))")
        let uid = try #require(try harness.state.allocations("uid", of: "seedy").first)
        for file in ["bang-uid", "program-uid"] {
            let written = try String(contentsOfFile: out.path + "/" + file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(written == uid, "\(file): ran as \(written), not as the environment's uid \(uid)")
        }
        let hostNetwork = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")
        let seedNetwork = try String(contentsOfFile: out.path + "/bang-net", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(seedNetwork != hostNetwork, "the seed ran in the host's network")

        // The cluster's socket is the server's: the environment reaches PostgreSQL at the gateway only.
        let port = try #require(try harness.service("_host", "postgres")).port
        let socket = try Shell.run(try harness.inEnvironment("seedy", ["psql", "-h", harness.stateDirectory.path + "/postgres/run", "-p", "\(port)",
                                                                      "-U", "postgres", "-w", "-c", "select 1"]))
        #expect(socket.status != 0 && socket.stderr.contains("Permission denied"), "\(socket.stderr)")
        // Connections that never authenticate, held open: at most 32 get through; Gantry still gets in.
        let held = try Shell.run(try harness.inEnvironment("seedy", ["/usr/bin/python3", "-c", """
            import socket
            held = []
            for i in range(48):
                try: held.append(socket.create_connection(("\(Networks.gateway)", \(port)), timeout=2))
                except OSError: pass
            print(len(held))
            """]))
        #expect(held.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(Networks.connectionsPerPort)", "\(held.stdout)\(held.stderr)")
        #expect(try harness.driver.psql(port: port, sql: "SELECT 1").contains("1"))
    }

    /// A seed that runs on and on does not hold the reconciler: it is stopped at the seed time
    /// limit, the apply fails saying so, and the database is dropped for a fresh retry.
    @Test func aSeedThatRunsOnIsStoppedAtItsTimeLimit() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "CREATE TABLE t(x int);\nSELECT pg_sleep(60);\n")
        try writeEnvironment(repo, "sleepy", options: "seed: db/seed.sql")
        try repo.commit("a seed that sleeps")
        let harness = try Harness(repo: repo, configure: { $0.seedTimeout = 2 })
        let start = Date()
        #expect(try harness.pass().failed.contains("sleepy"))
        #expect(Date().timeIntervalSince(start) < 30, "the pass waited for the seed")
        let message = try harness.environment("sleepy")?.message ?? ""
        #expect(message.contains("seed db/seed.sql did not finish within 2s"), "\(message)")
        let port = try #require(try harness.service("_host", "postgres")).port
        let name = LocalDriver.postgresName(environment: "sleepy", database: "main")
        #expect(try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_database WHERE datname = '\(name)'").contains("0"))
    }

    /// A seed that runs on holds back only the environments seeded the same way: another
    /// environment's seeded database is made while it runs. When its time limit stops it, it is
    /// not run a second time, and nothing of its template is left (no role that can log in).
    @Test func aSlowSeedHoldsBackNoOtherSeedAndLeavesNothingThatLogsIn() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/slow.sql", "CREATE TABLE t(x int);\nSELECT pg_sleep(120);\n")
        try writeEnvironment(repo, "slow", options: "seed: db/slow.sql")
        try repo.commit("a seed that sleeps")
        let harness = try Harness(repo: repo, configure: { $0.seedTimeout = 15 })
        let start = Date()
        try harness.reconciler.runPass(waitForOperations: false)
        func port() -> Int? { (try? harness.service("_host", "postgres"))??.port }
        func count(_ sql: String) -> String {
            guard let port = port() else { return "(no server)" }
            return ((try? harness.driver.psql(port: port, sql: sql)) ?? "(failed)").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let sleepingSQL = "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'g_seed_%' AND query LIKE '%pg_sleep%'"
        #expect(eventually(20) { count(sleepingSQL) == "1" }, "\(count(sleepingSQL))")

        // (On a branch: a new commit on main would apply the slow one again once it fails.)
        try repo.checkout("agents/quick", create: true)
        try repo.write("db/quick.sql", "CREATE TABLE q(x int); INSERT INTO q VALUES (7);")
        try writeEnvironment(repo, "quick", options: "seed: db/quick.sql")
        try repo.commit("a quick seed")
        let quick = "quick--agents-quick"
        let quickRan = try eventually(12) {
            try harness.reconciler.runPass(waitForOperations: false)
            return try harness.environment(quick)?.phase == .running
        }
        #expect(quickRan, "\(harness.diagnose(quick))")
        #expect(count(sleepingSQL) == "1", "the quick seed waited for the slow one")
        #expect(try Shell.check(try harness.inEnvironment(quick, ["psql", try databaseURL(harness, quick), "-At", "-c", "select x from q"])).contains("7"))

        let slowFailed = try eventually(60) {
            try harness.reconciler.runPass(waitForOperations: false)
            return try harness.environment("slow")?.phase == .failed
        }
        #expect(slowFailed)
        let message = try harness.environment("slow")?.message ?? ""
        #expect(message.contains("seed db/slow.sql did not finish within 15s"), "\(message)")
        // Stopped once, not run again as the environment: about one time limit, not two.
        #expect(Date().timeIntervalSince(start) < 28, "took \(Date().timeIntervalSince(start)) s")
        #expect(count(sleepingSQL) == "0")
        #expect(count("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'g_seed_%' AND rolcanlogin") == "0")
        // Only the quick seed's template is left.
        #expect(count("SELECT count(*) FROM pg_database WHERE datname LIKE 'g_seed_%'") == "1")
        try harness.pass()
    }

    /// Every environment together holds at most so many PostgreSQL connections (a slot is taken
    /// before a password is asked): two environments share what is left after the first takes
    /// its own cap, and Gantry still gets in.
    @Test(.enabled(if: getuid() == 0)) func environmentsTogetherCannotTakeEveryConnectionSlot() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        for name in ["one", "two"] { try writeEnvironment(repo, name) }
        try repo.commit("two environments with databases")
        let harness = try Harness(repo: repo) { $0.environmentConnectionsToPostgres = 40 }
        let summary = try harness.pass()
        #expect(summary.applied.contains("one") && summary.applied.contains("two"), "\(harness.diagnose("one")) \(harness.diagnose("two"))")
        guard harness.driver.isolatesNetwork else { return }
        let port = try #require(try harness.service("_host", "postgres")).port
        func hold(_ seconds: Int) -> String {
            """
            import socket, sys, time
            held = []
            for i in range(40):
                try: held.append(socket.create_connection(("\(Networks.gateway)", \(port)), timeout=2))
                except OSError: pass
            print(len(held)); sys.stdout.flush()
            time.sleep(\(seconds))
            """
        }
        // The first holds its 32 for a while; the second, meanwhile, gets only what is left of 40.
        let first = Process()
        let arguments = try harness.inEnvironment("one", ["/usr/bin/python3", "-c", hold(6)])
        first.executableURL = URL(fileURLWithPath: arguments[0])
        first.arguments = Array(arguments.dropFirst())
        let output = Pipe()
        first.standardOutput = output
        try first.run()
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) }; first.waitUntilExit() }
        let line = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        #expect(line.trimmingCharacters(in: .whitespacesAndNewlines) == "\(Networks.connectionsPerPort)", "\(line)")
        let second = try Shell.run(try harness.inEnvironment("two", ["/usr/bin/python3", "-c", hold(0)]))
        #expect(second.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(40 - Networks.connectionsPerPort)", "\(second.stdout)\(second.stderr)")
        #expect(try harness.driver.psql(port: port, sql: "SELECT 1").contains("1"))
    }

    /// A teardown that cannot drop its databases (every slot of the server taken) says so and
    /// keeps them recorded; later passes drop them once the server lets Gantry in. Meanwhile a
    /// server that cannot be listed is not taken for a stopped one (no false drift).
    @Test func aDatabaseATeardownCouldNotDropIsDroppedLater() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try writeEnvironment(repo, "keep")
        try writeEnvironment(repo, "gone")
        try repo.commit("two environments with databases")
        let harness = try Harness(repo: repo) { $0.dropRetryInterval = 0 }
        let summary = try harness.pass()
        #expect(summary.applied.contains("gone") && summary.applied.contains("keep"), "\(harness.diagnose("gone"))")
        let port = try #require(try harness.service("_host", "postgres")).port
        let name = LocalDriver.postgresName(environment: "gone", database: "main")
        func exists() throws -> Bool { try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_database WHERE datname = '\(name)'").contains("1") }
        #expect(try exists())

        // Something on the host takes every connection the server accepts (until
        // authentication_timeout, 10 s): the server forks at most about twice max_connections.
        // On a loaded machine one flood may not fill it in time: up to three are tried.
        func startFlood() throws -> Process {
            let flood = Process()
            flood.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            flood.arguments = ["-c", """
                import socket, sys, time
                held = []
                for i in range(\(LocalDriver.postgresMaxConnections * 2 + 100)):
                    try: held.append(socket.create_connection(("127.0.0.1", \(port)), timeout=2))
                    except OSError: pass
                print(len(held)); sys.stdout.flush()
                time.sleep(8)
                """]
            let output = Pipe()
            flood.standardOutput = output
            try flood.run()
            _ = output.fileHandleForReading.availableData
            return flood
        }
        var flood = try startFlood()
        defer { if flood.isRunning { kill(flood.processIdentifier, SIGKILL) }; flood.waitUntilExit() }
        var full = eventually(5) { (try? harness.driver.psql(port: port, sql: "SELECT 1")) == nil }
        for _ in 0..<2 where !full {
            kill(flood.processIdentifier, SIGKILL)
            flood.waitUntilExit()
            flood = try startFlood()
            full = eventually(5) { (try? harness.driver.psql(port: port, sql: "SELECT 1")) == nil }
        }
        #expect(full, "three floods left the server answering")

        try repo.remove("environments/gone.yaml")
        try repo.commit("gone goes")
        let during = try harness.pass()
        #expect(during.destroyed.contains("gone"))
        #expect(during.drift.isEmpty && !during.applied.contains("keep"), "\(during)")
        #expect(try harness.state.allocations(LocalDriver.databaseAllocation, of: "gone") == [name])
        let said = try harness.state.events(of: "gone").map(\.message).joined(separator: "\n")
        #expect(try harness.state.events(of: "keep").allSatisfy { !$0.kind.hasPrefix("drift") }, "a full server was taken for a stopped one")

        kill(flood.processIdentifier, SIGKILL)
        flood.waitUntilExit()
        let dropped = try eventually(20, interval: 0.5) {
            try harness.pass()
            return try !exists()
        }
        #expect(dropped, "\(said)")
        #expect(try harness.state.allocations(LocalDriver.databaseAllocation, of: "gone").isEmpty)
        #expect(try harness.state.events(of: "gone").contains { $0.kind == "cleaned-up" })
        #expect(try hasDatabase(harness, "keep"))
    }

    func hasDatabase(_ harness: Harness, _ environment: String) throws -> Bool {
        let port = try #require(try harness.service("_host", "postgres")).port
        let name = LocalDriver.postgresName(environment: environment, database: "main")
        return try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_database WHERE datname = '\(name)'").contains("1")
    }

    /// A plain seed may set its template role's password, but that role never logs in over TCP:
    /// not while the seed runs, not after. The template holds what the seed made, nothing more.
    @Test func aSeedTemplatesRoleNeverLogsInOverTheNetwork() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "ALTER ROLE CURRENT_USER PASSWORD 'pwned12345';\nCREATE TABLE t(x text);\nINSERT INTO t VALUES ('orig');\nSELECT pg_sleep(4);\n")
        try writeEnvironment(repo, "first", options: "seed: db/seed.sql")
        try repo.commit("a seed that sets its role's password")
        let harness = try Harness(repo: repo)
        try harness.reconciler.runPass(waitForOperations: false)
        func port() -> Int? { (try? harness.service("_host", "postgres"))??.port }
        let seedingSQL = "SELECT usename FROM pg_stat_activity WHERE usename LIKE 'g_seed_%' AND query LIKE '%pg_sleep%'"
        var role = ""
        #expect(eventually(20) {
            guard let port = port() else { return false }
            role = ((try? harness.driver.psql(port: port, sql: seedingSQL)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            return !role.isEmpty
        })
        let address = harness.driver.isolatesNetwork ? Networks.gateway : "127.0.0.1"
        func login() throws -> Shell.Result {
            try Shell.run(["psql", "postgres://\(role):pwned12345@\(address):\(port() ?? 0)/\(role)", "-At", "-c", "insert into t values ('poisoned')"])
        }
        let during = try login()
        #expect(during.status != 0 && during.stderr.contains("pg_hba.conf rejects"), "\(during.stdout)\(during.stderr)")
        try harness.pass()
        #expect(try harness.environment("first")?.phase == .running, "\(harness.diagnose("first"))")
        let after = try login()
        #expect(after.status != 0, "\(after.stdout)")
        // A second environment with the seed gets exactly what the seed made.
        try writeEnvironment(repo, "second", options: "seed: db/seed.sql")
        try repo.commit("a second environment with the seed")
        #expect(try harness.pass().applied.contains("second"), "\(harness.diagnose("second"))")
        let rows = try Shell.check(try harness.inEnvironment("second", ["psql", try databaseURL(harness, "second"), "-At", "-c", "select string_agg(x, ',') from t"]))
        #expect(rows.trimmingCharacters(in: .whitespacesAndNewlines) == "orig", "\(rows)")
    }

    /// An environment's role may mark its own database a template, close it to connections and
    /// hold sessions in it: its teardown still drops the database and the role.
    @Test func aDatabaseItsRoleMadeATemplateIsStillDroppedAtTeardown() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try writeEnvironment(repo, "tricky")
        try repo.commit("an environment with a database")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("tricky"), "\(harness.diagnose("tricky"))")
        let url = try databaseURL(harness, "tricky")
        let name = LocalDriver.postgresName(environment: "tricky", database: "main")
        try Shell.check(try harness.inEnvironment("tricky", ["psql", url, "-c", "ALTER DATABASE \(name) IS_TEMPLATE true"]))
        let port = try #require(try harness.service("_host", "postgres")).port
        #expect(try harness.driver.psql(port: port, sql: "SELECT datistemplate FROM pg_database WHERE datname = '\(name)'").contains("t"))
        try repo.remove("environments/tricky.yaml")
        try repo.commit("tricky goes")
        #expect(try harness.pass().destroyed.contains("tricky"))
        #expect(try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_database WHERE datname = '\(name)'").contains("0"))
        #expect(try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_roles WHERE rolname = '\(name)'").contains("0"))
        #expect(try harness.state.allocations(LocalDriver.databaseAllocation, of: "tricky").isEmpty)
    }

    /// An environment's session that holds a lock on its role's row (an open transaction that
    /// altered the role) makes its own apply fail after the lock timeout, not hang a worker for
    /// ever; another environment is applied meanwhile, and the teardown still drops everything.
    @Test func aLockOnItsOwnRoleHoldsNothingButTheEnvironmentItself() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try writeEnvironment(repo, "locker")
        try repo.commit("an environment with a database")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("locker"), "\(harness.diagnose("locker"))")
        let url = try databaseURL(harness, "locker")
        let holder = Process()
        let arguments = try harness.inEnvironment("locker", ["psql", url, "-c", "BEGIN; ALTER ROLE CURRENT_USER PASSWORD 'x'; SELECT pg_sleep(120);"])
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = arguments
        holder.standardOutput = FileHandle.nullDevice
        holder.standardError = FileHandle.nullDevice
        try holder.run()
        defer { if holder.isRunning { kill(holder.processIdentifier, SIGKILL) }; holder.waitUntilExit() }
        let port = try #require(try harness.service("_host", "postgres")).port
        #expect(eventually(10) { ((try? harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()")) ?? "").contains("1") })

        // A new revision of it (its role's password is set again) and a new environment, in one commit.
        try repo.write("environments/locker.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: locker, class: development}
            spec:
              template: python-web
              databases:
                main: {engine: postgres}
              services:
                web:
                  env: {DATABASE_URL: "${databases.main.url}", REVISION: "2"}
            """)
        try writeEnvironment(repo, "bystander")
        try repo.commit("a new revision, and a bystander")
        let start = Date()
        let summary = try harness.pass()
        #expect(summary.applied.contains("bystander"), "\(harness.diagnose("bystander"))")
        #expect(summary.failed.contains("locker"), "\(harness.diagnose("locker"))")
        #expect(Date().timeIntervalSince(start) < 60, "the pass took \(Date().timeIntervalSince(start)) s")
        let message = try harness.environment("locker")?.message ?? ""
        #expect(message.contains("lock timeout"), "\(message)")

        try repo.remove("environments/locker.yaml")
        try repo.commit("locker goes")
        #expect(try harness.pass().destroyed.contains("locker"))
        let name = LocalDriver.postgresName(environment: "locker", database: "main")
        #expect(try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_database WHERE datname = '\(name)'").contains("0"))
        #expect(try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_roles WHERE rolname = '\(name)'").contains("0"))
    }

    /// Another environment grants on its own database and tables to a role whose name it can
    /// work out, and makes its database read-only with a 1 ms statement timeout for whoever comes
    /// in (Gantry, to revoke those grants): the victim's teardown still drops that role, and the
    /// victim made again logs in.
    /// An environment's roles share its sessions (several databases do not multiply them).
    @Test(.enabled(if: getuid() == 0)) func grantsFromAnotherEnvironmentNeitherKeepARoleNorLockItOut() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try writeEnvironment(repo, "attacker")
        try writeEnvironment(repo, "victim")
        try repo.write("environments/many.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: many, class: development}
            spec:
              databases:
                a: {engine: postgres}
                b: {engine: postgres}
                c: {engine: postgres}
                d: {engine: postgres}
            """)
        try repo.commit("an attacker, a victim, and one with four databases")
        let harness = try Harness(repo: repo)
        let summary = try harness.pass()
        #expect(summary.applied.contains("attacker") && summary.applied.contains("victim") && summary.applied.contains("many"),
                "\(harness.diagnose("attacker")) \(harness.diagnose("victim")) \(harness.diagnose("many"))")
        let port = try #require(try harness.service("_host", "postgres")).port
        let limits = try harness.driver.psql(port: port, sql: "SELECT rolconnlimit FROM pg_roles WHERE rolname LIKE 'g\\_many\\_%'")
            .split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(limits == Array(repeating: "\(LocalDriver.roleConnectionLimit / 4)", count: 4), "\(limits)")

        let victim = LocalDriver.postgresName(environment: "victim", database: "main")
        let attacker = LocalDriver.postgresName(environment: "attacker", database: "main")
        try Shell.check(try harness.inEnvironment("attacker", ["psql", try databaseURL(harness, "attacker"), "-v", "ON_ERROR_STOP=1", "-c", """
            GRANT CONNECT, TEMPORARY ON DATABASE \(attacker) TO \(victim);
            CREATE TABLE gx(i int); GRANT SELECT ON gx TO \(victim);
            ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO \(victim);
            ALTER DATABASE \(attacker) SET default_transaction_read_only = on;
            ALTER DATABASE \(attacker) SET statement_timeout = 1;
            ALTER DATABASE \(attacker) SET role = \(attacker);
            """]))
        try repo.remove("environments/victim.yaml")
        try repo.commit("the victim goes")
        #expect(try harness.pass().destroyed.contains("victim"))
        #expect(try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_roles WHERE rolname = '\(victim)'").contains("0"), "\(try harness.diagnose("victim"))")
        #expect(try harness.state.allocations(LocalDriver.databaseAllocation, of: "victim").isEmpty)

        try writeEnvironment(repo, "victim")
        try repo.commit("the victim is back")
        #expect(try harness.pass().applied.contains("victim"), "\(harness.diagnose("victim"))")
        let back = try Shell.run(try harness.inEnvironment("victim", ["psql", try databaseURL(harness, "victim"), "-At", "-c", "select 1"]))
        #expect(back.status == 0 && back.stdout.contains("1"), "\(back.stderr)")
    }

    /// A kill switch freezes an environment's processes; the server runs the queries they sent
    /// outside its group, so its sessions end with the freeze (a loop in the database would go on).
    @Test(.enabled(if: getuid() == 0)) func freezingAnEnvironmentEndsItsDatabaseSessions() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try writeEnvironment(repo, "busy")
        try repo.commit("an environment with a database")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("busy"), "\(harness.diagnose("busy"))")
        let port = try #require(try harness.service("_host", "postgres")).port
        let role = LocalDriver.postgresName(environment: "busy", database: "main")
        let sessions = { try harness.driver.psql(port: port, sql: "SELECT count(*) FROM pg_stat_activity WHERE usename = '\(role)'").trimmingCharacters(in: .whitespacesAndNewlines) }
        let command = try harness.inEnvironment("busy", ["psql", try databaseURL(harness, "busy"), "-c", "select pg_sleep(120)"])
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        client.arguments = command
        client.standardOutput = FileHandle.nullDevice
        client.standardError = FileHandle.nullDevice
        try client.run()
        defer { if client.isRunning { client.terminate() }; client.waitUntilExit() }
        #expect(eventually(10) { (try? sessions()) == "1" }, "the client never connected")
        let url = try databaseURL(harness, "busy")
        let login = { try Shell.run(["psql", url, "-Atc", "select 1"]) }
        // (As `gantry kill` without a running Gantry does: a driver of its own, waited for before exiting.)
        let killer = LocalDriver(stateDirectory: harness.stateDirectory.url, state: harness.state, logger: Logger(label: "kill"))
        killer.secrets = harness.secrets
        killer.setFrozen("busy", true)
        LocalDriver.awaitDatabaseLogins()
        // Whoever holds its password (another environment it handed it to) cannot log in meanwhile.
        let refused = try login()
        #expect(refused.stderr.contains("not permitted to log in"), "\(refused.stderr)")
        #expect(eventually(10) { (try? sessions()) == "0" }, "a frozen environment's session went on")
        killer.setFrozen("busy", false)
        LocalDriver.awaitDatabaseLogins()
        #expect(try login().status == 0, "thawed, it logs in again")
    }

    /// `shop-a`'s database `main` and `shop`'s database `a-main` were both `g_shop_a_main` once:
    /// one environment's teardown dropped the other's data.
    @Test func namesThatOnceCollidedStayApartAndTeardownDropsOnlyItsOwn() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        for (name, database) in [("shop-a", "main"), ("shop", "a-main")] {
            try writeEnvironment(repo, name, database: database)
        }
        try repo.commit("two environments whose database names once met")
        let harness = try Harness(repo: repo)
        let summary = try harness.pass()
        #expect(summary.applied.contains("shop") && summary.applied.contains("shop-a"), "\(summary)")
        let (one, two) = (try databaseURL(harness, "shop-a"), try databaseURL(harness, "shop"))
        #expect(one != two)
        try Shell.check(try harness.inEnvironment("shop-a", ["psql", one, "-c", "create table kept(x int); insert into kept values (1)"]))
        // shop goes away; shop-a's data stays.
        try repo.remove("environments/shop.yaml")
        try repo.commitAsOwner("remove shop")
        try harness.pass()
        #expect(try harness.environment("shop")?.phase == .destroyed)
        #expect(try Shell.check(try harness.inEnvironment("shop-a", ["psql", one, "-At", "-c", "select count(*) from kept"])).trimmingCharacters(in: .whitespacesAndNewlines) == "1")
        #expect(try Shell.run(["psql", two, "-At", "-c", "select 1"]).status != 0)
    }

    /// A seed that fails half-way drops the database again: the fixed seed fills a fresh one.
    @Test func aFailedSeedIsRetriedFromAnEmptyDatabase() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "CREATE TABLE t(x text); INSERT INTO t VALUES ('half'); THIS IS NOT SQL;")
        try writeEnvironment(repo, "seeded", options: "seed: db/seed.sql")
        try repo.commit("a broken seed")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().failed.contains("seeded"))
        try repo.write("db/seed.sql", "CREATE TABLE t(x text); INSERT INTO t VALUES ('whole');")
        try repo.commit("fix the seed")
        #expect(try harness.pass().applied.contains("seeded"))
        let url = try databaseURL(harness, "seeded")
        #expect(try Shell.check(try harness.inEnvironment("seeded", ["psql", url, "-At", "-c", "select string_agg(x, ',') from t"])).trimmingCharacters(in: .whitespacesAndNewlines) == "whole")
    }

    /// As root with the state directory inside a private directory (as under /root), the postgres
    /// user and the environments' users cannot reach `<state>`: the cluster and the environments'
    /// directories live in the fallback directory instead, and environments run as usual.
    @Test(.enabled(if: getuid() == 0)) func aStateDirectoryInsideAPrivateDirectoryStillRunsPostgres() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try writeEnvironment(repo, "shop")
        try repo.commit("shop")
        let privateParent = TemporaryDirectory("gantry-private")
        _ = chmod(privateParent.path, 0o700)
        let fallback = TemporaryDirectory("gantry-pg-fallback")
        let harness = try Harness(repo: repo, stateDirectory: TemporaryDirectory(path: privateParent.path + "/state"),
                                  configure: { $0.fallbackDirectory = fallback.path })
        defer { harness.driver.shutdown() }
        let summary = try harness.pass()
        let message = try harness.environment("shop")?.message ?? ""
        #expect(summary.applied.contains("shop"), "\(message)")
        let instance = fallback.path + "/\(harness.driver.instance)"
        #expect(FileManager.default.fileExists(atPath: instance + "/postgres/data/PG_VERSION"))
        #expect(!FileManager.default.fileExists(atPath: harness.stateDirectory.path + "/postgres/data"))
        // The environments' directories moved with it; <state>/envs leads there.
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: harness.stateDirectory.path + "/envs") == instance + "/envs")
        #expect(try harness.service("shop")?.workdir?.hasPrefix(instance + "/envs/shop/") == true)
        let url = try databaseURL(harness, "shop")
        #expect(try Shell.check(try harness.inEnvironment("shop", ["psql", url, "-At", "-c", "select 1"])).trimmingCharacters(in: .whitespacesAndNewlines) == "1")
    }
}
