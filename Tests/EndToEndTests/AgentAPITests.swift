import Audit
import Foundation
import Testing
import TestSupport

/// An agent's whole day through the API of a real `gantry run`, over HTTP with curl and again over
/// MCP with the `mcp` client from PyPI (both transports): create a preview from a template, wait
/// until it serves, run a test command in it, break it and read diagnose, destroy it; and the
/// audit log names the token's principal at every step. Every HTTP answer is checked against
/// docs/openapi.yaml.
@Suite(.serialized) struct AgentAPITests {
    final class Agent: @unchecked Sendable {
        let repo: TestRepository
        let state: TemporaryDirectory
        let run: GantryProcess
        let base: String
        let token: String
        let answers: String

        init() throws {
            repo = try TestRepository()
            state = TemporaryDirectory()
            // Gantry's key exists before the repository lists it (as `gantry keys` prints it).
            let keyLine = try gantry("keys", "--state", state.path).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            try repo.seedExample(extraSigners: [keyLine])
            run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "0.5", "--stop-on-exit",
                                     "--router-port", "0", "--api", "127.0.0.1:0"], log: state.path + "/run.log")
            let addressFile = state.path + "/api.address"
            guard eventually(30, { ((try? String(contentsOfFile: addressFile, encoding: .utf8)) ?? "").hasSuffix("\n") }) else { throw Failure("the API did not start") }
            base = try String(contentsOfFile: addressFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            let made = try gantry("token", "create", "--state", state.path, "--actor", "claude@payments", "--ttl", "1h")
            token = made.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            answers = state.path + "/answers.jsonl"
        }

        var log: String { (try? String(contentsOfFile: state.path + "/run.log", encoding: .utf8)).map { String($0.suffix(4000)) } ?? "no log" }

        struct Answer {
            let status: Int
            let json: [String: Any]
            let body: String
        }

        /// One request with curl; the answer is kept for the OpenAPI check.
        @discardableResult
        func call(_ method: String, _ path: String, body: String? = nil, token: String? = nil) throws -> Answer {
            var arguments = ["curl", "-s", "--max-time", "120", "-X", method, "-w", "\n%{http_code} %{content_type}", base + path,
                             "-H", "Authorization: Bearer \(token ?? self.token)"]
            if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
            let output = try Shell.check(arguments)
            let split = output.range(of: "\n", options: .backwards)!
            let tail = output[split.upperBound...].split(separator: " ", maxSplits: 1)
            let status = Int(tail.first ?? "") ?? 0
            let text = String(output[..<split.lowerBound])
            let record: [String: Any] = ["method": method, "path": path, "status": status, "contentType": tail.count > 1 ? String(tail[1]) : "", "body": text]
            let line = String(decoding: try JSONSerialization.data(withJSONObject: record), as: UTF8.self) + "\n"
            if let handle = FileHandle(forWritingAtPath: answers) { handle.seekToEndOfFile(); handle.write(Data(line.utf8)); try handle.close() }
            else { try line.write(toFile: answers, atomically: true, encoding: .utf8) }
            let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
            return Answer(status: status, json: json, body: text)
        }

        deinit {
            run.terminate()
            killMarked(state: state.path)
        }
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// The audit records of `environment`, oldest first, as (event, actor).
    func auditTrail(_ agent: Agent, _ environment: String) throws -> [(event: String, actor: String?)] {
        let answer = try agent.call("GET", "/v1/audit?environment=\(environment)&limit=100")
        let records = answer.json["records"] as? [[String: Any]] ?? []
        return records.reversed().map { ($0["event"] as? String ?? "", $0["actor"] as? String) }
    }

