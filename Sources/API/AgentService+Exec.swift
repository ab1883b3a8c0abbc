import Audit
import Foundation
import Reconciler
import SpecLoading
import StateStore

extension AgentService {
    public struct ExecCall: Sendable {
        public let request: ExecRequest
        public let record: EnvironmentRecord
        public let caller: Caller
    }

    /// Checks an exec request (`{"service", "command": [...], "timeoutSeconds"}`) and the caller's
    /// right to it, and records it (the command line, never its output) before anything runs.
    /// An agent never execs in production; a human needs the production approval role there.
    public func prepareExec(_ caller: Caller, _ name: String, body: Data) throws -> ExecCall {
        let fields = try JSONInput.object(body, what: "the request body")
        try fields.refuseUnknown(["service", "command", "timeoutSeconds"], in: "the request body")
        guard case .list(let items)? = fields[field: "command"], !items.isEmpty else {
            throw APIError.invalid("command must be a non-empty list of strings", fix: "give {\"command\": [\"python3\", \"-m\", \"pytest\"]}")
        }
        let command = try items.map { item -> String in
            guard case .string(let text) = item, text.utf8.count <= 8192, !text.contains("\0") else {
                throw APIError.invalid("command must be a list of strings (each at most 8192 bytes, no NUL)", fix: "give the program and its arguments as strings")
            }
            return text
        }
        guard command.count <= 256, !command[0].isEmpty else {
            throw APIError.invalid("command must name a program and at most 255 arguments", fix: "give the program and its arguments as strings")
        }
        let timeout: Double
        switch fields[field: "timeoutSeconds"] {
        case nil, .null?: timeout = configuration.defaultExecSeconds
        case .int(let value)?: timeout = Double(value)
        case .double(let value)?: timeout = value
        case let other?: throw APIError.invalid("timeoutSeconds must be a number, not \(other.json())", fix: "give seconds, at most \(Int(configuration.maxExecSeconds))")
        }
        guard timeout > 0, timeout <= configuration.maxExecSeconds else {
            throw APIError.invalid("timeoutSeconds must be more than 0 and at most \(Int(configuration.maxExecSeconds))", fix: "give a shorter time")
        }
        let service = try fields.string("service", in: "the request body")
        let record = try inspectable(caller, name)
        if let why = killSwitch(record) {
            throw APIError.conflict("\(record.name) is frozen by the \(why): nothing runs in it meanwhile",
                                    fix: "a human with a role lifts the switch (POST /v1/kill with \"on\": false)")
        }
        if record.envClass == "production" {
            let role = try trustedGovernance().settings.approvals["production"]?.role ?? "approver"
            guard caller.actor.kind == .human, caller.actor.roles.contains(role) else {
                throw APIError.forbidden("\(record.name) is production: \(caller.actor.kind == .agent ? "an agent never runs commands there" : "only humans with role \(role) run commands there")",
                                         fix: "exec in a preview of it instead (POST /v1/environments with cloneFrom)")
            }
        }
        // Refused here, before anything is recorded, when nothing could run.
        guard let spec = record.appliedSpec, !record.conditions.contains(.destroying) else {
            throw APIError.conflict("\(record.name) runs nothing now (\(record.conditions.contains(.destroying) ? "being torn down" : record.phase.rawValue))",
                                    fix: "wait until it is Running (GET /v1/environments/\(record.name))")
        }
        if let service, spec.service(named: service) == nil {
            throw APIError.notFound("\(record.name) has no service '\(service)'", fix: "services: \(spec.services.map(\.name).joined(separator: ", "))")
        }
        guard executor != nil else {
            throw APIError.conflict("this API runs without the driver (gantry api), so it cannot run commands in environments",
                                    fix: "use the API that `gantry run` serves (default 127.0.0.1:7070)")
        }
        let request = ExecRequest(environment: record.name, service: service, command: command, timeout: timeout)
        try audit?.append([AuditEntry(event: .exec, commit: record.commit, fields: [
            ("environment", record.name), ("branch", record.branch), ("commit", record.commit),
            ("actor", caller.principal), ("actor-kind", caller.actor.kind.rawValue), ("via", "api token \(caller.tokenID)"),
            ("service", service ?? record.appliedSpec?.services.first?.name ?? "-"),
            ("command", Self.bounded(redact(Self.shellLine(command)))),
        ])])
        logger.info("api: exec", metadata: ["gantry.env": "\(record.name)", "actor": "\(caller.principal)", "command": "\(Self.bounded(redact(Self.shellLine(command))))"])
        return ExecCall(request: request, record: record, caller: caller)
    }

