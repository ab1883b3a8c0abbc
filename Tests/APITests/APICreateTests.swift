import API
import Foundation
import GitStore
import Governance
import SpecLoading
import StateStore
import Testing
import TestSupport

/// `POST /v1/environments`: what it commits, and every way to hand it bad input.
@Suite(.serialized) struct APICreateTests {
    @Test func createCommitsASignedBranchForTheTokensPrincipal() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        let answer = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "try1", "template": "python-web", "task": "PAY-7"}"#)
        #expect(answer.status == 201, "\(answer.body)")
        #expect(answer.json["branch"] as? String == "agents/claude@payments/try1")
        #expect(answer.json["environment"] as? String == Previews.name(environment: "try1", branch: "agents/claude@payments/try1"))
        let commit = try #require(answer.json["commit"] as? String)
        #expect(try fixture.repo.git("rev-parse", "refs/heads/agents/claude@payments/try1") == commit)
        // Outside judges: git (through ssh-keygen) verifies Gantry's signature.
        let signers = fixture.state.path + "/allowed_signers"
        try "\(IdentityJudge.apiPrincipal) \(fixture.key.publicKey.authorizedKey)\n".write(toFile: signers, atomically: true, encoding: .utf8)
        let verify = try Shell.run(["git", "-C", fixture.repo.path, "-c", "gpg.ssh.allowedSignersFile=\(signers)", "verify-commit", commit])
        #expect(verify.status == 0, "\(verify.stderr)")
        #expect(verify.stderr.contains("signature for \(IdentityJudge.apiPrincipal) with"))
        let message = try fixture.repo.git("log", "-1", "--format=%B", commit)
        #expect(message.contains("Api-Actor: claude@payments"))
        #expect(message.contains("Task: PAY-7"))
        // What main's governance makes of it: claude's commit, through the API.
        let git = try fixture.repo.open()
        let id = try #require(ObjectID(hex: commit))
        let governance = try GovernanceRevision.load(at: try #require(try git.resolveCommit("main")), repository: git)
        let identity = governance.identity.judge(try git.commit(id), signature: try git.signature(of: id), now: Date())
        #expect(identity.problem == nil)
        #expect(identity.principal == "claude@payments")
        #expect(identity.viaAPI)
        // The file loads as an environment of claude's team, from the template.
        let loaded = try #require(try ConfigLoader(repository: git).environments(at: id).first { $0.file == "environments/try1.yaml" })
        #expect(loaded.diagnostics.isEmpty)
        #expect(loaded.spec?.team == "payments")
        #expect(loaded.spec?.services.first?.name == "web")
        // The same name again: the branch exists.
        let again = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "try1", "template": "python-web"}"#)
        #expect(again.status == 409)
    }

    @Test func cloneFromCopiesAnEnvironmentOfMainUnderTheNewName() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        let answer = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "web-copy", "cloneFrom": "web"}"#)
        #expect(answer.status == 201, "\(answer.body)")
        let git = try fixture.repo.open()
        let id = try #require(ObjectID(hex: answer.json["commit"] as? String ?? ""))
        let loaded = try #require(try ConfigLoader(repository: git).environments(at: id).first { $0.file == "environments/web-copy.yaml" })
        #expect(loaded.spec?.name == "web-copy")
        #expect(loaded.spec?.team == "payments")
        let missing = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "c2", "cloneFrom": "nope"}"#)
        #expect(missing.status == 404)
    }

    @Test func badInputIsRefusedWithWhatWouldFixIt() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        let deep = String(repeating: "[", count: 100_000)
        let cases: [(body: String, status: Int, mentions: String)] = [
            ("{\"name\": ", 400, "not valid JSON"),
            ("[1, 2]", 400, "JSON object"),
            (deep, 400, "not valid JSON"),
            (#"{"name": "ok1", "template": "python-web", "color": "red"}"#, 422, "unknown field 'color'"),
            (#"{"name": "Bad_Name", "template": "python-web"}"#, 422, "DNS-1123"),
            (#"{"name": "a--b", "template": "python-web"}"#, 422, "--"),
            (#"{"name": 42, "template": "python-web"}"#, 422, "must be a string"),
            (#"{"name": "ok2"}"#, 422, "exactly one of"),
            (#"{"name": "ok3", "template": "python-web", "cloneFrom": "web"}"#, 422, "exactly one of"),
            (#"{"name": "ok4", "template": "no-such"}"#, 404, "python-web"),
            (#"{"name": "ok5", "template": "../gantry"}"#, 404, "no template"),
            (#"{"name": "web", "template": "python-web"}"#, 409, "already has an environment named web"),
            (#"{"name": "ok6", "template": "python-web", "team": "platform"}"#, 403, "not in team platform"),
            (#"{"name": "ok7", "spec": {"services": {"api": {"command": "not a list", "replicas": "many"}}}}"#, 422, "environments/ok7.yaml:"),
            (#"{"name": "ok8", "spec": {"services": {"api": {"source": "../../etc", "command": ["true"]}}}}"#, 422, "environments/ok8.yaml:"),
            (#"{"name": "ok9", "spec": [1]}"#, 422, "spec must be a JSON object"),
            (#"{"name": "ok10", "template": "python-web", "task": "two\nlines"}"#, 422, "one line"),
            (#"{"name": "ok11", "cloneFrom": "status-page"}"#, 403, "team platform"),
            ("{\"name\": \"ok12\", \"spec\": {\"services\": {\"api\": {\"command\": [\"true\"], \"env\": {\"BIG\": \"" + String(repeating: "x", count: 70_000) + "\"}}}}}", 422, "bytes"),
        ]
        for (body, status, mentions) in cases {
            let answer = try fixture.call("POST", "/v1/environments", token: claude, body: body)
            #expect(answer.status == status, "\(body.prefix(80)): \(answer.status) \(answer.body.prefix(300))")
            let text = "\(answer.error?["message"] ?? "") \(answer.error?["fix"] ?? "")"
            #expect(text.contains(mentions), "\(body.prefix(80)): \(text)")
            #expect((answer.error?["fix"] as? String)?.isEmpty == false)
        }
        // Over a mebibyte: refused before it is read.
        let large = fixture.state.path + "/large.json"
        try Data(("{\"name\": \"big\", \"template\": \"" + String(repeating: "x", count: 2 << 20) + "\"}").utf8).write(to: URL(fileURLWithPath: large))
        #expect(try fixture.call("POST", "/v1/environments", token: claude, bodyFile: large).status == 413)
        // None of it left a branch behind.
        #expect(try fixture.repo.git("branch", "--list", "agents/*").isEmpty)
    }

    @Test func withoutGantrysKeyOnMainNothingIsCommitted() throws {
        let fixture = try APIFixture(listGantrysKey: false)
        let claude = try fixture.token("claude@payments")
        let answer = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "try1", "template": "python-web"}"#)
        #expect(answer.status == 409)
        #expect((answer.error?["fix"] as? String)?.contains("gantry keys") == true)
        #expect(try fixture.repo.git("branch", "--list", "agents/*").isEmpty)
    }

    @Test func theAPIOwnBranchIsDeletedOnlyAtTheTipItKnows() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments")
        let created = try fixture.call("POST", "/v1/environments", token: claude, body: #"{"name": "gone1", "template": "python-web"}"#)
        #expect(created.status == 201)
        let name = try #require(created.json["environment"] as? String)
        // The reconciler would have recorded it; here the state is told directly.
        try fixture.store.save(EnvironmentRecord(name: name, branch: "agents/claude@payments/gone1", commit: created.json["commit"] as! String,
                                                 envClass: "preview", team: "payments"))
        let deleted = try fixture.call("DELETE", "/v1/environments/gone1", token: claude)
        #expect(deleted.status == 202, "\(deleted.body)")
        #expect(deleted.json["deleted"] as? Bool == true)
        #expect(try fixture.repo.git("branch", "--list", "agents/*").isEmpty)
        let record = try #require(try fixture.store.recentAuditRecords(environment: name, limit: 1).first)
        #expect(record.text.contains("event: destroy-requested"))
        #expect(record.text.contains("actor: claude@payments"))
    }
}
