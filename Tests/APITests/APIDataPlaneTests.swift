import Foundation
import StateStore
import Testing
import TestSupport

/// The data plane's endpoints take the data-plane token and nothing else; reports stand only for
/// plans issued, under their environment.
@Suite(.serialized) struct APIDataPlaneTests {
    static let token = "dp-token-for-the-api-tests-0123456789"

    @Test func onlyTheDataPlaneTokenReachesThePlans() throws {
        let fixture = try APIFixture(dataPlaneToken: Self.token)
        let sequence = try fixture.store.issuePlan(environment: "web", action: "apply") { _ in Data(#"{"plan":"e30=","signature":"x"}"#.utf8) }
        let plans = try fixture.call("GET", "/v1/dataplane/plans?after=0", token: Self.token)
        #expect(plans.status == 200 && (plans.json["plans"] as? [[String: Any]])?.count == 1, "\(plans.body)")
        #expect(try fixture.call("GET", "/v1/dataplane/plans?after=\(sequence)", token: Self.token).json["plans"] as? [Any] != nil)
        // An agent's API token, an admin's, no token, a near miss: 401.
        let admin = try fixture.token("owner@example.com")
        for token in [admin, try fixture.token("agent@example.com"), Self.token + "x", String(Self.token.dropLast())] {
            #expect(try fixture.call("GET", "/v1/dataplane/plans?after=0", token: token).status == 401)
            #expect(try fixture.call("POST", "/v1/dataplane/reports", token: token, body: #"{"reports":[]}"#).status == 401)
        }
        #expect(try fixture.call("GET", "/v1/dataplane/plans?after=0").status == 401)
        // The data-plane token reaches nothing else.
        #expect(try fixture.call("GET", "/v1/environments", token: Self.token).status == 401)
    }

    @Test func aReportStandsOnlyForAPlanIssuedUnderItsEnvironment() throws {
        let fixture = try APIFixture(dataPlaneToken: Self.token)
        let issued = try fixture.store.issuePlan(environment: "web", action: "apply") { _ in Data("{}".utf8) }
        let body = #"{"reports":[{"sequence":\#(issued),"environment":"status-page","ok":true,"changes":["x"]},{"sequence":\#(issued + 1),"environment":"web","ok":true}],"health":{"lastSequence":\#(issued)}}"#
        let answer = try fixture.call("POST", "/v1/dataplane/reports", token: Self.token, body: body)
        #expect(answer.status == 200 && answer.json["received"] as? Int == 1, "\(answer.body)")
        #expect(try fixture.store.report(of: issued)?.environment == "web")
        #expect(try fixture.store.report(of: issued + 1) == nil, "a report in advance of a plan is not kept")
        #expect(try fixture.store.dataPlaneHealth()?.body.contains("lastSequence") == true)
        #expect(try fixture.call("POST", "/v1/dataplane/reports", token: Self.token, body: "not json").status == 400)
    }

    @Test func withoutADataPlaneTheEndpointsAreNotThere() throws {
        let fixture = try APIFixture()
        let answer = try fixture.call("GET", "/v1/dataplane/plans?after=0", token: Self.token)
        #expect(answer.status == 404 && (answer.error?["code"] as? String) == "no-data-plane")
    }
}
