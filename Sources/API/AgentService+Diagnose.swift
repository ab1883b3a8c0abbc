import Audit
import Foundation
import Reconciler
import SpecLoading
import StateStore

extension AgentService {
    /// Events of an environment's history that are drift: what Gantry found changed behind its
    /// back and what it did about it.
    static let driftKinds: Set<String> = ["drift-detected", "restarted", "restart-failed", "orphan-stopped", "adopted", "cleaned-up"]

    /// Everything about one environment in one answer: phase and conditions, the last verdicts
    /// with every rule's result, the services' health, restarts and exits, their last log lines
    /// (secrets masked), recent secret rotations (names only), drift, and what to do next.
    /// Read from the state DB, the environment's log files and /proc only: no Git, no probes.
    public func diagnose(_ caller: Caller, _ name: String) throws -> PlainValue {
        try diagnosis(of: try inspectable(caller, name))
    }

    public func diagnosis(of record: EnvironmentRecord) throws -> PlainValue {
        let summary = try summary(record)
        var verdicts: [PlainValue] = []
        var driftRecords: [PlainValue] = []
        for entry in try store.recentAuditRecords(environment: record.name, limit: 40) {
            guard let audit = AuditRecord.parseNote(entry.text).records.first else { continue }
            switch audit.event {
            case AuditEvent.admitted.rawValue, AuditEvent.denied.rawValue, AuditEvent.pendingApproval.rawValue, AuditEvent.approved.rawValue:
                guard verdicts.count < 3 else { continue }
                verdicts.append(.map([
                    ("event", .string(audit.event)), ("at", .string(audit.at)), ("commit", .string(audit.value("commit") ?? entry.target)),
                    ("actor", audit.value("actor").map { .string($0) } ?? .null),
                    ("decision", audit.value("decision").map { .string($0) } ?? .null),
                    ("rules", .list(audit.values("rule").map(Self.rule))),
                ]))
            case AuditEvent.driftCorrected.rawValue:
                guard driftRecords.count < 10 else { continue }
                driftRecords.append(.map([("at", .string(audit.at)), ("event", .string(audit.event)),
                                          ("message", .string(audit.values("change").joined(separator: "; ")))]))
            default: continue
            }
        }
        let events = try store.events(of: record.name, limit: 50)
        let drift = events.filter { Self.driftKinds.contains($0.kind) }.prefix(10).map(Self.plain)
        let rotations = events.filter { $0.kind == "secret-rotated" }.prefix(10).map(Self.plain)
        let logFiles = logs?(record.name, 20) ?? []
        let services: [PlainValue] = summary.services.map { service in
            .map([("name", .string(service.name)), ("phase", .string(service.phase)), ("healthy", .bool(service.phase == "Running")),
                  ("url", .string(service.url)), ("restarts", .int(service.restarts)),
                  ("lastExit", service.lastExit.map { .string($0) } ?? .null),
                  ("log", .list((logFiles.first { $0.file == "\(service.name).log" }?.lines ?? []).map { .string(redact($0)) }))])
        }
        return .map([
            ("name", .string(record.name)), ("phase", .string(record.phase.rawValue)),
            ("conditions", .list(summary.conditions.map { .string($0.rawValue) })),
            ("class", .string(record.envClass)), ("team", record.team.map { .string($0) } ?? .null),
            ("branch", .string(record.branch)), ("commit", .string(record.commit)),
            ("appliedCommit", record.appliedCommit.map { .string($0) } ?? .null),
            ("message", record.message.map { .string(redact($0)) } ?? .null),
            ("verdicts", .list(verdicts)),
            ("services", .list(services)),
            ("routes", .list(summary.routes.map { .map([("name", .string($0.name)), ("url", $0.url.map { .string($0) } ?? .null)]) })),
            ("otherLogs", .list(logFiles.filter { file in !summary.services.contains { "\($0.name).log" == file.file } }.map { file in
                .map([("file", .string(file.file)), ("lines", .list(file.lines.map { .string(redact($0)) }))])
            })),
            ("secretRotations", .list(rotations)),
            ("drift", .list(driftRecords + drift)),
            ("next", .list(summary.nextSteps.map { .string($0) })),
        ])
    }

    /// A `rule:` line as its name, whether it passed (null when the line does not say), and the
    /// line itself.
    static func rule(_ line: String) -> PlainValue {
        let name = line.split(separator: ":", maxSplits: 1).first.map(String.init) ?? line
        let detail = line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces).lowercased()
        let passed: PlainValue
        if ["ok", "pass", "valid", "not applicable", "unchanged", "warn", "audit"].contains(where: { detail.hasPrefix($0) }) { passed = .bool(true) }
        else if ["fail", "invalid", "match failed", "needs", "not counted", "no such", "may not", "missing"].contains(where: { detail.hasPrefix($0) })
                    || name == "secret" || detail.contains(" is not set") || detail.contains("fails closed") { passed = .bool(false) }
        else { passed = .null }
        return .map([("rule", .string(name)), ("passed", passed), ("result", .string(line))])
    }

    static func plain(_ event: EventRecord) -> PlainValue {
        .map([("at", .string(ISO8601DateFormatter().string(from: event.at))), ("event", .string(event.kind)), ("message", .string(event.message))])
    }
}
