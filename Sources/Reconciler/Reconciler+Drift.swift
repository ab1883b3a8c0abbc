import Audit
import Foundation
import GitStore
import SpecModel
import StateStore

extension Reconciler {
    /// Every pass compares actual with desired for running environments: processes the driver finds
    /// stopped, databases that disappeared. Corrections are recorded as `drift-corrected` with what
    /// was found; with `detectOnly` the drift is only reported (what the driver itself cut off,
    /// under a kill switch since lifted, is restored all the same).
    func correctDrift(_ summary: inout PassSummary) {
        var corrected: [String: [String]] = [:]
        for event in driver.supervise(correct: !options.detectOnly) {
            note(event)
            if event.kind == "restarted" { corrected[event.environment, default: []].append(event.message) }
            if event.kind == "drift-detected" { summary.drift.append(event.environment) }
        }
        // (One with an apply or teardown under way is left to it; one asleep is corrected once it
        // wakes: an apply would start its services.)
        let asleep = (try? state.lifecycleStates()) ?? [:]
        for record in (try? state.environments()) ?? [] where record.phase == .running && !operations.isBusy(record.name) && asleep[record.name] == nil
                                                              && killSwitches.reason(for: record.name) == nil {
            guard let plan = appliedPlan(record), driver.checksDrift(plan) else { continue }
            let found = driver.drift(plan)
            guard !found.isEmpty else { continue }
            if options.detectOnly && !driver.restoresOwnCut(plan) {
                for item in found { note(DriverEvent(environment: record.name, kind: "drift-detected", message: "\(item); not corrected (--detect-only)")) }
                summary.drift.append(record.name)
                continue
            }
            // On the pool, like any apply: recreating a database runs its seed, which may take
            // as long as the seed time limit, and an environment that keeps dropping its own
            // database must not hold the loop (other branches' admissions) while it runs.
            let driver = self.driver, logger = self.logger, name = record.name
            let ticket = operations.submit(name) {
                do {
                    return .applied(try driver.apply(plan) { step in logger.info("Correcting drift of \(name): \(step)") })
                } catch {
                    return .failed("\(error)", ErrorDisposition.of(error))
                }
            }
            completions[ticket] = { [unowned self] result, summary in
                if case .failed(let error, _) = result {
                    logger.error("could not correct drift", metadata: ["gantry.env": "\(name)", "error": "\(error)"])
                    return
                }
                recordDriftCorrected(name, findings: found.map { "\($0); recreated" }, &summary)
            }
        }
        for (environment, findings) in corrected.sorted(by: { $0.key < $1.key }) {
            recordDriftCorrected(environment, findings: findings, &summary)
        }
    }

    /// The `drift-corrected` record of what was found and corrected.
    func recordDriftCorrected(_ environment: String, findings: [String], _ summary: inout PassSummary) {
        guard let record = try? state.environment(environment), record.phase != .destroyed else { return }
        let commit = record.appliedCommit ?? record.commit
        let fields: [(key: String, value: String)] = [("environment", environment), ("branch", record.branch), ("commit", commit)]
            + findings.map { (key: "found", value: $0) }
        do {
            try audit.append([AuditEntry(event: .driftCorrected, commit: commit, fields: fields)])
            summary.driftCorrected.append(environment)
        } catch {
            logger.error("could not record corrected drift", metadata: ["gantry.env": "\(environment)", "error": "\(error)"])
        }
    }
}
