import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Wakes the reconcile loop early: on SIGUSR1 (sent by `gantry notify`) or from code.
public final class WakeSignal: @unchecked Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
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

    public func wake() { semaphore.signal() }

    /// Waits until woken or until `seconds` pass; true when woken. Extra wakes are folded into one.
    @discardableResult
    public func wait(seconds: Double) -> Bool {
        let woken = semaphore.wait(timeout: .now() + seconds) == .success
        while semaphore.wait(timeout: .now()) == .success {}
        return woken
    }
}
