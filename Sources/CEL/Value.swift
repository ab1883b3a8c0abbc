import Foundation

/// A CEL value. Integers are 64-bit signed (`int`) or unsigned (`uint`); maps keep insertion order.
public indirect enum CELValue: Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case list([CELValue])
    case map(CELMap)
    case type(String)
    /// Seconds and nanoseconds since the Unix epoch, UTC.
    case timestamp(seconds: Int64, nanos: Int32)
    case duration(seconds: Int64, nanos: Int32)

    /// The CEL type name: `int`, `list`, `google.protobuf.Timestamp`, ...
    public var typeName: String {
        switch self {
        case .null: "null_type"
        case .bool: "bool"
        case .int: "int"
        case .uint: "uint"
        case .double: "double"
        case .string: "string"
        case .bytes: "bytes"
        case .list: "list"
        case .map: "map"
        case .type: "type"
        case .timestamp: "google.protobuf.Timestamp"
        case .duration: "google.protobuf.Duration"
        }
    }
}

/// A CEL map: keys are bool, int, uint or string; `1`, `1u` and `1.0` name the same key.
/// Entries keep insertion order; an index by key makes lookups and building linear in size.
public struct CELMap: Sendable {
    public private(set) var entries: [(key: CELValue, value: CELValue)] = []
    private var index: [Key: Int] = [:]

    /// A key's identity: numbers by value across int, uint and double; strings by code points.
    enum Key: Hashable {
        case bool(Bool)
        case int(Int64)
        case uint(UInt64)
        case double(Double)
        case string([UInt8])

        init?(_ value: CELValue) {
            switch value {
            case .bool(let b): self = .bool(b)
            case .int(let i): self = .int(i)
            case .uint(let u): self = u <= UInt64(Int64.max) ? .int(Int64(u)) : .uint(u)
            case .double(let d):
                guard d == d.rounded() else { return nil }
                if d >= -9_223_372_036_854_775_808.0, d < 9_223_372_036_854_775_808.0 {
                    self = .int(Int64(d))
                } else if d >= 0, d < 18_446_744_073_709_551_616.0 {
                    self = .uint(UInt64(d))
                } else {
                    self = .double(d)
                }
            case .string(let s): self = .string(Array(s.utf8))
            default: return nil
            }
        }
    }

    public init() {}

    public init(_ entries: [(CELValue, CELValue)]) throws {
        self.entries.reserveCapacity(entries.count)
        for (key, value) in entries {
            guard key.isValidMapKey, let identity = Key(key) else { throw CELError("unsupported key type \(key.typeName)") }
            guard index[identity] == nil else { throw CELError("Failed with repeated key") }
            index[identity] = self.entries.count
            self.entries.append((key, value))
        }
    }

    public subscript(key: CELValue) -> CELValue? {
        guard let identity = Key(key), let position = index[identity] else { return nil }
        return entries[position].value
    }

    public var count: Int { entries.count }
}

extension CELValue {
    var isValidMapKey: Bool {
        switch self {
        case .bool, .int, .uint, .string: true
        case .double(let value): value == value.rounded() // looked up numerically
        default: false
        }
    }

    /// Heterogeneous equality: numbers compare by value across int, uint and double; values of
    /// different kinds are unequal. NaN is unequal to everything.
    static func equal(_ a: CELValue, _ b: CELValue) -> Bool? {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case (.bytes(let x), .bytes(let y)): return x == y
        case (.type(let x), .type(let y)): return x == y
        case (.timestamp(let s1, let n1), .timestamp(let s2, let n2)), (.duration(let s1, let n1), .duration(let s2, let n2)):
            return s1 == s2 && n1 == n2
        case (.list(let x), .list(let y)):
            guard x.count == y.count else { return false }
            for (l, r) in zip(x, y) where equal(l, r) != true { return false }
            return true
        case (.map(let x), .map(let y)):
            guard x.count == y.count else { return false }
            for entry in x.entries {
                guard let other = y[entry.key], equal(entry.value, other) == true else { return false }
            }
            return true
        default:
            if let order = compareNumbers(a, b) { return order == .orderedSame }
            return false
        }
    }

    /// Numeric ordering across int, uint and double; nil when either is not a number (or NaN).
    static func compareNumbers(_ a: CELValue, _ b: CELValue) -> ComparisonResult? {
        switch (a, b) {
        case (.int(let x), .int(let y)): return x < y ? .orderedAscending : x > y ? .orderedDescending : .orderedSame
        case (.uint(let x), .uint(let y)): return x < y ? .orderedAscending : x > y ? .orderedDescending : .orderedSame
        case (.int(let x), .uint(let y)):
            if x < 0 { return .orderedAscending }
            let ux = UInt64(x)
            return ux < y ? .orderedAscending : ux > y ? .orderedDescending : .orderedSame
        case (.uint, .int): return compareNumbers(b, a).map { $0 == .orderedAscending ? .orderedDescending : $0 == .orderedDescending ? .orderedAscending : .orderedSame }
        case (.double(let x), .double(let y)):
            if x.isNaN || y.isNaN { return nil }
            return x < y ? .orderedAscending : x > y ? .orderedDescending : .orderedSame
        // Mixed with a double, integers compare as doubles (lossy for |n| > 2^53, as cel-go does).
        case (.double, .int(let y)): return compareNumbers(a, .double(Double(y)))
        case (.int(let x), .double): return compareNumbers(.double(Double(x)), b)
        case (.double, .uint(let y)): return compareNumbers(a, .double(Double(y)))
        case (.uint(let x), .double): return compareNumbers(.double(Double(x)), b)
        default: return nil
        }
    }

    private static func invert(_ order: ComparisonResult) -> ComparisonResult {
        order == .orderedAscending ? .orderedDescending : order == .orderedDescending ? .orderedAscending : .orderedSame
    }

}

/// An evaluation or parse error, as CEL reports it.
public struct CELError: Error, Sendable, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
