import Foundation
import StateStore

/// Which environments a kill switch covers now, and why: read by everything that would start,
/// wake, scale, sleep or apply an environment's processes (none of that happens while it is on),
/// written by the composition root's kill-switch controller.
public final class KillSwitchBoard: @unchecked Sendable {
    private let lock = NSLock()
    private var covered: [String: String] = [:]
    /// The switches behind `covered`, for environments it does not list yet (made since).
    private var switches: [KillSwitch] = []
    private var onMain = false

    public init() {}

    /// Why `environment` (of `team`, when known) is under a kill switch, or nil. An environment
    /// made since the last refresh is judged against the switches themselves.
    public func reason(for environment: String, team: String? = nil) -> String? {
        lock.withLock {
            if let known = covered[environment] { return known }
            return Self.coverage(switches: switches, onMain: onMain, environments: [(environment, team)])[environment]
        }
    }

    public var all: [String: String] { lock.withLock { covered } }

    public func set(_ new: [String: String], switches: [KillSwitch] = [], onMain: Bool = false) {
        lock.withLock {
            covered = new
            self.switches = switches
            self.onMain = onMain
        }
    }

    /// Why a switch in the state DB (or gantry.yaml's, `onMain`) covers `environment`, for a
    /// process that has no board (a command, the API beside a run).
    public static func reason(in store: StateStore, environment: String, team: String?, onMain: Bool) -> String? {
        coverage(switches: (try? store.killSwitches()) ?? [], onMain: onMain, environments: [(environment, team)])[environment]
    }

    /// The environments `switches` (and gantry.yaml's `killSwitch`, `onMain`) cover among
    /// `environments` (name, team), each with the switch that covers it, most general first.
    public static func coverage(switches: [KillSwitch], onMain: Bool, environments: [(name: String, team: String?)]) -> [String: String] {
        var covered: [String: String] = [:]
        for (name, team) in environments {
            if onMain {
                covered[name] = "killSwitch: true in gantry.yaml on the protected branch"
            } else if let on = switches.first(where: { $0.on && $0.covers(environment: name, team: team) }) {
                covered[name] = "kill switch \(on.label), turned on by \(on.actor)\(on.reason.isEmpty ? "" : ": \(on.reason)")"
            }
        }
        return covered
    }
}

/// Turning a kill switch on or off from a command or the API: the state DB first, then the
/// running Gantry is signalled (SIGUSR2) and waited for until its proxy and processes follow.
public enum KillSwitchRequest {
    public struct Outcome: Sendable {
        /// False: the switch already was in that state.
        public let changed: Bool
        /// The running Gantry applied it (tunnels cut, processes frozen or thawed) before this returned.
        public let applied: Bool
        /// The environments a switch covers once applied (empty when not applied).
        public let covered: [String: String]
        public let seconds: Double
    }

    public static func set(_ store: StateStore, scope: KillSwitch.Scope, name: String, on: Bool, actor: String, reason: String,
                           board: KillSwitchBoard? = nil, signal: () -> Bool, timeout: Double = 2) throws -> Outcome {
        let began = Date()
        let (changed, generation) = try store.setKillSwitch(scope, name: name, on: on, actor: actor, reason: reason)
        guard signal() else { return Outcome(changed: changed, applied: false, covered: [:], seconds: Date().timeIntervalSince(began)) }
        let deadline = began.addingTimeInterval(timeout)
        while Date() < deadline {
            if try store.killGenerations().applied >= generation {
                return Outcome(changed: changed, applied: true, covered: board?.all ?? [:], seconds: Date().timeIntervalSince(began))
            }
            usleep(2_000)
        }
        return Outcome(changed: changed, applied: false, covered: [:], seconds: Date().timeIntervalSince(began))
    }
}
