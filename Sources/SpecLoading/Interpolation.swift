import SpecModel

/// `${...}` references in spec strings: parsing, validation and substitution. `$${` is a literal `${`.
public enum Interpolation {
    /// One piece of an interpolated string.
    enum Piece: Equatable {
        case text(String)
        case reference(String)
    }

    /// Splits `text` into literal text and references; nil with a message for an unclosed `${`.
    /// Scans the UTF-8 bytes once (`$`, `{` and `}` are ASCII, so they never split a character).
    static func pieces(_ text: String) -> Result<[Piece], InterpolationError> {
        let bytes = Array(text.utf8)
        let (dollar, open, close) = (UInt8(ascii: "$"), UInt8(ascii: "{"), UInt8(ascii: "}"))
        var pieces: [Piece] = []
        var literal: [UInt8] = []
        var index = 0
        func flush() {
            if !literal.isEmpty { pieces.append(.text(String(decoding: literal, as: UTF8.self))); literal.removeAll() }
        }
        while index < bytes.count {
            let byte = bytes[index]
            if byte == dollar, index + 2 < bytes.count, bytes[index + 1] == dollar, bytes[index + 2] == open {
                literal += [dollar, open]
                index += 3
            } else if byte == dollar, index + 1 < bytes.count, bytes[index + 1] == open {
                guard let end = bytes[(index + 2)...].firstIndex(of: close) else {
                    return .failure(InterpolationError(message: "unclosed '${' in '\(text.prefix(200))'; close it with '}' or write '$${' for a literal"))
                }
                flush()
                pieces.append(.reference(String(decoding: bytes[(index + 2)..<end], as: UTF8.self).trimmingCharacters(in: .whitespaces)))
                index = end + 1
            } else {
                literal.append(byte)
                index += 1
            }
        }
        flush()
        return .success(pieces)
    }

    /// The names a reference may use, as sets: a file with many references and many names is
    /// checked in linear time.
    struct ReferenceNames {
        let services: Set<String>, databases: Set<String>, caches: Set<String>, secrets: Set<String>
        /// In file order, for suggestions.
        let serviceList: [String], databaseList: [String], cacheList: [String]
        init(_ spec: EnvironmentSpec) {
            serviceList = spec.services.map(\.name)
            databaseList = spec.databases.map(\.name)
            cacheList = spec.caches.map(\.name)
            services = Set(serviceList)
            databases = Set(databaseList)
            caches = Set(cacheList)
            secrets = Set(spec.secrets)
        }
    }

    /// Why `reference` is not a valid reference to one of `names`, or nil when it is.
    static func problem(_ reference: String, names: ReferenceNames) -> String? {
        let parts = reference.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        let known = "known references: env.name, env.domain, env.class, services.S.url|host|port, databases.D.url, caches.C.url, secrets.NAME"
        switch parts.first {
        case "env":
            guard parts.count == 2, ["name", "domain", "class", "team"].contains(parts[1]) else {
                return "unknown reference '${\(reference)}'; \(known)"
            }
        case "services":
            guard parts.count == 3, ["url", "host", "port"].contains(parts[2]) else {
                return "unknown reference '${\(reference)}'; use services.S.url, services.S.host or services.S.port"
            }
            if !names.services.contains(parts[1]) {
                return "'${\(reference)}' names no service of this environment\(SpecDecoder.suggestion(parts[1], names.serviceList))"
            }
        case "databases":
            guard parts.count == 3, parts[2] == "url" else { return "unknown reference '${\(reference)}'; use databases.D.url" }
            if !names.databases.contains(parts[1]) {
                return "'${\(reference)}' names no database of this environment\(SpecDecoder.suggestion(parts[1], names.databaseList))"
            }
        case "caches":
            guard parts.count == 3, parts[2] == "url" else { return "unknown reference '${\(reference)}'; use caches.C.url" }
            if !names.caches.contains(parts[1]) {
                return "'${\(reference)}' names no cache of this environment\(SpecDecoder.suggestion(parts[1], names.cacheList))"
            }
        case "secrets":
            guard parts.count == 2 else { return "unknown reference '${\(reference)}'; use secrets.NAME" }
            if !names.secrets.contains(parts[1]) {
                return "'${\(reference)}' names a secret not listed in spec.secrets; add it there"
            }
        default:
            return "unknown reference '${\(reference)}'; \(known)"
        }
        return nil
    }

    /// Resolves the references a driver knows: `env.*` and `services.S.*` on loopback ports.
    /// Anything else (or a service without a port) goes to `fallback`.
    public static func resolver(spec: EnvironmentSpec, domain: String, ports: [String: Int],
                                fallback: @escaping (String) -> String? = { _ in nil }) -> (String) -> String? {
        { reference in
            let parts = reference.split(separator: ".").map(String.init)
            switch (parts.first, parts.count) {
            case ("env", 2):
                return ["name": spec.name, "domain": domain, "class": spec.class.rawValue, "team": spec.team ?? ""][parts[1]]
            case ("services", 3):
                guard let port = ports[parts[1]] else { return fallback(reference) }
                return ["url": "http://127.0.0.1:\(port)", "host": "127.0.0.1", "port": String(port)][parts[2]]
            default:
                return fallback(reference)
            }
        }
    }

