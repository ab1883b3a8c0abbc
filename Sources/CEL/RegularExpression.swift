import CRE2
import Foundation

/// `matches()` with RE2 semantics: Google's RE2 matches in time linear in the text, whatever the
/// pattern, as the CEL specification requires. Compiled patterns are kept in a small cache, so a
/// policy that tests one pattern against a thousand paths compiles it once.
final class RegularExpression: @unchecked Sendable {
    private let compiled: OpaquePointer

    /// Patterns longer than this are refused before RE2 sees them.
    static let maxPatternBytes = 16 << 10

    private init(compiled: OpaquePointer) { self.compiled = compiled }
    deinit { gantry_re2_free(compiled) }

    static func compile(_ pattern: String) throws -> RegularExpression {
        if let cached = cache.lookup(pattern) { return cached }
        guard pattern.utf8.count <= maxPatternBytes else {
            throw CELError("invalid regular expression: the pattern is \(pattern.utf8.count) bytes, more than \(maxPatternBytes)")
        }
        var message = [CChar](repeating: 0, count: 256)
        let compiled = withBytes(of: pattern) { gantry_re2_compile($0, $1, &message, message.count) }
        guard let compiled else {
            let reason = message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            throw CELError("invalid regular expression '\(pattern.prefix(200))': \(reason)")
        }
        let regex = RegularExpression(compiled: compiled)
        cache.store(pattern, regex)
        return regex
    }

    /// True when the pattern matches anywhere in `text`.
    func search(_ text: String) -> Bool {
        Self.withBytes(of: text) { gantry_re2_search(compiled, $0, $1) == 1 }
    }

    /// The string's UTF-8 bytes (NUL included: RE2 takes a length, not a C string).
    private static func withBytes<T>(of text: String, _ body: (UnsafePointer<CChar>, Int) -> T) -> T {
        var text = text
        return text.withUTF8 { bytes in
            bytes.withMemoryRebound(to: CChar.self) { chars in
                if let base = chars.baseAddress { return body(base, chars.count) }
                var empty: CChar = 0
                return body(&empty, 0)
            }
        }
    }

    private static let cache = Cache()

    private final class Cache: @unchecked Sendable {
        private let lock = NSLock()
        private var entries: [String: RegularExpression] = [:]
        private let capacity = 256

        func lookup(_ pattern: String) -> RegularExpression? {
            lock.withLock { entries[pattern] }
        }

        func store(_ pattern: String, _ regex: RegularExpression) {
            lock.withLock {
                if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
                entries[pattern] = regex
            }
        }
    }
}
