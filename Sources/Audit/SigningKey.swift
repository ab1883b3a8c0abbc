import Crypto
import Foundation

/// An Ed25519 public key in OpenSSH form.
public struct SSHPublicKey: Sendable, Hashable {
    public let raw: Data

    public init(raw: Data) { self.raw = raw }

    /// Parses `ssh-ed25519 AAAA... [comment]`.
    public init(authorizedKey line: String) throws {
        let fields = line.split(whereSeparator: \.isWhitespace)
        guard fields.count >= 2 else { throw SSHFormatError("expected 'KEYTYPE BASE64'") }
        guard let blob = Data(base64Encoded: String(fields[1])) else { throw SSHFormatError("key is not valid base64") }
        try self.init(wireBlob: blob, declaredType: String(fields[0]))
    }

    init(wireBlob blob: Data, declaredType: String? = nil) throws {
        var reader = SSHReader(blob)
        let type = try reader.text()
        guard type == "ssh-ed25519", declaredType == nil || declaredType == type else {
            throw SSHFormatError("unsupported key type '\(declaredType ?? type)': Gantry verifies ssh-ed25519 keys only")
        }
        let key = try reader.string()
        guard key.count == 32 else { throw SSHFormatError("an ed25519 key has 32 bytes, found \(key.count)") }
        self.raw = key
    }

    /// The SSH wire blob: string "ssh-ed25519", string key.
    public var wireBlob: Data {
        var writer = SSHWriter()
        writer.string("ssh-ed25519")
        writer.string(raw)
        return writer.data
    }

    public var authorizedKey: String { "ssh-ed25519 \(wireBlob.base64EncodedString())" }

    /// `SHA256:...` as `ssh-keygen -l` prints it.
    public var fingerprint: String {
        let digest = Data(SHA256.hash(data: wireBlob)).base64EncodedString()
        return "SHA256:" + digest.replacingOccurrences(of: "=", with: "")
    }
}

/// An Ed25519 private key that reads and writes OpenSSH's unencrypted `openssh-key-v1` format.
public struct SigningKey: Sendable {
    /// The 32-byte Ed25519 seed.
    private let seed: Data
    public let publicKey: SSHPublicKey

    public var privateKey: Curve25519.Signing.PrivateKey {
        // The seed was validated when the key was made or read.
        try! Curve25519.Signing.PrivateKey(rawRepresentation: seed)
    }

    public init() { self.init(privateKey: Curve25519.Signing.PrivateKey()) }

    public init(privateKey: Curve25519.Signing.PrivateKey) {
        seed = privateKey.rawRepresentation
        publicKey = SSHPublicKey(raw: privateKey.publicKey.rawRepresentation)
    }

    /// Parses an unencrypted OpenSSH ed25519 private key file.
    public init(openSSH text: String) throws {
        var reader = SSHReader(try Armor.unwrap(text, label: "OPENSSH PRIVATE KEY"))
        guard try reader.raw(15) == Data("openssh-key-v1\0".utf8) else { throw SSHFormatError("not an openssh-key-v1 key") }
        let cipher = try reader.text(), kdf = try reader.text()
        _ = try reader.string()
        guard cipher == "none", kdf == "none" else {
            throw SSHFormatError("the key is encrypted (\(cipher)); Gantry needs an unencrypted key: ssh-keygen -p -N '' -f KEY")
        }
        guard try reader.uint32() == 1 else { throw SSHFormatError("expected exactly one key in the file") }
        _ = try reader.string()
        var secret = SSHReader(try reader.string())
        guard try secret.uint32() == (try secret.uint32()) else { throw SSHFormatError("check bytes differ: corrupt key") }
        let type = try secret.text()
        guard type == "ssh-ed25519" else {
            throw SSHFormatError("unsupported key type '\(type)': Gantry signs with ssh-ed25519 keys only")
        }
        _ = try secret.string()
        let both = try secret.string()
        guard both.count == 64 else { throw SSHFormatError("corrupt ed25519 private key") }
        self.init(privateKey: try Curve25519.Signing.PrivateKey(rawRepresentation: both.prefix(32)))
    }

    /// The key in OpenSSH's unencrypted private key format.
    public func openSSH(comment: String) -> String {
        let publicBlob = publicKey.wireBlob
        var secret = SSHWriter()
        let check = UInt32.random(in: 0...UInt32.max)
        secret.uint32(check)
        secret.uint32(check)
        secret.string("ssh-ed25519")
        secret.string(publicKey.raw)
        secret.string(privateKey.rawRepresentation + publicKey.raw)
        secret.string(comment)
        var padded = secret.data
        var pad: UInt8 = 1
        while padded.count % 8 != 0 {
            padded.append(pad)
            pad += 1
        }
        var writer = SSHWriter()
        writer.raw(Data("openssh-key-v1\0".utf8))
        writer.string("none")
        writer.string("none")
        writer.string(Data())
        writer.uint32(1)
        writer.string(publicBlob)
        writer.string(padded)
        return Armor.wrap(writer.data, label: "OPENSSH PRIVATE KEY")
    }

    /// Loads the key at `path`, or creates it (mode 0600, with a `.pub` beside it) when absent.
    public static func loadOrCreate(at path: String, comment: String = "gantry") throws -> SigningKey {
        let manager = FileManager.default
        if manager.fileExists(atPath: path) {
            return try SigningKey(openSSH: try String(contentsOfFile: path, encoding: .utf8))
        }
        try manager.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true,
                                    attributes: [.posixPermissions: 0o700])
        let key = SigningKey()
        let temporary = path + ".tmp"
        guard manager.createFile(atPath: temporary, contents: Data(key.openSSH(comment: comment).utf8),
                                 attributes: [.posixPermissions: 0o600]) else {
            throw SSHFormatError("cannot write the key to \(temporary)")
        }
        try manager.moveItem(atPath: temporary, toPath: path)
        try Data((key.publicKey.authorizedKey + " \(comment)\n").utf8).write(to: URL(fileURLWithPath: path + ".pub"))
        return key
    }
}
