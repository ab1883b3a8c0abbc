import Foundation

/// CEL's strings extension: charAt, indexOf, lastIndexOf, lowerAscii, upperAscii, replace, split,
/// substring, trim, join, reverse, format and strings.quote. Indexes count Unicode code points.
enum StringExtensions {
    static func call(_ name: String, receiver: CELValue?, args: [CELValue]) throws -> CELValue? {
        if name == "strings.quote" {
            guard args.count == 1, case .string(let s) = args[0] else { return nil }
            return .string(quote(s))
        }
        if name == "join", case .list(let items)? = receiver {
            var separator = ""
            if args.count == 1 { guard case .string(let s) = args[0] else { return nil }; separator = s }
            let parts = try items.map { item -> String in
                guard case .string(let s) = item else { throw CELError("join: list must contain strings, found \(item.typeName)") }
                return s
            }
            return .string(parts.joined(separator: separator))
        }
        guard case .string(let text)? = receiver else { return nil }
        let scalars = Array(text.unicodeScalars)
        func string(_ s: ArraySlice<Unicode.Scalar>) -> CELValue { var out = ""; out.unicodeScalars.append(contentsOf: s); return .string(out) }
        func int(_ value: CELValue) throws -> Int {
            guard case .int(let i) = value else { throw CELError("\(name): expected an int argument, found \(value.typeName)") }
            return Int(clamping: i)
        }
        func str(_ value: CELValue) throws -> [Unicode.Scalar] {
            guard case .string(let s) = value else { throw CELError("\(name): expected a string argument, found \(value.typeName)") }
            return Array(s.unicodeScalars)
        }
        func find(_ needle: [Unicode.Scalar], from start: Int, backwards: Bool) -> Int {
            if needle.isEmpty { return start }
            guard backwards else { return Needle(needle).first(in: scalars, from: start) ?? -1 }
            // The last occurrence starting at or before `start`: the first of the reversed needle
            // in the reversed text, from the mirrored position.
            let reversed = Array(scalars.reversed())
            let from = max(0, scalars.count - needle.count - start)
            guard let position = Needle(needle.reversed()).first(in: reversed, from: from) else { return -1 }
            return scalars.count - position - needle.count
        }
        switch (name, args.count) {
        case ("charAt", 1):
            let i = try int(args[0])
            guard i >= 0, i <= scalars.count else { throw CELError("index out of range: \(i)") }
            return i == scalars.count ? .string("") : string(scalars[i...i])
        case ("indexOf", 1), ("indexOf", 2):
            let needle = try str(args[0])
            let start = args.count == 2 ? try int(args[1]) : 0
            guard start >= 0, start <= scalars.count else { throw CELError("index out of range: \(start)") }
            return .int(Int64(find(needle, from: start, backwards: false)))
        case ("lastIndexOf", 1), ("lastIndexOf", 2):
            let needle = try str(args[0])
            let start = args.count == 2 ? try int(args[1]) : scalars.count
            guard start >= 0, start <= scalars.count else { throw CELError("index out of range: \(start)") }
            if needle.isEmpty { return .int(Int64(start)) }
            return .int(Int64(find(needle, from: start, backwards: true)))
        case ("lowerAscii", 0):
            return .string(String(String.UnicodeScalarView(scalars.map { ("A"..."Z").contains($0) ? Unicode.Scalar($0.value + 32)! : $0 })))
        case ("upperAscii", 0):
            return .string(String(String.UnicodeScalarView(scalars.map { ("a"..."z").contains($0) ? Unicode.Scalar($0.value - 32)! : $0 })))
        case ("replace", 2), ("replace", 3):
            let old = try str(args[0]), new = try str(args[1])
            let limit = args.count == 3 ? try int(args[2]) : -1
            return .string(replace(scalars, Needle(old), with: new, limit: limit))
        case ("split", 1), ("split", 2):
            let separator = try str(args[0])
            let limit = args.count == 2 ? try int(args[1]) : -1
            if limit == 0 { return .list([]) }
            if limit == 1 { return .list([.string(text)]) }
            var parts: [CELValue] = []
            if separator.isEmpty {
                for (index, scalar) in scalars.enumerated() {
                    if limit > 0 && parts.count == limit - 1 { parts.append(string(scalars[index...])); return .list(parts) }
                    parts.append(.string(String(scalar)))
                }
                return .list(parts)
            }
            var start = 0
            for position in Needle(separator).occurrences(in: scalars, limit: limit > 0 ? limit - 1 : -1) {
                parts.append(string(scalars[start..<position]))
                start = position + separator.count
            }
            parts.append(string(scalars[start...]))
            return .list(parts)
        case ("substring", 1), ("substring", 2):
            let start = try int(args[0])
            let end = args.count == 2 ? try int(args[1]) : scalars.count
            guard start >= 0, start <= scalars.count else { throw CELError("index out of range: \(start)") }
            guard end >= 0, end <= scalars.count else { throw CELError("index out of range: \(end)") }
            guard start <= end else { throw CELError("invalid substring range. start: \(start), end: \(end)") }
            return string(scalars[start..<end])
        case ("trim", 0):
            let isSpace: (Unicode.Scalar) -> Bool = { $0.properties.isWhitespace }
            guard let first = scalars.firstIndex(where: { !isSpace($0) }), let last = scalars.lastIndex(where: { !isSpace($0) }) else {
                return .string("")
            }
            return string(scalars[first...last])
        case ("reverse", 0):
            return .string(String(String.UnicodeScalarView(scalars.reversed())))
        case ("format", 1):
            guard case .list(let values) = args[0] else { return nil }
            return .string(try format(text, values))
        default:
            return nil
        }
    }

