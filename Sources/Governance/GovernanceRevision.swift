import Foundation
import GitStore
import SpecLoading
import SpecModel

/// The governance one protected revision defines: gantry.yaml, identities/ and policies/ as read
/// at that commit, and what is wrong with them. A revision with problems never becomes governance:
/// the one before it stays in force.
public struct GovernanceRevision: Sendable {
    /// Repository paths whose change is a governance change.
    public static let paths = [ConfigLoader.settingsFile, "identities", ConfigLoader.policiesDirectory]

    public let commit: ObjectID
    public let settings: Settings
    public let identity: IdentityJudge
    public let policies: PolicySet
    /// The tree ids of `paths` at the commit: equal fingerprints mean equal governance.
    public let fingerprint: [String]
    /// What makes the revision unusable as governance, each `path:line:col: message` with its fix.
    public let problems: [String]
    /// Reported but harmless (a key type Gantry does not verify, say).
    public let warnings: [String]

    public static func load(at commit: ObjectID, repository: GitRepository) throws -> GovernanceRevision {
        let loader = ConfigLoader(repository: repository)
        var problems: [String] = []
        var warnings: [String] = []
        let fingerprint = try Self.fingerprint(at: commit, in: repository)
        // The three files must be there, as regular files: never a fall back to defaults.
        for (file, why) in [(ConfigLoader.settingsFile, "the protected branch must keep its settings"),
                            (ConfigLoader.allowedSignersFile, "without it no commit can be admitted"),
                            (ConfigLoader.actorsFile, "without it no signer is an actor")] {
            switch try repository.entryKind(at: file, in: commit) {
            case .file?, .executable?: continue
            case nil: problems.append("\(file):1:1: \(file) is missing; \(why) (restore the file)")
            case let kind?: problems.append("\(file):1:1: \(file) is a \(kind), not a regular file; \(why) (restore the file)")
            }
        }
        if let entries = try repository.listDirectory(ConfigLoader.policiesDirectory, at: commit) {
            for entry in entries where entry.kind != .file && entry.kind != .executable {
                problems.append("\(ConfigLoader.policiesDirectory)/\(entry.name):1:1: a \(entry.kind) in policies/ is not read as a policy; policies must be regular YAML files (replace or remove it)")
            }
        } else if try repository.objectID(at: ConfigLoader.policiesDirectory, in: commit) != nil {
            problems.append("\(ConfigLoader.policiesDirectory):1:1: policies is not a directory; policies must be regular YAML files in policies/")
        }
        let (settings, settingsDiagnostics) = loader.settings(at: commit)
        problems += settingsDiagnostics.map(\.description)
        var signersText = ""
        do {
            signersText = try loader.allowedSignersText(at: commit)
        } catch {
            problems.append(ConfigLoader.diagnostic(error, file: ConfigLoader.allowedSignersFile).description)
        }
        let signers = AllowedSigners(text: signersText)
        for diagnostic in signers.diagnostics {
            // A key Gantry cannot verify never matches: reported, not fatal.
            if diagnostic.message.contains("is not supported") { warnings.append(diagnostic.description) } else { problems.append(diagnostic.description) }
        }
        let actors = loader.actors(at: commit)
        problems += actors.diagnostics.map(\.description)
        let policies = PolicySet(loaded: try loader.policies(at: commit))
        for file in policies.brokenFiles { problems += file.problems }
        problems += policies.problems
        return GovernanceRevision(commit: commit, settings: settings,
                                  identity: IdentityJudge(signers: signers, actors: actors.actors, required: settings.signing.required),
                                  policies: policies, fingerprint: fingerprint, problems: problems, warnings: warnings)
    }

    /// The tree or blob ids of `paths` at `commit` ("-" for an absent path).
    public static func fingerprint(at commit: ObjectID, in repository: GitRepository) throws -> [String] {
        try paths.map { try repository.objectID(at: $0, in: commit)?.hex ?? "-" }
    }

    /// The governance paths that differ between this revision and `other`'s fingerprint.
    public func changedPaths(comparedWith other: [String]) -> [String] {
        zip(Self.paths, zip(fingerprint, other)).filter { $0.1.0 != $0.1.1 }.map(\.0)
    }

    /// The approval rule for governance changes: `approvals.governance`, else `approvals.production`,
    /// else one human's signature (the change's own signer counts).
    public var governanceRule: Settings.ApprovalRule {
        if let rule = settings.approvals["governance"] ?? settings.approvals["production"] { return rule }
        var rule = Settings.ApprovalRule()
        rule.role = ""
        rule.distinctFromAuthors = false
        return rule
    }

    /// The actors who may anchor this revision on first start: humans holding the role of the
    /// governance rule (any human when no rule names a role).
    public func mayAnchor(_ principal: String) -> Bool {
        guard let actor = identity.actors[principal], actor.kind == .human else { return false }
        let role = governanceRule.role
        return role.isEmpty || actor.roles.contains(role)
    }
}
