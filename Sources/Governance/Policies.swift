import CEL
import Foundation
import SpecLoading
import SpecModel

/// The policies of the protected branch, compiled once per policy revision.
public struct PolicySet: Sendable {
    struct Compiled: Sendable {
        let policy: Policy
        let match: CELProgram?
        let rules: [(rule: Policy.Rule, program: CELProgram?)]
        /// Syntax errors, with the policy file's position: the policy then fails closed.
        let problems: [String]
    }

    let compiled: [Compiled]
    /// Policy files that are not valid YAML or not a Policy: they fail closed for every environment.
    public let brokenFiles: [(file: String, problems: [String])]
    public var count: Int { compiled.count }
    /// Rules and matches that do not parse, each `file:line:col: ...`.
    public var problems: [String] { compiled.flatMap(\.problems) }

    public init(loaded: [(file: String, policy: Policy?, diagnostics: [Diagnostic])]) {
        var compiled: [Compiled] = []
        var broken: [(String, [String])] = []
        for entry in loaded {
            guard let policy = entry.policy else {
                broken.append((entry.file, entry.diagnostics.map(\.description)))
                continue
            }
            var problems: [String] = []
            func compile(_ rule: Policy.Rule, _ what: String) -> CELProgram? {
                do { return try CELProgram(rule.expr) } catch {
                    problems.append("\(policy.file):\(rule.line):\(rule.column): \(what) of policy \(policy.name) does not parse (at \(error)); fix it on the protected branch")
                    return nil
                }
            }
            let match = policy.match.flatMap { compile($0, "the match expression") }
            let rules = policy.rules.enumerated().map { (rule: $1, program: compile($1, "rule \($0 + 1)")) }
            compiled.append(Compiled(policy: policy, match: match, rules: rules, problems: problems))
        }
        self.compiled = compiled
        self.brokenFiles = broken
    }

    /// What the policies say of one environment.
    public struct Verdict: Sendable {
        /// One line per policy (and failing rule), for the record's `rule:` lines.
        public var rules: [String] = []
        /// True when a `deny` policy failed (or could not be evaluated: policies fail closed).
        public var denied = false
        public var remedies: [String] = []
    }

    /// Evaluates every policy against `variables` (see `PolicyInput`), each step bounded by `costLimit`.
    public func evaluate(_ variables: [String: CELValue], costLimit: Int = 100_000) -> Verdict {
        var verdict = Verdict()
        for file in brokenFiles {
            verdict.denied = true
            verdict.rules.append("policy file \(file.file): invalid, fails closed: \(file.problems.joined(separator: "; "))")
            verdict.remedies.append("fix \(file.file) on the protected branch")
        }
        for entry in compiled {
            let name = "policy \(entry.policy.name)"
            if !entry.problems.isEmpty {
                verdict.denied = true
                verdict.rules += entry.problems.map { "\(name): invalid, fails closed: \($0)" }
                verdict.remedies.append("fix \(entry.policy.file) on the protected branch")
                continue
            }
            if let match = entry.match {
                switch Self.check(match, variables, costLimit) {
                case .success(false): verdict.rules.append("\(name): not applicable"); continue
                case .success(true): break
                case .failure(let error):
                    verdict.denied = true
                    verdict.rules.append("\(name): match failed, fails closed: \(error)")
                    continue
                }
            }
            var failures: [String] = []
            for (rule, program) in entry.rules {
                switch Self.check(program!, variables, costLimit) {
                case .success(true): continue
                case .success(false): failures.append(rule.message)
                case .failure(let error): failures.append("\(rule.message) (evaluation error, fails closed: \(error))")
                }
            }
            if failures.isEmpty {
                verdict.rules.append("\(name): pass")
                continue
            }
            switch entry.policy.action {
            case .deny:
                verdict.denied = true
                verdict.rules += failures.map { "\(name): fail: \($0)" }
                verdict.remedies += failures.map { "satisfy \(name): \($0)" }
            case .warn: verdict.rules += failures.map { "\(name): warn: \($0)" }
            case .audit: verdict.rules += failures.map { "\(name): audit: \($0)" }
            }
        }
        return verdict
    }

    static func check(_ program: CELProgram, _ variables: [String: CELValue], _ costLimit: Int) -> Result<Bool, CELError> {
        do {
            guard case .bool(let flag) = try program.evaluate(variables, costLimit: costLimit) else {
                return .failure(CELError("the expression is not a bool"))
            }
            return .success(flag)
        } catch let error as CELError {
            return .failure(error)
        } catch {
            return .failure(CELError("\(error)"))
        }
    }
}

/// The CEL variables of FORMATS.md for one environment at one commit.
public enum PolicyInput {
    public struct Commit: Sendable {
        public let sha: String
        public let message: String
        public let trailers: [(key: String, value: String)]
        public init(sha: String, message: String, trailers: [(key: String, value: String)]) {
            self.sha = sha
            self.message = message
            self.trailers = trailers
        }
    }

