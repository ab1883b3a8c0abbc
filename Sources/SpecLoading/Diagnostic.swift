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

    /// At most `ValidationFailure.maxDiagnostics` of `diagnostics`, the last saying how many more there were.
    public static func capped(_ diagnostics: [Diagnostic]) -> [Diagnostic] {
        ValidationFailure(diagnostics).diagnostics
    }
}

/// Every problem found at once, in file order.
public struct ValidationFailure: Error, Sendable, CustomStringConvertible {
    public let diagnostics: [Diagnostic]
    /// At most `maxDiagnostics` are kept, the last one saying how many more there were.
    public static let maxDiagnostics = 200

    public init(_ diagnostics: [Diagnostic]) {
        guard diagnostics.count > Self.maxDiagnostics, let last = diagnostics.last else {
            self.diagnostics = diagnostics
            return
        }
        self.diagnostics = Array(diagnostics.prefix(Self.maxDiagnostics))
            + [Diagnostic(last.mark, "… and \(diagnostics.count - Self.maxDiagnostics) more problems; fix the ones above first")]
    }
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}
