import Foundation
import Logging
import MCP
import Reconciler
import SpecLoading

/// The MCP server's tools (FORMATS.md section 4) over the same `AgentService` as the HTTP API.
/// Each result is a short text an agent can act on plus `structuredContent` with the JSON the
/// HTTP API answers.
public enum MCPTools {
    struct Definition {
        let tool: Tool
        let run: @Sendable (AgentService, Caller, [String: Value]) throws -> (text: String, value: PlainValue)
    }

    static func object(_ properties: [String: Value], required: [String] = []) -> Value {
        .object(["type": "object", "properties": .object(properties), "required": .array(required.map { .string($0) }),
                 "additionalProperties": false])
    }

    static let name: Value = ["type": "string", "description": "The environment's name (as listed), or the short name the API made it under"]
    static let anyObject: Value = ["type": "object"]

    static func output(_ required: [String]) -> Value {
        .object(["type": "object", "required": .array(required.map { .string($0) })])
    }

    static let definitions: [Definition] = [
        Definition(tool: Tool(name: "list_environments", description: "Every environment the token may see: phase, branch, commit, services and URLs.",
                              inputSchema: object([:]), annotations: .init(readOnlyHint: true, openWorldHint: false),
                              outputSchema: output(["environments"]))) { service, caller, _ in
            let value = try service.listEnvironments(caller)
            guard case .list(let items)? = value.field("environments") else { return ("no environments", value) }
            let lines = items.map { "\($0.field("name")?.text ?? "?"): \($0.field("phase")?.text ?? "?")" }
            return (items.isEmpty ? "no environments" : lines.joined(separator: "\n"), value)
        },
        Definition(tool: Tool(name: "get_environment", description: "One environment: phase, conditions, services, routes and the next steps.",
                              inputSchema: object(["name": name], required: ["name"]), annotations: .init(readOnlyHint: true, openWorldHint: false),
                              outputSchema: output(["name", "phase"]))) { service, caller, arguments in
            let value = try service.environment(caller, try string(arguments, "name"))
            return (summaryText(value), value)
        },
        Definition(tool: Tool(name: "diagnose", description: "Everything about one environment in one answer: verdicts with each rule's result, service health, restarts, last log lines (secrets masked), secret rotations, drift, what to do next.",
                              inputSchema: object(["name": name], required: ["name"]), annotations: .init(readOnlyHint: true, openWorldHint: false),
                              outputSchema: output(["name", "phase", "services", "next"]))) { service, caller, arguments in
            let value = try service.diagnose(caller, try string(arguments, "name"))
            return (summaryText(value), value)
        },
        Definition(tool: Tool(name: "logs", description: "The last lines of an environment's logs (secret values masked).",
                              inputSchema: object(["name": name, "service": ["type": "string"], "tail": ["type": "integer", "minimum": 1, "maximum": 1000]], required: ["name"]),
                              annotations: .init(readOnlyHint: true, openWorldHint: false), outputSchema: output(["environment", "files"]))) { service, caller, arguments in
            let value = try service.logs(caller, try string(arguments, "name"), service: try optionalString(arguments, "service"),
                                         tail: try number(arguments["tail"], "tail", maximum: 1000).map { Int($0) })
            var text: [String] = []
            if case .list(let files)? = value.field("files") {
                for file in files {
                    text.append("== \(file.field("file")?.text ?? "?")")
                    if case .list(let lines)? = file.field("lines") { text += lines.compactMap(\.text) }
                }
            }
            return (text.isEmpty ? "no logs yet" : text.joined(separator: "\n"), value)
        },
        Definition(tool: Tool(name: "create_environment", description: "Create a preview: Gantry commits it to branch agents/<principal>/<name>, signed, and the reconciler judges it like any push. Give a template, a spec, or cloneFrom; wait (seconds) blocks until it serves or is refused.",
                              inputSchema: object(["name": ["type": "string"], "template": ["type": "string"], "spec": anyObject, "cloneFrom": ["type": "string"],
                                                   "team": ["type": "string"], "task": ["type": "string"], "wait": ["type": "number", "minimum": 0, "maximum": 600]],
                                                  required: ["name"]),
                              annotations: .init(readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false),
                              outputSchema: output(["environment", "branch", "commit"]))) { service, caller, arguments in
            var body = arguments
            let wait = try number(body.removeValue(forKey: "wait"), "wait", maximum: 600)
            let created = service.named(try service.create(caller, body: try JSONEncoder().encode(Value.object(body))))
            let state = wait.flatMap { service.waitServing(branch: created.branch, source: String(created.file.dropFirst("environments/".count).dropLast(5)),
                                                            commit: created.commit, seconds: $0) }
            let value = service.plain(created, state: state)
            let phase = state?.field("phase")?.text
            return ("created \(created.environment) on branch \(created.branch) at \(created.commit.short)"
                    + (phase.map { "; it is \($0)" } ?? (wait != nil ? "; not serving yet: call get_environment or diagnose" : "; call get_environment to follow it")), value)
        },
        Definition(tool: Tool(name: "destroy_environment", description: "Delete the branch the API made for this principal; the reconciler destroys the environment.",
                              inputSchema: object(["name": name], required: ["name"]),
                              annotations: .init(readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false),
                              outputSchema: output(["environment", "branch", "deleted"]))) { service, caller, arguments in
            let value = try service.destroy(caller, try string(arguments, "name"))
            return ("branch \(value.field("branch")?.text ?? "?") deleted; \(value.field("environment")?.text ?? "?") is destroyed at the next pass", value)
        },
        Definition(tool: Tool(name: "exec", description: "Run a command in an environment's context (its user, cgroup, network, variables and secrets, working directory); returns exit code and output. Audited (the command line, not the output).",
                              inputSchema: object(["name": name, "service": ["type": "string"], "command": ["type": "array", "items": ["type": "string"], "minItems": 1],
                                                   "timeoutSeconds": ["type": "number", "exclusiveMinimum": 0, "maximum": 600]], required: ["name", "command"]),
                              annotations: .init(readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false),
                              outputSchema: output(["exitCode", "timedOut"]))) { service, caller, arguments in
            var body = arguments
            let name = try string(arguments, "name")
            body.removeValue(forKey: "name")
            let value = try service.exec(caller, name, body: try JSONEncoder().encode(Value.object(body)))
            let code = value.field("exitCode").flatMap { if case .int(let code) = $0 { return code } else { return nil } } ?? -1
            var text = "exit code \(code)\(value.field("timedOut") == .bool(true) ? " (timed out)" : "")"
            if let out = value.field("stdout")?.text, !out.isEmpty { text += "\nstdout:\n" + String(out.suffix(4000)) }
            if let err = value.field("stderr")?.text, !err.isEmpty { text += "\nstderr:\n" + String(err.suffix(4000)) }
            return (text, value)
        },
        Definition(tool: Tool(name: "explain_commit", description: "Each environment a commit touches: the verdict, every rule's result, and what would satisfy a failing rule.",
                              inputSchema: object(["commit": ["type": "string", "description": "4 to 40 hex digits"]], required: ["commit"]),
                              annotations: .init(readOnlyHint: true, openWorldHint: false), outputSchema: output(["commit", "lines"]))) { service, caller, arguments in
            let value = try service.explain(caller, commit: try string(arguments, "commit"))
            guard case .list(let lines)? = value.field("lines") else { return ("", value) }
            return (lines.compactMap(\.text).joined(separator: "\n"), value)
        },
        Definition(tool: Tool(name: "audit_log", description: "Signed audit records, newest first, filtered by environment, actor, event and time.",
                              inputSchema: object(["environment": ["type": "string"], "actor": ["type": "string"], "event": ["type": "string"],
                                                   "since": ["type": "string", "description": "RFC 3339 time"], "limit": ["type": "integer", "minimum": 1, "maximum": 1000]]),
                              annotations: .init(readOnlyHint: true, openWorldHint: false), outputSchema: output(["records"]))) { service, caller, arguments in
            let value = try service.audit(caller, environment: try optionalString(arguments, "environment"), actor: try optionalString(arguments, "actor"),
                                          event: try optionalString(arguments, "event"), since: try optionalString(arguments, "since"),
                                          limit: try number(arguments["limit"], "limit", maximum: 1000).map { Int($0) })
            guard case .list(let records)? = value.field("records") else { return ("no records", value) }
            let lines = records.map { record in
                ["seq", "at", "event", "environment", "actor"].compactMap { record.field($0).map { $0.text ?? $0.json() } }.joined(separator: " ")
            }
            return (lines.isEmpty ? "no records" : lines.joined(separator: "\n"), value)
        },
        Definition(tool: Tool(name: "budget", description: "Spend against the budgets of your teams and yourself this period: limit, spent, projection, top environments, what runs now and what it costs per hour.",
                              inputSchema: object([:]), annotations: .init(readOnlyHint: true, openWorldHint: false),
                              outputSchema: output(["budgets", "environments"]))) { service, caller, _ in
            let value = try service.budgets(caller)
            var lines: [String] = []
            if case .list(let budgets)? = value.field("budgets") {
                for budget in budgets {
                    let field = { (key: String) in budget.field(key).map { $0.text ?? $0.json() } ?? "?" }
                    lines.append("\(field("scope")) \(field("name")) \(field("period")) (\(field("label"))): spent \(field("spent")) of \(field("limit")), projected \(field("projected"))\(budget.field("exhausted") == .bool(true) ? " — spent: previews paused, new ones denied" : "")")
                }
            }
            lines.append("running now: \(value.field("hourly").map { $0.json() } ?? "0")/h")
            return (lines.joined(separator: "\n"), value)
        },
        Definition(tool: Tool(name: "wake_environment", description: "Wake a sleeping environment (its services start and are checked healthy); answers once it serves. A request through the router wakes it too.",
                              inputSchema: object(["name": name], required: ["name"]),
                              annotations: .init(readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false),
                              outputSchema: output(["name", "phase"]))) { service, caller, arguments in
            let value = try service.lifecycle(caller, try string(arguments, "name"), action: "wake")
            return (summaryText(value), value)
        },
    ]

