import Foundation

/// The standard function library: size, strings, conversions, time accessors, type().
enum Functions {
    static let namespaced: Set<String> = ["strings.quote"]

    static func noOverload(_ name: String, _ receiver: CELValue?, _ args: [CELValue]) -> CELError {
        let types = ((receiver.map { [$0] } ?? []) + args).map(\.typeName).joined(separator: ", ")
        return CELError("no matching overload for '\(name)' applied to (\(types))")
    }

    static func display(_ value: CELValue) -> String {
        switch value {
        case .string(let s): "\"\(s)\""
        case .int(let i): String(i)
        case .uint(let u): "\(u)u"
        case .double(let d): formatDouble(d)
        case .bool(let b): String(b)
        default: value.typeName
        }
    }

    static func formatDouble(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d > 0 ? "+Inf" : "-Inf" }
        if d == d.rounded(), abs(d) < 1e21 { return String(format: "%.0f", d) }
        let shortest = "\(d)"
        return shortest.replacingOccurrences(of: "e+", with: "e+").replacingOccurrences(of: "e-0", with: "e-0")
    }

    static func call(_ name: String, receiver: CELValue?, args: [CELValue]) throws -> CELValue {
        let all = (receiver.map { [$0] } ?? []) + args
        switch (name, all.count) {
        case ("size", 1):
            switch all[0] {
            case .string(let s): return .int(Int64(s.unicodeScalars.count))
            case .bytes(let b): return .int(Int64(b.count))
            case .list(let l): return .int(Int64(l.count))
            case .map(let m): return .int(Int64(m.count))
            default: throw noOverload(name, receiver, args)
            }
        case ("contains", 2), ("startsWith", 2), ("endsWith", 2):
            guard receiver != nil, case .string(let s) = all[0], case .string(let t) = all[1] else { throw noOverload(name, receiver, args) }
            // Code points compare equal exactly when their UTF-8 bytes do.
            switch name {
            case "startsWith": return .bool(s.utf8.starts(with: t.utf8))
            case "endsWith": return .bool(s.utf8.reversed().starts(with: t.utf8.reversed()))
            default: return .bool(Needle(Array(t.unicodeScalars)).first(in: Array(s.unicodeScalars)) != nil)
            }
        case ("matches", 2):
            guard case .string(let s) = all[0], case .string(let pattern) = all[1] else { throw noOverload(name, receiver, args) }
            return .bool(try RegularExpression.compile(pattern).search(s))
        case ("dyn", 1): return all[0]
        case ("type", 1):
            if case .type = all[0] { return .type("type") }
            return .type(all[0].typeName)
        case ("int", 1): return try toInt(all[0])
        case ("uint", 1): return try toUint(all[0])
        case ("double", 1): return try toDouble(all[0])
        case ("string", 1): return try toString(all[0])
        case ("bytes", 1):
            switch all[0] {
            case .bytes: return all[0]
            case .string(let s): return .bytes(Array(s.utf8))
            default: throw noOverload(name, receiver, args)
            }
        case ("bool", 1):
            switch all[0] {
            case .bool: return all[0]
            case .string(let s):
                switch s {
                case "1", "t", "T", "true", "TRUE", "True": return .bool(true)
                case "0", "f", "F", "false", "FALSE", "False": return .bool(false)
                default: throw CELError("type conversion error from string to bool: '\(s)'")
                }
            default: throw noOverload(name, receiver, args)
            }
        case ("timestamp", 1):
            switch all[0] {
            case .timestamp: return all[0]
            case .string(let s): return try Time.parseTimestamp(s)
            case .int(let i):
                guard i >= Time.minTimestamp, i <= Time.maxTimestamp else { throw CELError("timestamp out of range") }
                return .timestamp(seconds: i, nanos: 0)
            default: throw noOverload(name, receiver, args)
            }
        case ("duration", 1):
            switch all[0] {
            case .duration: return all[0]
            case .string(let s): return try Time.parseDuration(s)
            default: throw noOverload(name, receiver, args)
            }
        default:
            if receiver != nil, let value = try accessor(name, all) { return value }
            if let value = try StringExtensions.call(name, receiver: receiver, args: args) { return value }
            throw CELError("found no matching overload for '\(name)' applied to (\(all.map(\.typeName).joined(separator: ", ")))")
        }
    }

    static func toInt(_ value: CELValue) throws -> CELValue {
        switch value {
        case .int: return value
        case .uint(let u):
            guard u <= UInt64(Int64.max) else { throw CELError("range error converting \(u) to int") }
            return .int(Int64(u))
        case .double(let d):
            guard d.isFinite, d > -9.223372036854775808e18, d < 9.223372036854775807e18 else { throw CELError("range error converting \(d) to int") }
            return .int(Int64(d.rounded(.towardZero)))
        case .string(let s):
            guard let i = Int64(s) else { throw CELError("type conversion error from string to int: '\(s)'") }
            return .int(i)
        case .timestamp(let seconds, _): return .int(seconds)
        default: throw CELError("no matching overload for 'int' applied to (\(value.typeName))")
        }
    }

    static func toUint(_ value: CELValue) throws -> CELValue {
        switch value {
        case .uint: return value
        case .int(let i):
            guard i >= 0 else { throw CELError("range error converting \(i) to uint") }
            return .uint(UInt64(i))
        case .double(let d):
            guard d.isFinite, d > -1, d < 1.8446744073709551615e19 else { throw CELError("range error converting \(d) to uint") }
            return .uint(UInt64(d.rounded(.towardZero)))
        case .string(let s):
            guard let u = UInt64(s) else { throw CELError("type conversion error from string to uint: '\(s)'") }
            return .uint(u)
        default: throw CELError("no matching overload for 'uint' applied to (\(value.typeName))")
        }
    }

    static func toDouble(_ value: CELValue) throws -> CELValue {
        switch value {
        case .double: return value
        case .int(let i): return .double(Double(i))
        case .uint(let u): return .double(Double(u))
        case .string(let s):
            guard let d = Double(s) else { throw CELError("type conversion error from string to double: '\(s)'") }
            return .double(d)
        default: throw CELError("no matching overload for 'double' applied to (\(value.typeName))")
        }
    }

    static func toString(_ value: CELValue) throws -> CELValue {
        switch value {
        case .string: return value
        case .int(let i): return .string(String(i))
        case .uint(let u): return .string(String(u))
        case .double(let d): return .string(formatDouble(d))
        case .bool(let b): return .string(String(b))
        case .bytes(let b):
            guard let s = String(bytes: b, encoding: .utf8) else { throw CELError("invalid UTF-8 in bytes to string conversion") }
            return .string(s)
        case .timestamp(let s, let n): return .string(Time.formatTimestamp(s, n))
        case .duration(let s, let n): return .string(Time.formatDuration(s, n))
        case .type(let name): return .string(name)
        default: throw CELError("no matching overload for 'string' applied to (\(value.typeName))")
        }
    }

    /// Timestamp fields (in UTC or a given time zone) and duration totals.
    static func accessor(_ name: String, _ all: [CELValue]) throws -> CELValue? {
        switch all[0] {
        case .timestamp(let seconds, let nanos):
            guard all.count <= 2 else { return nil }
            var local = seconds
            if all.count == 2 {
                guard case .string(let zone) = all[1] else { return nil }
                local += try Time.offset(zone, at: seconds)
            }
            let days = local >= 0 ? local / 86400 : (local - 86399) / 86400
            let rest = local - days * 86400
            let (y, m, d) = Time.civil(fromDays: days)
            switch name {
            case "getFullYear": return .int(y)
            case "getMonth": return .int(m - 1)
            case "getDate": return .int(d)
            case "getDayOfMonth": return .int(d - 1)
            case "getDayOfYear": return .int(days - Time.days(year: y, month: 1, day: 1))
            case "getDayOfWeek": return .int(((days % 7) + 11) % 7)
            case "getHours": return .int(rest / 3600)
            case "getMinutes": return .int((rest % 3600) / 60)
            case "getSeconds": return .int(rest % 60)
            case "getMilliseconds": return .int(Int64(nanos) / 1_000_000)
            default: return nil
            }
        case .duration(let seconds, let nanos):
            guard all.count == 1 else { return nil }
            switch name {
            case "getHours": return .int(seconds / 3600)
            case "getMinutes": return .int(seconds / 60)
            case "getSeconds": return .int(seconds)
            case "getMilliseconds": return .int(Int64(nanos) / 1_000_000) // the milliseconds part, 0-999 (langdef)
            default: return nil
            }
        default:
            return nil
        }
    }
}
