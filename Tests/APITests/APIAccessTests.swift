import API
import Foundation
import GitStore
import Governance
import SpecLoading
import StateStore
import Testing
import TestSupport

/// Who may do what through the API, tried as an outsider would: with no token, a bad one, a
/// revoked or expired one, one of a principal main does not know, and as an agent reaching for
/// what only humans or other teams may touch.
@Suite(.serialized) struct APIAccessTests {
    /// Every endpoint behind a token, with a body where it takes one.
    static let endpoints: [(method: String, path: String, body: String?)] = [
        ("GET", "/v1/environments", nil),
        ("POST", "/v1/environments", #"{"name": "x1", "template": "python-web"}"#),
        ("GET", "/v1/environments/web", nil),
        ("DELETE", "/v1/environments/\(APIFixture.preview)", nil),
        ("GET", "/v1/environments/web/diagnose", nil),
        ("GET", "/v1/environments/web/logs", nil),
        ("POST", "/v1/environments/\(APIFixture.preview)/exec", #"{"command": ["true"]}"#),
        ("POST", "/v1/environments/web/sleep", nil),
        ("POST", "/v1/environments/web/wake", nil),
        ("GET", "/v1/budgets", nil),
        ("POST", "/v1/kill", #"{"scope": "env", "name": "web", "on": true}"#),
        ("GET", "/v1/audit", nil),
        ("GET", "/v1/commits/0000000/explain", nil),
        ("POST", "/mcp", #"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#),
    ]

    @Test func everyEndpointRefusesAMissingOrBadToken() throws {
        let fixture = try APIFixture()
        let revoked = try fixture.token("claude@payments")
        #expect(try fixture.store.revokeToken(String(revoked.split(separator: "_")[1])))
        let expired = try fixture.token("claude@payments", ttl: 60, now: Date().addingTimeInterval(-3600))
        let good = try fixture.token("claude@payments")
        let forged = String(good.dropLast(4)) + "AAAA"
        for endpoint in Self.endpoints {
            for (label, token) in [("no token", nil), ("garbage", "hello"), ("forged", forged), ("revoked", revoked), ("expired", expired)] as [(String, String?)] {
                let answer = try fixture.call(endpoint.method, endpoint.path, token: token, body: endpoint.body)
                #expect(answer.status == 401, "\(endpoint.method) \(endpoint.path) with \(label): \(answer.status) \(answer.body)")
                #expect((answer.error?["fix"] as? String)?.isEmpty == false, "\(endpoint.path) with \(label) gives no fix")
            }
        }
        // Nothing was created by all those attempts.
        #expect(try fixture.repo.git("branch", "--list", "agents/*").isEmpty)
    }

    @Test func aTokenOfAPrincipalMainDoesNotKnowIsForbiddenEverywhere() throws {
        let fixture = try APIFixture()
        let ghost = try fixture.token("ghost@example.com")
        for endpoint in Self.endpoints {
            let answer = try fixture.call(endpoint.method, endpoint.path, token: ghost, body: endpoint.body)
            #expect(answer.status == 403, "\(endpoint.method) \(endpoint.path): \(answer.status) \(answer.body)")
            #expect((answer.error?["message"] as? String)?.contains("identities/actors.yaml") == true)
        }
    }

    @Test func aTokenSeesOnlyItsTeamsEnvironments() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")   // agent, team payments
        let names = (try fixture.call("GET", "/v1/environments", token: claude).json["environments"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(Set(names) == ["web", APIFixture.preview])
        for path in ["/v1/environments/status-page", "/v1/environments/status-page/diagnose", "/v1/environments/status-page/logs"] {
            let answer = try fixture.call("GET", path, token: claude)
            #expect(answer.status == 403, "\(path): \(answer.status)")
            #expect((answer.error?["message"] as? String)?.contains("platform") == true)
        }
        let exec = try fixture.call("POST", "/v1/environments/status-page/exec", token: claude, body: #"{"command": ["id"]}"#)
        #expect(exec.status == 403)
        // A human admin sees everything.
        let alice = try fixture.token("alice@example.com")
        let all = (try fixture.call("GET", "/v1/environments", token: alice).json["environments"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(Set(all) == ["web", "status-page", APIFixture.preview])
    }

    @Test func anAgentNeverExecsInProductionNorDeletesWhatTheAPIDidNotMakeForIt() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        let exec = try fixture.call("POST", "/v1/environments/web/exec", token: claude, body: #"{"command": ["id"]}"#)
        #expect(exec.status == 403)
        #expect((exec.error?["message"] as? String)?.contains("production") == true)
        // main's environment, and another principal's preview (same team): both refused.
        for name in ["web", APIFixture.preview] {
            let answer = try fixture.call("DELETE", "/v1/environments/\(name)", token: claude)
            #expect(answer.status == 403, "DELETE \(name): \(answer.status) \(answer.body)")
        }
        // An environment that runs nothing: refused before anything is recorded.
        let agent = try fixture.token(fixture.repo.principal)
        let own = try fixture.call("POST", "/v1/environments/\(APIFixture.preview)/exec", token: agent, body: #"{"command": ["id"]}"#)
        #expect(own.status == 409)
        #expect((own.error?["message"] as? String)?.contains("runs nothing now") == true, "\(own.body)")
        // Nothing the agent tried was recorded as done: no exec record, no destroy request.
        let events = try fixture.store.recentAuditRecords(environment: nil, limit: 50).map(\.text)
        #expect(!events.contains { $0.contains("event: exec") || $0.contains("event: destroy-requested") })
    }

    @Test func aBranchNamedForAPrincipalIsNotTheirsUnlessTheAPIMadeIt() throws {
        // Anyone who can push can name a branch agents/<principal>/...: that gives the principal
        // nothing. p1's branch is named for agent@example.com, but the API did not make it.
        let fixture = try APIFixture()
        let agent = try fixture.token(fixture.repo.principal)
        let tip = try fixture.repo.git("rev-parse", "main")
        try fixture.store.save(EnvironmentRecord(name: "status-page--agents-claude-payments-pushed", branch: "agents/claude@payments/pushed",
                                                 commit: tip, envClass: "preview", team: "platform"))
        let claude = try fixture.token("claude@payments")
        for (method, path) in [("GET", "/v1/environments/status-page--agents-claude-payments-pushed"),
                               ("GET", "/v1/environments/status-page--agents-claude-payments-pushed/logs"),
                               ("DELETE", "/v1/environments/status-page--agents-claude-payments-pushed")] {
            let answer = try fixture.call(method, path, token: claude)
            #expect(answer.status == 403, "\(method) \(path): \(answer.status) \(answer.body)")
        }
        let own = try fixture.call("DELETE", "/v1/environments/\(APIFixture.preview)", token: agent)
        #expect(own.status == 403, "\(own.body)")
    }

    @Test func commitsOfOthersOnABranchTheAPIMadeAreNotTheAgents() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        let created = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "own1", "template": "python-web"}"#)
        #expect(created.status == 201)
        let made = try #require(created.json["commit"] as? String)
        let branch = "agents/claude@payments/own1"
        // At the API's own commit the preview is claude's, whatever its team.
        try fixture.store.save(EnvironmentRecord(name: "status-page--agents-claude-payments-own1", branch: branch, commit: made,
                                                 envClass: "preview", team: "platform"))
        #expect(try fixture.call("GET", "/v1/environments/status-page--agents-claude-payments-own1", token: claude).status == 200)
        // Someone else's commit pushed onto the branch: no longer claude's to look inside or delete.
        try fixture.repo.git("checkout", "-q", branch)
        try fixture.repo.write("apps/hello/NOTE", "platform's work")
        let foreign = try fixture.repo.commitAsOwner("platform's change")
        try fixture.repo.checkout("main")
        try fixture.store.save(EnvironmentRecord(name: "status-page--agents-claude-payments-own1", branch: branch, commit: foreign,
                                                 envClass: "preview", team: "platform"))
        #expect(try fixture.call("GET", "/v1/environments/status-page--agents-claude-payments-own1", token: claude).status == 403)
        #expect(try fixture.call("DELETE", "/v1/environments/status-page--agents-claude-payments-own1", token: claude).status == 403)
        #expect(try !fixture.repo.git("branch", "--list", branch).isEmpty)
    }

    @Test func aBranchThatMovedSinceItWasRecordedIsDeletedOnlyIfTheNewCommitsAreTheCallers() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        let created = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "own2", "template": "python-web"}"#)
        let made = try #require(created.json["commit"] as? String)
        let branch = "agents/claude@payments/own2"
        try fixture.store.save(EnvironmentRecord(name: "own2--agents-claude-payments-own2", branch: branch, commit: made, envClass: "preview", team: "payments"))
        // A human's commit lands on the branch before Gantry records it.
        try fixture.repo.git("checkout", "-q", branch)
        try fixture.repo.write("apps/hello/NOTE", "alice's work")
        try fixture.repo.commitAsOwner("alice's change")
        try fixture.repo.checkout("main")
        #expect(try fixture.call("DELETE", "/v1/environments/own2", token: claude).status == 403)
        #expect(try !fixture.repo.git("branch", "--list", branch).isEmpty)
    }

    @Test func aPrincipalKeepsAtMostFiftyBranchesTheAPIMade() throws {
        let fixture = try APIFixture(rate: (1000, 1000))
        let claude = try fixture.token("claude@payments")
        for index in 0..<50 {
            let answer = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "n\#(index)", "template": "python-web"}"#)
            #expect(answer.status == 201, "\(index): \(answer.body)")
        }
        let over = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "n50", "template": "python-web"}"#)
        #expect(over.status == 429)
        #expect(over.error?["code"] as? String == "too-many-branches")
        // A branch deleted with git frees its place.
        try fixture.repo.git("branch", "-D", "agents/claude@payments/n0")
        #expect(try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "n51", "template": "python-web"}"#).status == 201)
    }

    @Test func nobodyWithoutATokenGetsABodyIn() throws {
        let fixture = try APIFixture()
        let large = fixture.state.path + "/large.json"
        try Data(repeating: 0x61, count: 2 << 20).write(to: URL(fileURLWithPath: large))
        let answer = try fixture.call("POST", "/v1/environments", token: nil, bodyFile: large)
        #expect(answer.status == 401)
    }

    @Test func createsRefusedAfterTheirCommitIsWrittenAreLimited() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        var statuses: [Int] = []
        for index in 0..<21 {
            statuses.append(try fixture.call("POST", "/v1/environments", token: claude,
                                             body: #"{"name": "bad\#(index)", "spec": {"services": {"api": {"command": "not a list"}}}}"#).status)
        }
        #expect(statuses.prefix(20).allSatisfy { $0 == 422 }, "\(statuses)")
        #expect(statuses.last == 429)
    }

    @Test func explainHidesAnEnvironmentNotRecordedYetByItsFilesTeam() throws {
        let fixture = try APIFixture()
        try fixture.repo.checkout("wip/secret", create: true)
        try fixture.repo.write("environments/secret-proj.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: secret-proj, team: platform, class: development}
            spec: {template: python-web}
            """)
        let commit = try fixture.repo.commitAsOwner("a platform project")
        try fixture.repo.checkout("main")
        let claude = try fixture.token("claude@payments")
        let lines = (try fixture.call("GET", "/v1/commits/\(commit)/explain", token: claude).json["lines"] as? [String]) ?? []
        #expect(!lines.contains { $0.hasPrefix("secret-proj") }, "\(lines)")
        let alice = try fixture.token("alice@example.com")
        let all = (try fixture.call("GET", "/v1/commits/\(commit)/explain", token: alice).json["lines"] as? [String]) ?? []
        #expect(all.contains { $0.hasPrefix("secret-proj") }, "\(all)")
    }

    @Test func queryNumbersOutOfRangeAreRefusedNotTrapped() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        for path in ["/v1/environments/web/logs?tail=1e300", "/v1/audit?limit=1e300", "/v1/audit?limit=-1", "/v1/environments/web/logs?tail=abc",
                     "/v1/audit?limit=0x10", "/v1/audit?limit=nan", "/v1/audit?limit=1e2"] {
            let answer = try fixture.call("GET", path, token: claude)
            #expect(answer.status == 400, "\(path): \(answer.status) \(answer.body)")
        }
        // Checked before anything is committed.
        for query in ["wait=foo", "wait=serving&timeout=-1", "wait=serving&timeout=1e300"] {
            let answer = try fixture.call("POST", "/v1/environments?\(query)", token: claude, body: #"{"name": "q1", "template": "python-web"}"#)
            #expect(answer.status == 400, "\(query): \(answer.status)")
        }
        #expect(try fixture.repo.git("branch", "--list", "agents/*").isEmpty)
        // Still serving.
        #expect(try fixture.call("GET", "/v1/environments", token: claude).status == 200)
    }

    @Test func explainHidesOtherTeamsEnvironments() throws {
        let fixture = try APIFixture()
        let tip = try fixture.repo.git("rev-parse", "main")
        let claude = try fixture.token("claude@payments")
        let lines = (try fixture.call("GET", "/v1/commits/\(tip)/explain", token: claude).json["lines"] as? [String]) ?? []
        #expect(lines.contains { $0.hasPrefix("web: ") })
        #expect(!lines.contains { $0.hasPrefix("status-page: ") }, "\(lines)")
        #expect(lines.contains { $0.contains("1 environment of other teams not shown") })
        let alice = try fixture.token("alice@example.com")
        let all = (try fixture.call("GET", "/v1/commits/\(tip)/explain", token: alice).json["lines"] as? [String]) ?? []
        #expect(all.contains { $0.hasPrefix("status-page: ") })
    }

    @Test func mcpWithoutAHostHeaderIsRefused() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        let output = try Shell.check(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", fixture.base + "/mcp",
                                      "-H", "Host:", "-H", "Authorization: Bearer \(claude)", "-H", "Content-Type: application/json",
                                      "-H", "Accept: application/json, text/event-stream",
                                      "--data-binary", #"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#])
        #expect(output == "400")
        let foreign = try Shell.check(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", fixture.base + "/mcp",
                                       "-H", "Host: evil.example:80", "-H", "Authorization: Bearer \(claude)", "-H", "Content-Type: application/json",
                                       "-H", "Accept: application/json, text/event-stream",
                                       "--data-binary", #"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#])
        #expect(foreign == "421")
    }

    @Test func aTokenOverItsRateIsAnswered429WithRetryAfter() throws {
        let fixture = try APIFixture(rate: (0.2, 3))
        let claude = try fixture.token("claude@payments")
        let other = try fixture.token("claude@payments")
        var statuses: [Int] = []
        for _ in 0..<5 { statuses.append(try fixture.call("GET", "/v1/environments", token: claude).status) }
        #expect(statuses == [200, 200, 200, 429, 429])
        let limited = try fixture.call("GET", "/v1/environments", token: claude)
        #expect(limited.headers.lowercased().contains("retry-after: 5"), "\(limited.headers)")
        // Another token of the same principal has its own bucket.
        #expect(try fixture.call("GET", "/v1/environments", token: other).status == 200)
    }

    @Test func unknownEndpointsAndTheOpenAPIDocument() throws {
        let fixture = try APIFixture()
        let missing = try fixture.call("GET", "/v1/nothing-here")
        #expect(missing.status == 404)
        #expect(missing.error?["code"] as? String == "not-found")
        let served = try fixture.call("GET", "/v1/openapi.yaml")
        let file = try String(contentsOfFile: TestPaths.packageRoot.appendingPathComponent("docs/openapi.yaml").path, encoding: .utf8)
        #expect(served.status == 200)
        #expect(served.body.trimmingCharacters(in: .whitespacesAndNewlines) == file.trimmingCharacters(in: .whitespacesAndNewlines),
                "docs/openapi.yaml and the served document differ: run `make openapi`")
        let metrics = try fixture.call("GET", "/metrics")
        #expect(metrics.status == 200)
        #expect(metrics.body.contains("gantry_environments{phase=\"Pending\"} 3"))
    }
}
