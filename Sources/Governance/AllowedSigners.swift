import Audit
import Foundation
import SpecLoading
import SpecModel

/// An OpenSSH `allowed_signers` file (ssh-keygen(1), ALLOWED SIGNERS), read from the protected branch.
///
/// Supported: principal pattern lists, `namespaces=`, `valid-after=`, `valid-before=`, comments.
/// Keys must be `ssh-ed25519`; a line with another key type is reported and never matches, and a
/// `cert-authority` line is reported and ignored (certificates are not supported).
public struct AllowedSigners: Sendable {
    public struct Entry: Sendable {
        public let principals: [String]
        public let key: SSHPublicKey
        public let namespaces: [String]?
        public let validAfter: Date?
        public let validBefore: Date?
        public let line: Int
    }

    public let entries: [Entry]
    public let diagnostics: [Diagnostic]

    public static let keyTypes: Set<String> = ["ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                                               "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]

    public init(text: String, file: String = "identities/allowed_signers") {
        var entries: [Entry] = []
        var diagnostics: [Diagnostic] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty, !line.hasPrefix("#") else { continue }
            let mark = SourceMark(file: file, line: index + 1, column: 1)
            var tokens = Self.tokenize(line)
            guard tokens.count >= 3 else {
                diagnostics.append(Diagnostic(mark, "expected 'PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY'"))
                continue
            }
            let principals = tokens.removeFirst().split(separator: ",").map(String.init)
            var options: [String] = []
            if !Self.keyTypes.contains(tokens[0]) { options = Self.splitOptions(tokens.removeFirst()) }
            guard tokens.count >= 2 else {
                diagnostics.append(Diagnostic(mark, "missing key after the options"))
                continue
            }
            guard tokens[0] == "ssh-ed25519" else {
                diagnostics.append(Diagnostic(mark, "key type \(tokens[0]) is not supported: Gantry verifies ssh-ed25519 signatures only; give \(principals.joined(separator: ",")) an ed25519 key (ssh-keygen -t ed25519)"))
                continue
            }
            var namespaces: [String]?
            var validAfter: Date?, validBefore: Date?
            var usable = true
            for option in options {
                let (name, value) = Self.option(option)
                switch name.lowercased() {
                case "namespaces": namespaces = value?.split(separator: ",").map(String.init)
                case "valid-after", "valid-before":
                    guard let value, let date = Self.timestamp(value) else {
                        diagnostics.append(Diagnostic(mark, "\(name) must be a timestamp YYYYMMDD[HHMM[SS]][Z], found '\(value ?? "")'"))
                        usable = false
                        continue
                    }
                    if name.lowercased() == "valid-after" { validAfter = date } else { validBefore = date }
                case "cert-authority":
                    diagnostics.append(Diagnostic(mark, "cert-authority lines are not supported; list each signer's key instead"))
                    usable = false
                default:
                    diagnostics.append(Diagnostic(mark, "unknown option '\(name)'; supported: namespaces, valid-after, valid-before"))
                    usable = false
                }
            }
            do {
                let key = try SSHPublicKey(authorizedKey: "\(tokens[0]) \(tokens[1])")
                if usable {
                    entries.append(Entry(principals: principals, key: key, namespaces: namespaces,
                                         validAfter: validAfter, validBefore: validBefore, line: index + 1))
                }
            } catch {
                diagnostics.append(Diagnostic(mark, "cannot read the key: \(error)"))
            }
        }
        self.entries = entries
        self.diagnostics = diagnostics
    }

    /// The outcome of looking a key up for a namespace at a time.
    public enum Lookup: Sendable, Equatable {
        case allowed(principal: String)
        case unknownKey
        case namespaceNotAllowed(principal: String, namespaces: [String])
        case notYetValid(principal: String, validAfter: Date)
        case expired(principal: String, validBefore: Date)
    }

    /// Finds who holds `key`, checking the namespace and the validity window at `date`.
    /// When several lines hold the key, an allowing one wins; otherwise the first refusal is reported.
    public func lookup(_ key: SSHPublicKey, namespace: String, at date: Date) -> Lookup {
        var refusal: Lookup = .unknownKey
        for entry in entries where entry.key == key {
            let principal = entry.principals.first ?? ""
            if let namespaces = entry.namespaces, !namespaces.contains(where: { Glob.matches($0, namespace) }) {
                if refusal == .unknownKey { refusal = .namespaceNotAllowed(principal: principal, namespaces: namespaces) }
                continue
            }
            if let after = entry.validAfter, date < after {
                if refusal == .unknownKey { refusal = .notYetValid(principal: principal, validAfter: after) }
                continue
            }
            if let before = entry.validBefore, date >= before {
                if refusal == .unknownKey { refusal = .expired(principal: principal, validBefore: before) }
                continue
            }
            return .allowed(principal: principal)
        }
        return refusal
    }

    static func tokenize(_ line: String) -> [String] {
        var tokens: [String] = []
        var current = ""
        var quoted = false
        for character in line {
            if character == "\"" { quoted.toggle(); current.append(character); continue }
            if character.isWhitespace && !quoted {
                if !current.isEmpty { tokens.append(current); current = "" }
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { tokens.append(current) }
        return tokens
    }

    /// `a="x,y",b` → [`a="x,y"`, `b`]: commas inside quotes do not split.
    static func splitOptions(_ text: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var quoted = false
        for character in text {
            if character == "\"" { quoted.toggle() }
            if character == "," && !quoted {
                parts.append(current)
                current = ""
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { parts.append(current) }
        return parts
    }

    static func option(_ text: String) -> (String, String?) {
        guard let equals = text.firstIndex(of: "=") else { return (text, nil) }
        var value = String(text[text.index(after: equals)...])
        if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
        return (String(text[..<equals]), value)
    }

    /// `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, optionally ending in `Z`; read as UTC.
    static func timestamp(_ text: String) -> Date? {
        let digits = text.hasSuffix("Z") || text.hasSuffix("z") ? String(text.dropLast()) : text
        guard [8, 12, 14].contains(digits.count), digits.allSatisfy(\.isNumber) else { return nil }
        let padded = digits + String(repeating: "0", count: 14 - digits.count)
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMddHHmmss"
        return formatter.date(from: padded)
    }
}