    /// A service's command and environment with every reference substituted.
    public static func resolve(_ service: Service, _ resolve: (String) -> String?) throws -> (command: [String], env: [EnvVar]) {
        (try service.command.map { try substitute($0, resolve) },
         try service.env.map { EnvVar(name: $0.name, value: try substitute($0.value, resolve)) })
    }

    /// Substitutes every reference through `resolve`; returns nil for a reference it cannot resolve.
    public static func substitute(_ text: String, _ resolve: (String) -> String?) throws -> String {
        switch pieces(text) {
        case .failure(let error): throw error
        case .success(let pieces):
            var out = ""
            for piece in pieces {
                switch piece {
                case .text(let literal): out += literal
                case .reference(let reference):
                    guard let value = resolve(reference) else {
                        throw InterpolationError(message: "cannot resolve '${\(reference)}'")
                    }
                    out += value
                }
            }
            return out
        }
    }
}

public struct InterpolationError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// Validates every `${...}` in a decoded environment, reporting at the node that holds it.
enum References {
    static func check(spec: EnvironmentSpec, node: YAMLNode, _ diagnostics: inout [Diagnostic]) {
        // Mappings are indexed once: a lookup per name would be quadratic in a file of many names.
        let services = index(find(node, ["spec", "services"]))
        let names = Interpolation.ReferenceNames(spec)
        for service in spec.services {
            let serviceNode = services[service.name]
            let variables = index(find(serviceNode, ["env"]))
            for variable in service.env {
                let mark = variables[variable.name]?.mark ?? serviceNode?.mark ?? node.mark
                check(variable.value, names: names, mark: mark, &diagnostics)
            }
            let commandNode = find(serviceNode, ["command"])
            for (index, argument) in service.command.enumerated() {
                check(argument, names: names, mark: element(commandNode, index)?.mark ?? commandNode?.mark ?? node.mark,
                      where: "spec.services.\(service.name).command", &diagnostics)
            }
        }
        // Job commands are not interpolated; a password reference there would be a literal at best
        // and a leak on the command line at worst: refused the same way.
        let jobs = index(find(node, ["spec", "jobs"]))
        for job in spec.jobs {
            for (phase, command) in [("onCreate", job.onCreate), ("onDestroy", job.onDestroy)] {
                guard let command else { continue }
                let commandNode = find(jobs[job.name], [phase])
                for (index, argument) in command.enumerated() {
                    guard case .success(let pieces) = Interpolation.pieces(argument) else { continue }
                    for case .reference(let reference) in pieces where carriesPassword(reference) {
                        diagnostics.append(Diagnostic(element(commandNode, index)?.mark ?? commandNode?.mark ?? node.mark,
                            "'${\(reference)}' in spec.jobs.\(job.name).\(phase) would put a password on a command line (anyone on the host can read /proc/PID/cmdline); pass it in a service's env instead"))
                    }
                }
            }
        }
    }

    /// References whose value is a password or carries one (a URL with credentials).
    static func carriesPassword(_ reference: String) -> Bool {
        let parts = reference.split(separator: ".", omittingEmptySubsequences: false)
        return parts.first == "secrets" || ((parts.first == "databases" || parts.first == "caches") && parts.last == "url")
    }

    /// `where` names a command: references that carry a password are refused there.
    static func check(_ text: String, names: Interpolation.ReferenceNames, mark: SourceMark, where command: String? = nil,
                      _ diagnostics: inout [Diagnostic]) {
        switch Interpolation.pieces(text) {
        case .failure(let error): diagnostics.append(Diagnostic(mark, error.message))
        case .success(let pieces):
            for case .reference(let reference) in pieces {
                if let problem = Interpolation.problem(reference, names: names) {
                    diagnostics.append(Diagnostic(mark, problem))
                } else if let command, carriesPassword(reference) {
                    diagnostics.append(Diagnostic(mark, "'${\(reference)}' in \(command) would put a password on the command line (anyone on the host can read /proc/PID/cmdline); set it in env (env: {NAME: \"${\(reference)}\"}) and read the variable"))
                }
            }
        }
    }

    static func element(_ node: YAMLNode?, _ index: Int) -> YAMLNode? {
        guard case .sequence(let items, _)? = node, items.indices.contains(index) else { return nil }
        return items[index]
    }

    /// A mapping's values by key (the first of a repeated key); empty for anything else.
    static func index(_ node: YAMLNode?) -> [String: YAMLNode] {
        guard case .mapping(let pairs, _)? = node else { return [:] }
        var result: [String: YAMLNode] = [:]
        result.reserveCapacity(pairs.count)
        for pair in pairs { if let key = pair.key.scalarText, result[key] == nil { result[key] = pair.value } }
        return result
    }

    static func find(_ node: YAMLNode?, _ path: [String]) -> YAMLNode? {
        var current = node
        for key in path {
            guard case .mapping(let pairs, _)? = current else { return nil }
            current = pairs.first { $0.key.scalarText == key }?.value
        }
        return current
    }
}
