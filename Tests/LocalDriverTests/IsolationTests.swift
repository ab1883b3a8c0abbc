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
    /// A service that does what an agent's code would try: read a path, or leave a detached process behind.
    static let probe = """
        import http.server, os, subprocess, urllib.parse
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path == "/read":
                    try:
                        with open(query["path"][0], "rb") as f: body, code = f.read(4096), 200
                    except OSError as e: body, code = str(e).encode(), 403
                elif url.path == "/detach":
                    # A grandchild in a session of its own, re-parented to init: not in the service's group.
                    out = subprocess.run(["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & echo $!"], capture_output=True, text=True)
                    body, code = out.stdout.strip().encode(), 200
                else:
                    body, code = b"probe", 200
                self.send_response(code); self.end_headers(); self.wfile.write(body)
            def log_message(self, *args): pass
        http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
        """

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
        try repo.write("apps/probe/probe.py", Self.probe)
        try repo.write("environments/probe.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: probe, class: development}
            spec:
              services:
                web:
                  source: apps/probe
                  command: [python3, probe.py]
                  health: {http: /}
            """)
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
        func read(_ path: String) -> String? { httpGet("http://127.0.0.1:\(probe.port)/read?path=\(path.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)") }
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

        // A detached grandchild, re-parented away from the service's process group...
        let detached = try #require(httpGet("http://127.0.0.1:\(probe.port)/detach").flatMap { Int32($0) })
        #expect(eventually(5) { uid(of: detached) == probeUID })
        #expect(getpgid(detached) != probe.pid)
        // ...is gone when the branch is.
        try repo.checkout("main")
        try repo.git("branch", "-D", "agents/probe")
        #expect(try harness.pass().destroyed.contains(name))
        #expect(eventually(5) { uid(of: detached) == nil }, "the detached process \(detached) survived teardown")
        #expect(ProcessControl.processes(ownedBy: uid_t(probeUID)).isEmpty)
        // Production was never disturbed.
        #expect(try harness.get("web")?.contains("hello from web") == true)
    }
}