    static func summaryText(_ value: PlainValue) -> String {
        var text = "\(value.field("name")?.text ?? "?"): \(value.field("phase")?.text ?? "?")"
        if case .list(let conditions)? = value.field("conditions"), !conditions.isEmpty {
            text += " [\(conditions.compactMap(\.text).joined(separator: ", "))]"
        }
        if let message = value.field("message")?.text { text += " — \(message)" }
        if case .list(let next)? = value.field("next") { text += next.compactMap(\.text).map { "\nnext: \($0)" }.joined() }
        return text
    }

    static func string(_ arguments: [String: Value], _ key: String) throws -> String {
        guard let text = arguments[key]?.stringValue, !text.isEmpty else {
            throw APIError.invalid("\(key) is required and must be a string", fix: "give \(key)")
        }
        return text
    }

    /// A number argument from 0 to `maximum` (nil when absent), else a refusal.
    static func number(_ value: Value?, _ key: String, maximum: Double) throws -> Double? {
        guard let value, !value.isNull else { return nil }
        guard let number = Double(value), number.isFinite, number >= 0, number <= maximum else {
            throw APIError.invalid("\(key) must be a number from 0 to \(Int(maximum))", fix: "give \(key) as a number from 0 to \(Int(maximum))")
        }
        return number
    }

