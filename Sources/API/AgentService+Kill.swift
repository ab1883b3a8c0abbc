import Foundation
import Reconciler
import SpecLoading
import StateStore
#if canImport(Glibc)
import Glibc
#endif

extension AgentService {
    /// `POST /v1/kill` `{"scope": "all|team|env", "name", "on", "reason"}`: cuts a scope off the
    /// network and freezes its processes, or lifts that. Turning it on: anyone for an environment
    /// they may see inside or one of their teams; every environment: humans only. Lifting it:
    /// a human with a role only (an agent never does). Answers once the running Gantry applied it.
    public func killSwitch(_ caller: Caller, body: Data) throws -> PlainValue {
        let fields = try JSONInput.object(body, what: "the request body")
        try fields.refuseUnknown(["scope", "name", "on", "reason"], in: "the request body")
        let scopeText = try fields.string("scope", in: "the request body") ?? ""
        guard let scope = KillSwitch.Scope(rawValue: scopeText) else {
            throw APIError.invalid("scope must be all, team or env, not '\(scopeText)'", fix: "give {\"scope\": \"env\", \"name\": \"web\", \"on\": true}")
        }
        let name = scope == .all ? "" : try fields.string("name", in: "the request body") ?? ""
        if scope != .all, name.isEmpty || name.utf8.count > 253 {
            throw APIError.invalid("name must give the \(scope == .team ? "team" : "environment")", fix: "give {\"scope\": \"\(scope.rawValue)\", \"name\": \"...\", \"on\": true}")
        }
        guard case .bool(let on)? = fields[field: "on"] else {
            throw APIError.invalid("on must be true (cut off and freeze) or false (lift)", fix: "give \"on\": true or false")
        }
        let reason = try fields.string("reason", in: "the request body") ?? ""
        guard reason.utf8.count <= 500, !reason.contains(where: { $0.isNewline }) else {
            throw APIError.invalid("reason must be one line of at most 500 bytes", fix: "shorten it")
        }
        let label = scope == .all ? "every environment" : "\(scope.rawValue) \(name)"
        if on {
            switch scope {
            case .all:
                guard caller.actor.kind == .human else {
                    throw APIError.forbidden("only a human may cut every environment off", fix: "cut off your own: {\"scope\": \"env\", \"name\": \"...\"} or your team's")
                }
            case .team:
                guard caller.isAdmin || caller.actor.teams.contains(name) else {
                    throw APIError.forbidden("\(caller.principal) is not in team \(name)", fix: "name one of your teams: \(caller.actor.teams.joined(separator: ", "))")
                }
            case .env:
                _ = try inspectable(caller, name)
            }
        } else {
            guard caller.actor.kind == .human, !caller.actor.roles.isEmpty else {
                throw APIError.forbidden("only a human with a role may lift a kill switch; \(caller.principal) is \(caller.actor.kind == .agent ? "an agent" : "a human without a role")",
                                         fix: "ask a human with a role (identities/actors.yaml) to lift it: `gantry kill --\(scope == .all ? "all" : scope.rawValue)\(scope == .all ? "" : " \(name)") --off --key KEY`")
            }
            if try trustedGovernance().settings.killSwitch {
                throw APIError.conflict("killSwitch: true is set in gantry.yaml on the protected branch: it covers every environment whatever the API lifts",
                                        fix: "revert that commit on the protected branch (a signed, reviewed change)")
            }
        }
        let outcome = try KillSwitchRequest.set(store, scope: scope, name: name, on: on, actor: caller.principal, reason: reason,
                                                signal: { signalRunning(SIGUSR2) })
        var answer: [(key: String, value: PlainValue)] = [("scope", .string(scope.rawValue)), ("name", .string(name)), ("on", .bool(on)),
                                                          ("changed", .bool(outcome.changed)), ("applied", .bool(outcome.applied)),
                                                          ("milliseconds", .double((outcome.seconds * 1000).rounded()))]
        if !outcome.applied {
            answer.append(("message", .string("recorded for \(label); no running `gantry run` applied it yet (it does when it starts)")))
        }
        return .map(answer)
    }

    /// Why a kill switch covers `record` (nil: none does).
    func killSwitch(_ record: EnvironmentRecord) -> String? {
        KillSwitchBoard.reason(in: store, environment: record.name, team: record.team,
                               onMain: (try? trustedGovernance().settings.killSwitch) ?? false)
    }

    /// Signals the running `gantry run` of this state directory; false when none runs.
    func signalRunning(_ signal: Int32) -> Bool {
        let pidFile = configuration.stateDirectory.appendingPathComponent("gantry.pid").path
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return false }
        return Glibc.kill(pid, signal) == 0
    }
}
