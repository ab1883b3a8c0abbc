import Crypto
import Foundation

/// OpenSSH `SSHSIG` signatures (PROTOCOL.sshsig) over Ed25519, as `ssh-keygen -Y sign` makes them.
public enum SSHSignature {
    static let magic = Data("SSHSIG".utf8)

    /// The blob that is actually signed: magic, namespace, reserved, hash algorithm, H(message).
    static func signedBlob(message: Data, namespace: String, hashAlgorithm: String) throws -> Data {
        let digest: Data
        switch hashAlgorithm {
        case "sha512": digest = Data(SHA512.hash(data: message))
        case "sha256": digest = Data(SHA256.hash(data: message))
        default: throw SSHFormatError("unsupported hash algorithm '\(hashAlgorithm)'")
        }
        var writer = SSHWriter()
        writer.raw(magic)
        writer.string(namespace)
        writer.string(Data())
        writer.string(hashAlgorithm)
        writer.string(digest)
        return writer.data
    }

    /// An armored `-----BEGIN SSH SIGNATURE-----` block over `message`.
    public static func sign(_ message: Data, namespace: String, key: SigningKey) throws -> String {
        let blob = try signedBlob(message: message, namespace: namespace, hashAlgorithm: "sha512")
        let raw = try key.privateKey.signature(for: blob)
        var signature = SSHWriter()
        signature.string("ssh-ed25519")
        signature.string(raw)
        var writer = SSHWriter()
        writer.raw(magic)
        writer.uint32(1)
        writer.string(key.publicKey.wireBlob)
        writer.string(namespace)
        writer.string(Data())
        writer.string("sha512")
        writer.string(signature.data)
        return Armor.wrap(writer.data, label: "SSH SIGNATURE")
    }

    /// A parsed signature: who signed, for which namespace.
    public struct Parsed: Sendable {
        public let publicKey: SSHPublicKey
        public let namespace: String
        public let hashAlgorithm: String
        let signature: Data
    }

    public static func parse(_ armored: String) throws -> Parsed {
        var reader = SSHReader(try Armor.unwrap(armored, label: "SSH SIGNATURE"))
        guard try reader.raw(6) == magic else { throw SSHFormatError("not an SSHSIG signature") }
        let version = try reader.uint32()
        guard version == 1 else { throw SSHFormatError("unsupported SSHSIG version \(version)") }
        let publicKey = try SSHPublicKey(wireBlob: try reader.string())
        let namespace = try reader.text()
        _ = try reader.string()
        let hashAlgorithm = try reader.text()
        var signature = SSHReader(try reader.string())
        let type = try signature.text()
        guard type == "ssh-ed25519" else { throw SSHFormatError("unsupported signature type '\(type)'") }
        return Parsed(publicKey: publicKey, namespace: namespace, hashAlgorithm: hashAlgorithm, signature: try signature.string())
    }

    /// Verifies `armored` over `message`; returns the signer's key. Throws with the reason otherwise.
    @discardableResult
    public static func verify(_ armored: String, message: Data, namespace: String) throws -> SSHPublicKey {
        let parsed = try parse(armored)
        guard parsed.namespace == namespace else {
            throw SSHFormatError("signature is for namespace '\(parsed.namespace)', expected '\(namespace)'")
        }
        let blob = try signedBlob(message: message, namespace: namespace, hashAlgorithm: parsed.hashAlgorithm)
        let key = try Curve25519.Signing.PublicKey(rawRepresentation: parsed.publicKey.raw)
        guard key.isValidSignature(parsed.signature, for: blob) else {
            throw SSHFormatError("signature does not match the signed content")
        }
        return parsed.publicKey
    }
}
