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

    /// Whether `key`'s bucket holds one request (nil), else the seconds to wait; takes nothing.
    func peek(_ key: String, now: Date = Date()) -> Int? {
        lock.withLock {
            guard let previous = buckets[key] else { return nil }
            let level = min(burst, previous.level + now.timeIntervalSince(previous.at) * rate)
            return level >= 1 ? nil : max(1, Int(((1 - level) / rate).rounded(.up)))
        }
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

/// Requests under way per token: a token may hold at most `limit` at once (a slow exec or a
/// `wait=serving` each hold one), so one agent cannot occupy what every caller shares.
public final class InFlight: @unchecked Sendable {
    let limit: Int
    private let lock = NSLock()
    private var counts: [String: Int] = [:]

    init(limit: Int) { self.limit = max(1, limit) }

    func enter(_ key: String) throws {
        try lock.withLock {
            let count = counts[key, default: 0]
            guard count < limit else {
                var error = APIError(429, "too-many-in-flight", "token \(key) already has \(limit) requests under way",
                                     fix: "wait for an answer before sending more (execs and waits hold theirs until they end)")
                error.retryAfter = 1
                throw error
            }
            counts[key] = count + 1
        }
    }

    func leave(_ key: String) {
        lock.withLock {
            let count = counts[key, default: 1] - 1
            counts[key] = count > 0 ? count : nil
        }
    }
}
