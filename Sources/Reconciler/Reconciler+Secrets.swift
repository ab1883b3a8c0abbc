import Audit
import Foundation
import GitStore
import SpecModel
import StateStore

/// The encrypted store in the state DB resolves secrets for the drivers; the credentials a driver
/// makes are environment-scoped `gantry.` names (which `gantry secret` never shows or takes).
extension SecretStore: SecretResolver {
    public func resolve(_ name: String, for spec: EnvironmentSpec) throws -> ResolvedSecret? {
        try lookup(name, environment: spec.name, class: spec.class.rawValue, team: spec.team).map { ResolvedSecret(value: $0.value, version: $0.version) }
    }

    public func credential(_ name: String, environment: String, make: () -> String) throws -> ResolvedSecret {
        let key = "gantry." + name
        if let found = try lookup(key, environment: environment, class: "", team: nil) { return ResolvedSecret(value: found.value, version: found.version) }
        try set(key, value: Data(make().utf8), scope: .environment(environment))
        guard let made = try lookup(key, environment: environment, class: "", team: nil) else {
            throw SecretError("the credential \(name) of \(environment) was stored but cannot be read back")
        }
        return ResolvedSecret(value: made.value, version: made.version)
    }

    public func forgetCredentials(of environment: String) throws {
        try removeAll(prefix: "gantry.", environment: environment)
    }
}

extension Reconciler {
    /// Judges `spec.secrets` against `store` (a missing one denies) and notices rotations.
    public func useSecrets(_ store: SecretStore) {
        // What is written about environments (state DB, audit notes) never holds a secret's value.
        let redactor = Redactor(store: store)
        state.useRedactor(redactor)
        audit.redact = { redactor.redact($0, fresh: true) }
        useSecrets(resolver: store)
    }

    /// Judges `spec.secrets` against `resolver` (a missing one denies) and notices rotations.
    public func useSecrets(resolver: any SecretResolver) {
        secretVersions = { spec in
            Dictionary(uniqueKeysWithValues: spec.secrets.compactMap { name in
                (try? resolver.resolve(name, for: spec)).flatMap { $0 }.map { (name, $0.version) }
            })
        }
        missingSecrets = { spec in spec.secrets.filter { (try? resolver.resolve($0, for: spec)).flatMap { $0 } == nil } }
    }

    /// A running environment whose secrets changed (`gantry secret set`) is applied again: the
    /// driver restarts exactly the services whose resolved secrets changed, and a record names the
    /// rotated secrets (never their values).
    func rotateSecrets(_ summary: inout PassSummary) {
        guard let secretVersions else { return }
        // (One with an apply or teardown under way is left to it.)
        for record in (try? state.environments()) ?? [] where record.phase == .running && !operations.isBusy(record.name) {
            guard let plan = appliedPlan(record), !plan.spec.secrets.isEmpty, driver.followsSecretRotation(plan) else { continue }
            let versions = secretVersions(plan.spec)
            let previous = appliedSecretVersions[record.name]
            guard previous != versions else { continue }
            // Unknown (first pass after a start) or changed: the driver's fingerprints decide what restarts.
            appliedSecretVersions[record.name] = versions
            let rotated = versions.keys.filter { previous?[$0] != versions[$0] }.sorted()
            let applied = plan.commit
            do {
                let outcome = try driver.apply(plan) { step in
                    logger.info("Rotating secrets of \(record.name): \(step)")
                }
                guard !outcome.changes.isEmpty else { continue }
                let fields: [(key: String, value: String)] = [("environment", record.name), ("branch", record.branch), ("commit", applied.hex)]
                    + rotated.map { (key: "rotated", value: "secret \($0)") } + outcome.changes.map { (key: "change", value: $0) }
                try audit.append([AuditEntry(event: .applied, commit: applied.hex, fields: fields)])
                try state.record(EventRecord(environment: record.name, kind: "secret-rotated",
                                             message: "restarted \(outcome.changes.joined(separator: ", ")) for \(rotated.joined(separator: ", "))"))
                summary.applied.append(record.name)
            } catch {
                logger.error("could not apply rotated secrets", metadata: ["gantry.env": "\(record.name)", "error": "\(error)"])
            }
        }
    }
}
