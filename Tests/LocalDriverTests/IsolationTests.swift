import Foundation
import Testing
import TestSupport
@testable import LocalDriver
@testable import Reconciler
import StateStore

/// A preview's code, as root runs it: its own user, unable to read production's environment,
/// Gantry's state and keys, or another environment's files; nothing of it survives teardown.
@Suite(.serialized, .enabled(if: getuid() == 0, "per-environment users need root (CI runs as root)"))
struct IsolationTests {
    /// A service that does what an agent's code would try: read a path, leave a detached process
    /// behind, connect somewhere, or listen on another's port.
    static let probe = """
        import http.server, os, socket, subprocess, threading, urllib.parse
        class Impostor(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"impostor")
            def log_message(self, *args): pass
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path == "/read":
                    try:
                        with open(query["path"][0], "rb") as f: body, code = f.read(4096), 200
                    except OSError as e: body, code = str(e).encode(), 403
                elif url.path == "/eat":
                    hog = bytearray(int(query["mb"][0]) << 20)
                    for i in range(0, len(hog), 4096): hog[i] = 1
                    body, code = b"ate", 200
                elif url.path == "/detach":
                    # A grandchild in a session of its own, re-parented to init: not in the service's group.
                    out = subprocess.run(["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & echo $!"], capture_output=True, text=True)
                    body, code = out.stdout.strip().encode(), 200
                elif url.path == "/connect":
                    try:
                        socket.create_connection((query["host"][0], int(query["port"][0])), timeout=2).close()
                        body, code = b"connected", 200
                    except OSError as e: body, code = ("failed: %s" % e).encode(), 200
                elif url.path == "/listen":
                    try:
                        server = http.server.HTTPServer(("0.0.0.0", int(query["port"][0])), Impostor)
                        threading.Thread(target=server.serve_forever, daemon=True).start()
                        body, code = b"listening", 200
                    except OSError as e: body, code = ("failed: %s" % e).encode(), 200
                else:
                    body, code = b"probe", 200
                self.send_response(code); self.end_headers(); self.wfile.write(body)
            def log_message(self, *args): pass
        http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
        """

