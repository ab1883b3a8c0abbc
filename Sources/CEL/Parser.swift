import Foundation

/// The parsed form of a CEL expression. Macros are expanded at parse time.
indirect enum Expr: Sendable {
    enum Comprehension: Sendable { case all, exists, existsOne, map, filter }

    case literal(CELValue)
    case ident(String)
    case select(Expr, String)
    /// `has(e.f)`.
    case presence(Expr, String)
    case call(String, target: Expr?, args: [Expr])
    case list([Expr])
    case map([(Expr, Expr)])
    case message(String, [(String, Expr)])
    case comprehension(Comprehension, variable: String, range: Expr, predicate: Expr?, transform: Expr?)
    case conditional(Expr, Expr, Expr)
    case and(Expr, Expr)
    case or(Expr, Expr)
    case binary(String, Expr, Expr)
    case not(Expr)
    case negate(Expr)
}

/// Recursive-descent parser for CEL's grammar, with a nesting limit against hostile input.
struct Parser {
    private var tokens: [Token]
    private var position = 0
    private var depth = 0
    static let maxDepth = 250
    static let reserved: Set<String> = ["as", "break", "const", "continue", "else", "for", "function", "if", "import",
                                        "let", "loop", "package", "namespace", "return", "var", "void", "while"]

    init(_ source: String) throws {
        var lexer = Lexer(source)
        tokens = try lexer.tokens()
    }

    static func parse(_ source: String) throws -> Expr {
        var parser = try Parser(source)
        let expr = try parser.expression()
        guard parser.current.kind == .end else { throw parser.error("unexpected \(parser.describe(parser.current))") }
        return expr
    }

    private var current: Token { tokens[position] }
    private mutating func advance() -> Token {
        defer { if position < tokens.count - 1 { position += 1 } }
        return tokens[position]
    }
    private func isSymbol(_ symbol: String) -> Bool { current.kind == .symbol(symbol) }
    private mutating func accept(_ symbol: String) -> Bool {
        if isSymbol(symbol) { _ = advance(); return true }
        return false
    }
    private mutating func expect(_ symbol: String) throws {
        guard accept(symbol) else { throw error("expected '\(symbol)', found \(describe(current))") }
    }
    private func error(_ message: String) -> CELSyntaxError {
        CELSyntaxError(line: current.line, column: current.column, message: message)
    }
    private func describe(_ token: Token) -> String {
        switch token.kind {
        case .end: "end of expression"
        case .symbol(let s): "'\(s)'"
        case .identifier(let s): "'\(s)'"
        default: "a literal"
        }
    }

    private mutating func nested<T>(_ body: (inout Parser) throws -> T) throws -> T {
        depth += 1
        defer { depth -= 1 }
        if depth > Self.maxDepth { throw error("expression nested more than \(Self.maxDepth) levels deep") }
        return try body(&self)
    }

    mutating func expression() throws -> Expr {
        try nested { parser in
            let condition = try parser.or()
            guard parser.accept("?") else { return condition }
            let then = try parser.or()
            try parser.expect(":")
            let otherwise = try parser.expression()
            return .conditional(condition, then, otherwise)
        }
    }

    /// Each operator in a chain like `a + b + c` nests the tree one level deeper: bounded too.
    private func chained(_ count: Int) throws {
        if depth + count > Self.maxDepth { throw error("expression nested more than \(Self.maxDepth) levels deep") }
    }

    private mutating func or() throws -> Expr {
        var left = try and()
        var count = 0
        while accept("||") { count += 1; try chained(count); left = .or(left, try and()) }
        return left
    }

    private mutating func and() throws -> Expr {
        var left = try relation()
        var count = 0
        while accept("&&") { count += 1; try chained(count); left = .and(left, try relation()) }
        return left
    }

    private mutating func relation() throws -> Expr {
        var left = try addition()
        var count = 0
        while true {
            count += 1
            try chained(count)
            if case .symbol(let op) = current.kind, ["<", "<=", ">", ">=", "==", "!="].contains(op) {
                _ = advance()
                left = .binary(op, left, try addition())
            } else if current.kind == .identifier("in") {
                _ = advance()
                left = .binary("in", left, try addition())
            } else {
                return left
            }
        }
    }

    private mutating func addition() throws -> Expr {
        var left = try multiplication()
        var count = 0
        while case .symbol(let op) = current.kind, op == "+" || op == "-" {
            count += 1
            try chained(count)
            _ = advance()
            left = .binary(op, left, try multiplication())
        }
        return left
    }

    private mutating func multiplication() throws -> Expr {
        var left = try unary()
        var count = 0
        while case .symbol(let op) = current.kind, op == "*" || op == "/" || op == "%" {
            count += 1
            try chained(count)
            _ = advance()
            left = .binary(op, left, try unary())
        }
        return left
    }

    private mutating func unary() throws -> Expr {
        try nested { parser in
            if parser.accept("!") { return .not(try parser.unary()) }
            if parser.isSymbol("-") {
                _ = parser.advance()
                if parser.current.kind == .minIntMagnitude {
                    _ = parser.advance()
                    return try parser.member(.literal(.int(Int64.min)))
                }
                if parser.isSymbol("-"), parser.tokens[parser.position + 1].kind == .minIntMagnitude {
                    // `--9223372036854775808`: the literal itself is out of range.
                    throw CELSyntaxError(line: parser.tokens[parser.position + 1].line, column: parser.tokens[parser.position + 1].column,
                                         message: "int literal out of range")
                }
                if case .int(let value) = parser.current.kind {
                    _ = parser.advance()
                    return try parser.member(.literal(.int(-value)))
                }
                if case .double(let value) = parser.current.kind {
                    _ = parser.advance()
                    return try parser.member(.literal(.double(-value)))
                }
                return .negate(try parser.unary())
            }
            return try parser.member(try parser.primary())
        }
    }

