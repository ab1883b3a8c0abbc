import Foundation
import StateStore
import TestSupport
import Testing

/// `POST /v1/kill` as an agent would try it: its own environment yes, another team's, every
/// environment, or lifting a switch no; a human with a role lifts it.
@Suite(.serialized) struct APIKillSwitchTests {
    @Test func anAgentCutsItsOwnButNeverLiftsNorReachesOthers() throws {
        let fixture = try APIFixture()
        let claude = try fixture.token("claude@payments"), alice = try fixture.token("alice@example.com")
        let own = try fixture.call("POST", "/v1/kill", token: claude, body: #"{"scope": "env", "name": "web", "on": true, "reason": "leaking"}"#)
        #expect(own.status == 200, "\(own.body)")
        #expect(own.json["on"] as? Bool == true && own.json["changed"] as? Bool == true)
        // No `gantry run` here: recorded, applied when one starts.
        #expect(own.json["applied"] as? Bool == false)
        #expect(try fixture.store.killSwitches().map(\.label) == ["env web"])
        #expect(try fixture.store.killSwitches().first?.actor == "claude@payments")
        for (body, words) in [(#"{"scope": "env", "name": "status-page", "on": true}"#, "platform"),
                              (#"{"scope": "team", "name": "platform", "on": true}"#, "not in team platform"),
                              (#"{"scope": "all", "on": true}"#, "only a human"),
                              (#"{"scope": "env", "name": "web", "on": false}"#, "only a human with a role")] {
            let answer = try fixture.call("POST", "/v1/kill", token: claude, body: body)
            #expect(answer.status == 403, "\(body): \(answer.status) \(answer.body)")
            #expect((answer.error?["message"] as? String)?.contains(words) == true, "\(body): \(answer.body)")
        }
        #expect(try fixture.store.killSwitches().count == 1)
        // Nothing runs in, wakes or sleeps a frozen environment through the API meanwhile.
        for (path, body) in [("/v1/environments/web/exec", #"{"command": ["true"]}"#), ("/v1/environments/web/sleep", "{}"), ("/v1/environments/web/wake", "{}")] {
            let answer = try fixture.call("POST", path, token: alice, body: body)
            #expect(answer.status == 409 && (answer.error?["message"] as? String)?.contains("kill switch") == true, "\(path): \(answer.status) \(answer.body)")
        }
        let lifted = try fixture.call("POST", "/v1/kill", token: alice, body: #"{"scope": "env", "name": "web", "on": false}"#)
        #expect(lifted.status == 200, "\(lifted.body)")
        #expect(try fixture.store.killSwitches().isEmpty)
        let off = try fixture.store.killSwitches(lifted: true).first
        #expect(off?.on == false && off?.actor == "alice@example.com")
    }

    @Test func badBodiesSayWhatToSend() throws {
        let fixture = try APIFixture()
        let alice = try fixture.token("alice@example.com")
        for body in [#"{"scope": "planet", "on": true}"#, #"{"scope": "env", "on": true}"#, #"{"scope": "env", "name": "web"}"#,
                     #"{"scope": "all", "on": true, "extra": 1}"#] {
            let answer = try fixture.call("POST", "/v1/kill", token: alice, body: body)
            #expect(answer.status == 400 || answer.status == 422, "\(body): \(answer.status)")
            #expect((answer.error?["fix"] as? String)?.isEmpty == false)
        }
    }
}
