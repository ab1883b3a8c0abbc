import Foundation

/// The SSH wire encoding (RFC 4251 `string` and `uint32`) used by keys and signatures.
struct SSHWriter {
    private(set) var data = Data()

    mutating func uint32(_ value: UInt32) {
        withUnsafeBytes(of: value.bigEndian) { data.append(contentsOf: $0) }
    }

    mutating func string(_ bytes: Data) {
        uint32(UInt32(bytes.count))
        data.append(bytes)
    }

    mutating func string(_ text: String) { string(Data(text.utf8)) }
    mutating func raw(_ bytes: Data) { data.append(bytes) }
}

struct SSHReader {
    private let data: Data
    private var offset: Int

    init(_ data: Data) {
        self.data = Data(data)
        self.offset = 0
    }

    var isAtEnd: Bool { offset >= data.count }

    mutating func raw(_ count: Int) throws -> Data {
        guard count >= 0, offset + count <= data.count else { throw SSHFormatError("truncated data") }
        defer { offset += count }
        return data.subdata(in: offset..<(offset + count))
    }

    mutating func uint32() throws -> UInt32 {
        try raw(4).reduce(0) { ($0 << 8) | UInt32($1) }
    }

    mutating func string() throws -> Data { try raw(Int(try uint32())) }

    mutating func text() throws -> String {
        guard let value = String(data: try string(), encoding: .utf8) else { throw SSHFormatError("a name is not UTF-8") }
        return value
    }
}

public struct SSHFormatError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// PEM-style armor with base64 lines of 70 characters, as OpenSSH writes it.
enum Armor {
    static func wrap(_ data: Data, label: String) -> String {
        let encoded = data.base64EncodedString()
        var lines: [Substring] = []
        var index = encoded.startIndex
        while index < encoded.endIndex {
            let end = encoded.index(index, offsetBy: 70, limitedBy: encoded.endIndex) ?? encoded.endIndex
            lines.append(encoded[index..<end])
            index = end
        }
        return "-----BEGIN \(label)-----\n" + lines.joined(separator: "\n") + "\n-----END \(label)-----\n"
    }

    static func unwrap(_ text: String, label: String) throws -> Data {
        let begin = "-----BEGIN \(label)-----", end = "-----END \(label)-----"
        guard let start = text.range(of: begin), let stop = text.range(of: end, range: start.upperBound..<text.endIndex) else {
            throw SSHFormatError("no \(label) block found")
        }
        let body = text[start.upperBound..<stop.lowerBound].filter { !$0.isWhitespace }
        guard let data = Data(base64Encoded: String(body)) else { throw SSHFormatError("\(label) is not valid base64") }
        return data
    }
}
