import Foundation

/// Runs CEL conformance vector files (the JSON shape described in Tests/Fixtures/cel-conformance/README.md).
public enum Conformance {
    public enum Outcome: Sendable, Equatable {
        case pass
        case fail(String)
        case skip(String)
    }

    public struct Result: Sendable {
        public let file: String
        public let name: String
        public let outcome: Outcome
    }

    /// Runs every test of one file.
    public static func run(file path: String) throws -> [Result] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        guard let root = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let sections = root["sections"] as? [[String: Any]] else {
            throw CELError("\(path): not a conformance file (no sections)")
        }
        let file = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        var results: [Result] = []
        for section in sections {
            let sectionName = section["name"] as? String ?? ""
            for test in section["tests"] as? [[String: Any]] ?? [] {
                let name = "\(file)/\(sectionName)/\(test["name"] as? String ?? "?")"
                results.append(Result(file: file, name: name, outcome: run(test)))
            }
        }
        return results
    }

    static func run(_ test: [String: Any]) -> Outcome {
        if let reason = test["skip_reason"] as? String { return .skip(reason) }
        if test["needs_proto"] as? Bool == true { return .skip("needs protobuf messages") }
        if test["check_only"] as? Bool == true { return .skip("type-check only") }
        if test["disable_macros"] as? Bool == true { return .skip("macros disabled") }
        if let container = test["container"] as? String, !container.isEmpty { return .skip("containers are not supported") }
        guard let source = test["expr"] as? String else { return .fail("no expr") }
        var bindings: [String: CELValue] = [:]
        do {
            for (key, raw) in test["bindings"] as? [String: Any] ?? [:] {
                bindings[key] = try value(fromVector: raw)
            }
        } catch {
            return .skip("binding not representable: \(error)")
        }
        let expected = test["expected"] as? [String: Any] ?? [:]
        let got: Swift.Result<CELValue, Error> = Swift.Result { try CELProgram(source).evaluate(bindings) }
        if expected["error"] as? Bool == true {
            switch got {
            case .failure: return .pass
            case .success(let value): return .fail("got \(describe(value)), want an error")
            }
        }
        let want: CELValue
        do { want = try value(fromVector: expected) } catch { return .skip("expected value not representable: \(error)") }
        switch got {
        case .failure(let error): return .fail("got error \(error), want \(describe(want))")
        case .success(let value):
            return matches(value, want) ? .pass : .fail("got \(describe(value)), want \(describe(want))")
        }
    }

    /// Same value and same CEL type; NaN matches NaN; maps regardless of order.
    static func matches(_ a: CELValue, _ b: CELValue) -> Bool {
        switch (a, b) {
        case (.double(let x), .double(let y)): return (x.isNaN && y.isNaN) || x == y
        case (.int(let x), .int(let y)): return x == y
        case (.uint(let x), .uint(let y)): return x == y
        case (.list(let x), .list(let y)): return x.count == y.count && zip(x, y).allSatisfy { matches($0, $1) }
        case (.map(let x), .map(let y)):
            return x.count == y.count && x.entries.allSatisfy { entry in
                y.entries.contains { matches($0.key, entry.key) && matches($0.value, entry.value) }
            }
        default:
            return a.typeName == b.typeName && CELValue.equal(a, b) == true
        }
    }

    public static func describe(_ value: CELValue) -> String {
        switch value {
        case .null: return "null"
        case .bool(let b): return String(b)
        case .int(let i): return String(i)
        case .uint(let u): return "\(u)u"
        case .double(let d): return "double(\(d))"
        case .string(let s): return StringExtensions.quote(s)
        case .bytes(let b): return "b\"\(b.map { String(format: "\\x%02x", $0) }.joined())\""
        case .list(let items): return "[" + items.map(describe).joined(separator: ", ") + "]"
        case .map(let map): return "{" + map.entries.map { "\(describe($0.key)): \(describe($0.value))" }.joined(separator: ", ") + "}"
        case .type(let name): return "type(\(name))"
        case .timestamp(let s, let n): return "timestamp(\"\(Time.formatTimestamp(s, n))\")"
        case .duration(let s, let n): return "duration(\"\(Time.formatDuration(s, n))\")"
        }
    }

    /// Converts a vector VALUE (`{"int": "5"}`, `{"list": [...]}`, ...) to a CEL value.
    public static func value(fromVector object: Any) throws -> CELValue {
        guard let dict = object as? [String: Any], let (kind, raw) = dict.first(where: { $0.key != "error" }) else {
            throw CELError("not a value: \(object)")
        }
        switch kind {
        case "null": return .null
        case "bool": return .bool(raw as? Bool ?? false)
        case "int":
            guard let text = raw as? String, let value = Int64(text) else { throw CELError("bad int") }
            return .int(value)
        case "uint":
            guard let text = raw as? String, let value = UInt64(text) else { throw CELError("bad uint") }
            return .uint(value)
        case "double":
            if let number = raw as? NSNumber { return .double(number.doubleValue) }
            switch raw as? String {
            case "NaN": return .double(.nan)
            case "Infinity": return .double(.infinity)
            case "-Infinity": return .double(-.infinity)
            default: throw CELError("bad double")
            }
        case "string": return .string(raw as? String ?? "")
        case "bytes":
            guard let text = raw as? String, let data = Data(base64Encoded: text) else { throw CELError("bad bytes") }
            return .bytes(Array(data))
        case "list": return .list(try (raw as? [Any] ?? []).map { try value(fromVector: $0) })
        case "map":
            let pairs = try (raw as? [[Any]] ?? []).map { (try value(fromVector: $0[0]), try value(fromVector: $0[1])) }
            return .map(try CELMap(pairs))
        case "type": return .type(raw as? String ?? "")
        case "timestamp": return try Time.parseTimestamp(raw as? String ?? "")
        case "duration": return try Time.parseDuration(raw as? String ?? "")
        default: throw CELError("unsupported value kind '\(kind)'")
        }
    }

    /// A value in the vector shape (`{"int": "5"}`, `{"list": [...]}`), for JSON output.
    public static func vector(_ value: CELValue) -> Any {
        switch value {
        case .null: return ["null": true]
        case .bool(let b): return ["bool": b]
        case .int(let i): return ["int": String(i)]
        case .uint(let u): return ["uint": String(u)]
        case .double(let d): return ["double": d.isNaN ? "NaN" : d.isInfinite ? (d > 0 ? "Infinity" : "-Infinity") : d as Any]
        case .string(let s): return ["string": s]
        case .bytes(let b): return ["bytes": Data(b).base64EncodedString()]
        case .list(let items): return ["list": items.map(vector)]
        case .map(let map): return ["map": map.entries.map { [vector($0.key), vector($0.value)] }]
        case .type(let name): return ["type": name]
        case .timestamp(let s, let n): return ["timestamp": Time.formatTimestamp(s, n)]
        case .duration(let s, let n): return ["duration": Time.formatDuration(s, n)]
        }
    }

    /// Plain JSON (as `--bindings` takes it) to CEL: integral numbers become int, others double.
    public static func value(fromJSON object: Any) throws -> CELValue {
        switch object {
        case is NSNull: return .null
        case let flag as Bool where type(of: object) == type(of: NSNumber(value: true)) || "\(type(of: object))".contains("Bool"):
            return .bool(flag)
        case let number as NSNumber:
            let double = number.doubleValue
            if double == double.rounded(), abs(double) < 9e15, !"\(number)".contains(".") { return .int(number.int64Value) }
            return .double(double)
        case let text as String: return .string(text)
        case let list as [Any]: return .list(try list.map { try value(fromJSON: $0) })
        case let dict as [String: Any]:
            return .map(try CELMap(try dict.sorted { $0.key < $1.key }.map { (.string($0.key), try value(fromJSON: $0.value)) }))
        default: throw CELError("unsupported JSON value \(object)")
        }
    }
}
