import CLibgit2

/// A Git object id (SHA-1), held as 40 lowercase hex digits.
public struct ObjectID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let hex: String

    public init?(hex: String) {
        guard hex.count == 40, hex.allSatisfy({ $0.isHexDigit }) else { return nil }
        self.hex = hex.lowercased()
    }

    init(_ oid: git_oid) {
        var copy = oid
        var buffer = [UInt8](repeating: 0, count: 40)
        buffer.withUnsafeMutableBufferPointer { pointer in
            pointer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: 40) { _ = git_oid_fmt($0, &copy) }
        }
        self.hex = String(decoding: buffer, as: UTF8.self)
    }

    var oid: git_oid {
        var out = git_oid()
        _ = git_oid_fromstr(&out, hex)
        return out
    }

    public var short: String { String(hex.prefix(7)) }
    public var description: String { hex }
    public static func < (lhs: ObjectID, rhs: ObjectID) -> Bool { lhs.hex < rhs.hex }
}
