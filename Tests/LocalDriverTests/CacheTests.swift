import Foundation
import Testing
import TestSupport
@testable import LocalDriver
@testable import Reconciler
import StateStore

/// Real redis-server per environment.
@Suite(.serialized) struct CacheTests {
    func redisURL(servicePid: Int32?) throws -> String {
        try #require(processEnvironmentVariable(pid: servicePid, "REDIS_URL"))
    }

    @Test func eachEnvironmentGetsItsOwnPasswordProtectedRedis() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("environments/cachey.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: cachey, team: payments, class: staging}
            spec:
              template: python-web
              caches:
                sessions: {engine: redis}
              services:
                web:
                  env: {REDIS_URL: "${caches.sessions.url}"}
            """)
        try repo.commit("an environment with a cache")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("cachey"))
        let url = try redisURL(servicePid: try harness.service("cachey")?.pid)
        #expect(url.hasPrefix("redis://default:") && url.contains("@127.0.0.1:"))
        #expect(try Shell.check(try harness.inEnvironment("cachey", ["redis-cli", "-u", url, "ping"])).contains("PONG"))
        let cache = try #require(try harness.service("cachey", "redis:sessions"))
        // Without the password: refused. The password is on no command line and in no file Gantry wrote.
        let anonymous = try Shell.run(try harness.inEnvironment("cachey", ["redis-cli", "-p", String(cache.port), "ping"]))
        #expect(anonymous.stdout.contains("NOAUTH"))
        let password = String(url.dropFirst("redis://default:".count).prefix { $0 != "@" })
        let cmdline = String(decoding: FileManager.default.contents(atPath: "/proc/\(cache.pid!)/cmdline") ?? Data(), as: UTF8.self)
        #expect(!cmdline.contains(password))
        #expect(try Shell.run(["grep", "-r", "-l", "-a", password, harness.stateDirectory.path, repo.path + "/.git"]).status == 1)
        // Bounded: the cache (which states no memory) gets the default limit and evicts within
        // three quarters of it, so no environment takes the host's memory; the service keeps the
        // 64 MiB its template states.
        let memoryInfo = try Shell.check(try harness.inEnvironment("cachey", ["redis-cli", "-u", url, "--no-auth-warning", "info", "memory"]))
        #expect(memoryInfo.contains("maxmemory:\(LocalDriver.Options().defaultMemory / 4 * 3)\r") && memoryInfo.contains("maxmemory_policy:allkeys-lru"), "\(memoryInfo)")
        let lifted = try Shell.run(try harness.inEnvironment("cachey", ["redis-cli", "-u", url, "--no-auth-warning", "config", "set", "maxmemory", "0"]))
        #expect(lifted.stdout.contains("ERR unknown command"), "the environment cannot lift the bound: \(lifted.stdout)")
        if case .v1(let directories) = harness.driver.cgroups.layout, let memory = directories["memory"] {
            // The environment as a whole: what its units may use together, and once more for its jobs
            // and exec (what it leaves in /dev/shm stays charged to it).
            for (unit, bytes) in [("redis-sessions", 512 << 20), ("web", 64 << 20), ("", (64 << 20) + (512 << 20) + (512 << 20))] {
                let limit = try String(contentsOfFile: "\(memory)/cachey/\(unit)/memory.limit_in_bytes", encoding: .utf8)
                #expect(Int(limit.trimmingCharacters(in: .whitespacesAndNewlines)) == bytes, "\(unit)")
            }
        }

        // Drift: a killed redis comes back on the next pass, with the same password.
        kill(cache.pid!, SIGKILL)
        #expect(eventually(5) { !isRunning(cache.pid) })
        try harness.pass()
        #expect(eventually(10) { (try? Shell.check(try harness.inEnvironment("cachey", ["redis-cli", "-u", url, "ping"])))?.contains("PONG") == true })

        // A preview gets its own cache.
        try repo.checkout("agents/cache", create: true)
        try repo.write("environments/cachey.yaml", try String(contentsOfFile: repo.path + "/environments/cachey.yaml", encoding: .utf8) + "# preview\n")
        try repo.commit("preview the cache environment")
        try harness.pass()
        let previewURL = try redisURL(servicePid: try harness.service("cachey--agents-cache")?.pid)
        #expect(previewURL != url)
        #expect(try Shell.check(try harness.inEnvironment("cachey--agents-cache", ["redis-cli", "-u", previewURL, "ping"])).contains("PONG"))

        // Teardown stops the preview's redis and forgets its password.
        let previewCache = try #require(try harness.service("cachey--agents-cache", "redis:sessions"))
        try repo.checkout("main")
        try repo.git("branch", "-D", "agents/cache")
        try harness.pass()
        #expect(!isRunning(previewCache.pid))
        #expect(try harness.secrets.list().contains { $0.scope.contains("cachey--agents-cache") } == false)
    }
}
