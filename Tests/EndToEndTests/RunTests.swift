import Foundation
import Testing
import TestSupport

@Suite(.serialized) struct RunTests {
    func statusJSON(_ state: String) throws -> [[String: Any]] {
        let result = try gantry("status", "--state", state, "--json")
        guard result.status == 0, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let environments = object["environments"] as? [[String: Any]] else { return [] }
        return environments
    }

    func running(_ state: String) -> Set<String> {
        Set(((try? statusJSON(state)) ?? []).filter { $0["phase"] as? String == "Running" }.compactMap { $0["name"] as? String })
    }

    @Test func notifyWakesTheLoopAndStatusReportsServices() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        // A long poll interval: only `gantry notify` can make the second pass happen quickly.
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "60", "--stop-on-exit",
                                     "--router-port", "0"], log: state.path + "/run.log")
        #expect(eventually(90) { running(state.path) == ["web", "status-page"] },
                "\((try? String(contentsOfFile: state.path + "/run.log", encoding: .utf8))?.suffix(3000) ?? "no log")")
        try repo.checkout("feature", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("touch")
        let start = Date()
        #expect(eventually(5) { (try? gantry("notify", "--state", state.path).status) == 0 })
        #expect(eventually(20) { running(state.path).contains("web--feature") })
        #expect(Date().timeIntervalSince(start) < 20)
        let environments = try statusJSON(state.path)
        let preview = try #require(environments.first { $0["name"] as? String == "web--feature" })
        #expect(preview["branch"] as? String == "feature")
        #expect(preview["class"] as? String == "preview")
        let services = try #require(preview["services"] as? [[String: Any]])
        let url = try #require(services.first?["url"] as? String)
        #expect(httpGet(url)?.contains("hello from web--feature") == true)
        // The router serves the route by Host, forwarding the client's address.
        let routerPort = try #require(Int(try String(contentsOfFile: state.path + "/router.port", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)))
        let routes = try #require(preview["routes"] as? [[String: Any]])
        #expect(routes.first?["url"] as? String == "http://www.web--feature.localhost:\(routerPort)")
        let routed = try Shell.run(["curl", "-s", "--max-time", "3", "-H", "Host: www.web--feature.localhost:\(routerPort)",
                                    "http://127.0.0.1:\(routerPort)/hello"])
        #expect(routed.stdout.contains("hello from web--feature") && routed.stdout.contains("/hello"), "\(routed.stdout)")
        let unknown = try Shell.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                                     "-H", "Host: nope.localhost", "http://127.0.0.1:\(routerPort)/"])
        #expect(unknown.stdout == "404")
        // A backend that is down gets a page naming the environment and why.
        for (pid, mark) in markedProcesses(state: state.path) where mark == "web--feature:web" { kill(-pid, SIGKILL); kill(pid, SIGKILL) }
        #expect(eventually(5) {
            let page = (try? Shell.run(["curl", "-s", "--max-time", "3", "-H", "Host: www.web--feature.localhost",
                                        "http://127.0.0.1:\(routerPort)/"]))?.stdout ?? ""
            return page.contains("502 No healthy backend") && page.contains("Environment web--feature")
        })
        #expect((preview["conditions"] as? [String]) == [])
        run.terminate()
        #expect(markedProcesses(state: state.path).isEmpty)
        // Stopped with --stop-on-exit: status says so rather than pretending the services run.
        let after = try #require(try statusJSON(state.path).first { $0["name"] as? String == "web--feature" })
        #expect((after["conditions"] as? [String]) == ["Unhealthy"])
        #expect(((after["services"] as? [[String: Any]])?.first?["phase"] as? String) == "Stopped")
    }

    /// SIGTERM while an apply is under way: Gantry lets it finish and records it before it exits,
    /// so the audit log ends with what runs (nothing is left half-applied and unrecorded).
    @Test func aStopLetsTheApplyUnderWayFinishAndRecordsIt() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "60", "--stop-on-exit",
                                     "--router-port", "0"], log: state.path + "/run.log")
        #expect(eventually(90) { running(state.path) == ["web", "status-page"] })
        // A preview whose service takes 3 s to listen: its apply is under way for that long.
        try repo.checkout("agents/slow", create: true)
        let server = try String(contentsOfFile: repo.path + "/apps/hello/server.py", encoding: .utf8)
        try repo.write("apps/hello/server.py", "import time\ntime.sleep(3)\n" + server)
        let commit = try repo.commit("A slow start")
        let applying = eventually(20, interval: 0.05) {
            ((try? statusJSON(state.path)) ?? []).contains {
                $0["name"] as? String == "web--agents-slow" && (($0["conditions"] as? [String]) ?? []).contains("Applying")
            }
        }
        try #require(applying, "\((try? String(contentsOfFile: state.path + "/run.log", encoding: .utf8))?.suffix(2000) ?? "")")
        let stopped = Date()
        run.terminate()
        #expect(Date().timeIntervalSince(stopped) < 30)
        // The apply finished before the exit, and its record is written.
        let note = try Shell.run(["git", "-C", repo.path, "notes", "--ref=gantry", "show", commit]).stdout
        #expect(note.contains("event: applied") && note.contains("environment: web--agents-slow"), "\(note)")
        let preview = try #require(try statusJSON(state.path).first { $0["name"] as? String == "web--agents-slow" })
        #expect(preview["appliedCommit"] as? String == commit)
        #expect(!((preview["conditions"] as? [String]) ?? []).contains("Applying"), "\(preview)")
    }

    /// A push to a local repository wakes Gantry by itself (inotify on its refs): with a poll of
    /// a minute and no `gantry notify`, a new branch is served within seconds, and so is a branch
    /// name with slashes made after Gantry started.
    @Test func aPushIsSeenWithoutNotifyOrPoll() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "60", "--stop-on-exit",
                                     "--router-port", "0"], log: state.path + "/run.log")
        defer { run.terminate() }
        #expect(eventually(90) { running(state.path) == ["web", "status-page"] })
        try repo.checkout("agents/new/topic", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("touch")
        let start = Date()
        #expect(eventually(20) { running(state.path).contains("web--agents-new-topic") },
                "\((try? String(contentsOfFile: state.path + "/run.log", encoding: .utf8))?.suffix(2000) ?? "")")
        #expect(Date().timeIntervalSince(start) < 20)
    }

    /// Environments reach one another through routes only: the router (at the gateway, given in
    /// `GANTRY_ROUTER`) serves another environment's route by Host; its service's own address does
    /// not answer them (as root, where each environment has a network of its own).
    @Test func anEnvironmentReachesAnotherThroughItsRouteOnly() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("apps/caller/caller.py", """
            import http.server, os, urllib.parse, urllib.request
            class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                    if "host" in query:
                        request = urllib.request.Request(os.environ.get("GANTRY_ROUTER", "http://no-router") + "/", headers={"Host": query["host"][0]})
                    else:
                        request = urllib.request.Request(query["url"][0])
                    try:
                        body = urllib.request.urlopen(request, timeout=3).read()
                    except Exception as e:
                        body = ("failed: %s" % e).encode()
                    self.send_response(200); self.end_headers(); self.wfile.write(body)
                def log_message(self, *args): pass
            http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
            """)
        try repo.write("environments/caller.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: caller, class: development}
            spec:
              services:
                web: {source: apps/caller, command: [python3, caller.py]}
            """)
        try repo.commitAsOwner("an environment that calls another")
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "0.5", "--stop-on-exit",
                                     "--router-port", "0"], log: state.path + "/run.log")
        defer { run.terminate() }
        #expect(eventually(90) { running(state.path).isSuperset(of: ["web", "caller"]) },
                "\((try? gantry("status", "--state", state.path).stdout) ?? "")")
        let environments = try statusJSON(state.path)
        func url(_ name: String) throws -> String {
            try #require((environments.first { $0["name"] as? String == name }?["services"] as? [[String: Any]])?.first?["url"] as? String)
        }
        let caller = try url("caller"), web = try url("web")
        // Through the route: production answers.
        #expect(eventually(10) { httpGet(caller + "/?host=www.web.localhost")?.contains("hello from web") == true },
                "\(httpGet(caller + "/?host=www.web.localhost") ?? "no answer")")
        if getuid() == 0 {
            // Directly, at production's own address: nothing answers.
            let direct = httpGet(caller + "/?url=" + (web + "/").addingPercentEncoding(withAllowedCharacters: .alphanumerics)!) ?? ""
            #expect(direct.hasPrefix("failed"), "\(direct)")
        }
    }

    @Test func announceRoutesPrintsEachRouteOnceItAnswers() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let log = state.path + "/run.log"
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "0.5", "--stop-on-exit",
                                     "--router-port", "0", "--announce-routes"], log: log)
        func printed() -> [String] {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains(" is up: ") }.map(String.init)
        }
        #expect(eventually(60) { printed().count == 2 })
        let port = try #require(try? String(contentsOfFile: state.path + "/router.port", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(printed().contains("web is up: http://www.web.localhost:\(port)/"), "\(printed())")
        let routed = try Shell.run(["curl", "-s", "--max-time", "3", "-H", "Host: www.web.localhost:\(port)", "http://127.0.0.1:\(port)/"])
        #expect(routed.stdout.contains("hello from web"))
        Thread.sleep(forTimeInterval: 1.5)
        #expect(printed().count == 2, "each URL is printed once")
        run.terminate()
    }

    @Test func killDashNineAtAnyMomentThenRestartConverges() throws {
        let repo = try TestRepository()
        try repo.seedExample(previews: "{ttl: 72h, idleSleepAfter: 30m, maxPerTeam: 100, maxPerAgent: 100}")
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let arguments = ["run", "--repo", repo.path, "--state", state.path, "--interval", "0.1"]
        var expected: Set<String> = ["web", "status-page"]
        for round in 0..<4 {
            let run = try GantryProcess(arguments, log: state.path + "/run.log")
            // Change something so the killed run is busy: a new preview branch each round.
            try repo.checkout("main")
            try repo.checkout("round-\(round)", create: true)
            try repo.write("apps/hello/ROUND", "\(round)")
            try repo.commit("round \(round)")
            expected.formUnion(["web--round-\(round)", "status-page--round-\(round)"])
            if round == 2 {
                // Deleting a branch mid-flight must still end with its previews gone.
                try repo.checkout("main")
                try repo.git("branch", "-D", "round-1")
                expected.subtract(["web--round-1", "status-page--round-1"])
            }
            Thread.sleep(forTimeInterval: Double([0.05, 0.3, 0.6, 1.2][round]))
            run.kill9()
        }
        let run = try GantryProcess(arguments + ["--stop-on-exit"], log: state.path + "/run.log")
        // Converged: every desired environment Running, and nothing else left (the sweep of deleted
        // branches ends the pass, after the changed branches are applied). (Up to 2 minutes: on a
        // loaded 2-core machine, the suite's other runs share it.)
        #expect(eventually(120) {
            let listed = ((try? statusJSON(state.path)) ?? []).compactMap { $0["name"] as? String }
            return running(state.path) == expected && Set(listed) == expected
        }, "running: \(running(state.path)) want \(expected); \(((try? statusJSON(state.path)) ?? []).map { "\($0["name"] ?? "") \($0["phase"] ?? "") \($0["conditions"] ?? "") \($0["message"] ?? "")" }) \(((try? String(contentsOfFile: state.path + "/run.log", encoding: .utf8)) ?? "").suffix(3000))")
        // Exactly one process per desired service, no orphans and no duplicates.
        #expect(eventually(10) {
            let marks = markedProcesses(state: state.path).map(\.mark)
            return marks.count == expected.count && Set(marks) == Set(expected.map { "\($0):web" })
        }, "processes: \(markedProcesses(state: state.path).map(\.mark).sorted())")
        let listed = try statusJSON(state.path)
        #expect(Set(listed.compactMap { $0["name"] as? String }) == expected,
                "\(listed.map { "\($0["name"] ?? "") \($0["phase"] ?? "") \($0["message"] ?? "")" })")
        for environment in listed {
            let url = try #require((environment["services"] as? [[String: Any]])?.first?["url"] as? String)
            #expect(httpGet(url) != nil, "\(environment["name"] ?? "") does not serve")
        }
        let verify = try gantry("audit", "verify", "--state", state.path)
        #expect(verify.status == 0, "\(verify.stdout)")
        run.terminate()
        #expect(markedProcesses(state: state.path).isEmpty)
    }

    @Test func auditVerifyFailsOnATamperedLog() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let once = try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--stop-on-exit")
        #expect(once.status == 0, "\(once.stderr)")
        #expect(try gantry("audit", "verify", "--state", state.path).status == 0)
        let log = try gantry("audit", "log", "--state", state.path, "--json", "--env", "web").stdout
        let records = try #require((try JSONSerialization.jsonObject(with: Data(log.utf8)) as? [String: Any])?["records"] as? [[String: Any]])
        #expect(records.map { $0["event"] as? String } == ["applied", "admitted"])
        let head = try repo.git("rev-parse", "HEAD")
        let note = try repo.git("notes", "--ref=gantry", "show", head)
        try repo.git("notes", "--ref=gantry", "add", "-f", "-m", note.replacingOccurrences(of: "decision: allow", with: "decision: deny"), head)
        let verify = try gantry("audit", "verify", "--state", state.path)
        #expect(verify.status == 1)
        #expect(verify.stdout.contains("bad signature"))
    }

    @Test func mirrorsARemoteAndPublishesTheAuditNotesThere() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.checkout("feature", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("touch")
        let remote = TemporaryDirectory()
        try Shell.check(["git", "clone", "-q", "--bare", repo.path, remote.path + "/config.git"])
        let url = "file://\(remote.path)/config.git"
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let first = try gantry("run", "--repo", url, "--state", state.path, "--once")
        #expect(first.status == 0, "\(first.stderr)")
        #expect(running(state.path) == ["web", "status-page", "web--feature", "status-page--feature"])
        let notes = try Shell.check(["git", "-C", remote.path + "/config.git", "notes", "--ref=gantry", "list"])
        #expect(notes.split(separator: "\n").count == 2)
        // The branch is deleted on the remote: the next pass fetches, prunes and destroys its previews.
        try Shell.check(["git", "-C", remote.path + "/config.git", "branch", "-D", "feature"])
        let second = try gantry("run", "--repo", url, "--state", state.path, "--once", "--stop-on-exit")
        #expect(second.status == 0, "\(second.stderr)")
        #expect(!running(state.path).contains("web--feature"))
        let log = try gantry("audit", "log", "--state", state.path).stdout
        #expect(log.contains("destroyed web--feature"))
        // Anyone with the remote verifies it: audit verify reads the mirror, refreshed from the remote.
        #expect(try gantry("audit", "verify", "--repo", url, "--state", state.path).status == 0)
    }

    @Test func thePostReceiveHookFromDeployWakesGantryOnPush() throws {
        let seed = try TestRepository()
        try seed.seedExample()
        let server = TemporaryDirectory()
        let bare = server.path + "/config.git"
        try Shell.check(["git", "clone", "-q", "--bare", seed.path, bare])
        let hook = bare + "/hooks/post-receive"
        try FileManager.default.copyItem(atPath: TestPaths.packageRoot.appendingPathComponent("deploy/post-receive").path, toPath: hook)
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let run = try GantryProcess(["run", "--repo", bare, "--state", state.path, "--interval", "60", "--stop-on-exit"],
                                    log: state.path + "/run.log")
        #expect(eventually(90) { running(state.path) == ["web", "status-page"] })
        // An agent clones, commits on a branch and pushes; only the hook can wake Gantry this soon.
        try Shell.check(["git", "clone", "-q", bare, server.path + "/work"])
        let work = server.path + "/work"
        try Shell.check(["git", "-C", work, "checkout", "-q", "-b", "agents/hook"])
        try "x".write(toFile: work + "/apps/hello/NOTE", atomically: true, encoding: .utf8)
        try Shell.check(["git", "-C", work, "add", "-A"])
        try Shell.check(["git", "-C", work, "-c", "gpg.format=ssh", "-c", "user.signingkey=\(seed.keyPath)", "commit", "-S", "-q", "-m", "touch"])
        var environment = Shell.gitEnvironment
        environment["PATH"] = TestPaths.packageRoot.appendingPathComponent(".build/debug").path + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        environment["GANTRY_STATE"] = state.path
        let push = try Shell.run(["git", "-C", work, "push", "-q", "origin", "agents/hook"], environment: environment)
        #expect(push.status == 0, "\(push.stderr)")
        #expect(eventually(20) { running(state.path).contains("web--agents-hook") })
        run.terminate()
    }
}
