import Foundation
import Testing
import TestSupport
@testable import LocalDriver
@testable import Reconciler
import StateStore

@Suite(.serialized) struct SQLiteTests {
    @Test func seededClonedAndIsolatedSQLiteDatabases() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "CREATE TABLE users(name TEXT); INSERT INTO users VALUES ('ada'), ('grace');")
        try repo.write("apps/dbapp/server.py", """
            import http.server, os, sqlite3
            class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    path = os.environ["DATABASE_URL"][len("sqlite://"):]
                    count = sqlite3.connect(path).execute("select count(*) from users").fetchone()[0]
                    body = f"users={count}".encode()
                    self.send_response(200); self.end_headers(); self.wfile.write(body)
            http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
            """)
        for (name, extra) in [("app", "seed: db/seed.sql"), ("copy", "cloneFrom: app")] {
            try repo.write("environments/\(name).yaml", """
                apiVersion: gantry/v1
                kind: Environment
                metadata: {name: \(name), class: development}
                spec:
                  databases:
                    main: {engine: sqlite, \(extra)}
                  services:
                    web:
                      source: apps/dbapp
                      command: ["python3", "server.py"]
                      env: {DATABASE_URL: "${databases.main.url}"}
                      health: {http: /}
                """)
        }
        try repo.commit("two environments with sqlite")
        let harness = try Harness(repo: repo)
        let summary = try harness.pass()
        #expect(summary.applied.contains("app") && summary.applied.contains("copy"), "\(summary)")
        #expect(try harness.get("app") == "users=2")
        #expect(try harness.get("copy") == "users=2")
        let applied = try #require(try harness.records().last { $0.event == "applied" && $0.value("environment") == "app" })
        #expect(applied.values("change").contains("+database main"))

        // A preview has its own file: writing to it leaves the live database alone.
        try repo.checkout("agents/db", create: true)
        try repo.write("apps/dbapp/NOTE", "x")
        try repo.commit("touch")
        try harness.pass()
        let previewPath = harness.driver.sqlitePath(environment: "app--agents-db", database: "main")
        // Written as the preview's own user would (the file is its user's).
        var owner = stat()
        #expect(lstat(previewPath, &owner) == 0)
        let asOwner = getuid() == 0 ? ["setpriv", "--reuid=\(owner.st_uid)", "--regid=\(owner.st_gid)", "--clear-groups"] : []
        try Shell.check(asOwner + ["/usr/bin/python3", "-c", "import sqlite3; c = sqlite3.connect('\(previewPath)'); c.execute(\"insert into users values ('x')\"); c.commit()"])
        let previewMessage = try harness.environment("app--agents-db")?.message ?? ""
        #expect(try harness.get("app--agents-db") == "users=3", "\(previewMessage)")
        #expect(try harness.get("app") == "users=2")
    }

    /// A seed that fails leaves no database behind: once the seed is fixed, the database is seeded.
    @Test func aFailedSeedLeavesNothingHalfMadeAndAFixedOneSeeds() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "CREATE TABLE t(x); INSERT INTO t VALUES ('seeded'); THIS IS NOT SQL;")
        try repo.write("environments/seeded.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: seeded, class: development}
            spec:
              databases:
                main: {engine: sqlite, seed: db/seed.sql}
            """)
        try repo.commit("a broken seed")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().failed.contains("seeded"))
        let path = harness.driver.sqlitePath(environment: "seeded", database: "main")
        #expect(!FileManager.default.fileExists(atPath: path), "a half-made database was left at \(path)")
        try repo.write("db/seed.sql", "CREATE TABLE t(x); INSERT INTO t VALUES ('seeded');")
        try repo.commit("fix the seed")
        #expect(try harness.pass().applied.contains("seeded"))
        #expect(try Shell.check(["python3", "-c", "import sqlite3; print(sqlite3.connect('\(path)').execute('select x from t').fetchone()[0])"])
            .trimmingCharacters(in: .whitespacesAndNewlines) == "seeded")
    }

    /// A SQLite seed is the environment's code: it runs as the environment's user, so it cannot
    /// write (ATTACH, VACUUM INTO) where that user cannot; the apply fails and names the seed.
    @Test(.enabled(if: getuid() == 0)) func aSeedCannotWriteWhereTheEnvironmentCannot() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let closed = TemporaryDirectory("gantry-closed")
        _ = chmod(closed.path, 0o700)
        try repo.write("db/seed.sql", "ATTACH DATABASE '\(closed.path)/stolen.db' AS x; CREATE TABLE x.t(a);")
        try repo.write("environments/attacher.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: attacher, class: development}
            spec:
              template: python-web
              databases:
                main: {engine: sqlite, seed: db/seed.sql}
            """)
        try repo.commit("a seed that writes outside its environment")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().failed.contains("attacher"))
        #expect(!FileManager.default.fileExists(atPath: closed.path + "/stolen.db"), "the seed wrote as root")
        let message = try harness.environment("attacher")?.message ?? ""
        #expect(message.contains("seed db/seed.sql") && message.contains("unable to open database"), "\(message)")
        #expect(!FileManager.default.fileExists(atPath: harness.driver.sqlitePath(environment: "attacher", database: "main")))
    }
}