    static func optionalString(_ arguments: [String: Value], _ key: String) throws -> String? {
        guard let value = arguments[key], !value.isNull else { return nil }
        guard let text = value.stringValue else { throw APIError.invalid("\(key) must be a string", fix: "give \(key) as a string") }
        return text
    }

    /// A server with the tools, acting for whoever `caller` authenticates (per call).
    public static func makeServer(service: AgentService, caller: @escaping @Sendable () throws -> Caller) async -> Server {
        let server = Server(name: "gantry", version: "0.11.0",
                            instructions: "Gantry runs governed environments from Git. create_environment makes a preview on a branch of yours; diagnose says what is wrong and what to do next; exec runs your tests beside its services.",
                            capabilities: .init(tools: .init(listChanged: false)))
        await server.withMethodHandler(ListTools.self) { _ in .init(tools: definitions.map(\.tool)) }
        await server.withMethodHandler(CallTool.self) { parameters in
            guard let definition = definitions.first(where: { $0.tool.name == parameters.name }) else {
                return .init(content: [.text(text: "no tool \(parameters.name); tools: \(definitions.map(\.tool.name).joined(separator: ", "))", annotations: nil, _meta: nil)], isError: true)
            }
            let outcome: Result<(text: String, value: PlainValue), Error> = await withCheckedContinuation { continuation in
                Thread.detachNewThread {
                    continuation.resume(returning: Result {
                        let caller = try caller()
                        try service.inFlight.enter(caller.tokenID)
                        defer { service.inFlight.leave(caller.tokenID) }
                        return try definition.run(service, caller, parameters.arguments ?? [:])
                    })
                }
            }
            switch outcome {
            case .success(let (text, value)):
                let structured = try JSONDecoder().decode(Value.self, from: Data(value.json().utf8))
                return try CallTool.Result(content: [.text(text: text, annotations: nil, _meta: nil)], structuredContent: Optional(structured))
            case .failure(let error):
                let failure = APIServer.apiError(error)
                return try CallTool.Result(content: [.text(text: "error (\(failure.code)): \(failure.message); fix: \(failure.fix)", annotations: nil, _meta: nil)],
                             structuredContent: Optional(try JSONDecoder().decode(Value.self, from: Data(failure.body.json().utf8))), isError: true)
            }
        }
        return server
    }
}

extension PlainValue {
    func field(_ name: String) -> PlainValue? {
        guard case .map(let fields) = self else { return nil }
        return fields.first { $0.key == name }?.value
    }

    var text: String? {
        if case .string(let text) = self { return text }
        return nil
    }
}