    /// `text` with the first `limit` (negative: all) occurrences of `old` replaced by `new`. An empty
    /// `old` matches before every code point and at the end.
    static func replace(_ text: [Unicode.Scalar], _ old: Needle, with new: [Unicode.Scalar], limit: Int) -> String {
        // Built as UTF-8 bytes in one growing buffer: linear in the output.
        var out: [UInt8] = []
        out.reserveCapacity(text.count + new.count)
        let replacement = Array(String(String.UnicodeScalarView(new)).utf8)
        func put(_ scalars: ArraySlice<Unicode.Scalar>) {
            for scalar in scalars { UTF8.encode(scalar) { out.append($0) } }
        }
        if old.isEmpty {
            var left = limit
            for scalar in text {
                if left != 0 { out.append(contentsOf: replacement); left -= 1 }
                UTF8.encode(scalar) { out.append($0) }
            }
            if left != 0 { out.append(contentsOf: replacement) }
            return String(decoding: out, as: UTF8.self)
        }
        var start = 0
        for position in old.occurrences(in: text, limit: limit) {
            put(text[start..<position])
            out.append(contentsOf: replacement)
            start = position + old.count
        }
        put(text[start...])
        return String(decoding: out, as: UTF8.self)
    }

    /// The size in bytes of `replace`'s result, computed without building it, so the cost of a
    /// replacement is charged before its output is allocated.
    static func replacedSize(_ text: String, _ old: String, _ new: String, limit: Int) -> Int {
        let scalars = Array(text.unicodeScalars)
        let count: Int
        if old.isEmpty {
            count = limit < 0 ? scalars.count + 1 : min(limit, scalars.count + 1)
        } else {
            count = Needle(Array(old.unicodeScalars)).occurrences(in: scalars, limit: limit).count
        }
        let grown = count.multipliedReportingOverflow(by: max(0, new.utf8.count - (old.isEmpty ? 0 : old.utf8.count)))
        return grown.overflow ? Int.max : text.utf8.count + grown.partialValue
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\u{07}": out += "\\a"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{0B}": out += "\\v"
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    static func format(_ template: String, _ values: [CELValue]) throws -> String {
        var out = ""
        let chars = Array(template)
        var index = 0, argument = 0
        func next() throws -> CELValue {
            guard argument < values.count else { throw CELError("format: not enough arguments for \"\(template)\"") }
            defer { argument += 1 }
            return values[argument]
        }
        while index < chars.count {
            let c = chars[index]
            guard c == "%" else { out.append(c); index += 1; continue }
            index += 1
            guard index < chars.count else { throw CELError("format: unterminated % in \"\(template)\"") }
            if chars[index] == "%" { out.append("%"); index += 1; continue }
            var precision: Int?
            if chars[index] == "." {
                index += 1
                var digits = ""
                while index < chars.count, chars[index].isNumber { digits.append(chars[index]); index += 1 }
                guard digits.count <= 4, let value = Int(digits.isEmpty ? "0" : digits), value <= 1000 else {
                    throw CELError("format: precision '\(digits.prefix(20))' is over 1000")
                }
                precision = value
            }
            guard index < chars.count else { throw CELError("format: missing verb in \"\(template)\"") }
            let verb = chars[index]
            index += 1
            let value = try next()
            switch verb {
            case "s": out += try display(value)
            case "d":
                switch value {
                case .int(let i): out += String(i)
                case .uint(let u): out += String(u)
                case .double(let d) where !d.isFinite: out += special(d)
                default: throw CELError("format: %d needs an integer, found \(value.typeName)")
                }
            case "f", "e":
                let number: Double
                switch value {
                case .double(let d): number = d
                case .int(let i): number = Double(i)
                case .uint(let u): number = Double(u)
                default: throw CELError("format: %\(verb) needs a number, found \(value.typeName)")
                }
                if !number.isFinite { out += special(number); continue }
                out += String(format: "%.\(precision ?? 6)\(verb)", number)
            case "x", "X", "o", "b":
                let radix = verb == "o" ? 8 : verb == "b" ? 2 : 16
                var text: String
                switch value {
                case .int(let i): text = (i < 0 ? "-" : "") + String(i.magnitude, radix: radix)
                case .uint(let u): text = String(u, radix: radix)
                case .string(let s) where radix == 16: text = Array(s.utf8).map { String(format: "%02x", $0) }.joined()
                case .bytes(let b) where radix == 16: text = b.map { String(format: "%02x", $0) }.joined()
                case .double(let d) where !d.isFinite: text = special(d)
                default: throw CELError("format: %\(verb) does not take \(value.typeName)")
                }
                out += verb == "X" ? text.uppercased() : text
            default:
                throw CELError("format: unknown verb %\(verb)")
            }
        }
        return out
    }

    static func special(_ d: Double) -> String { d.isNaN ? "NaN" : d > 0 ? "Infinity" : "-Infinity" }

    /// `%s` rendering: strings bare, lists and maps (keys sorted) recursively.
    static func display(_ value: CELValue) throws -> String {
        switch value {
        case .string(let s): return s
        case .bytes(let b): return String(decoding: b, as: UTF8.self)
        case .null: return "null"
        case .bool(let b): return String(b)
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .double(let d): return d.isFinite ? Functions.formatDouble(d) : special(d)
        case .type(let name): return name
        case .timestamp(let s, let n): return Time.formatTimestamp(s, n)
        case .duration(let s, let n): return Time.formatDuration(s, n)
        case .list(let items): return "[" + (try items.map(display)).joined(separator: ", ") + "]"
        case .map(let map):
            let rendered = try map.entries.map { (try display($0.key), try display($0.value)) }.sorted { $0.0 < $1.0 }
            return "{" + rendered.map { "\($0.0): \($0.1)" }.joined(separator: ", ") + "}"
        }
    }
}