    private mutating func member(_ base: Expr) throws -> Expr {
        var expr = base
        var count = 0
        while true {
            count += 1
            try chained(count)
            if accept(".") {
                let fieldToken = advance()
                if case .quotedIdentifier(let quoted) = fieldToken.kind {
                    expr = .select(expr, quoted)
                    continue
                }
                guard case .identifier(let name) = fieldToken.kind else { throw error("expected a field name after '.'") }
                if accept("(") {
                    let args = try arguments(")")
                    expr = try macro(name, target: expr, args: args) ?? .call(name, target: expr, args: args)
                } else {
                    expr = .select(expr, name)
                }
            } else if accept("[") {
                let index = try expression()
                try expect("]")
                expr = .binary("[]", expr, index)
            } else {
                return expr
            }
        }
    }

    private mutating func arguments(_ close: String) throws -> [Expr] {
        var args: [Expr] = []
        if accept(close) { return args }
        repeat {
            if isSymbol(close) { break } // trailing comma
            args.append(try expression())
        } while accept(",")
        try expect(close)
        return args
    }

    private mutating func primary() throws -> Expr {
        let token = advance()
        switch token.kind {
        case .int(let value): return .literal(.int(value))
        case .uint(let value): return .literal(.uint(value))
        case .double(let value): return .literal(.double(value))
        case .string(let value): return .literal(.string(value))
        case .bytes(let value): return .literal(.bytes(value))
        case .minIntMagnitude: throw CELSyntaxError(line: token.line, column: token.column, message: "int literal out of range")
        case .end: throw CELSyntaxError(line: token.line, column: token.column, message: "unexpected end of expression")
        case .identifier(let name):
            switch name {
            case "true": return .literal(.bool(true))
            case "false": return .literal(.bool(false))
            case "null": return .literal(.null)
            case "in": throw CELSyntaxError(line: token.line, column: token.column, message: "unexpected 'in'")
            default: break
            }
            if Self.reserved.contains(name) {
                throw CELSyntaxError(line: token.line, column: token.column, message: "reserved identifier '\(name)'")
            }
            if accept("(") {
                let args = try arguments(")")
                return try macro(name, target: nil, args: args) ?? .call(name, target: nil, args: args)
            }
            var qualified = name
            // Message construction: a (possibly qualified) name followed by '{'.
            var lookahead = position
            while tokens[lookahead].kind == .symbol("."), case .identifier(let part) = tokens[lookahead + 1].kind {
                qualified += "." + part
                lookahead += 2
            }
            if tokens[lookahead].kind == .symbol("{") {
                position = lookahead + 1
                var fields: [(String, Expr)] = []
                if !accept("}") {
                    repeat {
                        if isSymbol("}") { break }
                        guard case .identifier(let field) = advance().kind else { throw error("expected a field name") }
                        try expect(":")
                        fields.append((field, try expression()))
                    } while accept(",")
                    try expect("}")
                }
                return .message(qualified, fields)
            }
            return .ident(name)
        case .symbol("."):
            // A leading dot names the root namespace: `.x` is `x`.
            guard case .identifier(let name) = advance().kind else { throw error("expected an identifier after '.'") }
            if accept("(") {
                let args = try arguments(")")
                return .call(name, target: nil, args: args)
            }
            return .ident(name)
        case .symbol("("):
            let inner = try expression()
            try expect(")")
            return inner
        case .symbol("["):
            return .list(try nested { try $0.arguments("]") })
        case .symbol("{"):
            var entries: [(Expr, Expr)] = []
            if !accept("}") {
                repeat {
                    if isSymbol("}") { break }
                    let key = try expression()
                    try expect(":")
                    entries.append((key, try expression()))
                } while accept(",")
                try expect("}")
            }
            return .map(entries)
        default:
            throw CELSyntaxError(line: token.line, column: token.column, message: "unexpected \(describe(token))")
        }
    }

    /// Expands `has`, `all`, `exists`, `exists_one`, `map` and `filter`; nil for ordinary calls.
    private func macro(_ name: String, target: Expr?, args: [Expr]) throws -> Expr? {
        if target == nil, name == "has" {
            guard args.count == 1, case .select(let operand, let field) = args[0] else {
                throw error("has() takes a field selection, like has(a.b)")
            }
            return .presence(operand, field)
        }
        guard let target else { return nil }
        let kinds: [String: Expr.Comprehension] = ["all": .all, "exists": .exists, "exists_one": .existsOne, "map": .map, "filter": .filter]
        guard let kind = kinds[name], args.count == 2 || (kind == .map && args.count == 3) else { return nil }
        guard case .ident(let variable) = args[0] else { throw error("\(name)() needs a variable name as its first argument") }
        switch kind {
        case .map:
            return args.count == 3
                ? .comprehension(.map, variable: variable, range: target, predicate: args[1], transform: args[2])
                : .comprehension(.map, variable: variable, range: target, predicate: nil, transform: args[1])
        default:
            return .comprehension(kind, variable: variable, range: target, predicate: args[1], transform: nil)
        }
    }
}
