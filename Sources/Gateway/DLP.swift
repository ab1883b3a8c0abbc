import CRE2
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An ASCII hexadecimal digit's value.
enum HexDigit {
    static func value(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: return byte - 0x30
        case 0x41...0x46: return byte - 0x37
        case 0x61...0x66: return byte - 0x57
        default: return nil
        }
    }
}

/// What a data-loss check found: the rule, never the value.
public struct DLPFinding: Sendable, Equatable, CustomStringConvertible {
    /// `pattern:aws-access-key-id`, `secret:stripe-key`.
    public let rule: String
    /// Where it was seen: `url`, `headers`, `body`; and how (`base64`, `url-encoded`, `raw`).
    public let place: String
    public var description: String { "\(rule) in the request's \(place)" }
}

/// Looks for credentials in what an environment sends over plain HTTP: the value of every secret
/// Gantry manages (as is, base64 at each alignment, URL-safe base64, percent-encoded) and the
/// shapes of well-known credentials (`DLPScanner.patterns`). The request line, the headers and the
/// body are checked as sent, percent-decoded, and `Authorization: Basic` decoded.
public final class DLPScanner: @unchecked Sendable {
    /// Secrets shorter than this are not looked for (too many false alarms).
    public static let minimumSecretLength = 8

    /// The well-known credential shapes (written for Gantry after the shapes the vendors publish
    /// and gitleaks' public rules show; RE2 syntax, matched in linear time).
    public static let patterns: [(name: String, regex: String)] = [
        ("aws-access-key-id", #"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b"#),
        ("github-token", #"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b"#),
        ("github-fine-grained-token", #"\bgithub_pat_[A-Za-z0-9_]{80,}"#),
        ("slack-token", #"\bxox[abposr]-[0-9A-Za-z]{6,}-[0-9A-Za-z-]{6,}"#),
        ("slack-webhook", #"hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9+/]{30,}"#),
        ("stripe-live-key", #"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}\b"#),
        ("anthropic-api-key", #"\bsk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_\-]{80,}"#),
        ("openai-api-key", #"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,}"#),
        ("private-key", #"-----BEGIN[ A-Z0-9]{0,40} PRIVATE KEY(?: BLOCK)?-----"#),
    ]

    private let compiled: [(name: String, regex: OpaquePointer)]
    /// Each secret's forms: (secret name, form, bytes).
    private let needles: [(secret: String, form: String, bytes: [UInt8])]
    /// Each secret in lower case, for host names (which DNS compares without case).
    private let lowered: [(secret: String, bytes: [UInt8])]

    /// `secrets`: name → value of every secret to look for.
    public init(secrets: [(name: String, value: String)]) {
        compiled = Self.patterns.map { pattern in
            var message = [CChar](repeating: 0, count: 256)
            let source = Array(pattern.regex.utf8).map { CChar(bitPattern: $0) }
            let regex = gantry_re2_compile(source, source.count, &message, message.count)
            // The table is ours and tested: a pattern that does not compile is a broken build.
            guard let regex else { fatalError("DLP pattern \(pattern.name) does not compile") }
            return (pattern.name, regex)
        }
        var needles: [(String, String, [UInt8])] = []
        for (name, value) in secrets where value.utf8.count >= Self.minimumSecretLength {
            for (form, bytes) in Self.forms(of: Array(value.utf8)) where !needles.contains(where: { $0.2 == bytes }) {
                needles.append((name, form, bytes))
            }
        }
        self.needles = needles
        lowered = secrets.filter { $0.value.utf8.count >= Self.minimumSecretLength }.map { ($0.name, Array($0.value.lowercased().utf8)) }
    }

    /// A secret in a host name, whatever its case (a DNS label carries it to the resolver).
    public func scan(name: String) -> DLPFinding? {
        let bytes = Array(name.lowercased().utf8)
        return lowered.first { Self.contains(bytes, $0.bytes) }.map { DLPFinding(rule: "secret:\($0.secret)", place: "host name") }
    }

    deinit { for (_, regex) in compiled { gantry_re2_free(regex) } }

    /// The first credential found in `bytes` (what `place` names), or nil.
    public func scan(_ bytes: [UInt8], place: String) -> DLPFinding? {
        var views: [(String, [UInt8])] = [("raw", bytes)]
        if bytes.contains(0x25) { views.append(("url-encoded", Self.percentDecoded(bytes, plusIsSpace: false))) }
        if bytes.contains(0x2b) { views.append(("form-encoded", Self.percentDecoded(bytes, plusIsSpace: true))) }
        // JSON escapes, as sent and inside a percent-encoded form field.
        for (how, view) in views where view.contains(0x5c) { views.append(("JSON-escaped" + (how == "raw" ? "" : ", \(how)"), Self.jsonUnescaped(view))) }
        // Base64 wrapped in lines (MIME, PEM-style): the line breaks and spaces taken out.
        if bytes.contains(0x0a) || bytes.contains(0x0d) {
            views.append(("line-wrapped", bytes.filter { $0 != 0x0a && $0 != 0x0d && $0 != 0x20 && $0 != 0x09 }))
        }
        for decoded in Self.basicCredentials(in: bytes) { views.append(("base64", decoded)) }
        for (how, view) in views {
            for needle in needles where Self.contains(view, needle.bytes) {
                return DLPFinding(rule: "secret:\(needle.secret)", place: "\(place) (\(how == "raw" ? needle.form : how))")
            }
            let text = view.isEmpty ? [0] : view
            for (name, regex) in compiled where text.withUnsafeBufferPointer({ buffer in
                buffer.withMemoryRebound(to: CChar.self) { gantry_re2_search(regex, $0.baseAddress!, view.count) == 1 }
            }) {
                return DLPFinding(rule: "pattern:\(name)", place: "\(place) (\(how))")
            }
        }
        return nil
    }

    /// A secret as it may travel: as is, percent-encoded, and base64 (standard and URL-safe) at
    /// each of the three alignments it can have inside a longer encoded text (only the characters
    /// that depend on the secret's bytes alone).
    static func forms(of value: [UInt8]) -> [(String, [UInt8])] {
        var forms: [(String, [UInt8])] = [("raw", value)]
        let unreserved = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~".utf8)
        if value.contains(where: { !unreserved.contains($0) }) {
            for digits in ["0123456789ABCDEF", "0123456789abcdef"].map({ Array($0.utf8) }) {
                forms.append(("url-encoded", value.flatMap { unreserved.contains($0) ? [$0] : [0x25, digits[Int($0 >> 4)], digits[Int($0 & 15)]] }))
            }
        }
        for offset in 0..<3 {
            let encoded = Array(Data(Array(repeating: 0, count: offset) + value).base64EncodedString().utf8)
            let first = (8 * offset + 5) / 6, end = 8 * (offset + value.count) / 6
            guard end - first >= 6 else { continue }
            let core = Array(encoded[first..<end])
            forms.append(("base64", core))
            forms.append(("base64url", core.map { $0 == 0x2b ? 0x2d : $0 == 0x2f ? 0x5f : $0 }))
        }
        return forms
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return false }
        return haystack.withUnsafeBufferPointer { h in
            needle.withUnsafeBufferPointer { n in
                let first = Int32(n[0]), last = h.count - n.count
                var index = 0
                while index <= last {
                    guard let hit = memchr(h.baseAddress! + index, first, last - index + 1) else { return false }
                    index = UnsafePointer<UInt8>(hit.assumingMemoryBound(to: UInt8.self)) - h.baseAddress!
                    if memcmp(h.baseAddress! + index, n.baseAddress!, n.count) == 0 { return true }
                    index += 1
                }
                return false
            }
        }
    }

    static func percentDecoded(_ bytes: [UInt8], plusIsSpace: Bool) -> [UInt8] {
        let hex = HexDigit.value
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == 0x25, index + 2 < bytes.count, let high = hex(bytes[index + 1]), let low = hex(bytes[index + 2]) {
                out.append(high << 4 | low)
                index += 3
            } else {
                out.append(plusIsSpace && bytes[index] == 0x2b ? 0x20 : bytes[index])
                index += 1
            }
        }
        return out
    }

    /// JSON string escapes undone (`\/`, `\"`, `\\`, `\uXXXX` for ASCII): how an encoder may write a secret.
    static func jsonUnescaped(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            guard bytes[index] == 0x5c, index + 1 < bytes.count else { out.append(bytes[index]); index += 1; continue }
            let next = bytes[index + 1]
            if next == 0x75, index + 5 < bytes.count, let value = UInt32(String(decoding: bytes[index + 2..<index + 6], as: UTF8.self), radix: 16), value < 0x80 {
                out.append(UInt8(value))
                index += 6
            } else if [0x2f, 0x22, 0x5c].contains(next) {
                out.append(next)
                index += 2
            } else {
                out.append(bytes[index])
                index += 1
            }
        }
        return out
    }

    /// The decoded credentials of every `Authorization: Basic ...` (and Proxy-Authorization) line.
    static func basicCredentials(in bytes: [UInt8]) -> [[UInt8]] {
        guard let text = String(bytes: bytes.prefix(64 << 10), encoding: .isoLatin1) else { return [] }
        return text.split(separator: "\r\n").compactMap { line in
            let parts = line.split(separator: " ")
            guard parts.count >= 3, ["authorization:", "proxy-authorization:"].contains(parts[0].lowercased()),
                  parts[1].lowercased() == "basic" else { return nil }
            return Data(base64Encoded: String(parts[2])).map { Array($0) }
        }
    }
}
