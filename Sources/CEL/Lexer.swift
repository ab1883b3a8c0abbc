import Foundation

/// A token with its 1-based line and column.
struct Token: Equatable {
    enum Kind: Equatable {
        case int(Int64), uint(UInt64), double(Double), string(String), bytes([UInt8])
        case identifier(String)
        /// `` `a-b` ``: a field name that is not an identifier, valid only after '.'.
        case quotedIdentifier(String)
        case symbol(String)
        /// `9223372036854775808`, valid only after a unary minus.
        case minIntMagnitude
        case end
    }
    let kind: Kind
    let line: Int
    let column: Int
}

/// A CEL parse error with its position in the expression.
public struct CELSyntaxError: Error, Sendable, CustomStringConvertible {
    public let line: Int
    public let column: Int
    public let message: String
    public var description: String { "\(line):\(column): \(message)" }
}

/// Splits CEL source into tokens (CEL's lexical grammar: numbers, quoted and raw strings, bytes).
struct Lexer {
    private let scalars: [Unicode.Scalar]
    private var index = 0
    private var line = 1
    private var column = 1

    init(_ source: String) { scalars = Array(source.unicodeScalars) }

    mutating func tokens() throws -> [Token] {
        var result: [Token] = []
        while true {
            let token = try next()
            result.append(token)
            if token.kind == .end { return result }
        }
    }

    private func peek(_ offset: Int = 0) -> Unicode.Scalar? {
        index + offset < scalars.count ? scalars[index + offset] : nil
    }

    private mutating func advance() -> Unicode.Scalar {
        let scalar = scalars[index]
        index += 1
        if scalar == "\n" { line += 1; column = 1 } else { column += 1 }
        return scalar
    }

    private func error(_ message: String, line: Int? = nil, column: Int? = nil) -> CELSyntaxError {
        CELSyntaxError(line: line ?? self.line, column: column ?? self.column, message: message)
    }

    private static func isDigit(_ s: Unicode.Scalar?) -> Bool { s.map { ("0"..."9").contains($0) } ?? false }
    private static func isHex(_ s: Unicode.Scalar?) -> Bool {
        s.map { ("0"..."9").contains($0) || ("a"..."f").contains($0) || ("A"..."F").contains($0) } ?? false
    }
    private static func isIdentStart(_ s: Unicode.Scalar?) -> Bool {
        s.map { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || $0 == "_" } ?? false
    }

    private mutating func next() throws -> Token {
        // Whitespace and // comments.
        while let c = peek() {
            if c == " " || c == "\t" || c == "\n" || c == "\r" || c == "\u{0C}" { _ = advance(); continue }
            if c == "/" && peek(1) == "/" { while let d = peek(), d != "\n" { _ = advance() }; continue }
            break
        }
        let startLine = line, startColumn = column
        func token(_ kind: Token.Kind) -> Token { Token(kind: kind, line: startLine, column: startColumn) }
        guard let c = peek() else { return token(.end) }

        if Self.isDigit(c) || (c == "." && Self.isDigit(peek(1))) { return token(try number()) }
        if (c == "r" || c == "R" || c == "b" || c == "B"), let q = peek(1), q == "\"" || q == "'" {
            _ = advance()
            let text = try quoted(raw: c == "r" || c == "R", bytes: c == "b" || c == "B")
            return token(text)
        }
        if (c == "r" || c == "R" || c == "b" || c == "B"), let q = peek(1), q == "r" || q == "R" || q == "b" || q == "B",
           let r = peek(2), r == "\"" || r == "'" {
            let raw = [c, q].contains { $0 == "r" || $0 == "R" }, isBytes = [c, q].contains { $0 == "b" || $0 == "B" }
            _ = advance(); _ = advance()
            return token(try quoted(raw: raw, bytes: isBytes))
        }
        if c == "\"" || c == "'" { return token(try quoted(raw: false, bytes: false)) }
        if c == "`" {
            _ = advance()
            var name = ""
            while let d = peek(), d != "`" {
                guard d != "\n" else { throw error("unterminated quoted field name") }
                name.unicodeScalars.append(advance())
            }
            guard peek() == "`" else { throw error("unterminated quoted field name") }
            _ = advance()
            return token(.quotedIdentifier(name))
        }
        if Self.isIdentStart(c) {
            var name = ""
            while Self.isIdentStart(peek()) || Self.isDigit(peek()) { name.unicodeScalars.append(advance()) }
            return token(.identifier(name))
        }
        for symbol in ["==", "!=", "<=", ">=", "&&", "||"] where peek() == symbol.unicodeScalars.first && peek(1) == symbol.unicodeScalars.last {
            _ = advance(); _ = advance()
            return token(.symbol(symbol))
        }
        if "+-*/%<>!?:.,[](){}".unicodeScalars.contains(c) {
            return token(.symbol(String(advance())))
        }
        throw error("unexpected character '\(c)'")
    }