    /// Runs a prepared exec; output goes to `output` as it comes (secret values masked).
    /// `output` answers false when no one reads any more: the command is then stopped.
    public func runExec(_ call: ExecCall, output: @escaping @Sendable (ExecStream, Data) -> Bool) throws -> ExecResult {
        guard let executor else { throw APIError.conflict("no driver runs here", fix: "use the API of `gantry run`") }
        let redact = self.redact
        do {
            let result = try executor.exec(call.request) { stream, data in
                output(stream, Data(redact(String(decoding: data, as: UTF8.self)).utf8))
            }
            metrics.exec(exitCode: result.exitCode)
            return result
        } catch let refusal as ExecRefusal {
            switch refusal.kind {
            case .notFound: throw APIError.notFound(refusal.description, fix: "GET /v1/environments/\(call.record.name) lists its services")
            case .notRunning: throw APIError.conflict(refusal.description, fix: "wait until it is Running (GET /v1/environments/\(call.record.name))")
            case .invalid: throw APIError.invalid(refusal.description, fix: "give the program and its arguments")
            }
        }
    }

    /// The whole exec in one answer: `{"exitCode", "stdout", "stderr", "timedOut"}`, each stream
    /// kept to its last `maxOutput` bytes.
    public func exec(_ caller: Caller, _ name: String, body: Data) throws -> PlainValue {
        let call = try prepareExec(caller, name, body: body)
        let collected = OutputCollector(limit: Self.maxOutput)
        let result = try runExec(call) { stream, data in
            collected.add(stream, data)
            return true
        }
        return Self.plain(result, stdout: collected.text(.stdout), stderr: collected.text(.stderr), environment: call.record.name)
    }

    static func plain(_ result: ExecResult, stdout: String?, stderr: String?, environment: String) -> PlainValue {
        var fields: [(key: String, value: PlainValue)] = [("environment", .string(environment)), ("service", .string(result.service)),
                                                          ("exitCode", .int(Int(result.exitCode))), ("timedOut", .bool(result.timedOut))]
        if let stdout { fields.append(("stdout", .string(stdout))) }
        if let stderr { fields.append(("stderr", .string(stderr))) }
        return .map(fields)
    }

    static let maxOutput = 1 << 20

    static func shellLine(_ command: [String]) -> String {
        command.map { word in
            word.allSatisfy({ $0.isLetter || $0.isNumber || "-_./=:,@%+".contains($0) }) && !word.isEmpty ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
        }.joined(separator: " ")
    }

    /// One line (`Printable.line`), at most 1000 characters.
    static func bounded(_ text: String) -> String {
        let line = Printable.line(text)
        return line.count <= 1000 ? line : String(line.prefix(1000)) + "… (\(text.utf8.count) bytes)"
    }
}

/// Output kept for a one-piece answer: the last `limit` bytes of each stream.
final class OutputCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var streams: [ExecStream: Data] = [:]
    private var dropped: [ExecStream: Int] = [:]
    let limit: Int

    init(limit: Int) { self.limit = limit }

    func add(_ stream: ExecStream, _ data: Data) {
        lock.withLock {
            var kept = streams[stream, default: Data()]
            kept.append(data)
            if kept.count > limit {
                dropped[stream, default: 0] += kept.count - limit
                kept = kept.suffix(limit)
            }
            streams[stream] = kept
        }
    }

    func text(_ stream: ExecStream) -> String {
        lock.withLock {
            let body = String(decoding: streams[stream] ?? Data(), as: UTF8.self)
            return dropped[stream].map { "[\($0) earlier bytes not kept]\n" + body } ?? body
        }
    }
}
