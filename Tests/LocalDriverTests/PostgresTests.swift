import Foundation
import Testing
import TestSupport
@testable import LocalDriver
@testable import Reconciler
import StateStore

/// A real PostgreSQL server (Debian's), started by Gantry under the state directory.
@Suite(.serialized) struct PostgresTests {
    func databaseURL(_ harness: Harness, _ environment: String) throws -> String {
        try #require(processEnvironmentVariable(pid: try harness.service(environment)?.pid, "DATABASE_URL"))
    }

    @Test func seededIsolatedClonedAndDroppedDatabases() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/seed.sql", "CREATE TABLE users(name text); INSERT INTO users VALUES ('ada'), ('grace');")
        for (name, extra) in [("shop", "seed: db/seed.sql"), ("shop-copy", "cloneFrom: shop")] {
            try repo.write("environments/\(name).yaml", """
                apiVersion: gantry/v1
                kind: Environment
                metadata: {name: \(name), class: development}
                spec:
                  template: python-web
                  databases:
                    main: {engine: postgres, \(extra)}
                  services:
                    web:
                      env: {DATABASE_URL: "${databases.main.url}"}
                """)
        }
        try repo.commit("environments with PostgreSQL")
        let harness = try Harness(repo: repo)
        let summary = try harness.pass()
        let shopMessage = try harness.environment("shop")?.message ?? ""
        #expect(summary.applied.contains("shop") && summary.applied.contains("shop-copy"), "\(summary) \(shopMessage)")
        let url = try databaseURL(harness, "shop")
        #expect(url.hasPrefix("postgres://g_shop_main:") && url.hasSuffix("/g_shop_main"))
        #expect(try Shell.check(["psql", url, "-At", "-c", "select count(*) from users"]).trimmingCharacters(in: .whitespacesAndNewlines) == "2")
        let copy = try databaseURL(harness, "shop-copy")
        #expect(try Shell.check(["psql", copy, "-At", "-c", "select count(*) from users"]).trimmingCharacters(in: .whitespacesAndNewlines) == "2")
        // The password is in no file Gantry wrote.
        let password = String(url.dropFirst("postgres://g_shop_main:".count).prefix { $0 != "@" })
        #expect(try Shell.run(["grep", "-r", "-l", "-a", password, harness.stateDirectory.path + "/envs", harness.stateDirectory.path + "/gantry.db"]).status == 1)

        // A preview has its own database: writes there do not reach the live one.
        try repo.checkout("agents/shop", create: true)
        try repo.write("environments/shop.yaml", try String(contentsOfFile: repo.path + "/environments/shop.yaml", encoding: .utf8) + "# preview\n")
        try repo.commit("preview shop")
        try harness.pass()
        let preview = try databaseURL(harness, "shop--agents-shop")
        #expect(preview != url)
        try Shell.check(["psql", preview, "-c", "insert into users values ('x')"])
        #expect(try Shell.check(["psql", preview, "-At", "-c", "select count(*) from users"]).contains("3"))
        #expect(try Shell.check(["psql", url, "-At", "-c", "select count(*) from users"]).contains("2"))

        // Teardown drops the preview's database and role.
        try repo.checkout("main")
        try repo.git("branch", "-D", "agents/shop")
        try harness.pass()
        let superuser = "postgres://postgres@127.0.0.1:\(try #require(try harness.service("_host", "postgres")).port)/postgres"
        #expect(try Shell.check(["psql", superuser, "-At", "-c", "select count(*) from pg_database where datname like 'g_shop__agents%'"]).contains("0"))
    }
}
