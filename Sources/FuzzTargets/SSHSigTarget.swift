import Audit
import Foundation

/// The input is read two ways: as text (an armored `SSH SIGNATURE` block, an `authorized_keys`-style
/// public key line per line, an OpenSSH private key file), and as the binary blob inside such armor
/// (what `ssh-keygen -Y sign` base64-encodes), wrapped in armor here so that mutations reach the
/// SSH wire parser instead of breaking the base64. Every reader is run on both.
enum SSHSigTarget {
    static let message = Data("tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nfuzz\n".utf8)

    static func run(_ data: Data) {
        let text = String(decoding: data, as: UTF8.self)
        signature(text)
        signature(armor(data, label: "SSH SIGNATURE"))
        for line in text.split(separator: "\n").prefix(64) { _ = try? SSHPublicKey(authorizedKey: String(line)) }
        for key in [text, armor(data, label: "OPENSSH PRIVATE KEY")] {
            if let key = try? SigningKey(openSSH: key) { FuzzTarget.trace("private key of \(key.publicKey.fingerprint)") }
        }
    }

    static func signature(_ armored: String) {
        if let parsed = try? SSHSignature.parse(armored) {
            _ = parsed.publicKey.fingerprint
            _ = parsed.publicKey.authorizedKey
            for namespace in ["git", parsed.namespace] {
                let signer = try? SSHSignature.verify(armored, message: message, namespace: namespace)
                FuzzTarget.trace("signature for \(namespace) by \(parsed.publicKey.fingerprint): \(signer == nil ? "does not verify" : "verifies")")
            }
        } else {
            _ = try? SSHSignature.verify(armored, message: message, namespace: "git")
        }
    }

    /// PEM-style armor with 70-character base64 lines, as OpenSSH writes it.
    static func armor(_ data: Data, label: String) -> String {
        let encoded = Array(data.base64EncodedString())
        let lines = stride(from: 0, to: encoded.count, by: 70).map { String(encoded[$0..<min($0 + 70, encoded.count)]) }
        return "-----BEGIN \(label)-----\n" + lines.joined(separator: "\n") + "\n-----END \(label)-----\n"
    }
}
