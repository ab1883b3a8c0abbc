import Dispatch
import Foundation
import Synchronization

/// How one driver operation ended, handed back to the reconcile thread (values only: the loop's
/// own state is never touched off its thread).
public enum OperationResult: Sendable {
    case applied(ApplyOutcome)
    /// The teardown finished; what could not be cleaned.
    case destroyed(problems: [String])
    /// The operation failed: why, and what the loop does about it.
    case failed(String, ErrorDisposition)
}

/// Runs applies and teardowns off the reconcile thread, at most `limit` at a time, at most one per
/// environment, in the order submitted per environment; an operation that names environments in
/// `after` (a clone's source) waits until they have none running or queued before it. Urgent
/// operations (production, the protected branch) start before the others that are ready.
///
/// The loop judges and records on its own thread and submits here; a slow apply holds its worker,
/// never the loop. Finished operations are collected with `finished()`; `onFinish` wakes the loop.
public final class OperationPool: Sendable {
    struct Queued: Sendable {
        let ticket: Int
        let environment: String
        let kind: Kind
        let after: [String]
        let urgent: Bool
        let work: @Sendable () -> OperationResult
    }

    struct State: Sendable {
        var nextTicket = 1
        var queue: [Queued] = []
        var running: [Int: String] = [:]
        var done: [(ticket: Int, environment: String, result: OperationResult)] = []
        /// Queued, running or finished but not yet collected operations per environment.
        var busy: [String: Int] = [:]
        var highWater = 0

        /// One operation of `environment` less.
        mutating func release(_ environment: String) {
            if let count = busy[environment], count > 1 { busy[environment] = count - 1 } else { busy[environment] = nil }
        }
    }

    /// What an operation does (a queued apply may be dropped for a newer one, or for a teardown).
    public enum Kind: Sendable { case apply, destroy }

    public let limit: Int
    private let state = Mutex(State())
    private let finishedSignal = DispatchSemaphore(value: 0)
    private let onFinish: Mutex<(@Sendable () -> Void)?> = Mutex(nil)

    /// `limit` defaults to four operations per core.
    public init(limit: Int = 4 * ProcessInfo.processInfo.activeProcessorCount) {
        self.limit = max(1, limit)
    }

    /// Called (from a worker) each time an operation finishes.
    public func whenFinished(_ body: @escaping @Sendable () -> Void) { onFinish.withLock { $0 = body } }

    /// Queues `work` for `environment`; returns its ticket.
    @discardableResult
    public func submit(_ environment: String, kind: Kind = .apply, after: [String] = [], urgent: Bool = false,
                       _ work: @escaping @Sendable () -> OperationResult) -> Int {
        let (ticket, ready) = state.withLock { state -> (Int, [Queued]) in
            let ticket = state.nextTicket
            state.nextTicket += 1
            state.queue.append(Queued(ticket: ticket, environment: environment, kind: kind, after: after.filter { $0 != environment },
                                      urgent: urgent, work: work))
            state.busy[environment, default: 0] += 1
            return (ticket, Self.takeReady(&state, limit: limit))
        }
        ready.forEach(launch)
        return ticket
    }

    /// Drops the applies of `environment` that wait in the queue (not started): a newer revision,
    /// or a teardown, makes them moot. Returns their tickets.
    public func dropQueuedApplies(of environment: String) -> [Int] {
        state.withLock { state in
            let dropped = state.queue.filter { $0.environment == environment && $0.kind == .apply }.map(\.ticket)
            guard !dropped.isEmpty else { return [] }
            state.queue.removeAll { dropped.contains($0.ticket) }
            for _ in dropped { state.release(environment) }
            return dropped
        }
    }

    /// Whether `environment` has an operation queued, running, or finished but not yet collected.
    public func isBusy(_ environment: String) -> Bool { state.withLock { $0.busy[environment] != nil } }

    /// The most operations that ever ran at once.
    public var highWater: Int { state.withLock { $0.highWater } }
    /// Operations waiting for a worker, and running (for metrics).
    public var depth: (queued: Int, running: Int) { state.withLock { ($0.queue.count, $0.running.count) } }

    /// The operations finished since the last call, in the order they finished.
    /// An environment stays busy until its finished operation is collected here: until the loop
    /// has recorded it, its record still says Applying or Destroying.
    public func finished() -> [(ticket: Int, result: OperationResult)] {
        state.withLock { state in
            let done = state.done
            state.done = []
            for (_, environment, _) in done { state.release(environment) }
            return done.map { ($0.ticket, $0.result) }
        }
    }

    /// Waits until an operation finishes or `seconds` pass.
    public func waitForFinish(seconds: Double) {
        _ = finishedSignal.wait(timeout: .now() + seconds)
    }

    private func launch(_ job: Queued) {
        // A thread of its own, not one of GCD's or Swift's pools (which run about one thread per
        // core): a driver blocks while it waits for health checks and tools, and at most `limit`
        // such threads exist.
        let thread = Thread { [self] in
            let result = job.work()
            let ready = state.withLock { state -> [Queued] in
                state.running[job.ticket] = nil
                state.done.append((job.ticket, job.environment, result))
                return Self.takeReady(&state, limit: limit)
            }
            ready.forEach(launch)
            finishedSignal.signal()
            onFinish.withLock { $0 }?()
        }
        thread.name = "gantry-operation"
        thread.start()
    }

    /// Moves the operations that may start now from the queue to running.
    private static func takeReady(_ state: inout State, limit: Int) -> [Queued] {
        var started: [Queued] = []
        while state.running.count < limit {
            var blocked = Set(state.running.values)
            var pick: Int?
            for (index, job) in state.queue.enumerated() {
                // Per environment in order: an earlier queued operation of the same environment, or of
                // one it waits for, blocks it.
                if !blocked.contains(job.environment) && !job.after.contains(where: blocked.contains) {
                    if job.urgent { pick = index; break }
                    if pick == nil { pick = index }
                }
                blocked.insert(job.environment)
            }
            guard let pick else { break }
            let job = state.queue.remove(at: pick)
            state.running[job.ticket] = job.environment
            started.append(job)
        }
        state.highWater = max(state.highWater, state.running.count)
        return started
    }
}
