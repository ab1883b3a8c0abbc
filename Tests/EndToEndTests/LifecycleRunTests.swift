import Foundation
import Testing
import TestSupport

/// Idle sleep, wake on request and autoscaling through the real router of a real `gantry run`,
/// with real processes.
@Suite(.serialized) struct LifecycleRunTests {
    func status(_ state: String, _ name: String) -> [String: Any]? {
        guard let result = try? gantry("status", "--state", state, "--json"), result.status == 0,
              let object = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let environments = object["environments"] as? [[String: Any]] else { return nil }
        return environments.first { $0["name"] as? String == name }
    }

    func phase(_ state: String, _ name: String) -> String? { status(state, name)?["phase"] as? String }

    func replicas(_ state: String, _ name: String) -> Int? {
        ((status(state, name)?["services"] as? [[String: Any]])?.first?["replicas"] as? Int)
    }

    func routerPort(_ state: String) -> Int? {
        (try? String(contentsOfFile: state + "/router.port", encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    func log(_ state: String) -> String {
        String(((try? String(contentsOfFile: state + "/run.log", encoding: .utf8)) ?? "no log").suffix(3000))
    }

    /// GET through the router with the route's Host: (status, body).
    func routed(_ port: Int, host: String, path: String = "/", timeout: Int = 40) -> (status: String, body: String) {
        let result = try? Shell.run(["curl", "-s", "-w", "\n%{http_code}", "--max-time", "\(timeout)", "-H", "Host: \(host)", "http://127.0.0.1:\(port)\(path)"])
        let text = result?.stdout ?? ""
        let status = String(text.split(separator: "\n").last ?? "")
        return (status, String(text.dropLast(status.count)))
    }

    @Test func anIdlePreviewSleepsAndARequestThroughTheRouterWakesIt() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.checkout("nap", create: true)
        let spec = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
        try repo.write("environments/web.yaml", spec.replacingOccurrences(of: "  template: python-web", with: "  template: python-web\n  lifecycle: {idleSleepAfter: 3s}"))
        try repo.commit("A preview that naps")
        try repo.checkout("main")
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "0.5", "--stop-on-exit",
                                     "--router-port", "0", "--no-api"], log: state.path + "/run.log")
        defer { run.terminate() }
        // Idle for 3 s: it sleeps, its process stops, production stays up.
        #expect(eventually(90) { phase(state.path, "web--nap") == "Sleeping" }, "\(log(state.path))")
        #expect(eventually(5) { !markedProcesses(state: state.path).contains { $0.mark == "web--nap:web" } })
        #expect(phase(state.path, "web") == "Running")
        let sleep = try #require(status(state.path, "web--nap")?["sleep"] as? [String: Any])
        #expect((sleep["reason"] as? String)?.contains("idle") == true)
        // A request through the router is held while it wakes, then answered.
        let port = try #require(routerPort(state.path))
        let started = Date()
        let answer = routed(port, host: "www.web--nap.localhost", path: "/hello")
        #expect(answer.status == "200" && answer.body.contains("hello from web--nap"), "\(answer) \(log(state.path))")
        #expect(Date().timeIntervalSince(started) < 10)
        #expect(markedProcesses(state: state.path).contains { $0.mark == "web--nap:web" })
        // By hand: asleep, then awake.
        let slept = try gantry("sleep", "web--nap", "--state", state.path)
        #expect(slept.status == 0 && (slept.stdout.contains("sleeps") || slept.stdout.contains("already")), "\(slept.stdout) \(slept.stderr)")
        #expect(phase(state.path, "web--nap") == "Sleeping")
        let woke = try gantry("wake", "web--nap", "--state", state.path)
        #expect(woke.status == 0 && woke.stdout.contains("awake"), "\(woke.stdout) \(woke.stderr)")
        // An environment that does not exist is refused by name; the records verify.
        let unknown = try gantry("sleep", "nope", "--state", state.path)
        #expect(unknown.status != 0 && unknown.stderr.contains("no environment nope"))
        let records = try gantry("audit", "log", "--repo", repo.path, "--env", "web--nap", "--json")
        #expect(records.stdout.contains("\"slept\"") && records.stdout.contains("\"woke\""))
        #expect(try gantry("audit", "verify", "--repo", repo.path, "--state", state.path).status == 0)
    }

    @Test func loadRaisesReplicasThroughTheRouterAndTheyFallWhenItStops() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("apps/slow/server.py", """
            import http.server, os, time
            class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    if self.path.startswith("/slow"): time.sleep(0.4)
                    body = ("port %s\\n" % os.environ["PORT"]).encode()
                    self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
                def log_message(self, *args): pass
            http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
            """)
        try repo.write("environments/burst.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: burst, team: payments, class: development}
            spec:
              services:
                web:
                  source: apps/slow
                  command: [python3, server.py]
                  health: {http: /healthz}
                  autoscale: {min: 0, max: 3, targetConcurrency: 2}
              routes:
                - {name: www, service: web}
            """)
        try repo.commitAsOwner("An autoscaled environment")
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "0.5", "--stop-on-exit",
                                     "--router-port", "0", "--no-api", "--scale-down-window", "3"], log: state.path + "/run.log")
        defer { run.terminate() }
        #expect(eventually(90) { phase(state.path, "burst") == "Running" }, "\(log(state.path))")
        let port = try #require(routerPort(state.path))
        // Idle with min 0: scaled to zero after the window.
        #expect(eventually(20) { replicas(state.path, "burst") == 0 }, "\(String(describing: status(state.path, "burst")))")
        // A load generator: 8 clients through the router for 8 s (up to 8 requests in flight).
        let load = Process()
        load.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        load.arguments = ["-c", """
            import threading, time, urllib.request
            seen = set(); stop = time.time() + 8
            def client():
                while time.time() < stop:
                    try:
                        request = urllib.request.Request("http://127.0.0.1:\(port)/slow", headers={"Host": "www.burst.localhost"})
                        seen.add(urllib.request.urlopen(request, timeout=30).read().decode().strip())
                    except Exception as e:
                        seen.add("error %s" % e)
            threads = [threading.Thread(target=client) for _ in range(8)]
            [t.start() for t in threads]; [t.join() for t in threads]
            print(sorted(seen))
            """]
        let output = Pipe()
        load.standardOutput = output
        try load.run()
        #expect(eventually(20) { replicas(state.path, "burst") == 3 }, "\(String(describing: status(state.path, "burst"))) \(log(state.path))")
        load.waitUntilExit()
        let seen = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        // The router spread the load: more than one replica's port answered, and nothing failed.
        #expect(!seen.contains("error") && seen.components(separatedBy: "port ").count > 2, "\(seen) \(log(state.path))")
        // Load gone: down after the window, to zero (min 0).
        #expect(eventually(30) { replicas(state.path, "burst") == 0 }, "\(String(describing: status(state.path, "burst")))")
        // A request wakes it from zero.
        let answer = routed(port, host: "www.burst.localhost")
        #expect(answer.status == "200" && answer.body.contains("port"), "\(answer)")
        let history = try gantry("status", "--state", state.path, "--env", "burst")
        #expect(history.stdout.contains("scaled"), "\(history.stdout)")
        let records = try gantry("audit", "log", "--repo", repo.path, "--env", "burst", "--json")
        #expect(records.stdout.contains("\"scaled\""), "reaching max is recorded")
    }
}
