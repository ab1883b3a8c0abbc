/// Reads the server name (SNI) from the first bytes a client sends into a CONNECT tunnel: the
/// TLS ClientHello, which may span several records.
enum TLSHello: Equatable {
    case needMore
    /// The tunnel does not start with a TLS handshake.
    case notTLS
    case hello(serverName: String?)
    case malformed(String)

    /// A ClientHello larger than this is refused.
    static let limit = 64 << 10

    /// Reads a growing buffer record by record, never twice: each call looks only at what came
    /// since (a ClientHello trickled in byte by byte costs no more than one sent whole).
    struct Reader {
        /// Where the next record starts in the buffer.
        private var offset = 0
        private var handshake: [UInt8] = []

        mutating func feed(_ bytes: [UInt8]) -> TLSHello {
            guard let first = bytes.first else { return .needMore }
            guard first == 0x16 else { return .notTLS }
            while true {
                guard bytes.count >= offset + 5 else { return bytes.count > limit ? .malformed("the ClientHello is too large") : .needMore }
                guard bytes[offset] == 0x16, bytes[offset + 1] == 3 else { return .malformed("a TLS record of the handshake is not a handshake record") }
                let length = Int(bytes[offset + 3]) << 8 | Int(bytes[offset + 4])
                guard bytes.count >= offset + 5 + length else { return .needMore }
                handshake += bytes[offset + 5..<offset + 5 + length]
                offset += 5 + length
                if handshake.count >= 4 {
                    guard handshake[0] == 1 else { return .malformed("the first handshake message is not a ClientHello") }
                    let total = Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3])
                    guard total + 4 <= limit else { return .malformed("the ClientHello is too large") }
                    if handshake.count >= total + 4 { return parse(Array(handshake[4..<total + 4])) }
                }
                guard offset <= limit else { return .malformed("the ClientHello is too large") }
            }
        }
    }

    /// The ClientHello's body: version, random, session id, ciphers, compression, extensions.
    static func parse(_ body: [UInt8]) -> TLSHello {
        var index = 2 + 32
        func skip(lengthBytes: Int) -> Bool {
            guard body.count >= index + lengthBytes else { return false }
            var length = 0
            for byte in body[index..<index + lengthBytes] { length = length << 8 | Int(byte) }
            index += lengthBytes + length
            return body.count >= index
        }
        guard body.count >= index, skip(lengthBytes: 1), skip(lengthBytes: 2), skip(lengthBytes: 1) else {
            return .malformed("the ClientHello is truncated")
        }
        guard body.count >= index + 2 else { return .hello(serverName: nil) }
        let end = index + 2 + (Int(body[index]) << 8 | Int(body[index + 1]))
        guard end <= body.count else { return .malformed("the ClientHello's extensions are truncated") }
        index += 2
        var names: [String] = []
        while index + 4 <= end {
            let type = Int(body[index]) << 8 | Int(body[index + 1])
            let length = Int(body[index + 2]) << 8 | Int(body[index + 3])
            let data = index + 4
            guard data + length <= end else { return .malformed("an extension is truncated") }
            if type == 0 {
                // server_name_list: (type 1, length 2, name)*
                var at = data + 2
                while at + 3 <= data + length {
                    let nameLength = Int(body[at + 1]) << 8 | Int(body[at + 2])
                    guard at + 3 + nameLength <= data + length else { return .malformed("the server name is truncated") }
                    if body[at] == 0 { names.append(String(decoding: body[at + 3..<at + 3 + nameLength], as: UTF8.self)) }
                    at += 3 + nameLength
                }
            }
            index = data + length
        }
        guard names.count <= 1 else { return .malformed("the ClientHello names several servers") }
        return .hello(serverName: names.first)
    }
}
