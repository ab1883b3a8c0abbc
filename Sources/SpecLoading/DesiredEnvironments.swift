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
    /// `<environment>--<slug(branch)>`, cut to 63 characters when longer, then ending in `-` and
    /// 16 hex digits (64 bits) of sha256 of the branch and environment names.
    public static func name(environment: String, branch: String) -> String {
        let slug = Names.slug(branch)
        let full = "\(environment)--\(slug.isEmpty ? hash(environment: environment, branch: branch, attempt: 0) : slug)"
        guard full.count > 63 else { return full }
        return hashed(environment: environment, branch: branch, attempt: 0)
    }

    /// A name of the branch's own when `name(environment:branch:)` is taken by another branch:
    /// the slug cut to fit, then `-` and 16 hex digits of sha256 of the branch, the environment and
    /// `attempt` (0, 1, ... until one is free).
    /// The environment's name is cut to 40 characters at most, so the name always holds `--`
    /// (nothing live can be named like a preview).
    public static func hashed(environment: String, branch: String, attempt: Int) -> String {
        var name = String(environment.prefix(40))
        while name.hasSuffix("-") { name.removeLast() }
        var cut = String("\(name)--\(Names.slug(branch))".prefix(63 - 17))
        while cut.hasSuffix("-") && cut.count > name.count + 2 { cut.removeLast() }
        return "\(cut)\(cut.hasSuffix("-") ? "" : "-")\(hash(environment: environment, branch: branch, attempt: attempt))"
    }

    static func hash(environment: String, branch: String, attempt: Int) -> String {
        let input = "\(branch)\n\(environment)" + (attempt == 0 ? "" : "\n\(attempt)")
        return SHA256.hash(data: Data(input.utf8)).prefix(8).map { String(format: "%02x", $0) }.joined()
    }
}

extension ConfigLoader {
    /// The environments `branch` at `commit` asks for. On the protected branch every environment is
    /// live; on another branch, a preview for each environment whose file, template or source
    /// changed since the merge-base with the protected branch.
    ///
    /// `previewName` picks a preview's name (default: `Previews.name`); the reconciler gives one
    /// that never hands a name another branch owns.
    public func desiredEnvironments(branch: String, commit: ObjectID, protectedBranch: String, protectedTip: ObjectID?,
                                    previewName: (_ environment: String, _ branch: String) throws -> String = { Previews.name(environment: $0, branch: $1) })
        throws -> [DesiredEnvironment] {
        let environments = try self.environments(at: commit)
        if branch == protectedBranch {
            return try environments.map { try desired($0, name: $0.name, spec: $0.isValid ? $0.spec : nil, branch: branch, commit: commit) }
        }
        let base = try protectedTip.flatMap { try repository.mergeBase($0, commit) }
        let changed = try repository.changedPaths(from: base, to: commit)
        return try environments.compactMap { environment in
            guard environment.isTouched(by: changed) else { return nil }
            let name = try previewName(environment.name, branch)
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