    /// `env` is nil when the change removes the environment (`previous` is then what runs).
    public static func variables(env: EnvironmentSpec?, previous: EnvironmentSpec?, actor: Actor?, principal: String?,
                                 onBehalfOf: String?, task: String?, branch: String, protected: Bool, commit: Commit,
                                 changedFiles: [String], approvals: [String], now: Date,
                                 clone: (name: String, class: String, team: String?)? = nil,
                                 cost: CELValue? = nil, budget: CELValue? = nil) -> [String: CELValue] {
        let actorValue: CELValue = .map(map([
            ("id", .string(principal ?? "")), ("kind", .string(actor?.kind.rawValue ?? "unverified")),
            ("teams", .list((actor?.teams ?? []).map { .string($0) })), ("roles", .list((actor?.roles ?? []).map { .string($0) })),
        ]))
        let seconds = now.timeIntervalSince1970
        return [
            "env": env.map(envValue) ?? .null,
            "previous": previous.map(envValue) ?? .null,
            "actor": actorValue,
            "onBehalfOf": onBehalfOf.map { .string($0) } ?? .null,
            "task": task.map { .string($0) } ?? .null,
            "branch": .map(map([("name", .string(branch)), ("protected", .bool(protected))])),
            "commit": .map(map([("sha", .string(commit.sha)), ("message", .string(commit.message)),
                                ("trailers", .map(map(commit.trailers.map { ($0.key, .string($0.value)) })))])),
            "change": .map(map([("files", .list(changedFiles.map { .string($0) }))])),
            "cost": cost ?? .map(map([("hourly", .double(0))])),
            "budget": budget ?? .map(map([])),
            "approvals": .list(approvals.map { .string($0) }),
            "clone": clone.map { source in .map(map([("from", .map(map([("name", .string(source.name)), ("class", .string(source.class)),
                                                                          ("team", source.team.map { .string($0) } ?? .null)])))])) } ?? .null,
            "now": .timestamp(seconds: Int64(seconds.rounded(.down)), nanos: Int32((seconds - seconds.rounded(.down)) * 1e9)),
        ]
    }

    /// The effective spec in its YAML shape (services keyed by name), with `name`, `class`, `team`.
    public static func envValue(_ spec: EnvironmentSpec) -> CELValue {
        func strings(_ values: [String]) -> CELValue { .list(values.map { .string($0) }) }
        let services = spec.services.map { service -> (String, CELValue) in
            var fields: [(String, CELValue)] = [("command", strings(service.command)), ("replicas", .int(Int64(service.replicas))),
                                                ("env", .map(map(service.env.map { ($0.name, .string($0.value)) }))),
                                                ("egress", strings(service.egress))]
            if let source = service.source { fields.append(("source", .string(source))) }
            if let image = service.image { fields.append(("image", .string(image))) }
            if let health = service.health {
                fields.append(("health", .map(map([("http", health.http.map { .string($0) } ?? .null), ("timeout", .double(health.timeout))]))))
            }
            var resources: [(String, CELValue)] = []
            if let cpu = service.resources.cpu { resources.append(("cpu", .double(cpu))) }
            if let memory = service.resources.memory { resources.append(("memory", .int(Int64(memory)))) }
            fields.append(("resources", .map(map(resources))))
            if let scale = service.autoscale {
                fields.append(("autoscale", .map(map([("min", .int(Int64(scale.min))), ("max", .int(Int64(scale.max))),
                                                      ("targetConcurrency", .double(scale.targetConcurrency))]))))
            }
            return (service.name, .map(map(fields)))
        }
        var specFields: [(String, CELValue)] = [
            ("services", .map(map(services))),
            ("databases", .map(map(spec.databases.map { ($0.name, .map(map([("engine", .string($0.engine))] + ($0.seed.map { [("seed", .string($0))] } ?? []) + ($0.cloneFrom.map { [("cloneFrom", .string($0))] } ?? [])))) }))),
            ("caches", .map(map(spec.caches.map { ($0.name, .map(map([("engine", .string($0.engine))]))) }))),
            ("secrets", strings(spec.secrets)),
            ("routes", .list(spec.routes.map { .map(map([("name", .string($0.name)), ("service", .string($0.service))])) })),
            ("egress", strings(spec.egress ?? [])),
        ]
        if let template = spec.template { specFields.append(("template", .string(template))) }
        var lifecycle: [(String, CELValue)] = []
        if let ttl = spec.lifecycle.ttl { lifecycle.append(("ttl", .duration(seconds: Int64(ttl), nanos: 0))) }
        if let idle = spec.lifecycle.idleSleepAfter { lifecycle.append(("idleSleepAfter", .duration(seconds: Int64(idle), nanos: 0))) }
        if !lifecycle.isEmpty { specFields.append(("lifecycle", .map(map(lifecycle)))) }
        if let hourly = spec.budget?.hourly { specFields.append(("budget", .map(map([("hourly", .double(hourly))])))) }
        return .map(map([("name", .string(spec.name)), ("class", .string(spec.class.rawValue)),
                         ("team", spec.team.map { .string($0) } ?? .null), ("spec", .map(map(specFields)))]))
    }

    /// A map of `pairs`; of a repeated key (a trailer given twice, say) the first is kept, so
    /// repeating a key never empties the map a rule reads.
    public static func map(_ pairs: [(String, CELValue)]) -> CELMap {
        var seen = Set<String>()
        return (try? CELMap(pairs.filter { seen.insert($0.0).inserted }.map { (CELValue.string($0.0), $0.1) })) ?? CELMap()
    }
}
