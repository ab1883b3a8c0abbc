/// A YAML node with the position it came from. Scalars stay untyped text; decoding types them.
public indirect enum YAMLNode: Sendable {
    case scalar(String, plain: Bool, SourceMark)
    case mapping([(key: YAMLNode, value: YAMLNode)], SourceMark)
    case sequence([YAMLNode], SourceMark)

    public var mark: SourceMark {
        switch self {
        case .scalar(_, _, let mark), .mapping(_, let mark), .sequence(_, let mark): mark
        }
    }

    /// True for `null`, `~` and an empty plain scalar.
    public var isNull: Bool {
        if case .scalar(let text, true, _) = self { return ["", "~", "null", "Null", "NULL"].contains(text) }
        return false
    }

    /// The text of a scalar, or nil for a collection.
    public var scalarText: String? {
        if case .scalar(let text, _, _) = self { return text }
        return nil
    }

    /// A short word for error messages: "a mapping", "a list", "a string".
    public var kindDescription: String {
        switch self {
        case .scalar: isNull ? "null" : "a scalar"
        case .mapping: "a mapping"
        case .sequence: "a list"
        }
    }

    /// Converts to plain JSON-like values (for fingerprints, `render` and CEL inputs).
    public var plainValue: PlainValue {
        switch self {
        case .scalar(let text, let plain, _):
            if !plain { return .string(text) }
            if isNull { return .null }
            if text == "true" { return .bool(true) }
            if text == "false" { return .bool(false) }
            if let int = Int(text) { return .int(int) }
            if let double = Double(text), text.contains(".") { return .double(double) }
            return .string(text)
        case .sequence(let items, _): return .list(items.map(\.plainValue))
        case .mapping(let pairs, _):
            return .map(pairs.map { (key: $0.key.scalarText ?? "", value: $0.value.plainValue) })
        }
    }
}

/// JSON-shaped data with ordered maps.
public indirect enum PlainValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([PlainValue])
    case map([(key: String, value: PlainValue)])

    public static func == (lhs: PlainValue, rhs: PlainValue) -> Bool {
        lhs.json() == rhs.json()
    }

    /// Canonical JSON text (keys in their order; `sortKeys` sorts them).
    public func json(sortKeys: Bool = false, indent: String? = nil, level: Int = 0) -> String {
        let newline = indent == nil ? "" : "\n"
        let pad = { (depth: Int) in indent.map { String(repeating: $0, count: depth) } ?? "" }
        switch self {
        case .null: return "null"
        case .bool(let value): return value ? "true" : "false"
        case .int(let value): return String(value)
        case .double(let value): return String(value)
        case .string(let value): return PlainValue.quote(value)
        case .list(let items):
            if items.isEmpty { return "[]" }
            let inner = items.map { pad(level + 1) + $0.json(sortKeys: sortKeys, indent: indent, level: level + 1) }
            return "[" + newline + inner.joined(separator: "," + newline) + newline + pad(level) + "]"
        case .map(let pairs):
            if pairs.isEmpty { return "{}" }
            let ordered = sortKeys ? pairs.sorted { $0.key < $1.key } : pairs
            let separator = indent == nil ? ":" : ": "
            let inner = ordered.map {
                pad(level + 1) + PlainValue.quote($0.key) + separator + $0.value.json(sortKeys: sortKeys, indent: indent, level: level + 1)
            }
            return "{" + newline + inner.joined(separator: "," + newline) + newline + pad(level) + "}"
        }
    }

    public static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

import Foundation