    private mutating func number() throws -> Token.Kind {
        let startColumn = column
        if peek() == "0", peek(1) == "x" || peek(1) == "X" {
            _ = advance(); _ = advance()
            var digits = ""
            while Self.isHex(peek()) { digits.unicodeScalars.append(advance()) }
            guard !digits.isEmpty else { throw error("hex literal needs digits", column: startColumn) }
            if peek() == "u" || peek() == "U" {
                _ = advance()
                guard let value = UInt64(digits, radix: 16) else { throw error("uint literal out of range", column: startColumn) }
                return .uint(value)
            }
            guard let value = Int64(digits, radix: 16) else { throw error("int literal out of range", column: startColumn) }
            return .int(value)
        }
        var text = ""
        var isDouble = false
        while Self.isDigit(peek()) { text.unicodeScalars.append(advance()) }
        if peek() == ".", Self.isDigit(peek(1)) {
            isDouble = true
            text.unicodeScalars.append(advance())
            while Self.isDigit(peek()) { text.unicodeScalars.append(advance()) }
        }
        if peek() == "e" || peek() == "E" {
            let sign = peek(1)
            if Self.isDigit(sign) || ((sign == "+" || sign == "-") && Self.isDigit(peek(2))) {
                isDouble = true
                text.unicodeScalars.append(advance())
                if sign == "+" || sign == "-" { text.unicodeScalars.append(advance()) }
                while Self.isDigit(peek()) { text.unicodeScalars.append(advance()) }
            }
        }
        if isDouble {
            guard let value = Double(text) else { throw error("invalid double literal", column: startColumn) }
            return .double(value)
        }
        if peek() == "u" || peek() == "U" {
            _ = advance()
            guard let value = UInt64(text) else { throw error("uint literal out of range", column: startColumn) }
            return .uint(value)
        }
        // -9223372036854775808 is parsed as negation of a literal out of range: keep it as uint-sized
        // text and let the parser fold the minus sign.
        if let value = Int64(text) { return .int(value) }
        if text == "9223372036854775808" { return .minIntMagnitude }
        throw error("int literal out of range", column: startColumn)
    }

    private mutating func quoted(raw: Bool, bytes: Bool) throws -> Token.Kind {
        let quote = advance()
        let triple = peek() == quote && peek(1) == quote
        if triple { _ = advance(); _ = advance() }
        var out: [UInt8] = []
        func append(_ scalar: Unicode.Scalar) { out.append(contentsOf: Array(String(scalar).utf8)) }
        while true {
            guard let c = peek() else { throw error("unterminated string") }
            if triple {
                if c == quote && peek(1) == quote && peek(2) == quote { _ = advance(); _ = advance(); _ = advance(); break }
            } else {
                if c == quote { _ = advance(); break }
                if c == "\n" || c == "\r" { throw error("newline in a single-quoted string") }
            }
            if c == "\\" && !raw {
                _ = advance()
                guard let e = peek() else { throw error("unterminated escape") }
                _ = advance()
                switch e {
                case "a": out.append(0x07)
                case "b": out.append(0x08)
                case "f": out.append(0x0C)
                case "n": out.append(0x0A)
                case "r": out.append(0x0D)
                case "t": out.append(0x09)
                case "v": out.append(0x0B)
                case "\\", "'", "\"", "`", "?": append(e)
                case "x", "X":
                    let digits = try take(2, hex: true)
                    let value = UInt32(digits, radix: 16)!
                    if bytes { out.append(UInt8(value)) } else { append(Unicode.Scalar(value)!) }
                case "u", "U":
                    if bytes { throw error("\\\(e) escapes are not allowed in bytes literals") }
                    let digits = try take(e == "u" ? 4 : 8, hex: true)
                    guard let scalar = Unicode.Scalar(UInt32(digits, radix: 16)!) else { throw error("invalid unicode escape") }
                    append(scalar)
                case "0"..."3":
                    let rest = try take(2, hex: false)
                    let value = UInt32(String(e) + rest, radix: 8)!
                    if bytes { out.append(UInt8(value)) } else { append(Unicode.Scalar(value)!) }
                default:
                    throw error("invalid escape sequence \\\(e)")
                }
                continue
            }
            append(advance())
        }
        if bytes { return .bytes(out) }
        return .string(String(decoding: out, as: UTF8.self))
    }

    private mutating func take(_ count: Int, hex: Bool) throws -> String {
        var digits = ""
        for _ in 0..<count {
            guard let c = peek(), hex ? Self.isHex(c) : ("0"..."7").contains(c) else { throw error("invalid escape sequence") }
            digits.unicodeScalars.append(advance())
        }
        return digits
    }
}
