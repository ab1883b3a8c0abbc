import CEL
import Foundation
import SpecLoading
import SpecModel
import Testing
@testable import Governance

@Suite struct PolicyTests {
    func spec(replicas: Int, class envClass: EnvironmentClass = .preview) -> EnvironmentSpec {
        var spec = EnvironmentSpec(name: "web--x", team: "payments", class: envClass)
        var service = Service(name: "api")
        service.command = ["python3", "server.py"]
        service.replicas = replicas
        spec.services = [service]
        return spec
    }

    func variables(_ spec: EnvironmentSpec) -> [String: CELValue] {
        PolicyInput.variables(env: spec, previous: nil, actor: Actor(principal: "claude@payments", kind: .agent),
                              principal: "claude@payments", onBehalfOf: nil, task: "PAY-1", branch: "agents/x", protected: false,
                              commit: .init(sha: String(repeating: "a", count: 40), message: "m", trailers: []),
                              changedFiles: ["environments/web.yaml"], approvals: [], now: Date())
    }

    func policy(_ action: Policy.Action, match: String? = "env.class == 'preview'", _ rules: [(String, String)]) -> Policy {
        Policy(name: "limits", file: "policies/limits.yaml", match: match.map { .init(expr: $0, message: "", line: 5, column: 10) },
               action: action, rules: rules.map { .init(expr: $0.0, message: $0.1, line: 8, column: 13) })
    }

    @Test func denyWarnAuditAndNotApplicable() {
        let limit = ("env.spec.services.all(s, env.spec.services[s].replicas <= 2)", "a preview may run at most 2 replicas of a service")
        let denied = PolicySet(loaded: [("policies/limits.yaml", policy(.deny, [limit]), [])]).evaluate(variables(spec(replicas: 3)))
        #expect(denied.denied)
        #expect(denied.rules == ["policy limits: fail: a preview may run at most 2 replicas of a service"])
        let passed = PolicySet(loaded: [("policies/limits.yaml", policy(.deny, [limit]), [])]).evaluate(variables(spec(replicas: 2)))
        #expect(!passed.denied && passed.rules == ["policy limits: pass"])
        let warned = PolicySet(loaded: [("policies/limits.yaml", policy(.warn, [limit]), [])]).evaluate(variables(spec(replicas: 3)))
        #expect(!warned.denied && warned.rules == ["policy limits: warn: a preview may run at most 2 replicas of a service"])
        let audited = PolicySet(loaded: [("policies/limits.yaml", policy(.audit, [limit]), [])]).evaluate(variables(spec(replicas: 3)))
        #expect(!audited.denied && audited.rules.first?.hasPrefix("policy limits: audit:") == true)
        let other = PolicySet(loaded: [("policies/limits.yaml", policy(.deny, [limit]), [])]).evaluate(variables(spec(replicas: 3, class: .production)))
        #expect(!other.denied && other.rules == ["policy limits: not applicable"])
    }

    @Test func variablesOfTheContractAreThere() {
        let rules = [("actor.kind == 'agent' && actor.id == 'claude@payments'", "actor"), ("task == 'PAY-1'", "task"),
                     ("branch.name.startsWith('agents/') && !branch.protected", "branch"), ("'environments/web.yaml' in change.files", "change"),
                     ("size(commit.sha) == 40 && now > timestamp('2020-01-01T00:00:00Z')", "commit/now"), ("previous == null", "previous"),
                     ("env.team == 'payments' && env.spec.services.api.command[0] == 'python3'", "env")]
        let verdict = PolicySet(loaded: [("p.yaml", policy(.deny, match: nil, rules), [])]).evaluate(variables(spec(replicas: 1)))
        #expect(verdict.rules == ["policy limits: pass"], "\(verdict.rules)")
    }

    @Test func brokenPoliciesFailClosedWithPositions() {
        let syntax = PolicySet(loaded: [("policies/limits.yaml", policy(.deny, [("env.spec.services.all(s, ", "x")]), [])])
        let verdict = syntax.evaluate(variables(spec(replicas: 1)))
        #expect(verdict.denied)
        #expect(verdict.rules.first?.contains("policies/limits.yaml:8:13: rule 1 of policy limits does not parse") == true)
        let brokenFile = PolicySet(loaded: [("policies/bad.yaml", nil, [Diagnostic(SourceMark(file: "policies/bad.yaml", line: 3, column: 1), "YAML syntax error")])])
        #expect(brokenFile.evaluate(variables(spec(replicas: 1))).denied)
    }

    @Test func aHostileRuleEndsWithAnErrorAndFailsClosed() {
        let loop = ("[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, [1,2,3,4,5,6,7,8,9,10].all(e, a + b + c + d + e > 0)))))", "loops")
        let start = Date()
        let verdict = PolicySet(loaded: [("p.yaml", policy(.deny, match: nil, [loop]), [])]).evaluate(variables(spec(replicas: 1)))
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(verdict.denied)
        #expect(verdict.rules.first?.contains("cost limit") == true)
    }
}
