import Dispatch
import Foundation
import GitStore
import Reconciler
import Synchronization

/// A driver that runs nothing, for testing the reconcile loop's own steps (`ReconcilerTests`):
/// it records each operation the loop asks for, in the order they start, can hold an environment's
/// operation until released, fail the next applies, and counts how many ran at once. Everything
/// that runs real processes is tested with the local driver (`LocalDriverTests`).
public final class FakeDriver: Driver, Sendable {
    public struct Operation: Sendable, Equatable {
        public let kind: String
        public let environment: String
        public let commit: String?
        public init(kind: String, environment: String, commit: String?) {
            self.kind = kind
            self.environment = environment
            self.commit = commit
        }
    }

    struct State: Sendable {
        var started: [Operation] = []
        var finished: [Operation] = []
        var running: [String: Int] = [:]
        var mostAtOnce = 0
        var overlapped: [String] = []
        var failures: [String: Int] = [:]
        var errors: [String: FailureReason] = [:]
        var held: [String: DispatchSemaphore] = [:]
        var recovered: Set<String>?
        var delay = 0.0
        /// The services of each environment's applied revision, and those told to have stopped.
        var services: [String: [String]] = [:]
        var stopped: Set<String> = []
        /// Drift each environment shows until its next apply corrects it.
        var drift: [String: [String]] = [:]
        /// Those whose drift is the driver's own cut to undo (a lifted kill switch).
        var ownCuts: Set<String> = []
    }

    private let state = Mutex(State())

    public init() {}

    /// Each operation takes this long (a stand-in for health checks and tools).
    public var delay: Double {
        get { state.withLock { $0.delay } }
        set { state.withLock { $0.delay = newValue } }
    }

    /// Operations in the order they started, and in the order they finished.
    public var started: [Operation] { state.withLock { $0.started } }
    public var finished: [Operation] { state.withLock { $0.finished } }
    /// The most operations that ran at once.
    public var mostAtOnce: Int { state.withLock { $0.mostAtOnce } }
    /// Environments that had two operations at once (never expected).
    public var overlapped: [String] { state.withLock { $0.overlapped } }
    /// What `recover` was told is wanted.
    public var recovered: Set<String>? { state.withLock { $0.recovered } }

    /// The next apply of `environment` fails with `error`.
    public func failWith(_ environment: String, _ error: any Error & Sendable) {
        state.withLock { $0.errors[environment] = FailureReason(error: error) }
    }

    /// The next `times` applies of `environment` fail.
    public func fail(_ environment: String, times: Int = 1) { state.withLock { $0.failures[environment] = times } }

    /// Operations of `environment` wait, once started, until `release`.
    public func hold(_ environment: String) { state.withLock { $0.held[environment] = DispatchSemaphore(value: 0) } }

    public func release(_ environment: String) {
        let gate = state.withLock { $0.held.removeValue(forKey: environment) }
        // Enough for every operation that may be waiting on it.
        for _ in 0..<64 { gate?.signal() }
    }

    public func apply(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> ApplyOutcome {
        let failing = try operate(Operation(kind: "apply", environment: environment.name, commit: environment.commit.hex))
        if let reason = state.withLock({ state -> FailureReason? in
            defer { state.errors[environment.name] = nil }
            return state.errors[environment.name]
        }) { throw reason.error }
        if failing { throw FakeFailure(environment: environment.name) }
        // The revision's files are read through the snapshot, as a real driver would.
        _ = try environment.source.objectID(at: "")
        state.withLock {
            $0.services[environment.name] = environment.spec.services.map(\.name)
            $0.drift[environment.name] = nil
            $0.ownCuts.remove(environment.name)
        }
        return ApplyOutcome(changes: ["~fake \(environment.name)"])
    }

    public func destroy(environment name: String, sources: (any SourceStore)?, progress: (String) -> Void) throws -> [String] {
        _ = try operate(Operation(kind: "destroy", environment: name, commit: nil))
        state.withLock { $0.services[name] = nil }
        return []
    }

    /// Runs one operation's bookkeeping; true when it is to fail.
    private func operate(_ operation: Operation) throws -> Bool {
        let (gate, delay, failing) = state.withLock { state -> (DispatchSemaphore?, Double, Bool) in
            state.started.append(operation)
            state.running[operation.environment, default: 0] += 1
            if state.running[operation.environment]! > 1 { state.overlapped.append(operation.environment) }
            state.mostAtOnce = max(state.mostAtOnce, state.running.values.reduce(0, +))
            var failing = false
            if operation.kind == "apply", let left = state.failures[operation.environment], left > 0 {
                state.failures[operation.environment] = left - 1
                failing = true
            }
            return (state.held[operation.environment], state.delay, failing)
        }
        gate?.wait()
        if delay > 0 { Thread.sleep(forTimeInterval: delay) }
        state.withLock { state in
            state.running[operation.environment]! -= 1
            if state.running[operation.environment] == 0 { state.running[operation.environment] = nil }
            state.finished.append(operation)
        }
        return failing
    }

    public func recover(desired: Set<String>) -> [DriverEvent] {
        state.withLock { $0.recovered = desired }
        return []
    }

    /// `service` of `environment` is observed stopped from now on (a crash nobody restarts).
    public func stop(_ service: String, of environment: String) { state.withLock { _ = $0.stopped.insert("\(environment)/\(service)") } }

    /// `environment` shows `findings` as drift (a dropped database, say) until an apply corrects it.
    /// With `ownCut`, the drift is the driver's own doing to undo (restored even with `--detect-only`).
    public func drifted(_ environment: String, _ findings: [String], ownCut: Bool = false) {
        state.withLock {
            $0.drift[environment] = findings
            if ownCut { $0.ownCuts.insert(environment) }
        }
    }

    public func supervise(correct: Bool) -> [DriverEvent] { [] }

    /// Whether an applied revision of it is here (not destroyed since).
    public func holds(environment name: String) -> Bool { state.withLock { $0.services[name] != nil } }
    public func drift(_ environment: PlannedEnvironment) -> [String] { state.withLock { $0.drift[environment.name] ?? [] } }
    public func restoresOwnCut(_ environment: PlannedEnvironment) -> Bool { state.withLock { $0.ownCuts.contains(environment.name) } }
    public func shutdown() {}
}

struct FailureReason: Sendable {
    let error: any Error & Sendable
}

public struct FakeFailure: Error, CustomStringConvertible {
    public let environment: String
    public var description: String { "the fake driver was told to fail \(environment)" }
}

/// What the fake driver runs: each applied revision's services, Running unless told otherwise.
extension FakeDriver: EnvironmentObserver {
    public func services(of environment: String) throws -> [ServiceObservation] {
        state.withLock { state in
            (state.services[environment] ?? []).map { name in
                let stopped = state.stopped.contains("\(environment)/\(name)")
                return ServiceObservation(name: name, phase: stopped ? "Stopped" : "Running", url: "fake://\(environment)/\(name)",
                                          restarts: 0, lastExit: stopped ? "exited with status 1" : nil)
            }
        }
    }
}
