import SpecModel

extension SpecDecoder {
    /// An egress list (`spec.egress`, `spec.services.S.egress`): each item a host (`api.stripe.com`,
    /// `*.example.com`, `**.example.com`, an address or IPv4 network) or `{host, inject, tls}`,
    /// whose headers the proxy adds for that exact host. The hosts (injection hosts included)
    /// and the injections.
    static func egressList(_ node: YAMLNode, path: String, _ diagnostics: inout [Diagnostic]) -> (hosts: [String], inject: [EgressInject]) {
        guard case .sequence(let items, _) = node else {
            diagnostics.append(Diagnostic(node.mark, "\(path) must be a list of hosts or {host, inject} entries, found \(node.kindDescription)"))
            return ([], [])
        }
        var hosts: [String] = [], injections: [EgressInject] = []
        for (index, item) in items.enumerated() {
            let itemPath = "\(path)[\(index)]"
            if case .mapping = item {
                guard var entry = NodeReader(item, path: itemPath, diagnostics: &diagnostics) else { continue }
                let host = entry.requiredString("host", &diagnostics) ?? ""
                let tls = entry.bool("tls", &diagnostics) ?? true
                var headers: [EnvVar] = []
                for (name, valueNode) in entry.entries("inject", &diagnostics) {
                    if name.isEmpty || !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) {
                        diagnostics.append(Diagnostic(valueNode.mark, "\(itemPath).inject: '\(name)' is not a header name (letters, digits, '-')"))
                    }
                    guard let value = NodeReader.string(valueNode, path: "\(itemPath).inject.\(name)", &diagnostics) else { continue }
                    if value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
                        diagnostics.append(Diagnostic(valueNode.mark, "\(itemPath).inject.\(name) holds a control character (a line break would add headers)"))
                    }
                    headers.append(EnvVar(name: name, value: value))
                }
                if headers.isEmpty {
                    diagnostics.append(Diagnostic(item.mark, "\(itemPath) needs inject: {Header: value}; a plain host is written as a string"))
                }
                entry.finish(&diagnostics)
                guard checkHost(host, at: item.mark, path: "\(itemPath).host", &diagnostics) else { continue }
                if host.contains("*") || IPAddress(host) != nil || host.contains("/") {
                    diagnostics.append(Diagnostic(item.mark, "\(itemPath).host '\(host)' must be one exact host name: credentials go to that host only"))
                    continue
                }
                hosts.append(host)
                injections.append(EgressInject(host: host, headers: headers, tls: tls))
            } else if let host = NodeReader.string(item, path: itemPath, &diagnostics), checkHost(host, at: item.mark, path: itemPath, &diagnostics) {
                hosts.append(host)
            }
        }
        return (hosts, injections)
    }

    /// A list of hosts in gantry.yaml's `egress` (strings only).
    static func checkHosts(_ hosts: [String], node: YAMLNode?, path: String, _ diagnostics: inout [Diagnostic]) {
        guard case .sequence(let items, _)? = node else { return }
        for (index, host) in hosts.enumerated() where index < items.count {
            _ = checkHost(host, at: items[index].mark, path: "\(path)[\(index)]", &diagnostics)
        }
    }

    static func checkHost(_ host: String, at mark: SourceMark, path: String, _ diagnostics: inout [Diagnostic]) -> Bool {
        if case .failure(let error) = HostPattern.parse(host) {
            diagnostics.append(Diagnostic(mark, "\(path): \(error)"))
            return false
        }
        return true
    }

    /// Every `${...}` in an injected header must be `${secrets.NAME}` of a secret the environment lists.
    static func checkInjections(_ spec: EnvironmentSpec, at mark: SourceMark, _ diagnostics: inout [Diagnostic]) {
        let lists = [("spec.egress", spec.egressInject ?? [])] + spec.services.map { ("spec.services.\($0.name).egress", $0.egressInject ?? []) }
        for (path, injections) in lists {
            for injection in injections {
                for header in injection.headers {
                    var rest = Substring(header.value)
                    while let open = rest.range(of: "${") {
                        guard let close = rest[open.upperBound...].firstIndex(of: "}") else {
                            diagnostics.append(Diagnostic(mark, "\(path): the injected \(header.name) for \(injection.host) has an unclosed '${'"))
                            break
                        }
                        let reference = String(rest[open.upperBound..<close])
                        if !reference.hasPrefix("secrets.") {
                            diagnostics.append(Diagnostic(mark, "\(path): the injected \(header.name) for \(injection.host) may only name secrets (${secrets.NAME}), found '${\(reference)}'"))
                        } else if !spec.secrets.contains(String(reference.dropFirst("secrets.".count))) {
                            diagnostics.append(Diagnostic(mark, "\(path): the injected \(header.name) for \(injection.host) names ${\(reference)}, which spec.secrets does not list"))
                        }
                        rest = rest[rest.index(after: close)...]
                    }
                }
            }
        }
    }
}
