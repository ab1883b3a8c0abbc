import CEL
import Foundation
import Governance
import SpecModel

/// The input is a CEL expression (UTF-8; invalid bytes become U+FFFD, as `String(decoding:)` reads
/// them). It is parsed, then evaluated over the variables a policy sees, with the policies' cost
/// limit, and its result described as `gantry cel` prints it.
enum CELTarget {
    /// The cost limit `PolicySet.evaluate` uses.
    static let costLimit = 100_000

    static func run(_ data: Data) {
        let source = String(decoding: data, as: UTF8.self)
        let program: CELProgram
        do { program = try CELProgram(source) } catch {
            FuzzTarget.trace("syntax: \(error)")
            return
        }
        do {
            let value = try program.evaluate(bindings, costLimit: costLimit)
            let described = Conformance.describe(value)
            FuzzTarget.trace("value: \(described.prefix(200))")
        } catch {
            FuzzTarget.trace("error: \(error)")
        }
    }

    /// The variables of FORMATS.md for the example repository's `status-page` environment, plus a
    /// few plain values (`i`, `u`, `d`, `s`, `b`, `l`, `m`) for the fuzzer to combine.
    static let bindings: [String: CELValue] = {
        var spec = EnvironmentSpec(name: "status-page", team: "platform", class: .staging)
        spec.template = "python-web"
        var web = Service(name: "web")
        web.source = "apps/hello"
        web.command = ["python3", "server.py"]
        web.health = Health(http: "/healthz", timeout: 2)
        web.resources.cpu = 0.1
        web.resources.memory = 64 << 20
        web.env = [EnvVar(name: "GREETING", value: "status of ${env.name}: all systems go"),
                   EnvVar(name: "UPSTREAM", value: "${services.web.url}")]
        spec.services = [web]
        spec.databases = [Database(name: "main", engine: "postgres")]
        spec.caches = [Cache(name: "sessions", engine: "redis")]
        spec.secrets = ["API_TOKEN"]
        spec.routes = [Route(name: "www", service: "web")]
        spec.lifecycle.ttl = 72 * 3600
        var actor = Actor(principal: "claude@payments", kind: .agent)
        actor.teams = ["payments"]
        actor.actsFor = ["alice@example.com"]
        var variables = PolicyInput.variables(
            env: spec, previous: nil, actor: actor, principal: "claude@payments", onBehalfOf: "alice@example.com",
            task: "T-42", branch: "agent/fix-123", protected: false,
            commit: .init(sha: String(repeating: "ab", count: 20), message: "Fix the status page\n\nOn-Behalf-Of: alice@example.com\nTask: T-42\n",
                          trailers: [(key: "On-Behalf-Of", value: "alice@example.com"), (key: "Task", value: "T-42")]),
            changedFiles: ["environments/status-page.yaml", "apps/hello/server.py"], approvals: ["alice@example.com"],
            now: Date(timeIntervalSince1970: 1_735_689_600.25))
        variables["i"] = .int(-42)
        variables["u"] = .uint(42)
        variables["d"] = .double(2.5)
        variables["s"] = .string("héllo, wörld")
        variables["b"] = .bytes(Array("bytes\u{0}\u{ff}".utf8))
        variables["l"] = .list((0..<10).map { .int($0) })
        variables["m"] = .map((try? CELMap([(.string("a"), .int(1)), (.int(2), .string("b")), (.bool(true), .null)])) ?? CELMap())
        return variables
    }()
}
