import Foundation
import GitStore
import SpecModel
import Testing
import TestSupport
@testable import SpecLoading

@Suite struct ConfigLoaderTests {
    func loaded(_ files: [String: String]) throws -> (TestRepository, ObjectID) {
        let repo = try TestRepository()
        try repo.seedExample()
        for (path, content) in files { try repo.write(path, content) }
        let sha = try repo.commit("change")
        return (repo, ObjectID(hex: sha)!)
    }

    @Test func exampleRepositoryIsValid() throws {
        let (repo, commit) = try loaded([:])
        let loader = ConfigLoader(repository: try repo.open())
        #expect(try loader.validate(at: commit).isEmpty)
        let environments = try loader.environments(at: commit)
        #expect(environments.map(\.name) == ["status-page", "web"])
        let web = try #require(environments.first { $0.name == "web" }?.spec)
        #expect(web.class == .production)
        #expect(web.services.first?.command == ["python3", "server.py"])
        #expect(web.services.first?.source == "apps/hello")
        #expect(web.services.first?.health?.http == "/healthz")
        #expect(web.services.first?.resources.memory == 64 << 20)
        // The environment overrides the template's GREETING, and adds UPSTREAM, by deep merge.
        let status = try #require(environments.first { $0.name == "status-page" }?.spec)
        #expect(status.services.first?.env.map(\.name) == ["GREETING", "UPSTREAM"])
        #expect(status.services.first?.env.first?.value == "status of ${env.name}: all systems go")
    }

    @Test func everyProblemIsReportedAtOnceWithPositions() throws {
        let (repo, commit) = try loaded(["environments/bad.yaml": """
            apiVersion: gantry/v1
            kind: Environment
            metadata:
              name: Bad_Name
              class: prod
            spec:
              servces: {}
              services:
                api:
                  command: python3
                  replicas: many
                  env:
                    URL: "${services.db.url}"
                    NAME: "${env.nmae}"
              routes:
                - {name: www, service: apii}
            """])
        let diagnostics = try ConfigLoader(repository: try repo.open()).validate(at: commit).map(\.description)
        let expected = [
            "environments/bad.yaml:4:9: metadata.name 'Bad_Name' must be a DNS-1123 label",
            "environments/bad.yaml:5:10: metadata.class 'prod' is unknown",
            "environments/bad.yaml:7:3: unknown field 'spec.servces'; did you mean 'services'?",
            "environments/bad.yaml:10:16: spec.services.api.command must be a list of strings, found a scalar",
            "environments/bad.yaml:11:17: spec.services.api.replicas must be a whole number, found 'many'",
            "environments/bad.yaml:13:14: '${services.db.url}' names no service of this environment",
            "environments/bad.yaml:14:15: unknown reference '${env.nmae}'",
            "environments/bad.yaml:16:28: spec.routes[0].service 'apii' is not a service of this environment; did you mean 'api'?",
        ]
        for prefix in expected {
            #expect(diagnostics.contains { $0.hasPrefix(prefix) }, "missing: \(prefix)\ngot:\n\(diagnostics.joined(separator: "\n"))")
        }
    }

    @Test func lifecycleFieldsAreCheckedWithPositions() throws {
        let (repo, commit) = try loaded(["environments/scaled.yaml": """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: scaled, class: development}
            spec:
              services:
                tiny:
                  command: [python3, server.py]
                  resources: {cpu: 0.005}
                  autoscale: {min: 1, max: 3, targetConcurrency: 1e-300}
                upside:
                  command: [python3, server.py]
                  autoscale: {min: 4, max: 2}
                huge:
                  command: [python3, server.py]
                  autoscale: {min: 0, max: 1000, targetConcurrency: .nan}
              budget: {hourly: -1}
            """, "gantry.yaml": """
            apiVersion: gantry/v1
            kind: Settings
            previews: {maxPerTeam: -1}
            pricing: {cpuHour: -0.04, redisHour: .inf}
            budgets: {alertAt: 1.5, teams: {payments: {monthly: -5}}}
            """])
        let diagnostics = try ConfigLoader(repository: try repo.open()).validate(at: commit).map(\.description)
        let expected = [
            "environments/scaled.yaml:8:24: spec.services.tiny.resources.cpu must be a number of cores from 0.01 to 1024",
            "environments/scaled.yaml:9:54: spec.services.tiny.autoscale.targetConcurrency must be a number of requests per replica from 0.1 to 10000",
            "environments/scaled.yaml:12:32: spec.services.upside.autoscale.max (2) must be at least min (4)",
            "environments/scaled.yaml:15:32: spec.services.huge.autoscale.max must be between 1 and 100",
            "environments/scaled.yaml:15:57: spec.services.huge.autoscale.targetConcurrency must be a number",
            "environments/scaled.yaml:16:20: spec.budget.hourly must be an amount of 0 or more per hour",
            "gantry.yaml:3:24: previews.maxPerTeam must be a count of running previews, 0 or more",
            "gantry.yaml:4:20: pricing.cpuHour must be a price of 0 or more per hour",
            "gantry.yaml:4:38: pricing.redisHour must be a number",
            "gantry.yaml:5:20: budgets.alertAt must be a fraction above 0 and at most 1",
            "gantry.yaml:5:53: budgets.teams.payments.monthly must be an amount of 0 or more",
        ]
        for prefix in expected {
            #expect(diagnostics.contains { $0.hasPrefix(prefix) }, "missing: \(prefix)\ngot:\n\(diagnostics.joined(separator: "\n"))")
        }
    }

