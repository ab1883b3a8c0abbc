import CEL
import Foundation
import Governance
import SpecModel
// The decoders are internal to SpecLoading (its public entry points read a Git repository), so the
// target imports it @testable: debug builds and the fuzzing build (`-enable-testing`) allow that.
// A plain release build (`swift build -c release`, as `make bench` does) only parses the YAML.
#if DEBUG || FUZZING
@testable import SpecLoading
#else
import SpecLoading
#endif

/// YAML → node tree → every decoder, as `ConfigLoader` runs them on a file of the repository.
enum SpecTarget {
    static let environmentFile = "environments/fuzz.yaml"

    static func run(_ data: Data) {
        let node: YAMLNode
        do { node = try YAMLParser().parse(data, file: environmentFile) } catch {
            FuzzTarget.trace("YAML: \(error)")
            return
        }
        _ = node.plainValue.json(sortKeys: true)
        #if DEBUG || FUZZING
        decode(node)
        #endif
    }

    #if DEBUG || FUZZING
    /// `templates/python-web.yaml` of example-repo/, merged under the input as `spec.template` does.
    static let template: YAMLNode? = try? YAMLParser().parse(Data("""
        apiVersion: gantry/v1
        kind: Template
        metadata: {name: python-web}
        spec:
          services:
            web:
              source: apps/hello
              command: ["python3", "server.py"]
              health: {http: /healthz, timeout: 2s}
              resources: {cpu: 0.1, memory: 64Mi}
              env:
                GREETING: "hello from ${env.name}"
          routes:
            - {name: www, service: web}
        """.utf8), file: "templates/python-web.yaml")

    /// `environments/status-page.yaml` of example-repo/, merged over the input taken as a template.
    static let environment: YAMLNode? = try? YAMLParser().parse(Data("""
        apiVersion: gantry/v1
        kind: Environment
        metadata: {name: status-page, team: platform, class: staging}
        spec:
          template: python-web
          services:
            web:
              env:
                GREETING: "status of ${env.name}: all systems go"
                UPSTREAM: "${services.web.url}"
        """.utf8), file: "environments/status-page.yaml")

    static func decode(_ node: YAMLNode) {
        // environments/*.yaml, as it is and with the example template merged under it.
        var diagnostics: [Diagnostic] = []
        exercise(SpecDecoder.environment(node, &diagnostics), diagnostics)
        if let templateSpec = template.flatMap({ References.find($0, ["spec"]) }) {
            diagnostics = []
            let merged = Merge.replacing(in: node, path: ["spec"]) { Merge.deep(base: templateSpec, over: $0) }
            exercise(SpecDecoder.environment(merged, &diagnostics), diagnostics)
        }
        // templates/*.yaml, alone and under the example environment.
        diagnostics = []
        _ = SpecDecoder.environment(node, kind: "Template", &diagnostics)
        render(diagnostics)
        if let inputSpec = References.find(node, ["spec"]), let environment {
            diagnostics = []
            let merged = Merge.replacing(in: environment, path: ["spec"]) { Merge.deep(base: inputSpec, over: $0) }
            exercise(SpecDecoder.environment(merged, &diagnostics), diagnostics)
        }
        // gantry.yaml
        diagnostics = []
        let settings = SpecDecoder.settings(node, &diagnostics)
        render(diagnostics)
        _ = settings.ignores(branch: "wip/feature-x")
        _ = settings.mayClone(from: "production", into: "preview")
        _ = try? JSONEncoder().encode(settings)
        // identities/actors.yaml
        diagnostics = []
        _ = SpecDecoder.actors(node, &diagnostics)
        render(diagnostics)
        // policies/*.yaml, compiled and evaluated as the admission step does.
        diagnostics = []
        let policy = SpecDecoder.policy(node, file: "policies/fuzz.yaml", &diagnostics)
        render(diagnostics)
        let policies = PolicySet(loaded: [(file: "policies/fuzz.yaml", policy: diagnostics.isEmpty ? policy : nil, diagnostics: diagnostics)])
        _ = policies.problems
        _ = policies.evaluate(CELTarget.bindings)
    }

    /// What the loader and the reconciler do next with a decoded environment.
    static func exercise(_ spec: EnvironmentSpec?, _ diagnostics: [Diagnostic]) {
        render(diagnostics)
        let loaded = LoadedEnvironment(file: environmentFile, spec: spec, templateFile: "templates/python-web.yaml", diagnostics: diagnostics)
        _ = loaded.name
        _ = loaded.isTouched(by: ["apps/hello/server.py", "infra/up.sh"])
        guard let spec else { return }
        _ = try? JSONEncoder().encode(spec)
        _ = Previews.name(environment: loaded.name, branch: "agent/fix-123")
        let resolve = Interpolation.resolver(spec: spec, domain: "localhost", ports: Dictionary(spec.services.map { ($0.name, 8080) }, uniquingKeysWith: { a, _ in a }))
        for service in spec.services { _ = try? Interpolation.resolve(service, resolve) }
        _ = PolicyInput.envValue(spec)
    }

    static func render(_ diagnostics: [Diagnostic]) {
        for diagnostic in diagnostics { _ = diagnostic.description }
        FuzzTarget.trace("\(diagnostics.count) diagnostic(s)\(diagnostics.first.map { ", first: \($0)" } ?? "")")
    }
    #endif
}
