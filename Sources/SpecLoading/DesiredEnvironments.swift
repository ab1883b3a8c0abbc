import Crypto
import Foundation
import GitStore
import SpecModel

/// An environment Gantry should run: from `main` (live) or a preview of a branch.
public struct DesiredEnvironment: Sendable {
    /// The environment's name as run: `metadata.name` on main, `<name>--<slug>` for a preview.
    public let name: String
    public let loaded: LoadedEnvironment
    /// The spec after preview isolation (renamed, class preview); nil when invalid.
    public let spec: EnvironmentSpec?
    public let branch: String
    public let commit: ObjectID
    /// Changes whenever anything that affects the running environment changes: the effective spec
    /// or the tree of a service's source.
    public let fingerprint: String

    public var isPreview: Bool { spec?.class == .preview || name.contains("--") }
}

public enum Previews {
    /// `<environment>--<slug(branch)>`, cut to 63 characters with a hash suffix when longer.
    public static func name(environment: String, branch: String) -> String {
        let hash = SHA256.hash(data: Data(branch.utf8)).map { String(format: "%02x", $0) }.joined().prefix(6)
        let slug = Names.slug(branch)
        let full = "\(environment)--\(slug.isEmpty ? String(hash) : slug)"
        guard full.count > 63 else { return full }
        var cut = String(full.prefix(63 - 7))
        while cut.hasSuffix("-") { cut.removeLast() }
        return "\(cut)-\(hash)"
    }
}

extension ConfigLoader {
    /// The environments `branch` at `commit` asks for. On the protected branch every environment is
    /// live; on another branch, a preview for each environment whose file, template or source
    /// changed since the merge-base with the protected branch.
    public func desiredEnvironments(branch: String, commit: ObjectID, protectedBranch: String,
                                    protectedTip: ObjectID?) throws -> [DesiredEnvironment] {
        let environments = try self.environments(at: commit)
        if branch == protectedBranch {
            return try environments.map { try desired($0, name: $0.name, spec: $0.isValid ? $0.spec : nil, branch: branch, commit: commit) }
        }
        let base = try protectedTip.flatMap { try repository.mergeBase($0, commit) }
        let changed = try repository.changedPaths(from: base, to: commit)
        return try environments.compactMap { environment in
            guard environment.isTouched(by: changed) else { return nil }
            let name = Previews.name(environment: environment.name, branch: branch)
            var spec = environment.isValid ? environment.spec : nil
            spec?.name = name
            spec?.class = .preview
            return try desired(environment, name: name, spec: spec, branch: branch, commit: commit)
        }
    }

    private func desired(_ loaded: LoadedEnvironment, name: String, spec: EnvironmentSpec?, branch: String,
                         commit: ObjectID) throws -> DesiredEnvironment {
        var hasher = SHA256()
        if let spec {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            hasher.update(data: try encoder.encode(spec))
            for service in spec.services {
                let tree = try service.source.flatMap { try repository.objectID(at: $0, in: commit) }
                hasher.update(data: Data("\n\(service.name)=\(tree?.hex ?? "-")".utf8))
            }
        } else {
            hasher.update(data: Data("invalid:\(commit.hex)".utf8))
        }
        let fingerprint = hasher.finalize().map { String(format: "%02x", $0) }.joined()
        return DesiredEnvironment(name: name, loaded: loaded, spec: spec, branch: branch, commit: commit, fingerprint: fingerprint)
    }
}