    /// The probe as an environment's only service, with the given `resources` (flow YAML).
    func writeProbe(_ repo: TestRepository, environment: String, resources: String) throws {
        try repo.write("apps/probe/probe.py", Self.probe)
        try repo.write("environments/\(environment).yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: \(environment), class: development}
            spec:
              services:
                web:
                  source: apps/probe
                  command: [python3, probe.py]
                  health: {http: /}
                  resources: \(resources)
            """)
    }

    /// An HTTP server the host runs on all its addresses (on a free port), answering from the host.
    func startHostServer() throws -> (Process, Int) {
        let port = try ProcessControl.freePort(excluding: [])
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        server.arguments = ["-m", "http.server", String(port), "--bind", "0.0.0.0"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        #expect(eventually(10) { httpGet("http://127.0.0.1:\(port)/") != nil })
        return (server, port)
    }

    /// (SIGKILL: the test process's children may inherit a mask that blocks SIGTERM.)
    func stop(_ server: Process) {
        kill(server.processIdentifier, SIGKILL)
        server.waitUntilExit()
    }

    func uid(of pid: Int32?) -> Int? {
        guard let pid, let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
        return Int(line.split(whereSeparator: { $0 == "\t" || $0 == " " })[1])
    }

    @Test func aPreviewRunsAsItsOwnUserReadsNothingOfOthersAndLeavesNothingRunning() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("web"))
        let web = try #require(try harness.service("web"))

        try repo.checkout("agents/probe", create: true)
        try writeProbe(repo, environment: "probe", resources: "{memory: 96Mi, cpu: 0.5}")
        try repo.commit("a probe")
        let summary = try harness.pass()
        let name = "probe--agents-probe"
        let message = try harness.environment(name)?.message ?? ""
        #expect(summary.applied.contains(name), "\(summary) \(message)")
        let probe = try #require(try harness.service(name))

        // Its own user: not root, not production's.
        let probeUID = try #require(uid(of: probe.pid))
        let webUID = try #require(uid(of: web.pid))
        #expect(probeUID != 0 && webUID != 0 && probeUID != webUID)
        func read(_ path: String) -> String? { httpGet(harness.url(probe) + "/read?path=\(path.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)") }
        // It reads its own files and the system's...
        #expect(read(probe.workdir! + "/probe.py")?.contains("http.server") == true)
        #expect(read("/etc/os-release")?.contains("Permission denied") == false)
        // ...and nothing of production's or Gantry's.
        let state = harness.stateDirectory.path
        for path in ["/proc/\(web.pid!)/environ", web.workdir! + "/server.py", state + "/envs/web/logs/web.log", state + "/gantry.db",
                     state + "/keys/secrets.key", state + "/keys/gantry_ed25519", state + "/envs/web/jobs.json"] {
            let answer = read(path) ?? ""
            #expect(answer.contains("Permission denied"), "the preview read \(path): \(answer)")
        }
        // The state directory lists nothing to it, and its database and keys are Gantry's alone.
        var info = stat()
        #expect(stat(state, &info) == 0 && info.st_mode & 0o777 == 0o711)
        #expect(stat(state + "/gantry.db", &info) == 0 && info.st_mode & 0o077 == 0)
        #expect(stat(state + "/keys", &info) == 0 && info.st_mode & 0o077 == 0)

        // Its own control group, with the spec's limits (cgroup v1 here; v2 where mounted).
        let groups = try String(contentsOfFile: "/proc/\(probe.pid!)/cgroup", encoding: .utf8)
        #expect(groups.contains("/gantry-\(harness.driver.instance)/\(name)/web"), "\(groups)")
        if case .v1(let directories) = harness.driver.cgroups.layout, let memory = directories["memory"] {
            let limit = try String(contentsOfFile: "\(memory)/\(name)/web/memory.limit_in_bytes", encoding: .utf8)
            #expect(Int(limit.trimmingCharacters(in: .whitespacesAndNewlines)) == 96 << 20)
            let quota = try String(contentsOfFile: "\(directories["cpu"]!)/\(name)/web/cpu.cfs_quota_us", encoding: .utf8)
            #expect(quota.trimmingCharacters(in: .whitespacesAndNewlines) == "50000")
        }

        // A detached grandchild, re-parented away from the service's process group...
        let detached = try #require(httpGet(harness.url(probe) + "/detach").flatMap { Int32($0) })
        #expect(eventually(5) { uid(of: detached) == probeUID })
        #expect(eventually(5) { getpgid(detached) != probe.pid }, "the detached process never left the service's group")
        // ...stays in the group (it cannot move itself out).
        #expect(((try? String(contentsOfFile: "/proc/\(detached)/cgroup", encoding: .utf8)) ?? "").contains("/\(name)/web"))
        // Files it leaves in the host's shared places (here written as its user, in its network)...
        let leftovers = ["/tmp/gantry-leftover-\(probeUID)", "/dev/shm/gantry-leftover-\(probeUID)"]
            + (FileManager.default.fileExists(atPath: "/run/lock") ? ["/run/lock/gantry-leftover-\(probeUID)"] : [])
        for path in leftovers { #expect(try Shell.run(try harness.inEnvironment(name, ["sh", "-c", "echo mine > \(path)"])).status == 0) }
        #expect(leftovers.allSatisfy { FileManager.default.fileExists(atPath: $0) })
        // ...are gone when the branch is, with the detached process.
        try repo.checkout("main")
        try repo.git("branch", "-D", "agents/probe")
        #expect(try harness.pass().destroyed.contains(name))
        #expect(eventually(5) { uid(of: detached) == nil }, "the detached process \(detached) survived teardown")
        #expect(ProcessControl.processes(ownedBy: uid_t(probeUID)).isEmpty)
        for path in leftovers { #expect(!FileManager.default.fileExists(atPath: path), "\(path) outlived its environment") }
        // The environment's groups are gone with it.
        for (_, path) in harness.driver.cgroups.directories(name) { #expect(!FileManager.default.fileExists(atPath: path), "\(path)") }
        // Production was never disturbed.
        #expect(try harness.get("web")?.contains("hello from web") == true)
    }

    /// A preview's code in its own network: it cannot reach production's service (by its address
    /// or by loopback), take production's port, reach the host's servers or the outside world; the
    /// router and health checks reach each environment at its own address; teardown removes the
    /// namespace, its link and its rules.
    @Test func aPreviewHasANetworkOfItsOwnAndReachesNoOneElse() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("web"))
        guard harness.driver.isolatesNetwork else {
            Issue.record("network namespaces are unavailable: \(harness.driver.networks.unavailable ?? "")")
            return
        }
        let web = try #require(try harness.service("web"))
        try repo.checkout("agents/probe", create: true)
        try writeProbe(repo, environment: "probe", resources: "{memory: 96Mi}")
        try repo.commit("a probe")
        let name = "probe--agents-probe"
        #expect(try harness.pass().applied.contains(name), "\(harness.diagnose(name))")
        let probe = try #require(try harness.service(name))
        let webAddress = LocalDriver.address(of: "web", in: harness.state)
        let probeAddress = LocalDriver.address(of: name, in: harness.state)
        #expect(webAddress != probeAddress && webAddress.hasPrefix("10.20") && probeAddress.hasPrefix("10.20"), "\(webAddress) \(probeAddress)")
        func ask(_ path: String) -> String { httpGet(harness.url(probe) + path) ?? "(no answer)" }
        func connect(_ host: String, _ port: Int) -> String { ask("/connect?host=\(host)&port=\(port)") }

        // Production's service: not at its address, not on the preview's loopback.
        #expect(connect(webAddress, web.port).hasPrefix("failed"))
        #expect(connect("127.0.0.1", web.port).hasPrefix("failed"))
        // Listening on production's port serves only the preview's own network: production answers for itself.
        #expect(ask("/listen?port=\(web.port)") == "listening")
        #expect(try harness.get("web")?.contains("hello from web") == true)
        #expect(httpGet("http://127.0.0.1:\(web.port)/") == nil, "production's port on the host's loopback answered")

        // A server the host runs on all its addresses: reachable from the host, not from the preview.
        let (server, port) = try startHostServer()
        defer { stop(server) }
        let hostEnd = Networks.addresses(index: Networks.index(of: try #require(try harness.driver.user(of: name)))).host
        for host in [Networks.gateway, hostEnd, "192.0.2.2"] {
            #expect(connect(host, port).hasPrefix("failed"), "the preview reached the host's server at \(host)")
        }
        // IPv6 loopback works inside (a server listening on "localhost" may pick ::1); the link has no IPv6.
        #expect(try Shell.run(try harness.inEnvironment(name, ["/usr/bin/python3", "-c", "import socket; socket.socket(socket.AF_INET6).bind(('::1', 0))"])).status == 0)
        // Bound to its link (SO_BINDTODEVICE, no route needed), a connection to the host still goes nowhere.
        let bound = try Shell.run(try harness.inEnvironment(name, ["/usr/bin/python3", "-c", """
            import socket
            s = socket.socket(); s.settimeout(2)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
            try: s.connect(("\(hostEnd)", \(port))); print("connected")
            except OSError as e: print("failed:", e)
            """]))
        #expect(bound.stdout.hasPrefix("failed"), "\(bound.stdout)\(bound.stderr)")
        // The outside world: no route at all (the egress proxy will be the way out).
        #expect(connect("8.8.8.8", 53).contains("unreachable"), "\(connect("8.8.8.8", 53))")

        // Teardown takes the namespace, its link and its rules.
        let uid = try #require(try harness.driver.user(of: name))
        #expect(FileManager.default.fileExists(atPath: "/run/netns/gantry-\(uid)"))
        try repo.checkout("main")
        try repo.git("branch", "-D", "agents/probe")
        #expect(try harness.pass().destroyed.contains(name))
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/gantry-\(uid)"))
        #expect(!FileManager.default.fileExists(atPath: "/sys/class/net/gantry\(uid)"))
        let hostTable = try Shell.check(["nft", "list", "table", "inet", harness.driver.networks.hostTable])
        #expect(!hostTable.contains("\"gantry\(uid)\""), "\(hostTable)")
        #expect(try harness.get("web")?.contains("hello from web") == true)
    }

    /// A Gantry killed half-way through making a network leaves a namespace and a link without
    /// their addresses and rules: the next apply completes it, and the service answers.
    @Test func aHalfMadeNetworkIsCompleted() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        guard harness.driver.isolatesNetwork else {
            Issue.record("network namespaces are unavailable: \(harness.driver.networks.unavailable ?? "")")
            return
        }
        let uid = try #require(try harness.driver.user(of: "web"))
        try Shell.check(["ip", "netns", "add", "gantry-\(uid)"])
        try Shell.check(["ip", "link", "add", "gantry\(uid)", "type", "veth", "peer", "name", "eth0", "netns", "gantry-\(uid)"])
        #expect(try harness.pass().applied.contains("web"), "\(harness.diagnose("web"))")
        #expect(try harness.get("web")?.contains("hello from web") == true)
    }

    /// Networks made before the router listened (a `gantry run --once`, an earlier Gantry) are
    /// opened to the router's port at the next pass, and only then; nothing else is opened.
    @Test func existingNetworksAreOpenedToTheRouterWhenItStarts() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        guard harness.driver.isolatesNetwork else {
            Issue.record("network namespaces are unavailable: \(harness.driver.networks.unavailable ?? "")")
            return
        }
        let uid = try #require(try harness.driver.user(of: "web"))
        func rules() throws -> String { try Shell.check(["nft", "list", "table", "inet", harness.driver.networks.hostTable]) }
        let before = try rules()
        #expect(!before.contains("48123") && before.contains("\"gantry\(uid)\""), "\(before)")
        harness.driver.routerPort = 48123
        _ = harness.driver.supervise()
        let opened = try rules()
        #expect(opened.contains("tcp dport 48123 accept") && opened.contains("ct count over \(Networks.connectionsPerPort)"), "\(opened)")
        // The links keep their place in the table when its rules are written again.
        #expect(opened.contains("\"gantry\(uid)\""), "\(opened)")
        // The namespace's own rules let the router's port out too.
        let inside = try Shell.check(Networks.entering(uid, ["nft", "list", "set", "ip", "gantry", "ports"]))
        #expect(inside.contains("48123"), "\(inside)")
        // When the router stops (gantry run exits, the services stay), its port is closed again, both sides.
        harness.driver.routerStopped()
        let closed = try rules()
        #expect(!closed.contains("48123") && closed.contains("\"gantry\(uid)\""), "\(closed)")
        let insideAfter = try Shell.check(Networks.entering(uid, ["nft", "list", "set", "ip", "gantry", "ports"]))
        #expect(!insideAfter.contains("48123"), "\(insideAfter)")
    }

    /// A firewall reload (`nft flush ruleset`) takes the host table away. Meanwhile the rules in
    /// the environment's own namespace keep it from the host's other ports; the next pass writes
    /// the table again with the link in its set; a Gantry restarted over the running service
    /// (adopted, not applied again) puts its link back at its first pass too.
    @Test func aFlushedHostTableIsWrittenAgainWithEveryLiveLink() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo) { $0.hostTableCheckInterval = 0 }
        try harness.pass()
        guard harness.driver.isolatesNetwork else {
            Issue.record("network namespaces are unavailable: \(harness.driver.networks.unavailable ?? "")")
            return
        }
        let uid = try #require(try harness.driver.user(of: "web"))
        let table = harness.driver.networks.hostTable
        func rules() -> String { (try? Shell.check(["nft", "list", "table", "inet", table])) ?? "(no table)" }
        #expect(rules().contains("\"gantry\(uid)\""), "\(rules())")

        // A server on all the host's addresses, and the web environment trying to reach it.
        let (server, port) = try startHostServer()
        defer { stop(server) }
        func reach(_ host: String) throws -> String {
            try Shell.run(try harness.inEnvironment("web", ["/usr/bin/python3", "-c", """
                import socket
                try: socket.create_connection(("\(host)", \(port)), timeout=2).close(); print("connected")
                except OSError as e: print("failed:", e)
                """])).stdout
        }
        let hostEnd = Networks.addresses(index: Networks.index(of: uid)).host
        #expect(try reach(Networks.gateway).hasPrefix("failed"))

        try Shell.check(["nft", "delete", "table", "inet", table])
        for host in [Networks.gateway, hostEnd] {
            let answer = try reach(host)
            #expect(answer.hasPrefix("failed"), "without the host table, the environment reached the host's server at \(host): \(answer)")
        }
        try harness.pass()
        #expect(rules().contains("\"gantry\(uid)\""), "\(rules())")
        #expect(try harness.get("web")?.contains("hello from web") == true)

        let running = try #require(try harness.service("web")?.pid)
        try Shell.check(["nft", "delete", "table", "inet", table])
        let restarted = try Harness(repo: repo, reusing: harness)
        restarted.reconciler.recover()
        try restarted.pass()
        #expect(try restarted.service("web")?.pid == running && kill(running, 0) == 0, "web was started again rather than adopted")
        #expect(rules().contains("\"gantry\(uid)\""), "\(rules())")
        #expect(try reach(Networks.gateway).hasPrefix("failed"))
        #expect(try restarted.get("web")?.contains("hello from web") == true)
    }

    /// The host table of a Gantry whose state directory is gone is removed by the next Gantry
    /// that starts (its rules would otherwise reach whoever gets its environments' uids); a live
    /// Gantry's table stays; a Gantry that stops everything takes its own table with it.
    @Test func hostTablesOfGoneStateDirectoriesAreRemovedAndLiveOnesKept() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let live = try Harness(repo: repo)
        try live.pass()
        guard live.driver.isolatesNetwork else {
            Issue.record("network namespaces are unavailable: \(live.driver.networks.unavailable ?? "")")
            return
        }
        let gone = "gantry_host_0ff1ce0ff1ce"
        try Shell.check(["nft", "-f", "-"], input: "table inet \(gone) {\n comment \"/tmp/gantry-gone-\(UUID().uuidString) 00112233445566778899aabbccddeeff\"\n set envs { type ifname; }\n}\n")
        defer { _ = try? Shell.run(["nft", "delete", "table", "inet", gone]) }
        let other = try Harness(repo: try TestRepository())
        let tables = try Shell.check(["nft", "list", "tables"])
        #expect(!tables.contains(gone), "\(tables)")
        #expect(tables.contains(live.driver.networks.hostTable), "\(tables)")
        _ = other
        live.driver.shutdown()
        #expect(try !Shell.check(["nft", "list", "tables"]).contains(live.driver.networks.hostTable))
    }

    /// Processes a killed Gantry left that nobody wants (a job under way, a service whose record
    /// was lost) are stopped at the next start, all of them at once: one grace period, then
    /// SIGKILL for those that ignore SIGTERM, rather than one grace period each.
    @Test func leftoverProcessesAreStoppedTogetherAtTheNextStart() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let first = try Harness(repo: repo) { $0.stopGrace = 2 }
        try first.pass()
        var leftovers: [Int32] = []
        for index in 0..<4 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
            process.arguments = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
            process.environment = ["PATH": "/usr/bin:/bin", "GANTRY_MARK": "\(first.driver.instance):gone-env:job-\(index)"]
            process.currentDirectoryURL = first.stateDirectory.url
            try process.run()
            leftovers.append(process.processIdentifier)
        }
        // (setsid makes each the leader of its group once it runs.)
        #expect(eventually(5) { leftovers.allSatisfy { getpgid($0) == $0 } })
        let restarted = try Harness(repo: repo, reusing: first) { $0.stopGrace = 2 }
        let start = Date()
        restarted.reconciler.recover()
        let took = Date().timeIntervalSince(start)
        for pid in leftovers { #expect(kill(pid, 0) != 0 || ProcessControl.identity(of: pid)?.state == "Z", "\(pid) still runs") }
        // One grace period (2 s) and the kill, not four of them in turn.
        #expect(took < 5, "recover took \(took) s")
        #expect(try restarted.get("web")?.contains("hello from web") == true)
    }

    /// A Gantry killed with SIGKILL leaves the groups of what it was running; the next start
    /// removes the empty ones and keeps those that hold adopted services.
    @Test func emptyGroupsLeftByAKilledGantryGoAtTheNextStart() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let first = try Harness(repo: repo)
        try first.pass()
        let leftovers = first.driver.cgroups.directories("gone-env", unit: "web").map(\.path)
        try #require(!leftovers.isEmpty, "no cgroup hierarchy: \(first.driver.cgroups.summary)")
        for path in leftovers { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
        let restarted = try Harness(repo: repo, reusing: first)
        restarted.reconciler.recover()
        for path in leftovers { #expect(!FileManager.default.fileExists(atPath: path), "\(path) stayed") }
        for (_, path) in restarted.driver.cgroups.directories("web", unit: "web") { #expect(FileManager.default.fileExists(atPath: path), "\(path) went") }
        #expect(try restarted.get("web")?.contains("hello from web") == true)
    }

    /// A state directory deleted while its Gantry was dead (kill -9, then rm -rf) leaves its
    /// environments running, networked, and its uids claimed: the next Gantry of the host stops
    /// them, removes their networks and gives the uids back.
    @Test func whatADeletedStateDirectoryLeftIsCollectedByTheNextGantry() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let first = try Harness(repo: repo)
        try first.pass()
        let web = try #require(try first.service("web"))
        let uid = try #require(try first.driver.user(of: "web"))
        #expect(isRunning(web.pid) && Networks.exists(uid))
        // Gone without a teardown (the first harness is not shut down before the next starts).
        let gone = first.stateDirectory.path
        try FileManager.default.removeItem(atPath: gone)
        #expect(isRunning(web.pid), "the service stopped before anything collected it")

        let next = try Harness(repo: repo)
        next.reconciler.recover()
        #expect(eventually(5) { !isRunning(web.pid) }, "the abandoned service \(web.pid) still runs")
        #expect(ProcessControl.processes(ownedBy: uid).isEmpty)
        #expect(!Networks.exists(uid), "its network stayed")
        let claim = (try? String(contentsOfFile: "/var/lib/gantry/uids/\(uid)", encoding: .utf8)) ?? ""
        #expect(!claim.hasPrefix(gone + "\n"), "its uid is still claimed for \(gone)")
    }

    /// `resources.memory` is a limit: a service that allocates past it is killed, not the host.
    @Test func aServiceThatAllocatesPastItsMemoryLimitIsKilled() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try writeProbe(repo, environment: "hog", resources: "{memory: 64Mi}")
        try repo.commit("a hungry service")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("hog"))
        let hog = try #require(try harness.service("hog"))
        #expect(httpGet(harness.url(hog) + "/eat?mb=16") == "ate")
        _ = httpGet(harness.url(hog) + "/eat?mb=256")
        #expect(eventually(10) { !isRunning(hog.pid) }, "a service past its 64 MiB limit kept running")
        // Supervision brings it back, inside its limit again.
        try harness.pass()
        #expect(eventually(10) { (try? harness.service("hog")).flatMap { $0 }.map { isRunning($0.pid) && $0.pid != hog.pid } == true })
    }

    /// A process that forks and exits over and over is always younger than any list of pids;
    /// the environment's control group is frozen first, so the chain stops with it.
    @Test func aForkAndExitChainDoesNotOutliveTeardown() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let marks = TemporaryDirectory("gantry-hopper").writableByEveryone()
        try repo.write("apps/hopper/app.py", """
            import os, time, http.server
            if os.fork() == 0:
                os.setsid()
                n = 0
                while True:
                    n += 1
                    if n % 500 == 0:
                        with open("\(marks.path)/heartbeat", "w") as f: f.write("%d %f" % (os.getpid(), time.time()))
                    if os.fork() != 0:
                        os._exit(0)
            http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), http.server.BaseHTTPRequestHandler).serve_forever()
            """)
        try repo.write("environments/hop.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: hop, class: development}
            spec:
              services:
                app: {source: apps/hopper, command: [python3, app.py]}
            """)
        try repo.commit("a hopper")
        let harness = try Harness(repo: repo)
        #expect(try harness.pass().applied.contains("hop"))
        let heartbeat = marks.path + "/heartbeat"
        #expect(eventually(10) { FileManager.default.fileExists(atPath: heartbeat) }, "the chain never started")
        let uid = try #require(try harness.state.allocations("uid", of: "hop").first.flatMap { uid_t($0) })
        try repo.remove("environments/hop.yaml")
        try repo.commitAsOwner("drop the hopper")
        #expect(try harness.pass().destroyed == ["hop"])
        #expect(ProcessControl.processes(ownedBy: uid).isEmpty, "the chain runs on as uid \(uid)")
        // What the uid left in /tmp went with it (the next holder of the uid finds nothing), and the
        // chain is not there to write it again.
        #expect(!FileManager.default.fileExists(atPath: heartbeat), "the heartbeat file of uid \(uid) stayed after teardown")
        Thread.sleep(forTimeInterval: 1.5)
        #expect(!FileManager.default.fileExists(atPath: heartbeat), "the heartbeat went on after teardown")
    }

    /// Two Gantry instances on one host (two state directories) never give one uid to two
    /// environments: the host registry arbitrates, and a claim whose state directory is gone is
    /// taken over.
    @Test func twoStateDirectoriesNeverShareAUid() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let registry = TemporaryDirectory("gantry-uids")
        let range = 300_000..<300_010
        var one: Harness? = try Harness(repo: repo, configure: { $0.uidRange = range; $0.uidRegistry = registry.path + "/uids" })
        let two = try Harness(repo: repo, configure: { $0.uidRange = range; $0.uidRegistry = registry.path + "/uids" })
        let first = try #require(try one!.driver.user(of: "victim"))
        let second = try #require(try two.driver.user(of: "spy"))
        #expect(first != second)
        #expect(try one!.driver.user(of: "victim") == first, "an environment keeps its uid")
        // The first instance goes away with its state directory: its claim is free again.
        let gone = one!.stateDirectory.path
        one = nil
        try? FileManager.default.removeItem(atPath: gone)
        #expect(!FileManager.default.fileExists(atPath: gone))
        #expect(try two.driver.user(of: "late") == first)
    }
}
