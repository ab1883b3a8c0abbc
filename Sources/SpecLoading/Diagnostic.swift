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

    public init(_ mark: SourceMark, _ message: String) {
        self.mark = mark
        self.message = message
    }

    public init(file: String, _ message: String) {
        self.init(SourceMark(file: file, line: 1, column: 1), message)
    }

    public var description: String { "\(mark): \(message)" }
}

/// Every problem found at once, in file order.
public struct ValidationFailure: Error, Sendable, CustomStringConvertible {
    public let diagnostics: [Diagnostic]
    public init(_ diagnostics: [Diagnostic]) { self.diagnostics = diagnostics }
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}
