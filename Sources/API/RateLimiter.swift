import Foundation

/// A token bucket per API token: `burst` requests at once, refilled at `rate` per second.
final class RateLimiter: @unchecked Sendable {
    let rate: Double
    let burst: Double
    private let lock = NSLock()
    private var buckets: [String: (level: Double, at: Date)] = [:]

    init(rate: Double, burst: Double) {
        self.rate = max(rate, 0.001)
        self.burst = max(burst, 1)
    }

    /// Takes one request from `key`'s bucket: nil when allowed, else the whole seconds to wait.
    func take(_ key: String, now: Date = Date()) -> Int? {
        lock.withLock {
            let previous = buckets[key] ?? (burst, now)
            let level = min(burst, previous.level + now.timeIntervalSince(previous.at) * rate)
            guard level >= 1 else {
                buckets[key] = (level, now)
                return max(1, Int(((1 - level) / rate).rounded(.up)))
            }
            buckets[key] = (level - 1, now)
            if buckets.count > 10_000 { buckets = buckets.filter { now.timeIntervalSince($0.value.at) < burst / rate } }
            return nil
        }
    }
}
