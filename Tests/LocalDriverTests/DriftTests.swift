import Foundation
import Testing
import TestSupport
@testable import LocalDriver
@testable import Reconciler
import StateStore

/// Drift: what was killed or dropped behind Gantry's back comes back, recorded as drift-corrected.
@Suite(.serialized) struct DriftTests {
    func repository() throws -> TestRepository {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "CREATE TABLE users(name text); INSERT INTO users VALUES ('ada');")
        try repo.write("environments/full.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: full, class: development}
            spec:
              template: python-web
              databases:
                main: {engine: postgres, seed: db/seed.sql}
              caches:
                sessions: {engine: redis}
              services:
                web:
                  env: {DATABASE_URL: "${databases.main.url}", REDIS_URL: "${caches.sessions.url}"}
            """)
        try repo.commit("a full-stack environment")
        return repo
    }

    @Test func killedProcessesAndADroppedDatabaseAreRecreatedAndRecorded() throws {
        let repo = try repository()
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("full"), "\(harness.diagnose("full"))")
        let web = try #require(try harness.service("full"))
        let redis = try #require(try harness.service("full", "redis:sessions"))
        let postgres = try #require(try harness.service("_host", "postgres"))
        let superuser = "postgres://postgres@127.0.0.1:\(postgres.port)/postgres"
        let password = try #require(try harness.secrets.lookup("gantry.postgres.superuser", environment: "_host", class: "", team: nil))
        let asSuperuser = ["PGPASSWORD": String(decoding: password.value, as: UTF8.self), "PATH": "/usr/bin:/bin"]
        let database = LocalDriver.postgresName(environment: "full", database: "main")
        #expect(try Shell.run(["psql", superuser, "-c", "DROP DATABASE \(database) WITH (FORCE)"], environment: asSuperuser).status == 0)
        kill(web.pid!, SIGKILL)
        kill(redis.pid!, SIGKILL)
        #expect(eventually(5) { !isRunning(web.pid) && !isRunning(redis.pid) })

        // Within two passes everything is back.
        try harness.pass()
        _ = try? harness.pass()
        #expect(try Shell.run(["psql", superuser, "-At", "-c", "select count(*) from pg_database where datname = '\(database)'"],
                              environment: asSuperuser).stdout.contains("1"))
        #expect(isRunning(try harness.service("full")?.pid))
        #expect(isRunning(try harness.service("full", "redis:sessions")?.pid))
        let found = try harness.records().filter { $0.event == "drift-corrected" }.flatMap { $0.values("found") }
        #expect(found.contains { $0.contains("database main (postgres \(database)) was dropped; recreated") }, "\(found)")
        #expect(found.contains { $0.hasPrefix("service web was not running") })
        #expect(found.contains { $0.hasPrefix("cache sessions was not running") })
        #expect(try harness.verify().isValid)
    }

    @Test func detectOnlyReportsWithoutCorrecting() throws {
        let repo = try repository()
        let first = try Harness(repo: repo)
        try first.pass()
        let web = try #require(try first.service("full"))
        kill(web.pid!, SIGKILL)
        #expect(eventually(5) { !isRunning(web.pid) })
        let watcher = try Harness(repo: repo, reusing: first, detectOnly: true)
        let summary = try watcher.pass()
        #expect(summary.drift.contains("full"))
        #expect(summary.driftCorrected.isEmpty)
        #expect(try watcher.service("full")?.pid == web.pid)
        #expect(try watcher.state.events(of: "full").contains { $0.kind == "drift-detected" && $0.message.contains("not restarted (--detect-only)") })
    }
}
