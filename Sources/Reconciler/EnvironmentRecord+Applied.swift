import Foundation
import GitStore
import SpecModel
import StateStore

extension EnvironmentRecord {
    /// The spec of the revision that runs (decoded from `specJSON`), or nil before any apply.
    public var appliedSpec: EnvironmentSpec? {
        specJSON.flatMap { try? JSONDecoder().decode(EnvironmentSpec.self, from: Data($0.utf8)) }
    }
}

extension Reconciler {
    /// The running revision of `record` as a plan the driver can apply again (rotations, drift).
    func appliedPlan(_ record: EnvironmentRecord) -> PlannedEnvironment? {
        guard let spec = record.appliedSpec, let applied = record.appliedCommit.flatMap(ObjectID.init(hex:)) else { return nil }
        return PlannedEnvironment(name: record.name, branch: record.branch, commit: applied, spec: spec,
                                  fingerprint: record.fingerprint ?? "", domain: record.domain ?? Settings().domain,
                                  source: GitSnapshot(path: repository.path, commit: applied))
    }
}
