/// A position in a configuration file, 1-based.
public struct SourceMark: Sendable, Hashable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// One problem found in the configuration, printed as `path:line:col: message`.
public struct Diagnostic: Error, Sendable, Hashable, CustomStringConvertible {
    public let mark: SourceMark
    public let message: String

    /// Messages echo names and values from the file: past `maxMessageLength` characters they are cut,
    /// so a hostile file cannot make every denial, log line and audit record huge.
    public static let maxMessageLength = 600

    public init(_ mark: SourceMark, _ message: String) {
        self.mark = mark
        self.message = message.count > Self.maxMessageLength ? message.prefix(Self.maxMessageLength) + "… (cut)" : message
    }

    public init(file: String, _ message: String) {
        self.init(SourceMark(file: file, line: 1, column: 1), message)
    }

    public var description: String { "\(mark): \(message)" }

    /// At most this many problems are reported for one file or one failure.
    public static let maxReported = 200

    /// At most `maxReported` of `diagnostics`, the last saying how many more there were.
    public static func capped(_ diagnostics: [Diagnostic]) -> [Diagnostic] {
        guard diagnostics.count > maxReported, let last = diagnostics.last else { return diagnostics }
        return Array(diagnostics.prefix(maxReported))
            + [Diagnostic(last.mark, "\(moreMarker)\(diagnostics.count - maxReported) more problems; fix the ones above first")]
    }

    private static let moreMarker = "… and "

    /// How many problems `diagnostics` stand for: a capped list's last line counts what it left out.
    public static func problemCount(_ diagnostics: [Diagnostic]) -> Int {
        diagnostics.reduce(0) { total, diagnostic in
            guard diagnostic.message.hasPrefix(moreMarker),
                  let more = Int(diagnostic.message.dropFirst(moreMarker.count).prefix { $0.isNumber }) else { return total + 1 }
            return total + more
        }
    }
}

/// Every problem found at once, in file order.
public struct ValidationFailure: Error, Sendable, CustomStringConvertible {
    public let diagnostics: [Diagnostic]
    /// At most `Diagnostic.maxReported` are kept, the last one saying how many more there were.
    public init(_ diagnostics: [Diagnostic]) { self.diagnostics = Diagnostic.capped(diagnostics) }
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}
