import Crypto
import Foundation
import SpecModel

/// What a signed record (`egress-denied`, `dlp-blocked`) says of a host an environment asked
/// for. The name is the environment's own choice, and the notes go to every reader of the
/// repository for good: a name made of a secret (hex, base32, reversed) would carry it there. A
/// short, plain name is written as it is; a longer one keeps its last two labels (each at most
/// `maxLabel` characters) and a keyed digest of the whole, which Gantry's own log prints beside
/// the full name.
public enum RecordedHost {
    public static let maxLength = 48
    public static let maxLabel = 24
    public static let maxLabels = 4

    /// The key of this process's digests (random: a digest says nothing outside Gantry's log).
    public static let digestKey = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }

    public static func shown(_ host: String, key: Data = digestKey) -> (host: String, digest: String?) {
        if IPAddress(host) != nil { return (host, nil) }
        let labels = host.split(separator: ".", omittingEmptySubsequences: false)
        if host.count <= maxLength && labels.count <= maxLabels && labels.allSatisfy({ $0.count <= maxLabel }) { return (host, nil) }
        let kept = labels.suffix(2).map { $0.count <= maxLabel ? String($0) : String($0.prefix(maxLabel)) + "…" }
        let mac = HMAC<SHA256>.authenticationCode(for: Data(host.utf8), using: SymmetricKey(data: key))
        let digest = Data(mac).prefix(8).map { String(format: "%02x", $0) }.joined()
        return ("…." + kept.joined(separator: "."), digest)
    }

    /// `text` (a denial's reason) with `host`, and every name it quotes (a TLS server name the
    /// environment sent), as a record may show them.
    public static func bounded(_ text: String, host: String, key: Data = digestKey) -> String {
        var result = text.replacingOccurrences(of: host, with: shown(host, key: key).host)
        var searchFrom = result.startIndex
        while let open = result[searchFrom...].firstIndex(of: "'"),
              let close = result[result.index(after: open)...].firstIndex(of: "'") {
            let quoted = String(result[result.index(after: open)..<close])
            let replacement = shown(quoted, key: key).host
            result.replaceSubrange(result.index(after: open)..<close, with: replacement)
            searchFrom = result.index(open, offsetBy: replacement.count + 2)
        }
        return result
    }
}
