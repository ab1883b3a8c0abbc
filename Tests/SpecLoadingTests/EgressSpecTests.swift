import Foundation
import GitStore
import SpecModel
import Testing
import TestSupport
@testable import SpecLoading

/// Egress lists in specs and gantry.yaml: hosts, wildcards, injection entries, and what is refused.
@Suite struct EgressSpecTests {
    func load(_ spec: String, settings: String? = nil) throws -> (EnvironmentSpec?, [String]) {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("environments/probe.yaml", spec)
        if let settings {
            let current = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
            try repo.write("gantry.yaml", current + settings)
        }
        let sha = try repo.commit("probe")
        let loader = ConfigLoader(repository: try repo.open())
        let commit = ObjectID(hex: sha)!
        let problems = try loader.validate(at: commit).map { "\($0)" }
        return (try loader.environments(at: commit).first { $0.name == "probe" }?.spec, problems)
    }

    @Test func listsAndInjectionsAreRead() throws {
        let (spec, problems) = try load("""
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: probe, team: payments, class: development}
            spec:
              egress: ["*.svc.test", "**.pypi.org"]
              secrets: [stripe-key]
              services:
                web:
                  command: [python3, server.py]
                  egress: [api.github.com, {host: api.stripe.com, inject: {Authorization: "Bearer ${secrets.stripe-key}"}}]
            """)
        #expect(problems.isEmpty, "\(problems)")
        #expect(spec?.egress == ["*.svc.test", "**.pypi.org"])
        #expect(spec?.services.first?.egress == ["api.github.com", "api.stripe.com"])
        let inject = try #require(spec?.services.first?.egressInject?.first)
        #expect(inject.host == "api.stripe.com" && inject.tls && inject.headers.first?.value == "Bearer ${secrets.stripe-key}")
        // As the state DB keeps it (the applied spec), and read back.
        let json = try JSONEncoder().encode(spec)
        let back = try JSONDecoder().decode(EnvironmentSpec.self, from: json)
        #expect(back == spec)
    }

    @Test func badEntriesAreRefusedWithTheirPlace() throws {
        let (_, problems) = try load("""
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: probe, team: payments, class: development}
            spec:
              egress: ["*.com", "api.stripe.com:443"]
              services:
                web:
                  command: [python3, server.py]
                  egress: [{host: "*.stripe.com", inject: {Authorization: "x"}}, {host: evil.test, inject: {Authorization: "${env.name}"}},
                           {host: other.test, inject: {X-Key: "${secrets.unlisted}"}}]
            """, settings: "egress: {default: deny, allow: [\"a.*.b.com\"], deny: []}\n")
        let text = problems.joined(separator: "\n")
        #expect(text.contains("spec.egress[0]") && text.contains("two labels"), "\(text)")
        #expect(text.contains("spec.egress[1]") && text.contains("port"))
        #expect(text.contains("must be one exact host name"))
        #expect(text.contains("may only name secrets"))
        #expect(text.contains("which spec.secrets does not list"))
        #expect(text.contains("egress.allow[0]"))
        #expect(text.contains("probe.yaml:"), "no file and line: \(text)")
    }
}