    @Test func passwordsAreRefusedOnCommandLinesAndAllowedInEnv() throws {
        let (repo, commit) = try loaded(["environments/leaky.yaml": """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: leaky, class: development}
            spec:
              secrets: [api-key]
              databases:
                main: {engine: postgres}
              services:
                api:
                  command: [python3, app.py, "--key=${secrets.api-key}", "${databases.main.url}", "${env.name}"]
                  env: {API_KEY: "${secrets.api-key}", DATABASE_URL: "${databases.main.url}"}
              jobs:
                migrate:
                  onCreate: [psql, "${databases.main.url}", -f, schema.sql]
            """])
        let diagnostics = try ConfigLoader(repository: try repo.open()).validate(at: commit).map(\.description)
        #expect(diagnostics.count == 3, "\(diagnostics.joined(separator: "\n"))")
        for prefix in ["environments/leaky.yaml:10:34: '${secrets.api-key}' in spec.services.api.command would put a password on the command line",
                       "environments/leaky.yaml:10:62: '${databases.main.url}' in spec.services.api.command would put a password",
                       "environments/leaky.yaml:14:24: '${databases.main.url}' in spec.jobs.migrate.onCreate would put a password"] {
            #expect(diagnostics.contains { $0.hasPrefix(prefix) }, "missing: \(prefix)\ngot:\n\(diagnostics.joined(separator: "\n"))")
        }
        #expect(diagnostics.allSatisfy { $0.contains("env") }, "each says to use env instead")
    }

