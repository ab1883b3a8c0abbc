import CRE2
import Foundation

/// `matches()` with RE2 semantics: Google's RE2 matches in time linear in the text, whatever the
/// pattern, as the CEL specification requires. Compiled patterns are kept in a small cache, so a
/// policy that tests one pattern against a thousand paths compiles it once. The evaluator charges
/// a compilation its program size and a match the text's length scaled by it.
final class RegularExpression: @unchecked Sendable {
    private let compiled: OpaquePointer

    /// Patterns longer than this are refused before RE2 sees them.
    static let maxPatternBytes = 16 << 10

    /// RE2's size of the compiled program: what building it cost, and how much each byte of text costs.
    let programSize: Int

    private init(compiled: OpaquePointer) {
        self.compiled = compiled
        programSize = Int(gantry_re2_program_size(compiled))
    }
    deinit { gantry_re2_free(compiled) }

    static func compile(_ pattern: String) throws -> RegularExpression { try compiled(pattern).regex }

    /// The pattern compiled, and whether it was compiled now (false: it came from the cache).
    static func compiled(_ pattern: String) throws -> (regex: RegularExpression, fresh: Bool) {
        if let cached = cache.lookup(pattern) { return (cached, false) }
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
        return (regex, true)
    }

    /// What a match over `bytes` of text is charged: a unit per 16 bytes, times the program's
    /// size in hundreds of instructions (a large program makes every byte dearer to match).
    func matchCost(textBytes bytes: Int) -> Int {
        let perByte = max(1, programSize / 100)
        let (product, overflow) = (bytes / 16 + 1).multipliedReportingOverflow(by: perByte)
        return overflow ? Int.max : product
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
        private var totalSize = 0
        private let capacity = 256
        /// Programs held at once, in RE2 instructions: large programs are not kept for long.
        private let sizeCapacity = 200_000

        func lookup(_ pattern: String) -> RegularExpression? {
            lock.withLock { entries[pattern] }
        }

        func store(_ pattern: String, _ regex: RegularExpression) {
            lock.withLock {
                if entries.count >= capacity || totalSize + regex.programSize > sizeCapacity {
                    entries.removeAll(keepingCapacity: true)
                    totalSize = 0
                }
                guard regex.programSize <= sizeCapacity else { return }
                entries[pattern] = regex
                totalSize += regex.programSize
            }
        }
    }
}
