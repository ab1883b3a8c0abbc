import Foundation
import GitStore
import SpecModel

extension SpecDecoder {
    static func actors(_ node: YAMLNode, _ diagnostics: inout [Diagnostic]) -> [String: Actor] {
        guard var reader = header(node, kind: "Actors", &diagnostics) else { return [:] }
        var actors: [String: Actor] = [:]
        for (principal, entry) in reader.entries("actors", &diagnostics) {
            guard var fields = NodeReader(entry, path: "actors.\(principal)", diagnostics: &diagnostics) else { continue }
            var kind = Actor.Kind.agent
            if let text = fields.requiredString("kind", &diagnostics) {
                if let value = Actor.Kind(rawValue: text) {
                    kind = value
                } else {
                    diagnostics.append(Diagnostic(fields.value("kind")!.mark, "actors.\(principal).kind must be human or agent, found '\(text)'"))
                }
            }
            var actor = Actor(principal: principal, kind: kind)
            actor.teams = fields.stringList("teams", &diagnostics) ?? []
            actor.roles = fields.stringList("roles", &diagnostics) ?? []
            actor.actsFor = fields.stringList("actsFor", &diagnostics) ?? []
            fields.finish(&diagnostics)
            actors[principal] = actor
        }
        reader.finish(&diagnostics)
        return actors
    }
}

extension ConfigLoader {
    public static let actorsFile = "identities/actors.yaml"
    public static let allowedSignersFile = "identities/allowed_signers"

    /// `identities/actors.yaml` at `commit` (empty when absent).
    public func actors(at commit: ObjectID) -> (actors: [String: Actor], diagnostics: [Diagnostic]) {
        do {
            guard let data = try repository.readFile(Self.actorsFile, at: commit, limit: parser.maxBytes + 1) else { return ([:], []) }
            var diagnostics: [Diagnostic] = []
            let actors = SpecDecoder.actors(try parser.parse(data, file: Self.actorsFile), &diagnostics)
            return (actors, diagnostics)
        } catch {
            return ([:], [Self.diagnostic(error, file: Self.actorsFile)])
        }
    }

    /// The text of `identities/allowed_signers` at `commit` ("" when absent); throws for a file over
    /// the size limit.
    public func allowedSignersText(at commit: ObjectID) throws -> String {
        String(decoding: try repository.readFile(Self.allowedSignersFile, at: commit, limit: parser.maxBytes) ?? Data(), as: UTF8.self)
    }
}
