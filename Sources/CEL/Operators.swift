import Foundation

enum Operators {
    static func noOverload(_ op: String, _ a: CELValue, _ b: CELValue) -> CELError {
        CELError("no matching overload for '_\(op)_' applied to (\(a.typeName), \(b.typeName))")
    }

    static func binary(_ op: String, _ a: CELValue, _ b: CELValue) throws -> CELValue {
        switch op {
        case "==": return .bool(CELValue.equal(a, b) ?? false)
        case "!=": return .bool(!(CELValue.equal(a, b) ?? false))
        case "<", "<=", ">", ">=":
            guard let order = try compare(a, b, op) else { return .bool(false) }
            switch op {
            case "<": return .bool(order == .orderedAscending)
            case "<=": return .bool(order != .orderedDescending)
            case ">": return .bool(order == .orderedDescending)
            default: return .bool(order != .orderedAscending)
            }
        case "in":
            switch b {
            case .list(let items): return .bool(items.contains { CELValue.equal($0, a) == true })
            case .map(let map): return .bool(map[a] != nil)
            default: throw noOverload(op, a, b)
            }
        case "[]": return try index(a, b)
        case "+": return try add(a, b)
        case "-": return try subtract(a, b)
        case "*":
            switch (a, b) {
            case (.int(let x), .int(let y)):
                let (r, o) = x.multipliedReportingOverflow(by: y)
                if o { throw CELError("return error for overflow") }
                return .int(r)
            case (.uint(let x), .uint(let y)):
                let (r, o) = x.multipliedReportingOverflow(by: y)
                if o { throw CELError("return error for overflow") }
                return .uint(r)
            case (.double(let x), .double(let y)): return .double(x * y)
            default: throw noOverload(op, a, b)
            }
        case "/":
            switch (a, b) {
            case (.int(let x), .int(let y)):
                if y == 0 { throw CELError("division by zero") }
                if x == Int64.min && y == -1 { throw CELError("return error for overflow") }
                return .int(x / y)
            case (.uint(let x), .uint(let y)):
                if y == 0 { throw CELError("division by zero") }
                return .uint(x / y)
            case (.double(let x), .double(let y)): return .double(x / y)
            default: throw noOverload(op, a, b)
            }
        case "%":
            switch (a, b) {
            case (.int(let x), .int(let y)):
                if y == 0 { throw CELError("modulus by zero") }
                if x == Int64.min && y == -1 { throw CELError("return error for overflow") }
                return .int(x % y)
            case (.uint(let x), .uint(let y)):
                if y == 0 { throw CELError("modulus by zero") }
                return .uint(x % y)
            default: throw noOverload(op, a, b)
            }
        default:
            throw CELError("unknown operator \(op)")
        }
    }

    /// Ordering for <, <=, >, >=; nil for NaN (every comparison with NaN is false).
    static func compare(_ a: CELValue, _ b: CELValue, _ op: String) throws -> ComparisonResult? {
        switch (a, b) {
        case (.string(let x), .string(let y)):
            let l = Array(x.unicodeScalars.map(\.value)), r = Array(y.unicodeScalars.map(\.value))
            return l.lexicographicallyPrecedes(r) ? .orderedAscending : l == r ? .orderedSame : .orderedDescending
        case (.bytes(let x), .bytes(let y)):
            return x.lexicographicallyPrecedes(y) ? .orderedAscending : x == y ? .orderedSame : .orderedDescending
        case (.bool(let x), .bool(let y)):
            return x == y ? .orderedSame : (!x ? .orderedAscending : .orderedDescending)
        case (.timestamp(let s1, let n1), .timestamp(let s2, let n2)), (.duration(let s1, let n1), .duration(let s2, let n2)):
            return (s1, n1) < (s2, n2) ? .orderedAscending : (s1, n1) == (s2, n2) ? .orderedSame : .orderedDescending
        default:
            let numeric: Set<String> = ["int", "uint", "double"]
            guard numeric.contains(a.typeName), numeric.contains(b.typeName) else { throw noOverload(op, a, b) }
            return CELValue.compareNumbers(a, b)
        }
    }

    static func index(_ a: CELValue, _ b: CELValue) throws -> CELValue {
        switch a {
        case .list(let items):
            let position: Int64
            switch b {
            case .int(let i): position = i
            case .uint(let u): position = u > UInt64(Int64.max) ? -1 : Int64(u)
            case .double(let d) where d == d.rounded() && abs(d) < 9e18: position = Int64(d)
            default: throw noOverload("[]", a, b)
            }
            guard position >= 0, position < items.count else { throw CELError("index out of bounds: \(position)") }
            return items[Int(position)]
        case .map(let map):
            guard b.isValidMapKey || b.typeName == "double" else { throw noOverload("[]", a, b) }
            guard let value = map[b] else { throw CELError("no such key: \(Functions.display(b))") }
            return value
        default:
            throw noOverload("[]", a, b)
        }
    }

    static func add(_ a: CELValue, _ b: CELValue) throws -> CELValue {
        switch (a, b) {
        case (.int(let x), .int(let y)):
            let (r, o) = x.addingReportingOverflow(y)
            if o { throw CELError("return error for overflow") }
            return .int(r)
        case (.uint(let x), .uint(let y)):
            let (r, o) = x.addingReportingOverflow(y)
            if o { throw CELError("return error for overflow") }
            return .uint(r)
        case (.double(let x), .double(let y)): return .double(x + y)
        case (.string(let x), .string(let y)): return .string(x + y)
        case (.bytes(let x), .bytes(let y)): return .bytes(x + y)
        case (.list(let x), .list(let y)): return .list(x + y)
        case (.duration(let s1, let n1), .duration(let s2, let n2)):
            return try Time.duration(seconds: s1, nanos: Int64(n1), plusSeconds: s2, nanos: Int64(n2))
        case (.timestamp(let s1, let n1), .duration(let s2, let n2)), (.duration(let s2, let n2), .timestamp(let s1, let n1)):
            return try Time.timestamp(seconds: s1, nanos: Int64(n1), plusSeconds: s2, nanos: Int64(n2))
        default: throw noOverload("+", a, b)
        }
    }

    static func subtract(_ a: CELValue, _ b: CELValue) throws -> CELValue {
        switch (a, b) {
        case (.int(let x), .int(let y)):
            let (r, o) = x.subtractingReportingOverflow(y)
            if o { throw CELError("return error for overflow") }
            return .int(r)
        case (.uint(let x), .uint(let y)):
            let (r, o) = x.subtractingReportingOverflow(y)
            if o { throw CELError("return error for overflow") }
            return .uint(r)
        case (.double(let x), .double(let y)): return .double(x - y)
        case (.duration(let s1, let n1), .duration(let s2, let n2)):
            return try Time.duration(seconds: s1, nanos: Int64(n1), plusSeconds: -s2, nanos: -Int64(n2))
        case (.timestamp(let s1, let n1), .duration(let s2, let n2)):
            return try Time.timestamp(seconds: s1, nanos: Int64(n1), plusSeconds: -s2, nanos: -Int64(n2))
        case (.timestamp(let s1, let n1), .timestamp(let s2, let n2)):
            return try Time.duration(seconds: s1, nanos: Int64(n1), plusSeconds: -s2, nanos: -Int64(n2))
        default: throw noOverload("-", a, b)
        }
    }
}
