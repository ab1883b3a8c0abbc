import Foundation
import Prometheus
import Reconciler
import StateStore

/// `/metrics` in Prometheus text: passes and their duration, the operations queue, environments
/// by phase, admissions by decision, applies and their failures, teardowns, API requests and
/// execs. Counters count from this process's start (Prometheus handles the reset at a restart).
public final class GantryMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    private let passes: Counter
    private let passDuration: ValueHistogram
    private let queued: Gauge
    private let running: Gauge
    private let admissions: [String: Counter]
    private let applies: Counter
    private let applyFailures: Counter
    private let teardowns: Counter
    private let driftCorrections: Counter
    private let execs: Counter
    private let execFailures: Counter
    private let lock = NSLock()
    private var phaseGauges: [String: Gauge] = [:]
    private var requestCounters: [String: Counter] = [:]
    /// Where the queue depth is read at each scrape (the reconciler's operations pool).
    public var queueDepth: (@Sendable () -> (queued: Int, running: Int))?
    /// The egress proxy's counters at each scrape: environment → counter (`allowed`, `denied`,
    /// `dlp-blocked`, `killed`, `bytes-out`, `bytes-in`) → count since the proxy started.
    public var egress: (@Sendable () -> [String: [String: Int]])?
    private var egressCounters: [String: (counter: Counter, last: Int)] = [:]

    public init() {
        passes = registry.makeCounter(descriptor: Self.name("passes", "total", "Reconcile passes made."))
        passDuration = registry.makeValueHistogram(descriptor: Self.name("pass_duration", "seconds", "How long a reconcile pass took."), buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
        queued = registry.makeGauge(descriptor: Self.name("operations_queued", "", "Applies and teardowns waiting for a worker."))
        running = registry.makeGauge(descriptor: Self.name("operations_running", "", "Applies and teardowns under way."))
        var admissions: [String: Counter] = [:]
        for decision in ["allow", "deny", "pending"] {
            admissions[decision] = registry.makeCounter(descriptor: Self.name("admissions", "total", "Environment revisions judged, by decision."),
                                                        labels: [("decision", decision)])
        }
        self.admissions = admissions
        applies = registry.makeCounter(descriptor: Self.name("applies", "total", "Environment revisions applied."))
        applyFailures = registry.makeCounter(descriptor: Self.name("apply_failures", "total", "Applies that failed."))
        teardowns = registry.makeCounter(descriptor: Self.name("teardowns", "total", "Environments destroyed."))
        driftCorrections = registry.makeCounter(descriptor: Self.name("drift_corrections", "total", "Drift found and corrected."))
        execs = registry.makeCounter(descriptor: Self.name("execs", "total", "Commands run in environments' contexts."))
        execFailures = registry.makeCounter(descriptor: Self.name("exec_nonzero", "total", "Commands run in environments that exited non-zero."))
    }

    static func name(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "gantry", metricName: name, unitName: unit, helpText: help)
    }

    /// A pass the reconciler made (`seconds` nil: operations recorded between passes).
    public func record(seconds: Double?, summary: Reconciler.PassSummary) {
        if let seconds {
            passes.increment()
            passDuration.record(seconds)
        }
        admissions["allow"]?.increment(by: Int64(summary.admitted.count))
        admissions["deny"]?.increment(by: Int64(summary.denied.count))
        admissions["pending"]?.increment(by: Int64(summary.pending.count))
        applies.increment(by: Int64(summary.applied.count))
        applyFailures.increment(by: Int64(summary.failed.count))
        teardowns.increment(by: Int64(summary.destroyed.count))
        driftCorrections.increment(by: Int64(summary.driftCorrected.count))
    }

    func exec(exitCode: Int32) {
        execs.increment()
        if exitCode != 0 { execFailures.increment() }
    }

    /// One API request answered, by route and status.
    func request(route: String, status: Int) {
        let key = "\(route) \(status)"
        let counter = lock.withLock {
            if let known = requestCounters[key] { return known }
            let made = registry.makeCounter(descriptor: Self.name("api_requests", "total", "API requests answered, by route and status."),
                                            labels: [("route", route), ("status", String(status))])
            requestCounters[key] = made
            return made
        }
        counter.increment()
    }

    /// The text for one scrape: gauges read now from the store and the queue.
    public func render(store: StateStore) -> String {
        if let depth = queueDepth?() {
            queued.set(Double(depth.queued))
            running.set(Double(depth.running))
        }
        var counts: [String: Int] = Dictionary(uniqueKeysWithValues: EnvironmentPhase.allCases.filter { $0 != .destroyed }.map { ($0.rawValue, 0) })
        let asleep = (try? store.lifecycleStates()) ?? [:]
        for record in (try? store.environments()) ?? [] {
            let phase = record.phase == .running && asleep[record.name] != nil ? EnvironmentPhase.sleeping : record.phase
            counts[phase.rawValue, default: 0] += 1
        }
        let egress = egress?() ?? [:]
        lock.withLock {
            for (environment, values) in egress {
                for (name, value) in values {
                    let key = environment + "|" + name
                    let bytes = name.hasPrefix("bytes-")
                    let entry = egressCounters[key] ?? (bytes
                        ? registry.makeCounter(descriptor: Self.name("egress", "bytes_total", "Bytes through the egress proxy, by environment and direction."),
                                               labels: [("environment", environment), ("direction", String(name.dropFirst("bytes-".count)))])
                        : registry.makeCounter(descriptor: Self.name("egress_requests", "total", "Egress proxy requests, by environment and decision."),
                                               labels: [("environment", environment), ("decision", name)]), 0)
                    if value > entry.last { entry.counter.increment(by: Int64(value - entry.last)) }
                    egressCounters[key] = (entry.counter, max(value, entry.last))
                }
            }
            for (phase, count) in counts {
                let gauge = phaseGauges[phase] ?? registry.makeGauge(descriptor: Self.name("environments", "", "Environments by phase."),
                                                                      labels: [("phase", phase)])
                phaseGauges[phase] = gauge
                gauge.set(Double(count))
            }
        }
        return registry.emitToString()
    }
}
