import Crypto
import Foundation

/// The events FORMATS.md section 2 lists.
public enum AuditEvent: String, Sendable, CaseIterable, Codable {
    case admitted, denied, approved, applied, failed, destroyed, slept, woke
    case pendingApproval = "pending-approval"
    case driftCorrected = "drift-corrected"
    case budgetAlert = "budget-alert"
    case budgetPaused = "budget-paused"
    case killSwitch = "kill-switch"
    case ttlExpired = "ttl-expired"
    /// The trust anchor was set or moved (first start, `gantry trust set`).
    case trustAnchored = "trust-anchored"
    /// The notes ref had lost records the state DB holds; they were published again.
    case auditRestored = "audit-restored"
    /// An API caller asked for an environment's branch to be deleted (the teardown follows as `destroyed`).
    case destroyRequested = "destroy-requested"
    /// A command ran in an environment's context (`gantry exec`, the API's exec): the command line, never its output.
    case exec
    /// An autoscaled service reached its `max` replicas (each scaling is in the history).
    case scaled
    /// A preview's TTL runs out soon (24 h and 1 h before).
    case ttlWarning = "ttl-warning"
    /// The egress proxy refused a host (rate-limited: one per environment, service, host and rule a minute).
    case egressDenied = "egress-denied"
    /// The egress proxy blocked a request that carried a credential (the rule, never the value).
    case dlpBlocked = "dlp-blocked"
}

/// What a caller asks to record; `AuditLog` numbers, chains and signs it.
public struct AuditEntry: Sendable {
    public let event: AuditEvent
    /// The commit the note is attached to.
    public let commit: String
    /// Ordered `key: value` lines after `at:` (environment, branch, commit, actor, rule, ...).
    public let fields: [(key: String, value: String)]

    public init(event: AuditEvent, commit: String, fields: [(key: String, value: String)]) {
        self.event = event
        self.commit = commit
        self.fields = fields
    }
}

/// One signed record as written in a note.
public struct AuditRecord: Sendable {
    public let seq: Int
    public let event: String
    public let at: String
    /// Every line between `at:` and `prev:`, in order.
    public let fields: [(key: String, value: String)]
    public let prev: String
    public let signature: String

    /// The bytes the signature covers: everything before the signature block.
    public var signedText: String {
        var text = "gantry-audit: 1\nseq: \(seq)\nevent: \(event)\nat: \(at)\n"
        for field in fields { text += "\(field.key): \(field.value)\n" }
        return text + "prev: \(prev)\n"
    }

    public var text: String { signedText + signature }

    /// `sha256:<hex>` of the full record, the `prev` of the next one.
    public var digest: String {
        "sha256:" + SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    public func values(_ key: String) -> [String] { fields.filter { $0.key == key }.map(\.value) }
    public func value(_ key: String) -> String? { values(key).first }

    /// A field as it may appear on one record line: a backslash, a control or line-separating
    /// character becomes an escape (`\\`, `\n`, `\r`, `\t`, `\u{85}`), and no run of five dashes is
    /// left (the fifth becomes `\u{2d}`), so no value can end a line, fake a field or open or close a
    /// signature block. Text without those characters is unchanged.
    public static func escape(_ value: String) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(value.unicodeScalars.count)
        var dashes = 0
        for scalar in value.unicodeScalars {
            if scalar == "-" {
                dashes += 1
                if dashes == 5 {
                    out += "\\u{2d}"
                    dashes = 0
                } else {
                    out.unicodeScalars.append(scalar)
                }
                continue
            }
            dashes = 0
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                switch scalar.properties.generalCategory {
                case .control, .lineSeparator, .paragraphSeparator:
                    out += "\\u{\(String(scalar.value, radix: 16))}"
                default:
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    /// The time an `at:` line (or an RFC 3339 time a caller gives) names; nil when it names none.
    public static func date(_ text: String) -> Date? {
        let precise = ISO8601DateFormatter()
        precise.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return precise.date(from: text) ?? ISO8601DateFormatter().date(from: text)
    }

    public static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }

    static let beginMarker = "-----BEGIN SSH SIGNATURE-----"
    static let endMarker = "-----END SSH SIGNATURE-----"

    /// Splits a note into its records, line by line: a record ends at a line that is exactly the
    /// signature's end marker. Text that is not a well-formed record is reported, not dropped.
    public static func parseNote(_ note: String) -> (records: [AuditRecord], problems: [String]) {
        var records: [AuditRecord] = []
        var problems: [String] = []
        var chunk: [Substring] = []
        for line in note.split(separator: "\n", omittingEmptySubsequences: false) {
            if chunk.isEmpty && line.isEmpty { continue }
            chunk.append(line)
            guard line == endMarker else { continue }
            do { records.append(try parse(chunk.joined(separator: "\n") + "\n")) } catch { problems.append("\(error)") }
            chunk = []
        }
        if chunk.contains(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) {
            problems.append("text after the last record that is not a signed record")
        }
        return (records, problems)
    }

    static func parse(_ text: String) throws -> AuditRecord {
        guard let begin = text.range(of: "\n" + beginMarker + "\n").map({ text.index(after: $0.lowerBound)..<$0.upperBound }) else {
            throw SSHFormatError("record without a signature")
        }
        let signature = String(text[begin.lowerBound...])
        var lines = text[..<begin.lowerBound].split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        func pair(_ line: String) -> (String, String)? {
            guard let range = line.range(of: ": ") else { return nil }
            return (String(line[..<range.lowerBound]), String(line[range.upperBound...]))
        }
        let pairs = lines.compactMap(pair)
        guard pairs.count == lines.count, pairs.count >= 5, pairs[0] == ("gantry-audit", "1"), pairs[1].0 == "seq",
              let seq = Int(pairs[1].1), String(seq) == pairs[1].1, pairs[2].0 == "event", pairs[3].0 == "at", pairs.last!.0 == "prev" else {
            throw SSHFormatError("malformed record: expected gantry-audit, seq, event, at, ..., prev lines")
        }
        return AuditRecord(seq: seq, event: pairs[2].1, at: pairs[3].1,
                           fields: pairs[4..<(pairs.count - 1)].map { (key: $0.0, value: $0.1) },
                           prev: pairs.last!.1, signature: signature)
    }
}