    @Test func anAgentPlaysItsDayOverHTTP() throws {
        let agent = try Agent()
        // Create from a template and wait until it serves.
        let created = try agent.call("POST", "/v1/environments?wait=serving&timeout=90", body: #"{"name": "day1", "template": "python-web", "task": "PAY-1"}"#)
        #expect(created.status == 201, "\(created.body)\n\(agent.log)")
        let name = try #require(created.json["environment"] as? String)
        let state = created.json["state"] as? [String: Any]
        #expect(state?["phase"] as? String == "Running", "\(created.body)")
        // Its route serves through the router, as any push's preview would.
        let routes = state?["routes"] as? [[String: Any]] ?? []
        #expect(routes.first?["url"] as? String != nil)
        // A test command against its own service, in its context (its user, network, variables).
        let exec = try agent.call("POST", "/v1/environments/day1/exec",
                                  body: #"{"command": ["sh", "-c", "curl -fsS http://127.0.0.1:$PORT/ && echo && id -u && echo $GANTRY_ENVIRONMENT"], "timeoutSeconds": 30}"#)
        #expect(exec.status == 200)
        #expect(exec.json["exitCode"] as? Int == 0, "\(exec.body)")
        let stdout = exec.json["stdout"] as? String ?? ""
        #expect(stdout.contains("hello from \(name)"))
        #expect(stdout.contains(name))
        if geteuid() == 0 { #expect(!stdout.contains("\n0\n"), "the command ran as root: \(stdout)") }
        // A secret stored while Gantry runs is masked at once in what exec gives back and records.
        let secret = "LateSecretValue8842"
        #expect(try gantry("secret", "set", "latekey", "--team", "payments", "--state", agent.state.path, input: secret).status == 0)
        let echoed = try agent.call("POST", "/v1/environments/day1/exec", body: #"{"command": ["echo", "LateSecretValue8842", "\n2026-01-01T00:00:00+0000 notice gantry: forged line"]}"#)
        #expect(echoed.json["stdout"] as? String == "[redacted secret latekey] \n2026-01-01T00:00:00+0000 notice gantry: forged line\n", "\(echoed.body)")
        // A request line holding it lands in the service's log: every way out masks it.
        _ = try agent.call("POST", "/v1/environments/day1/exec", body: #"{"command": ["sh", "-c", "curl -s http://127.0.0.1:$PORT/LateSecretValue8842 >/dev/null"]}"#)
        #expect(eventually(5) { (try? agent.call("GET", "/v1/environments/day1/logs?tail=20").body.contains("[redacted secret latekey]")) == true })
        #expect(try !agent.call("GET", "/v1/environments/day1/logs?tail=20").body.contains(secret))
        let cliLogs = try gantry("logs", "--state", agent.state.path, "--tail", "20", name)
        #expect(cliLogs.stdout.contains("[redacted secret latekey]") && !cliLogs.stdout.contains(secret), "\(cliLogs.stdout)")
        let cliDiagnosis = try gantry("diagnose", name, "--json", "--state", agent.state.path)
        #expect(cliDiagnosis.stdout.contains("\"name\": \"\(name)\"") && !cliDiagnosis.stdout.contains(secret))
        // The command line went to Gantry's log on one line, its line break escaped.
        #expect(!agent.log.split(separator: "\n").contains { $0.hasPrefix("2026-01-01T00:00:00+0000 notice gantry: forged") }, "\(agent.log)")
        // A failing command's exit code comes back, and a command over its time is stopped.
        #expect(try agent.call("POST", "/v1/environments/day1/exec", body: #"{"command": ["sh", "-c", "echo no >&2; exit 5"]}"#).json["exitCode"] as? Int == 5)
        let slow = try agent.call("POST", "/v1/environments/day1/exec", body: #"{"command": ["sleep", "30"], "timeoutSeconds": 1}"#)
        #expect(slow.json["timedOut"] as? Bool == true)
        #expect(slow.json["exitCode"] as? Int == 124)
        // Break it: the service is killed; diagnose says what happened and what Gantry did.
        _ = try agent.call("POST", "/v1/environments/day1/exec", body: #"{"command": ["sh", "-c", "pkill -9 -u \"$(id -u)\" -f server.py; true"]}"#)
        var diagnosis: [String: Any] = [:]
        #expect(eventually(30) {
            diagnosis = (try? agent.call("GET", "/v1/environments/\(name)/diagnose").json) ?? [:]
            // (The restart is counted, then its event is written: both are waited for.)
            return ((diagnosis["services"] as? [[String: Any]])?.first?["restarts"] as? Int ?? 0) >= 1
                && (diagnosis["drift"] as? [[String: Any]])?.contains { $0["event"] as? String == "restarted" } == true
        }, "\(diagnosis)")
        let verdicts = diagnosis["verdicts"] as? [[String: Any]] ?? []
        #expect(verdicts.first?["decision"] as? String == "allow")
        #expect((verdicts.first?["rules"] as? [[String: Any]])?.contains { $0["rule"] as? String == "signature" && $0["passed"] as? Bool == true } == true)
        #expect(((diagnosis["services"] as? [[String: Any]])?.first?["log"] as? [String])?.isEmpty == false)
        #expect((diagnosis["drift"] as? [[String: Any]])?.contains { $0["event"] as? String == "restarted" } == true, "\(diagnosis)")
        // Logs, the list, one environment, and explain of its commit.
        #expect(try agent.call("GET", "/v1/environments/\(name)/logs?tail=5").status == 200)
        #expect(try agent.call("GET", "/v1/environments").status == 200)
        #expect(try agent.call("GET", "/v1/environments/day1").json["name"] as? String == name)
        let explain = try agent.call("GET", "/v1/commits/\(created.json["commit"] as? String ?? "")/explain")
        #expect(explain.status == 200, "\(explain.body)")
        // Asleep and awake again on request; never production, by an agent.
        #expect(try agent.call("POST", "/v1/environments/web/sleep").status == 403)
        let asleep = try agent.call("POST", "/v1/environments/day1/sleep")
        #expect(asleep.status == 200 && asleep.json["phase"] as? String == "Sleeping", "\(asleep.body)")
        #expect((asleep.json["sleep"] as? [String: Any])?["reason"] as? String == "asked by claude@payments")
        let awake = try agent.call("POST", "/v1/environments/day1/wake")
        #expect(awake.status == 200 && awake.json["phase"] as? String == "Running", "\(awake.body)")
        // Its budgets: the team's and its own, with what runs now.
        let budgets = try agent.call("GET", "/v1/budgets")
        #expect(budgets.status == 200)
        let budgetList = budgets.json["budgets"] as? [[String: Any]] ?? []
        #expect(budgetList.contains { $0["scope"] as? String == "team" && $0["name"] as? String == "payments" && $0["period"] as? String == "monthly" }, "\(budgets.body)")
        #expect(budgetList.contains { $0["scope"] as? String == "agent" && $0["name"] as? String == "claude@payments" }, "\(budgets.body)")
        #expect((budgets.json["environments"] as? [[String: Any]])?.contains { $0["name"] as? String == name } == true)
        // Forbidden: production exec, and main's environment's deletion.
        #expect(try agent.call("POST", "/v1/environments/web/exec", body: #"{"command": ["id"]}"#).status == 403)
        #expect(try agent.call("DELETE", "/v1/environments/web").status == 403)
        // Destroy it: the branch goes, then the environment.
        let destroyed = try agent.call("DELETE", "/v1/environments/day1")
        #expect(destroyed.status == 202)
        #expect(eventually(60) { (try? agent.call("GET", "/v1/environments/\(name)").status) == 404 }, "\(agent.log)")
        #expect(try agent.repo.git("branch", "--list", "agents/*").isEmpty)
        // Every step is in the signed audit log under claude@payments.
        let trail = try auditTrail(agent, name)
        let events = trail.map(\.event)
        for event in ["admitted", "applied", "exec", "slept", "woke", "destroy-requested", "destroyed"] {
            #expect(events.contains(event), "no \(event) record: \(trail)")
        }
        // Every record of the agent's acts names it; Gantry's own correction of the break names nobody.
        #expect(trail.filter { $0.event != "drift-corrected" }.allSatisfy { $0.actor == "claude@payments" }, "\(trail)")
        #expect(try gantry("audit", "verify", "--repo", agent.repo.path, "--state", agent.state.path).status == 0)
        let audit = try gantry("audit", "log", "--repo", agent.repo.path, "--state", agent.state.path, "--json").stdout
        #expect(audit.contains("[redacted secret latekey]"))
        #expect(!audit.contains(secret))
        // Metrics saw it.
        let metrics = try Shell.check(["curl", "-s", agent.base + "/metrics"])
        #expect(metrics.contains("gantry_execs_total 6"), "\(metrics)")
        #expect(metrics.contains("gantry_admissions_total{decision=\"allow\"}"))
        // The operator's side of tokens: listed without their values, revoked at once.
        let listed = try gantry("token", "list", "--state", agent.state.path, "--json").stdout
        let id = String(agent.token.split(separator: "_")[1])
        #expect(listed.contains("\"id\": \"\(id)\"") && listed.contains("claude@payments") && !listed.contains(agent.token), "\(listed)")
        #expect(try gantry("token", "revoke", id, "--state", agent.state.path).status == 0)
        #expect(try agent.call("GET", "/v1/environments").status == 401)
        // Every answer matches docs/openapi.yaml.
        let check = try Shell.run(["python3", TestPaths.packageRoot.appendingPathComponent("scripts/openapi_check.py").path,
                                   TestPaths.packageRoot.appendingPathComponent("docs/openapi.yaml").path, agent.answers])
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
    }

    /// The MCP agent script's steps, by name (the last of each).
    func steps(_ output: String) -> [String: [String: Any]] {
        var steps: [String: [String: Any]] = [:]
        for line in output.split(separator: "\n") {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], let step = object["step"] as? String else { continue }
            steps[step] = object
        }
        return steps
    }

    @Test(arguments: ["http", "stdio"]) func anAgentPlaysItsDayOverMCP(transport: String) throws {
        let agent = try Agent()
        let script = TestPaths.packageRoot.appendingPathComponent("scripts/mcp_agent.py").path
        let name = "mcp-\(transport)"
        // Over stdio the agent runs `gantry mcp` as itself: as root here, as nobody, with no state
        // directory to read (it only needs the API's address and its token).
        // (A copy of the binary in a directory anyone may enter: the checkout may sit where nobody cannot.)
        let binaries = TemporaryDirectory("gantry-bin")
        _ = chmod(binaries.path, 0o755)
        let binary = binaries.path + "/gantry"
        try FileManager.default.copyItem(atPath: TestPaths.gantryBinary, toPath: binary)
        let arguments = transport == "http" ? ["python3", script, "http", agent.base + "/mcp", agent.token, name]
            : ["python3", script, "stdio", binary, agent.base, agent.token, name]
        let result = try Shell.run(arguments)
        #expect(result.status == 0, "\(result.stdout.suffix(3000))\n\(result.stderr.suffix(3000))\n\(agent.log)")
        let steps = steps(result.stdout)
        let tools = steps["tools"]?["tools"] as? [String: [String: Any]] ?? [:]
        for tool in ["list_environments", "get_environment", "diagnose", "logs", "create_environment", "destroy_environment", "exec", "explain_commit", "audit_log",
                     "budget", "wake_environment"] {
            #expect(tools[tool]?["output"] as? Bool == true, "\(tool) missing or without an output schema")
        }
        #expect(tools["diagnose"]?["readOnly"] as? Bool == true)
        #expect(tools["destroy_environment"]?["destructive"] as? Bool == true)
        let created = steps["create"]?["structured"] as? [String: Any]
        #expect((created?["state"] as? [String: Any])?["phase"] as? String == "Running", "\(steps["create"] ?? [:])")
        #expect(steps["exec"]?["isError"] as? Bool == false)
        #expect((steps["exec"]?["text"] as? String)?.contains("tests-passed") == true, "\(steps["exec"] ?? [:])")
        let services = (steps["diagnose"]?["structured"] as? [String: Any])?["services"] as? [[String: Any]]
        #expect((services?.first?["restarts"] as? Int ?? 0) >= 1, "\(steps["diagnose"] ?? [:])")
        #expect(steps["budget"]?["isError"] as? Bool == false)
        let budgets = (steps["budget"]?["structured"] as? [String: Any])?["budgets"] as? [[String: Any]] ?? []
        #expect(budgets.contains { $0["scope"] as? String == "team" && $0["name"] as? String == "payments" }, "\(steps["budget"] ?? [:])")
        #expect(steps["wake"]?["isError"] as? Bool == false)
        #expect((steps["wake"]?["structured"] as? [String: Any])?["phase"] as? String == "Running", "\(steps["wake"] ?? [:])")
        #expect(steps["forbidden"]?["isError"] as? Bool == true)
        #expect((steps["forbidden"]?["text"] as? String)?.contains("production") == true)
        #expect(steps["destroy"]?["isError"] as? Bool == false)
        #expect(steps["gone"] != nil, "the environment was not destroyed")
        let records = (steps["audit"]?["structured"] as? [String: Any])?["records"] as? [[String: Any]] ?? []
        let events = Set(records.compactMap { $0["event"] as? String })
        #expect(events.isSuperset(of: ["admitted", "applied", "exec", "destroy-requested", "destroyed"]), "\(events)")
        #expect(records.filter { $0["event"] as? String != "drift-corrected" }.allSatisfy { $0["actor"] as? String == "claude@payments" })
    }

    @Test func anAPICommitMovedOntoMainIsNotAdmitted() throws {
        let agent = try Agent()
        let created = try agent.call("POST", "/v1/environments", body: #"{"name": "ff1", "template": "python-web"}"#)
        #expect(created.status == 201)
        let commit = try #require(created.json["commit"] as? String)
        let before = try agent.repo.git("rev-parse", "main")
        // Whoever can push moves main onto the API's commit (a fast-forward).
        try agent.repo.git("update-ref", "refs/heads/main", commit, before)
        _ = try gantry("notify", "--state", agent.state.path)
        var trust: [String: Any] = [:]
        #expect(eventually(30) {
            trust = (try? JSONSerialization.jsonObject(with: Data(gantry("trust", "show", "--state", agent.state.path, "--json").stdout.utf8))) as? [String: Any] ?? [:]
            return (trust["blocked"] as? [String: Any])?["commit"] as? String == commit
        }, "\(trust)\n\(agent.log)")
        #expect(trust["revision"] as? String == before)
        let rules = ((trust["blocked"] as? [String: Any])?["rules"] as? [String]) ?? []
        #expect(rules.contains { $0.contains("made through Gantry's API") }, "\(rules)")
        #expect(try agent.call("GET", "/v1/environments/ff1").status != 200 || (try agent.call("GET", "/v1/environments/ff1").json["branch"] as? String) != "main")
    }

    @Test func oneTokenCannotHoldEveryWorkerAndALostReaderStopsItsCommand() throws {
        let agent = try Agent()
        let created = try agent.call("POST", "/v1/environments?wait=serving&timeout=90", body: #"{"name": "busy1", "template": "python-web"}"#)
        #expect(created.status == 201, "\(created.body)")
        // Nine slow execs at once from one token: the ninth is refused, not queued.
        let group = DispatchGroup()
        let statuses = Statuses()
        for _ in 0..<9 {
            group.enter()
            Thread.detachNewThread {
                let status = (try? agent.call("POST", "/v1/environments/busy1/exec", body: #"{"command": ["sleep", "4"]}"#).status) ?? 0
                statuses.add(status)
                group.leave()
            }
        }
        Thread.sleep(forTimeInterval: 1.5)
        // Meanwhile another principal is answered at once.
        let alice = try gantry("token", "create", "--state", agent.state.path, "--actor", "alice@example.com").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let started = Date()
        #expect(try agent.call("GET", "/v1/environments", token: alice).status == 200)
        #expect(Date().timeIntervalSince(started) < 2)
        group.wait()
        #expect(statuses.all.filter { $0 == 200 }.count == 8, "\(statuses.all)")
        #expect(statuses.all.filter { $0 == 429 }.count == 1, "\(statuses.all)")
        // A streamed exec whose reader goes away: the command is stopped, not left running.
        _ = try? Shell.run(["curl", "-s", "-N", "--max-time", "2", "-X", "POST", agent.base + "/v1/environments/busy1/exec?stream=true",
                            "-H", "Authorization: Bearer \(agent.token)", "--data-binary", #"{"command": ["sh", "-c", "yes endless-output"], "timeoutSeconds": 600}"#])
        #expect(eventually(15) { !markedProcesses(state: agent.state.path).contains { $0.mark.contains(":exec-") } },
                "\(markedProcesses(state: agent.state.path))")
        // Gantry lives on, and answers.
        #expect(agent.run.process.isRunning, "\(agent.log)")
        #expect(try agent.call("GET", "/v1/environments").status == 200)
        // A command that prints nothing, whose reader goes away: found within seconds and stopped.
        _ = try? Shell.run(["curl", "-s", "-N", "--max-time", "2", "-X", "POST", agent.base + "/v1/environments/busy1/exec?stream=true",
                            "-H", "Authorization: Bearer \(agent.token)", "--data-binary", #"{"command": ["sleep", "300"], "timeoutSeconds": 600}"#])
        #expect(eventually(20) { !markedProcesses(state: agent.state.path).contains { $0.mark.contains(":exec-") } })
        // One that closes its output and goes on: found the same way.
        _ = try? Shell.run(["curl", "-s", "-N", "--max-time", "2", "-X", "POST", agent.base + "/v1/environments/busy1/exec?stream=true",
                            "-H", "Authorization: Bearer \(agent.token)", "--data-binary", #"{"command": ["sh", "-c", "exec >&- 2>&-; sleep 300"], "timeoutSeconds": 600}"#])
        #expect(eventually(20) { !markedProcesses(state: agent.state.path).contains { $0.mark.contains(":exec-") } })
        // A reader too slow to keep up holds the command back only until its own time is up.
        let slowReader = Process()
        slowReader.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        slowReader.arguments = ["-s", "-N", "--limit-rate", "1K", "--max-time", "60", "-o", "/dev/null", "-X", "POST",
                                agent.base + "/v1/environments/busy1/exec?stream=true", "-H", "Authorization: Bearer \(agent.token)",
                                "--data-binary", #"{"command": ["yes", "flood"], "timeoutSeconds": 3}"#]
        try slowReader.run()
        defer { slowReader.terminate() }
        Thread.sleep(forTimeInterval: 1)
        #expect(eventually(15) { !markedProcesses(state: agent.state.path).contains { $0.mark.contains(":exec-") } },
                "the command outlived its timeout while its reader stalled")
        #expect(agent.run.process.isRunning)
    }

    @Test func aNameAnotherBranchHoldsIsNotReportedAsTheAgents() throws {
        let agent = try Agent()
        // Someone pushes a branch whose preview takes the name the API would give claude's zz.
        try agent.repo.checkout("agents/claude-payments/zz", create: true)
        try agent.repo.write("environments/zz.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: zz, team: payments, class: development}
            spec:
              template: python-web
              services: {web: {env: {GREETING: "squatter"}}}
            """)
        try agent.repo.commit("squat")
        try agent.repo.checkout("main")
        _ = try gantry("notify", "--state", agent.state.path)
        #expect(eventually(30) { (try? agent.call("GET", "/v1/environments/zz--agents-claude-payments-zz").status) == 200 })
        let created = try agent.call("POST", "/v1/environments?wait=serving&timeout=90", body: #"{"name": "zz", "template": "python-web"}"#)
        #expect(created.status == 201, "\(created.body)")
        let name = try #require(created.json["environment"] as? String)
        #expect(name != "zz--agents-claude-payments-zz")
        let exec = try agent.call("POST", "/v1/environments/\(name)/exec", body: #"{"command": ["sh", "-c", "echo $GREETING"]}"#)
        #expect((exec.json["stdout"] as? String)?.contains("squatter") == false, "\(exec.body)")
        // The short name finds the agent's own, too.
        #expect(try agent.call("GET", "/v1/environments/zz").json["name"] as? String == name)
    }
}

final class Statuses: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int] = []
    func add(_ value: Int) { lock.withLock { values.append(value) } }
    var all: [Int] { lock.withLock { values } }
}
