import Foundation
import GitStore
import SpecModel

extension SpecDecoder {
    static func policy(_ node: YAMLNode, file: String, _ diagnostics: inout [Diagnostic]) -> Policy? {
        guard var reader = header(node, kind: "Policy", &diagnostics) else { return nil }
        var name = URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent
        if let metaNode = reader.value("metadata"), var meta = NodeReader(metaNode, path: "metadata", diagnostics: &diagnostics) {
            if let value = meta.requiredString("name", &diagnostics) { name = value }
            meta.finish(&diagnostics)
        }
        var policy = Policy(name: name, file: file, match: nil, action: .deny, rules: [])
        if let specNode = reader.value("spec"), var spec = NodeReader(specNode, path: "spec", diagnostics: &diagnostics) {
            if let matchNode = spec.value("match"), let text = NodeReader.string(matchNode, path: "spec.match", &diagnostics) {
                policy.match = Policy.Rule(expr: text, message: "", line: matchNode.mark.line, column: matchNode.mark.column)
            }
            if let text = spec.requiredString("action", &diagnostics) {
                if let action = Policy.Action(rawValue: text) {
                    policy.action = action
                } else {
                    diagnostics.append(Diagnostic(spec.value("action")!.mark, "spec.action must be deny, warn or audit, found '\(text)'"))
                }
            }
            if let rulesNode = spec.value("rules") {
                if case .sequence(let items, _) = rulesNode {
                    for (index, item) in items.enumerated() {
                        guard var rule = NodeReader(item, path: "spec.rules[\(index)]", diagnostics: &diagnostics) else { continue }
                        let exprNode = rule.value("expr")
                        let expr = rule.requiredString("expr", &diagnostics)
                        let message = rule.string("message", &diagnostics) ?? "rule \(index + 1) of policy \(name)"
                        rule.finish(&diagnostics)
                        if let expr, let exprNode {
                            policy.rules.append(Policy.Rule(expr: expr, message: message, line: exprNode.mark.line, column: exprNode.mark.column))
                        }
                    }
                } else {
                    diagnostics.append(Diagnostic(rulesNode.mark, "spec.rules must be a list of {expr, message}"))
                }
            } else {
                diagnostics.append(Diagnostic(specNode.mark, "spec.rules is required: a list of {expr, message}"))
            }
            spec.finish(&diagnostics)
        } else {
            diagnostics.append(Diagnostic(node.mark, "spec is required (match, action, rules)"))
        }
        reader.finish(&diagnostics)
        return policy
    }
}

extension ConfigLoader {
    public static let policiesDirectory = "policies"

    /// Every `policies/*.yaml` at `commit`: the policy, or why its file is invalid.
    public func policies(at commit: ObjectID) throws -> [(file: String, policy: Policy?, diagnostics: [Diagnostic])] {
        var result: [(String, Policy?, [Diagnostic])] = []
        for entry in try repository.listDirectory(Self.policiesDirectory, at: commit) ?? []
        where (entry.kind == .file || entry.kind == .executable) && (entry.name.hasSuffix(".yaml") || entry.name.hasSuffix(".yml")) {
            let file = "\(Self.policiesDirectory)/\(entry.name)"
            do {
                guard let data = try repository.readFile(file, at: commit, limit: parser.maxBytes + 1) else { continue }
                var diagnostics: [Diagnostic] = []
                let policy = SpecDecoder.policy(try parser.parse(data, file: file), file: file, &diagnostics)
                result.append((file, diagnostics.isEmpty ? policy : nil, diagnostics))
            } catch {
                result.append((file, nil, [Self.diagnostic(error, file: file)]))
            }
        }
        return result
    }
}
