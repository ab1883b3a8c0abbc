import Foundation
import SpecLoading

/// An answer the API refuses with: the HTTP status, a stable code, what is wrong, and what would
/// fix it (FORMATS.md section 4: `{"error": {"code", "message", "fix"}}`).
public struct APIError: Error, Sendable, CustomStringConvertible {
    public let status: Int
    public let code: String
    public let message: String
    public let fix: String
    /// Seconds to wait before trying again (429).
    public var retryAfter: Int?

    public init(_ status: Int, _ code: String, _ message: String, fix: String) {
        self.status = status
        self.code = code
        self.message = message
        self.fix = fix
    }

    public var description: String { "\(message) (\(fix))" }

    public var body: PlainValue {
        .map([("error", .map([("code", .string(code)), ("message", .string(message)), ("fix", .string(fix))]))])
    }

    static func badRequest(_ message: String, fix: String) -> APIError { APIError(400, "bad-request", message, fix: fix) }
    static func notFound(_ message: String, fix: String) -> APIError { APIError(404, "not-found", message, fix: fix) }
    static func forbidden(_ message: String, fix: String) -> APIError { APIError(403, "forbidden", message, fix: fix) }
    static func conflict(_ message: String, fix: String) -> APIError { APIError(409, "conflict", message, fix: fix) }
    static func invalid(_ message: String, fix: String) -> APIError { APIError(422, "invalid", message, fix: fix) }
}

/// JSON read into `PlainValue` (object keys in the order they came). Strict: a number is never
/// read as a boolean, nor a string as a number.
struct JSONInput: Decodable {
    let value: PlainValue

    init(from decoder: any Decoder) throws {
        if var array = try? decoder.unkeyedContainer() {
            var items: [PlainValue] = []
            while !array.isAtEnd { items.append(try array.decode(JSONInput.self).value) }
            value = .list(items)
            return
        }
        if let object = try? decoder.container(keyedBy: AnyKey.self) {
            value = .map(try object.allKeys.map { ($0.stringValue, try object.decode(JSONInput.self, forKey: $0).value) })
            return
        }
        let single = try decoder.singleValueContainer()
        if single.decodeNil() { value = .null }
        else if let bool = try? single.decode(Bool.self) { value = .bool(bool) }
        else if let int = try? single.decode(Int.self) { value = .int(int) }
        else if let double = try? single.decode(Double.self) { value = .double(double) }
        else { value = .string(try single.decode(String.self)) }
    }

    struct AnyKey: CodingKey {
        let stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// Parses a request body; a body that is not a JSON object is a 400 naming where it broke.
    static func object(_ data: Data, what: String) throws -> [(key: String, value: PlainValue)] {
        guard data.count <= maxBody else {
            throw APIError(413, "too-large", "\(what) is \(data.count) bytes, more than the \(maxBody) accepted", fix: "send a smaller body")
        }
        let parsed: PlainValue
        do {
            parsed = try JSONDecoder().decode(JSONInput.self, from: data).value
        } catch let DecodingError.dataCorrupted(context) {
            throw APIError.badRequest("\(what) is not valid JSON: \(context.debugDescription)\((context.underlyingError.map { " (\($0.localizedDescription))" }) ?? "")",
                                      fix: "send a JSON object with Content-Type: application/json")
        } catch {
            throw APIError.badRequest("\(what) is not valid JSON: \(error)", fix: "send a JSON object with Content-Type: application/json")
        }
        guard case .map(let fields) = parsed else {
            throw APIError.badRequest("\(what) must be a JSON object", fix: "send a JSON object such as {\"name\": \"my-preview\", \"template\": \"python-web\"}")
        }
        return fields
    }

    static let maxBody = 1 << 20
}

extension Array where Element == (key: String, value: PlainValue) {
    subscript(field name: String) -> PlainValue? { first { $0.key == name }?.value }

    /// A string field: nil when absent or null, a 422 when of another type.
    func string(_ name: String, in what: String) throws -> String? {
        switch self[field: name] {
        case nil, .null?: return nil
        case .string(let text)?: return text
        case let other?: throw APIError.invalid("\(what).\(name) must be a string, not \(other.json())", fix: "give \(name) as a JSON string")
        }
    }

    /// Fields other than `known`, refused so a typo is not silently ignored.
    func refuseUnknown(_ known: Set<String>, in what: String) throws {
        if let unknown = first(where: { !known.contains($0.key) }) {
            throw APIError.invalid("\(what) has an unknown field '\(unknown.key)'", fix: "use only \(known.sorted().joined(separator: ", "))")
        }
    }
}
