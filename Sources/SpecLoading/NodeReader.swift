/// Reads a mapping node field by field, collecting problems instead of stopping at the first one,
/// and reports the keys nobody asked for as unknown fields (with a did-you-mean).
struct NodeReader {
    let node: YAMLNode
    let path: String
    private(set) var pairs: [(key: YAMLNode, value: YAMLNode)] = []
    private var consumed: Set<String> = []

    /// nil (after recording a diagnostic) when `node` is not a mapping.
    init?(_ node: YAMLNode, path: String, diagnostics: inout [Diagnostic]) {
        self.node = node
        self.path = path
        guard case .mapping(let pairs, _) = node else {
            diagnostics.append(Diagnostic(node.mark, "\(path.isEmpty ? "document" : path) must be a mapping, found \(node.kindDescription)"))
            return nil
        }
        self.pairs = pairs
    }

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    mutating func value(_ key: String) -> YAMLNode? {
        consumed.insert(key)
        guard let found = pairs.first(where: { $0.key.scalarText == key })?.value, !found.isNull else { return nil }
        return found
    }

    mutating func string(_ key: String, _ diagnostics: inout [Diagnostic]) -> String? {
        guard let node = value(key) else { return nil }
        return Self.string(node, path: child(key), &diagnostics)
    }

    mutating func requiredString(_ key: String, _ diagnostics: inout [Diagnostic]) -> String? {
        guard value(key) != nil else {
            diagnostics.append(Diagnostic(node.mark, "\(child(key)) is required"))
            return nil
        }
        return string(key, &diagnostics)
    }

    mutating func int(_ key: String, _ diagnostics: inout [Diagnostic]) -> Int? {
        guard let node = value(key) else { return nil }
        guard case .scalar(let text, true, _) = node, let number = Int(text) else {
            diagnostics.append(Diagnostic(node.mark, "\(child(key)) must be a whole number, found \(Self.show(node))"))
            return nil
        }
        return number
    }

    mutating func number(_ key: String, _ diagnostics: inout [Diagnostic]) -> Double? {
        guard let node = value(key) else { return nil }
        guard case .scalar(let text, true, _) = node, let number = Double(text), number.isFinite else {
            diagnostics.append(Diagnostic(node.mark, "\(child(key)) must be a number, found \(Self.show(node))"))
            return nil
        }
        return number
    }

    mutating func bool(_ key: String, _ diagnostics: inout [Diagnostic]) -> Bool? {
        guard let node = value(key) else { return nil }
        guard case .scalar(let text, true, _) = node, text == "true" || text == "false" else {
            diagnostics.append(Diagnostic(node.mark, "\(child(key)) must be true or false, found \(Self.show(node))"))
            return nil
        }
        return text == "true"
    }

    /// A duration such as `30s`, `5m`, `72h`, `2d` or `1h30m`, in seconds.
    mutating func duration(_ key: String, _ diagnostics: inout [Diagnostic]) -> Double? {
        guard let node = value(key) else { return nil }
        guard let text = node.scalarText, let seconds = Self.parseDuration(text) else {
            diagnostics.append(Diagnostic(node.mark, "\(child(key)) must be a duration like 30s, 5m, 72h or 1h30m, at most \(Self.maxDurationDays)d, found \(Self.show(node))"))
            return nil
        }
        return seconds
    }

    mutating func stringList(_ key: String, _ diagnostics: inout [Diagnostic]) -> [String]? {
        guard let node = value(key) else { return nil }
        guard case .sequence(let items, _) = node else {
            diagnostics.append(Diagnostic(node.mark, "\(child(key)) must be a list of strings, found \(node.kindDescription)"))
            return nil
        }
        return items.enumerated().compactMap { Self.string($1, path: "\(child(key))[\($0)]", &diagnostics) }
    }

    /// Entries of a mapping-valued field, in file order.
    mutating func entries(_ key: String, _ diagnostics: inout [Diagnostic]) -> [(name: String, node: YAMLNode)] {
        guard let node = value(key) else { return [] }
        guard case .mapping(let pairs, _) = node else {
            diagnostics.append(Diagnostic(node.mark, "\(child(key)) must be a mapping, found \(node.kindDescription)"))
            return []
        }
        return pairs.map { ($0.key.scalarText ?? "", $0.value) }
    }

    /// Reports every key that no accessor read.
    func finish(_ diagnostics: inout [Diagnostic]) {
        let known = Array(consumed).sorted()
        for pair in pairs {
            let key = pair.key.scalarText ?? ""
            guard !consumed.contains(key) else { continue }
            var message = "unknown field '\(child(key))'"
            if let suggestion = Suggest.closest(to: key, in: known) {
                message += "; did you mean '\(suggestion)'?"
            } else {
                message += "; known fields here: \(known.joined(separator: ", "))"
            }
            diagnostics.append(Diagnostic(pair.key.mark, message))
        }
    }

    static func string(_ node: YAMLNode, path: String, _ diagnostics: inout [Diagnostic]) -> String? {
        guard case .scalar(let text, _, _) = node, !node.isNull else {
            diagnostics.append(Diagnostic(node.mark, "\(path) must be a string, found \(node.kindDescription)"))
            return nil
        }
        return text
    }

    static func show(_ node: YAMLNode) -> String {
        guard let text = node.scalarText else { return node.kindDescription }
        return text.count > 80 ? "'\(text.prefix(80))…' (\(text.utf8.count) bytes)" : "'\(text)'"
    }

    /// The longest duration a spec may name: ten years.
    static let maxDurationDays = 3650

    /// Seconds, or nil when `text` is not a duration or is longer than `maxDurationDays`.
    static func parseDuration(_ text: String) -> Double? {
        guard text.utf8.count <= 64 else { return nil }
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        var total = 0.0
        var digits = ""
        var sawUnit = false
        for character in text {
            if character.isNumber || character == "." {
                digits.append(character)
            } else if let unit = units[character], let value = Double(digits) {
                total += value * unit
                digits = ""
                sawUnit = true
            } else {
                return nil
            }
        }
        guard digits.isEmpty, sawUnit, total.isFinite, total <= Double(maxDurationDays) * 86400 else { return nil }
        return total
    }
}

/// "Did you mean" suggestions by edit distance.
enum Suggest {
    /// At most this many candidates of at most `maxWord` characters are compared: a suggestion is a
    /// courtesy, and must stay cheap when a file names thousands of things.
    static let maxCandidates = 100, maxWord = 64

    static func closest(to word: String, in candidates: [String]) -> String? {
        guard word.count <= maxWord, candidates.count <= maxCandidates else { return nil }
        let scored = candidates.filter { $0.count <= maxWord }.map { ($0, distance(word.lowercased(), $0.lowercased())) }
        guard let best = scored.min(by: { $0.1 < $1.1 }) else { return nil }
        return best.1 <= max(2, word.count / 3) ? best.0 : nil
    }

    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...max(b.count, 1) where j <= b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}

/// Durations as the spec writes them (`30s`, `5m`, `72h`, `1h30m`, `7d`), for commands too.
public enum Durations {
    public static func seconds(_ text: String) -> Double? { NodeReader.parseDuration(text) }
}
