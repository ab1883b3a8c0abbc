import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Wakes the reconcile loop early: on SIGUSR1 (sent by `gantry notify`) or from code. A wake
/// for finished operations only (`wakeForOperations`) asks for their records, not a whole pass.
public final class WakeSignal: @unchecked Sendable {
    // @unchecked: `needsPass` is only touched under `lock`; the rest is immutable or thread-safe.
    private let semaphore = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var needsPass = false
    private var sources: [DispatchSourceSignal] = []
    private let queue = DispatchQueue(label: "gantry.wake")

    public init() {}

    /// Routes SIGUSR1 to `wake()`; SIGTERM and SIGINT to `onStop`.
    public func installSignalHandlers(onStop: @escaping @Sendable (Int32) -> Void) {
        for number in [SIGUSR1, SIGTERM, SIGINT] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [weak self] in
                if number == SIGUSR1 { self?.wake() } else { onStop(number) }
            }
            source.resume()
            sources.append(source)
        }
    }

    /// Something may have changed (a ref, an approval, a stop): a whole pass is due.
    public func wake() {
        lock.withLock { needsPass = true }
        semaphore.signal()
    }

    /// An operation finished: its record is due (a whole pass only if something else asks for one).
    public func wakeForOperations() { semaphore.signal() }

    /// Waits until woken or until `seconds` pass; true when woken. Extra wakes are folded into one.
    @discardableResult
    public func wait(seconds: Double) -> Bool {
        waitForReason(seconds: seconds) != .timeout
    }

    public enum Reason: Sendable { case timeout, pass, operations }

    /// Waits like `wait`, and says why it returned: the time passed, a whole pass was asked for,
    /// or only operations finished.
    public func waitForReason(seconds: Double) -> Reason {
        let woken = semaphore.wait(timeout: .now() + seconds) == .success
        while semaphore.wait(timeout: .now()) == .success {}
        let pass = lock.withLock { () -> Bool in
            defer { needsPass = false }
            return needsPass
        }
        return !woken ? .timeout : pass ? .pass : .operations
    }
}
