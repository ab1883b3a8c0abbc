import Crypto
import Foundation
import GRDB

/// Masks every secret value the secret store holds (secrets set by operators and the passwords
/// Gantry generates for databases and caches) in text Gantry is about to write anywhere: the state
/// DB, audit notes, logs, command output. Values are read again whenever the secrets table changes
/// (in this process or another), so a secret set a moment ago is masked too.
public final class Redactor: @unchecked Sendable {
    /// Values shorter than this are not masked (they would mask ordinary words).
    public static let minimumLength = 6

    let store: SecretStore
    private let lock = NSLock()
    private var signature: String?
    /// The store's generation when the values were last checked: unchanged, nothing is read again.
    private var seenGeneration = -1
    private var values: [(text: String, label: String)] = []
    /// When the secrets table was last looked at: another process's `gantry secret set` bumps no
    /// generation here, so the table is looked at again once this is older than `recheck`.
    private var checkedAt = Date.distantPast
    static let recheck: TimeInterval = 0.1

    public init(store: SecretStore) { self.store = store }

    /// `text` with each secret value replaced by `[redacted secret NAME]`, longest first; a value is
    /// also caught percent-encoded (as it stands in a URL).
    /// `fresh`: the secrets table is looked at now, whatever was checked a moment ago (a signed
    /// record is kept for good: a secret set by another process 50 ms before must be masked).
    public func redact(_ text: String, fresh: Bool = false) -> String {
        let values = current(fresh: fresh)
        guard !values.isEmpty, !text.isEmpty else { return text }
        var result = text
        for (value, label) in values where result.contains(value) {
            result = result.replacingOccurrences(of: value, with: label)
        }
        return result
    }

    private func current(fresh: Bool = false) -> [(text: String, label: String)] {
        // Every value this process set or read bumps the generation first, so a log line never
        // holds a value the redactor has not seen (and most lines cost no read of the DB).
        let generation = store.generation.value
        let now = Date()
        if !fresh, let known = lock.withLock({ seenGeneration == generation && now.timeIntervalSince(checkedAt) < Self.recheck ? values : nil }) { return known }
        let signature = try? store.state.pool.read { db in
            try Row.fetchOne(db, sql: "SELECT count(*) AS n, coalesce(max(updatedAt), '') AS at, coalesce(sum(version), 0) AS v FROM secrets")
                .map { "\($0["n"] as Int):\($0["at"] as String):\($0["v"] as Int)" }
        } ?? nil
        return lock.withLock {
            checkedAt = now
            if let signature, signature == self.signature { seenGeneration = generation; return values }
            var found: [(String, String)] = []
            for (name, value) in (try? store.allValues()) ?? [] {
                guard let text = String(data: value, encoding: .utf8), text.count >= Self.minimumLength else { continue }
                let label = "[redacted secret \(name)]"
                found.append((text, label))
                for encoded in Self.encodings(of: text) where encoded != text {
                    found.append((encoded, label))
                }
            }
            values = found.sorted { $0.0.count > $1.0.count }
            self.signature = signature
            seenGeneration = generation
            return values
        }
    }
}

extension Redactor {
    /// The forms a value takes in text a program prints: percent-encoded (as in a URL path or
    /// query), JSON-escaped, hex, and base64 in both alphabets, padded or not, and wherever it
    /// starts in the encoded bytes (`user:SECRET` in a Basic header): for each of the three
    /// alignments, the part of the encoding that depends on the value alone.
    static func encodings(of text: String) -> [String] {
        let bytes = Data(text.utf8)
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        let unreserved = CharacterSet.alphanumerics.intersection(CharacterSet(charactersIn: Unicode.Scalar(0)..<Unicode.Scalar(128)))
            .union(CharacterSet(charactersIn: "-._~"))
        var percent = [text.addingPercentEncoding(withAllowedCharacters: .alphanumerics),
                       text.addingPercentEncoding(withAllowedCharacters: unreserved),
                       text.addingPercentEncoding(withAllowedCharacters: unreserved.union(CharacterSet(charactersIn: "/"))),
                       text.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed),
                       text.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed)].compactMap { $0 }
        // The same with lower-case hex digits (%2f as well as %2F).
        percent += percent.map { encoded in
            var out = "", rest = Substring(encoded)
            while let sign = rest.firstIndex(of: "%"), rest.distance(from: sign, to: rest.endIndex) >= 3 {
                out += rest[..<sign] + "%" + rest[rest.index(after: sign)...rest.index(sign, offsetBy: 2)].lowercased()
                rest = rest[rest.index(sign, offsetBy: 3)...]
            }
            return out + rest
        }
        var forms = percent + [bytes.base64EncodedString(), hex, hex.uppercased()]
        let json = text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        forms += [json, json.replacingOccurrences(of: "/", with: "\\/")]
        // JSON that escapes what is not ASCII (Python's default), and <, > and & too (Go's).
        func escaped(_ special: Set<Character>) -> String {
            var out = ""
            for character in json {
                if character.isASCII && !special.contains(character) { out.append(character); continue }
                for unit in String(character).utf16 { out += String(format: "\\u%04x", unit) }
            }
            return out
        }
        forms += [escaped([]), escaped(["<", ">", "&"])]
        for shift in 0..<3 {
            let encoded = Array((Data(count: shift) + bytes).base64EncodedString().utf8)
            // The first characters mix in the bytes before the value; the last group, those after it.
            let start = [0, 2, 3][shift]
            let total = shift + bytes.count
            let end = total % 3 == 0 ? encoded.count : (total / 3) * 4
            guard end - start >= 8 else { continue }
            let core = String(decoding: encoded[start..<end], as: UTF8.self)
            forms.append(core)
            forms.append(core.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_"))
        }
        return Array(Set(forms))
    }
}

extension SecretStore {
    /// Every stored value with its name, decrypted: for the redactor and the egress proxy's DLP
    /// (which keep them in memory only).
    public func allValues() throws -> [(name: String, value: Data)] {
        let rows = try state.pool.read { db in try Row.fetchAll(db, sql: "SELECT name, scopeKind, scopeValue, sealed FROM secrets") }
        return rows.compactMap { row in
            let name: String = row["name"], kind: String = row["scopeKind"], scope: String = row["scopeValue"]
            guard let box = try? AES.GCM.SealedBox(combined: row["sealed"] as Data),
                  let value = try? AES.GCM.open(box, using: key, authenticating: Data("\(name)|\(kind)|\(scope)".utf8)) else { return nil }
            return (name, value)
        }
    }
}
