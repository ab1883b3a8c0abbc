import Foundation
import SpecModel

/// The drivers of one Gantry. A revision to apply goes to the driver gantry.yaml's `drivers`
/// names for it (its own name, else its class; `local` when neither is listed: the reconciler
/// reads them from the last admitted protected revision, so a branch cannot choose); a revision
/// that already runs (drift, a rotation) stays on the driver that holds it.
///
/// An environment that moves (gantry.yaml now names another driver) is applied on its new driver
/// first, then removed from the old one.
public final class DriverRouter: Driver, @unchecked Sendable {
    public let drivers: [String: any Driver]

    /// `drivers` by name (`local`, `kubernetes`); `local` must be one of them.
    public init(drivers: [String: any Driver]) {
        precondition(drivers["local"] != nil, "the local driver is the default")
        self.drivers = drivers
    }

    func route(_ environment: PlannedEnvironment) throws -> (name: String, driver: any Driver) {
        let name = environment.driver
            ?? drivers.sorted(by: { $0.key < $1.key }).first(where: { $0.value.holds(environment: environment.name) })?.key ?? "local"
        guard let driver = drivers[name] else {
            throw RevisionError("gantry.yaml puts \(environment.name) on the \(name) driver, which this Gantry does not run (it runs \(drivers.keys.sorted().joined(separator: ", ")))")
        }
        return (name, driver)
    }

    public func apply(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> ApplyOutcome {
        let (chosen, driver) = try route(environment)
        var outcome = try driver.apply(environment, progress: progress)
        for (name, other) in drivers.sorted(by: { $0.key < $1.key }) where name != chosen && other.holds(environment: environment.name) {
            progress("moving from the \(name) driver: removing what ran there")
            let left = try other.destroy(environment: environment.name, sources: nil, progress: progress)
            outcome.changes.append("moved from the \(name) driver to \(chosen)")
            outcome.changes += left.map { "left on the \(name) driver: \($0)" }
        }
        return outcome
    }

    /// Removes the environment from every driver that holds anything of it.
    public func destroy(environment name: String, sources: (any SourceStore)?, progress: (String) -> Void) throws -> [String] {
        let holding = drivers.sorted(by: { $0.key < $1.key }).filter { $0.value.holds(environment: name) }
        // (Holding nothing anywhere, the local driver still forgets what the secret store keeps for it.)
        guard !holding.isEmpty else { return try drivers["local"]!.destroy(environment: name, sources: sources, progress: progress) }
        var left: [String] = []
        for (_, driver) in holding { left += try driver.destroy(environment: name, sources: sources, progress: progress) }
        return left
    }

    public func recover(desired: Set<String>) -> [DriverEvent] {
        drivers.sorted(by: { $0.key < $1.key }).flatMap { $0.value.recover(desired: desired) }
    }

    public func supervise(correct: Bool) -> [DriverEvent] {
        drivers.sorted(by: { $0.key < $1.key }).flatMap { $0.value.supervise(correct: correct) }
    }

    public func drift(_ environment: PlannedEnvironment) -> [String] {
        (try? route(environment).driver.drift(environment)) ?? []
    }

    public func checksDrift(_ environment: PlannedEnvironment) -> Bool {
        (try? route(environment).driver.checksDrift(environment)) ?? false
    }

    public func holds(environment name: String) -> Bool {
        drivers.values.contains { $0.holds(environment: name) }
    }

    public func followsSecretRotation(_ environment: PlannedEnvironment) -> Bool {
        (try? route(environment).driver.followsSecretRotation(environment)) ?? false
    }

    public func restoresOwnCut(_ environment: PlannedEnvironment) -> Bool {
        (try? route(environment).driver.restoresOwnCut(environment)) ?? false
    }

    public func shutdown() {
        for (_, driver) in drivers { driver.shutdown() }
    }
}