    @Test func aSeedMustBeAnSQLFileOfTheCommit() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("db/real.sql", "CREATE TABLE t(x int);")
        try FileManager.default.createSymbolicLink(atPath: repo.path + "/db/link.sql", withDestinationPath: "/etc/passwd")
        try repo.write("db/big.sql", String(repeating: "-- padding\n", count: 100_000) + "SELECT 1;")
        try repo.write("environments/seeds.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: seeds, class: development}
            spec:
              databases:
                a: {engine: sqlite, seed: db/missing.sql}
                b: {engine: sqlite, seed: db/link.sql}
                c: {engine: postgres, seed: db}
                d: {engine: sqlite, seed: db/big.sql}
                e: {engine: sqlite, seed: db/real.sql}
            """)
        let commit = ObjectID(hex: try repo.commit("seeds"))!
        let diagnostics = try ConfigLoader(repository: try repo.open()).validate(at: commit).map(\.description)
        #expect(diagnostics.count == 4, "\(diagnostics.joined(separator: "\n"))")
        for prefix in ["environments/seeds.yaml:6:31: spec.databases.a.seed 'db/missing.sql' does not exist",
                       "environments/seeds.yaml:7:31: spec.databases.b.seed 'db/link.sql' is a symbolic link",
                       "environments/seeds.yaml:8:33: spec.databases.c.seed 'db' is not a file",
                       "environments/seeds.yaml:9:31: spec.databases.d.seed 'db/big.sql' is larger than 1048576 bytes"] {
            #expect(diagnostics.contains { $0.hasPrefix(prefix) }, "missing: \(prefix)\ngot:\n\(diagnostics.joined(separator: "\n"))")
        }
    }

    @Test func missingTemplateAndEscapingSourceAreErrors() throws {
        let (repo, commit) = try loaded(["environments/x.yaml": """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: x, class: development}
            spec:
              template: pyton-web
              services:
                api: {source: ../../etc, command: [cat, passwd]}
                other: {source: apps/missing, command: [true]}
            """])
        let diagnostics = try ConfigLoader(repository: try repo.open()).validate(at: commit).map(\.description)
        #expect(diagnostics.contains { $0.contains("templates/pyton-web.yaml does not exist; did you mean 'python-web'?") })
        #expect(diagnostics.contains { $0.contains("source '../../etc' escapes the repository") })
        #expect(diagnostics.contains { $0.contains("source 'apps/missing' is not a directory") })
    }

    @Test func duplicateNamesAndReservedSeparatorAreRejected() throws {
        let (repo, commit) = try loaded([
            "environments/web2.yaml": "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: web, class: staging}\n",
            "environments/x.yaml": "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: a--b, class: staging}\n",
        ])
        let diagnostics = try ConfigLoader(repository: try repo.open()).validate(at: commit).map(\.description)
        // Both files claiming the name are invalid: neither takes the other's environment over.
        #expect(diagnostics.contains { $0.hasPrefix("environments/web.yaml:") && $0.contains("environment name 'web' is also used by environments/web2.yaml") })
        #expect(diagnostics.contains { $0.hasPrefix("environments/web2.yaml:") && $0.contains("environment name 'web' is also used by environments/web.yaml") })
        #expect(diagnostics.contains { $0.contains("must not contain '--'") })
    }

    @Test func oversizedFileInTheRepositoryIsReported() throws {
        let (repo, commit) = try loaded(["environments/huge.yaml": "a: \"" + String(repeating: "x", count: 2 << 20) + "\"\n"])
        let diagnostics = try ConfigLoader(repository: try repo.open()).validate(at: commit).map(\.description)
        #expect(diagnostics.contains { $0.hasPrefix("environments/huge.yaml:1:1:") && $0.contains("1 MiB") })
    }

    @Test func settingsAreStrictToo() throws {
        let (repo, commit) = try loaded(["gantry.yaml": "apiVersion: gantry/v1\nkind: Settings\nprotectedBrnch: main\npreviews: {ttl: soon}\n"])
        let result = ConfigLoader(repository: try repo.open()).settings(at: commit)
        let text = result.diagnostics.map(\.description)
        #expect(text.contains { $0.hasPrefix("gantry.yaml:3:1: unknown field 'protectedBrnch'; did you mean 'protectedBranch'?") })
        #expect(text.contains { $0.contains("previews.ttl must be a duration") })
    }
}

@Suite struct HostileSpecTests {
    func problems(_ yaml: String) throws -> [Diagnostic] {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("environments/hostile.yaml", yaml)
        let commit = ObjectID(hex: try repo.commit("hostile"))!
        let loaded = try ConfigLoader(repository: try repo.open()).environments(at: commit)
        return try #require(loaded.first { $0.file == "environments/hostile.yaml" }).diagnostics
    }

    func environment(_ spec: String) -> String {
        "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: hostile, team: payments, class: preview}\nspec:\n\(spec)"
    }

    @Test func manyNamesAndReferencesAreCheckedInLinearTime() throws {
        // 20,000 variables took 32 s (each looked up by a scan of all); services, routes and
        // references to unknown names were quadratic too.
        let variables = (0..<20_000).map { "        V\($0): \"value \($0)\"" }.joined(separator: "\n")
        let services = (0..<2_000).map { "    s\($0): {command: [sleep, '1']}" }.joined(separator: "\n")
        let routes = (0..<2_000).map { "    - {name: r\($0), service: x\($0)}" }.joined(separator: "\n")
        let references = (0..<2_000).map { "        R\($0): \"${services.q\($0).url}\"" }.joined(separator: "\n")
        let start = Date()
        let plenty = try problems(environment("  services:\n    web:\n      command: [sleep, '1']\n      env:\n\(variables)\n"))
        #expect(plenty.isEmpty || plenty.allSatisfy { $0.message.contains("class 'preview'") }, "\(plenty.prefix(3))")
        let found = try problems(environment("  services:\n    web:\n      command: [sleep, '1']\n      env:\n\(references)\n\(services)\n  routes:\n\(routes)\n"))
        #expect(Diagnostic.problemCount(found) >= 4_000)
        #expect(Date().timeIntervalSince(start) < 20)
    }

    @Test func outOfRangeResourcesAndEscapedNULsAreDiagnosed() throws {
        let found = try problems(environment("""
              template: python-web
              services:
                web:
                  resources: {cpu: -1, memory: 9007199254740993}
                other:
                  command: [sleep, "1"]
                  resources: {cpu: 0.5, memory: 1e-400Ki}
            """)).map(\.description)
        for prefix in ["environments/hostile.yaml:8:24: spec.services.web.resources.cpu must be a number of cores from 0.01 to 1024",
                       "environments/hostile.yaml:8:36: spec.services.web.resources.memory must be a quantity",
                       "environments/hostile.yaml:11:37: spec.services.other.resources.memory must be a quantity"] {
            #expect(found.contains { $0.hasPrefix(prefix) }, "missing: \(prefix)\ngot:\n\(found.joined(separator: "\n"))")
        }
        // A NUL made by an escape never reaches a command or an environment variable.
        let nul = try problems(environment("  template: python-web\n  services:\n    web:\n      env: {A: \"x\\0y\"}\n")).map(\.description)
        #expect(nul.first?.hasPrefix("environments/hostile.yaml:8:16: a NUL character") == true, "\(nul)")
    }

    @Test func overflowingNumbersAndDurationsAreDiagnosticsWithPositions() throws {
        let found = try problems(environment("""
              lifecycle: {ttl: 99999999999999999999999999999999999999d, idleSleepAfter: 3651d}
              services:
                web:
                  command: [python3, -m, http.server]
                  replicas: 99999999999999999999999
                  resources: {memory: 1e400Mi, cpu: 1e400}
                  health: {http: /, timeout: 1.7976931348623157e308s}
            """))
        let text = found.map(\.description)
        #expect(text.contains { $0.hasPrefix("environments/hostile.yaml:5:") && $0.contains("lifecycle.ttl must be a duration") }, "\(text)")
        #expect(text.contains { $0.contains("idleSleepAfter must be a duration") && $0.contains("at most 3650d") }, "\(text)")
        #expect(text.contains { $0.hasPrefix("environments/hostile.yaml:9:") && $0.contains("replicas must be a whole number") }, "\(text)")
        #expect(text.contains { $0.contains("memory must be a quantity") }, "\(text)")
        #expect(text.contains { $0.contains("cpu must be a number") }, "\(text)")
        #expect(text.contains { $0.contains("timeout must be a duration") }, "\(text)")
    }

    @Test func environmentFilesPastTheByteBudgetAreNotRead() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        // One file under several paths: each path is parsed, so each counts.
        let web = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
        for copy in ["a", "b", "c"] { try repo.write("environments/copy-\(copy).yaml", web.replacingOccurrences(of: "name: web", with: "name: copy-\(copy)")) }
        let commit = ObjectID(hex: try repo.commit("copies"))!
        var loader = ConfigLoader(repository: try repo.open())
        let git = try repo.open()
        var firstThree = 0
        for environment in try loader.environments(at: commit).prefix(3) {
            firstThree += try git.readFile(environment.file, at: commit)?.count ?? 0
        }
        loader.environmentBytesLimit = firstThree
        let loaded = try loader.environments(at: commit)
        #expect(loaded.prefix(3).allSatisfy { $0.isValid })
        let refused = loaded.dropFirst(3).map { $0.diagnostics.map(\.description) }
        #expect(!refused.isEmpty && refused.allSatisfy { $0.count == 1 && $0[0].contains("hold more than \(loader.environmentBytesLimit) bytes together") }, "\(refused)")
    }

    @Test func hugeNamesAndManyUnknownFieldsGiveBoundedDiagnostics() throws {
        let longName = String(repeating: "x", count: 100_000)
        let unknown = (0..<5_000).map { "  field\($0): 1" }.joined(separator: "\n")
        let found = try problems(environment("  template: \(longName)\n  services:\n    web:\n      command: [a]\n      replicas: \(longName)\n\(unknown)\n"))
        #expect(found.count <= Diagnostic.maxReported + 1, "\(found.count)")
        #expect(found.last?.message.contains("more problems") == true, "\(found.suffix(2))")
        #expect(found.allSatisfy { $0.message.count <= Diagnostic.maxMessageLength + 10 })
    }
}
