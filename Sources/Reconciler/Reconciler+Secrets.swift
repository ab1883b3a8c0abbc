import Audit
import Foundation
import GitStore
import SpecModel
import StateStore

extension Reconciler {
    /// Judges `spec.secrets` against `store` (a missing one denies) and notices rotations.
    public func useSecrets(_ store: SecretStore) {
        // What is written about environments (state DB, audit notes) never holds a secret's value.
        let redactor = Redactor(store: store)
        state.useRedactor(redactor)
        audit.redact = { redactor.redact($0) }
        secretVersions = { spec in
            Dictionary(uniqueKeysWithValues: spec.secrets.compactMap { name in
                (try? store.lookup(name, environment: spec.name, class: spec.class.rawValue, team: spec.team)).flatMap { $0 }.map { (name, $0.version) }
            })
        }
        missingSecrets = { spec in
            spec.secrets.filter { (try? store.lookup($0, environment: spec.name, class: spec.class.rawValue, team: spec.team)) == nil }
        }
    }

    /// A running environment whose secrets changed (`gantry secret set`) is applied again: the
    /// driver restarts exactly the services whose resolved secrets changed, and a record names the
    /// rotated secrets (never their values).
    func rotateSecrets(_ summary: inout PassSummary) {
        guard let secretVersions else { return }
        // (One with an apply or teardown under way is left to it.)
        for record in (try? state.environments()) ?? [] where record.phase == .running && !operations.isBusy(record.name) {
            guard let plan = appliedPlan(record), !plan.spec.secrets.isEmpty else { continue }
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
