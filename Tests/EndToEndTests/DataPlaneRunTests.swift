import Foundation
import Testing
import TestSupport

/// The control plane (`gantry run`) and the data plane (`gantry agent`) as two processes on
/// loopback: an environment gantry.yaml puts on `agent` runs where the agent runs, with a secret
/// the control plane never holds; the kill switch reaches it and holds while the control plane is
/// gone; the control plane killed mid-apply picks up again; tampered and replayed plans are refused.
@Suite(.serialized) struct DataPlaneRunTests {
    static let secret = "sk_live_dataplane_e2e_9f8e7d6c5b4a"

    /// Writes the sha256 of its secret and a version, counts while it runs, answers health.
    static let server = #"""
        import hashlib, http.server, os, threading, time
        work = os.environ['WORK']
        with open(os.path.join(work, 'hash'), 'w') as f: f.write(hashlib.sha256(os.environ['STRIPE_KEY'].encode()).hexdigest())
        with open(os.path.join(work, 'version'), 'w') as f: f.write(os.environ['VERSION'])
        def tick():
            n = 0
            while True:
                n += 1
                with open(os.path.join(work, 'ticks'), 'w') as f: f.write(str(n))
                time.sleep(0.05)
        threading.Thread(target=tick, daemon=True).start()
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers(); self.wfile.write(b'ok')
            def log_message(self, *a): pass
        http.server.ThreadingHTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()
        """#

    func spec(version: String, work: String) -> String {
        """
        apiVersion: gantry/v1
        kind: Environment
        metadata: {name: shop, team: payments, class: development}
        spec:
          secrets: [stripe-key]
          services:
            web:
              source: apps/shop
              command: [python3, server.py]
              health: {http: /healthz}
              env: {STRIPE_KEY: "${secrets.stripe-key}", WORK: "\(work)", VERSION: "\(version)"}
        """
    }

    func read(_ path: String) -> String { ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines) }
    func ticks(_ work: String) -> Int { Int(read(work + "/ticks")) ?? -1 }

    /// Whether the counter stands still over `seconds` (the processes are frozen).
    func frozen(_ work: String, for seconds: Double = 1.0) -> Bool {
        let before = ticks(work)
        Thread.sleep(forTimeInterval: seconds)
        return before > 0 && ticks(work) == before
    }

    @Test func theAgentRunsItsEnvironmentWithSecretsThatNeverLeaveAndHoldsWithoutTheControlPlane() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let settings = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
        try repo.write("gantry.yaml", settings + "drivers: {development: agent}\n")
        let work = try TemporaryDirectory().writableByEveryone()
        try repo.write("apps/shop/server.py", Self.server)
        try repo.write("environments/shop.yaml", spec(version: "1", work: work.path))
        try repo.commitAsOwner("shop on the data plane")
        let control = TemporaryDirectory(), agentState = TemporaryDirectory()
        defer {
            killMarked(state: control.path)
            killMarked(state: agentState.path)
        }
        let token = control.path + "/dataplane.token"
        try "dp-\(UUID().uuidString)".write(toFile: token, atomically: true, encoding: .utf8)
        let apiPort = try freeLoopbackPort()
        let controlArguments = ["run", "--repo", repo.path, "--state", control.path, "--api", "127.0.0.1:\(apiPort)", "--no-router", "--no-egress",
                                "--data-plane-token-file", token, "--data-plane-timeout", "60", "--interval", "0.5"]
        var controlPlane: GantryProcess? = try GantryProcess(controlArguments, log: control.path + "/run.log")
        #expect(eventually(30) { FileManager.default.fileExists(atPath: control.path + "/keys/gantry_ed25519.pub") })

        // The secret is set where the workload runs, and only there.
        #expect(try gantry("secret", "set", "stripe-key", "--env", "shop", "--state", agentState.path, input: Self.secret).status == 0)
        let agentArguments = ["agent", "--control", "http://127.0.0.1:\(apiPort)", "--key", control.path + "/keys/gantry_ed25519.pub",
                              "--token-file", token, "--state", agentState.path, "--router-port", "0", "--interval", "0.3"]
        var agent: GantryProcess? = try GantryProcess(agentArguments, log: agentState.path + "/agent.log")
        defer {
            agent?.kill9()
            controlPlane?.kill9()
        }
        let expected = String(try Shell.check(["sha256sum"], input: Self.secret).prefix(64))
        #expect(eventually(90) { read(work.path + "/hash") == expected },
                "\(read(control.path + "/run.log").suffix(3000))\n---\n\(read(agentState.path + "/agent.log").suffix(3000))")
        #expect(eventually(30) { (try? gantry("status", "--state", control.path, "--env", "shop").stdout.contains("running")) == true },
                "\((try? gantry("status", "--state", control.path, "--env", "shop").stdout) ?? "")")

        // The agent's health reaches the control plane's status.
        #expect(eventually(15) { (try? gantry("status", "--state", control.path).stdout.contains("data plane: last heard from")) == true })
        let health = try gantry("status", "--state", control.path, "--json").stdout
        #expect(health.contains("\"dataPlane\"") && health.contains("\"lastSequence\""), "\(health.suffix(1500))")

        // The control plane never held the value: not in its state, its notes, its log.
        #expect(contents(under: control.path).range(of: Data(Self.secret.utf8)) == nil)
        #expect(!(try repo.git("log", "--all", "--notes=gantry", "--format=%N")).contains(Self.secret))
        #expect(!read(agentState.path + "/agent.log").contains(Self.secret))

        // The kill switch reaches the data plane and freezes what runs there.
        let kill = try gantry("kill", "--env", "shop", "--reason", "data plane drill", "--state", control.path, "--repo", repo.path)
        #expect(kill.status == 0, "\(kill.stderr)")
        #expect(eventually(20) { frozen(work.path, for: 0.6) }, "\(read(agentState.path + "/agent.log").suffix(2000))")

        // The control plane goes away: the switch holds, across a restart of the agent too.
        controlPlane?.kill9()
        controlPlane = nil
        #expect(frozen(work.path, for: 1.5))
        agent?.terminate()
        agent = try GantryProcess(agentArguments, log: agentState.path + "/agent.log")
        Thread.sleep(forTimeInterval: 2)
        #expect(frozen(work.path, for: 1.5), "\(read(agentState.path + "/agent.log").suffix(2000))")
        #expect(eventually(10) { read(agentState.path + "/agent.log").contains("the control plane cannot be reached") })

        // It comes back; a human with a role lifts the switch; the workload runs again.
        controlPlane = try GantryProcess(controlArguments, log: control.path + "/run.log")
        let lift = try gantry("kill", "--env", "shop", "--off", "--key", repo.ownerKeyPath, "--state", control.path, "--repo", repo.path)
        #expect(lift.status == 0, "\(lift.stderr)")
        #expect(eventually(30) { !frozen(work.path, for: 0.5) }, "\(read(agentState.path + "/agent.log").suffix(2000))")

        // A new revision; the control plane is killed once the agent is applying its plan.
        Thread.sleep(forTimeInterval: 1)
        let logged = read(agentState.path + "/agent.log").count
        try repo.write("environments/shop.yaml", spec(version: "2", work: work.path))
        let second = try repo.commitAsOwner("shop v2")
        #expect(eventually(60) { read(agentState.path + "/agent.log").dropFirst(logged).contains("applying plan") },
                "\(read(control.path + "/run.log").suffix(3000))")
        controlPlane?.kill9()
        controlPlane = nil
        #expect(eventually(60) { read(work.path + "/version") == "2" }, "\(read(agentState.path + "/agent.log").suffix(2000))")
        controlPlane = try GantryProcess(controlArguments, log: control.path + "/run.log")
        #expect(eventually(90) {
            let status = (try? gantry("status", "--state", control.path, "--env", "shop").stdout) ?? ""
            return status.contains("applied: revision \(second.prefix(7)) running")
        }, "\((try? gantry("status", "--state", control.path, "--env", "shop").stdout) ?? "")\n\(read(control.path + "/run.log").suffix(2000))")
        #expect(contents(under: control.path).range(of: Data(Self.secret.utf8)) == nil)
    }

    /// A control plane that hands out what an attacker would: a genuine plan (signed by OpenSSH's
    /// `ssh-keygen -Y sign` with the control key), the same plan altered, the genuine one again
    /// (a replay), one signed by another key, and a stale one. The agent accepts the first only.
    static let impostor = #"""
        import http.server, json, sys
        plans, reports = json.load(open(sys.argv[2])), sys.argv[3]
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({'plans': plans}).encode()
                self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
            def do_POST(self):
                n = int(self.headers.get('Content-Length') or 0); data = self.rfile.read(n)
                with open(reports, 'ab') as f: f.write(data + b'\n')
                self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers(); self.wfile.write(b'{}')
            def log_message(self, *a): pass
        http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
        """#

    @Test func tamperedReplayedForgedAndStalePlansAreRefused() throws {
        let directory = try TemporaryDirectory().writableByEveryone()
        let key = directory.path + "/control", forger = directory.path + "/forger"
        for path in [key, forger] { _ = try Shell.check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "control", "-f", path]) }
        func envelope(_ plan: String, signedWith signer: String) throws -> [String: String] {
            try plan.write(toFile: directory.path + "/plan.json", atomically: true, encoding: .utf8)
            try? FileManager.default.removeItem(atPath: directory.path + "/plan.json.sig")
            _ = try Shell.check(["ssh-keygen", "-Y", "sign", "-n", "gantry-plan", "-f", signer, directory.path + "/plan.json"])
            let signature = try String(contentsOfFile: directory.path + "/plan.json.sig", encoding: .utf8)
            return ["plan": Data(plan.utf8).base64EncodedString(), "signature": signature]
        }
        let now = Date().timeIntervalSince1970
        func switches(_ sequence: Int, issued: Double, held: String) -> String {
            #"{"action":"switches","environment":"","files":[],"issuedAt":\#(issued),"killSwitches":{\#(held)},"objects":{},"sequence":\#(sequence),"version":1}"#
        }
        let genuine = try envelope(switches(5, issued: now, held: ""), signedWith: key)
        var tampered = genuine
        tampered["plan"] = Data(switches(6, issued: now, held: #""shop":"lifted by nobody""#).utf8).base64EncodedString()
        let forged = try envelope(switches(7, issued: now, held: ""), signedWith: forger)
        let stale = try envelope(switches(8, issued: now - 7200, held: ""), signedWith: key)
        let plansFile = directory.path + "/plans.json", reportsFile = directory.path + "/reports.jsonl"
        try JSONSerialization.data(withJSONObject: [genuine, tampered, genuine, forged, stale]).write(to: URL(fileURLWithPath: plansFile))
        try Self.impostor.write(toFile: directory.path + "/impostor.py", atomically: true, encoding: .utf8)
        let port = try freeLoopbackPort()
        let impostor = SpawnedProcess()
        impostor.start(["python3", directory.path + "/impostor.py", "\(port)", plansFile, reportsFile])
        defer { impostor.stop() }
        let token = directory.path + "/token"
        try "dp-token-0123456789abcdef".write(toFile: token, atomically: true, encoding: .utf8)
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let agent = try GantryProcess(["agent", "--control", "http://127.0.0.1:\(port)", "--key", key + ".pub", "--token-file", token,
                                       "--state", state.path, "--no-router", "--interval", "0.3"], log: state.path + "/agent.log")
        defer { agent.kill9() }
        let reports = { () -> [[String: Any]] in
            self.read(reportsFile).split(separator: "\n").compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["reports"] as? [[String: Any]]
            }.flatMap { $0 }
        }
        // What the control plane signed (stale, replayed) is reported under its sequence; what
        // nobody signed (tampered, forged) claims no sequence, and shows in the health's events.
        let refusals = { Set(reports().compactMap { ($0["refused"] as? String)?.split(separator: ":").first.map(String.init) }) }
        let events = { () -> Set<String> in
            Set(self.read(reportsFile).split(separator: "\n").compactMap { line -> [[String: Any]]? in
                ((try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["health"] as? [String: Any])?["events"] as? [[String: Any]]
            }.flatMap { $0 }.filter { $0["kind"] as? String == "plan-refused" }.compactMap { ($0["message"] as? String)?.split(separator: ":").first.map(String.init) })
        }
        #expect(eventually(30) { refusals() == ["replayed", "stale"] && events() == ["tampered", "untrusted"] },
                "\(reports()) \(events()) \(self.read(state.path + "/agent.log").suffix(2000))")
        #expect(!reports().contains { $0["sequence"] as? Int == 6 || $0["sequence"] as? Int == 7 }, "no report stands for the claims of unsigned plans")
        #expect(reports().contains { $0["sequence"] as? Int == 5 && $0["ok"] as? Bool == true })
        let kept = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: state.path + "/agent.json"))) as? [String: Any]
        // Past the stale plan (8: signed, never to be carried out), not past the unsigned ones' claims.
        #expect(kept?["lastSequence"] as? Int == 8)
        #expect((kept?["switches"] as? [String: String])?.isEmpty == true, "the altered plan's switch was not taken")
    }

    /// Plain http to a control plane on another host is refused unless asked for: the token and
    /// the reports would cross the network unprotected.
    @Test func plainHTTPOffThisHostIsRefused() throws {
        let directory = TemporaryDirectory()
        try "dp-token-0123456789abcdef".write(toFile: directory.path + "/token", atomically: true, encoding: .utf8)
        _ = try Shell.check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", directory.path + "/control"])
        let refused = try gantry("agent", "--control", "http://10.9.8.7:7070", "--key", directory.path + "/control.pub",
                                 "--token-file", directory.path + "/token", "--state", directory.path + "/agent")
        #expect(refused.status != 0 && refused.stderr.contains("plain http to another host") && refused.stderr.contains("--allow-http"), "\(refused.stderr)")
    }
}
