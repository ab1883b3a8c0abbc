import Foundation

/// A compiled CEL program: parse once, evaluate many times against different bindings.
public struct CELProgram: Sendable {
    let expr: Expr
    public let source: String

    /// Parses `source`; throws `CELSyntaxError` with line and column.
    public init(_ source: String) throws {
        self.source = source
        guard source.utf8.count <= Self.maxSourceBytes else {
            throw CELSyntaxError(line: 1, column: 1, message: "expression is \(source.utf8.count) bytes, more than \(Self.maxSourceBytes)")
        }
        self.expr = try Parser.parse(source)
        if expr.height(limit: Self.maxHeight) > Self.maxHeight {
            throw CELSyntaxError(line: 1, column: 1, message: "expression is nested more than \(Self.maxHeight) levels deep, counting chains of operators; split it")
        }
    }

    /// Bounds on what evaluation walks: the source's size, and the height of its tree (nesting and
    /// operator chains together), so evaluation cannot exhaust the stack.
    public static let maxSourceBytes = 100_000
    public static let maxHeight = 400

    /// Evaluates with `bindings`; throws `CELError` for CEL errors (no such overload, overflow,
    /// division by zero, no such key, cost limit exceeded, ...).
    public func evaluate(_ bindings: [String: CELValue] = [:], costLimit: Int = 1_000_000) throws -> CELValue {
        var evaluator = Evaluator(bindings: bindings, costLimit: costLimit)
        return try evaluator.eval(expr)
    }
}

struct Evaluator {
    var scopes: [[String: CELValue]]
    let costLimit: Int
    var cost = 0

    init(bindings: [String: CELValue], costLimit: Int) {
        scopes = [bindings]
        self.costLimit = costLimit
    }

    mutating func charge(_ amount: Int = 1) throws {
        cost = cost.addingReportingOverflow(amount).overflow ? Int.max : cost + amount
        if cost > costLimit { throw CELError("evaluation cost limit of \(costLimit) exceeded") }
    }

    func lookup(_ name: String) -> CELValue? {
        for scope in scopes.reversed() { if let value = scope[name] { return value } }
        return nil
    }

    static let typeNames: Set<String> = ["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type",
                                         "google.protobuf.Timestamp", "google.protobuf.Duration"]

    /// What touching a value costs: a unit per 16 bytes of a string or bytes, one per element of a
    /// list or map. Charged for the operands and the result of every call and operator.
    static func weight(_ value: CELValue) -> Int {
        switch value {
        case .string(let s): s.utf8.count / 16
        case .bytes(let b): b.count / 16
        case .list(let l): l.count
        case .map(let m): m.count
        default: 0
        }
    }

    mutating func eval(_ expr: Expr) throws -> CELValue {
        try charge()
        switch expr {
        case .literal(let value): return value
        case .ident(let name):
            if let value = lookup(name) { return value }
            if Self.typeNames.contains(name) { return .type(name) }
            throw CELError("undeclared reference to '\(name)'")
        case .select(let operand, let field):
            // `a.b` may name a binding "a.b" — unless a comprehension variable `a` shadows it.
            // A well-known type name (`google.protobuf.Timestamp`) unless `google` is bound.
            if let qualified = Self.qualifiedName(expr), let root = qualified.split(separator: ".").first.map(String.init) {
                if !scopes.dropFirst().contains(where: { $0[root] != nil }), let value = lookup(qualified) { return value }
                if Self.typeNames.contains(qualified), lookup(root) == nil { return .type(qualified) }
            }
            let target = try eval(operand)
            guard case .map(let map) = target else { throw CELError("no such field '\(field)' on \(target.typeName)") }
            guard let value = map[.string(field)] else { throw CELError("no such key: \(field)") }
            return value
        case .presence(let operand, let field):
            let target = try eval(operand)
            guard case .map(let map) = target else { throw CELError("invalid type for field selection: \(target.typeName)") }
            return .bool(map[.string(field)] != nil)
        case .list(let items):
            var values: [CELValue] = []
            for item in items { values.append(try eval(item)) }
            try charge(values.count)
            return .list(values)
        case .map(let entries):
            var pairs: [(CELValue, CELValue)] = []
            for (key, value) in entries { pairs.append((try eval(key), try eval(value))) }
            try charge(pairs.count)
            return .map(try CELMap(pairs))
        case .message(let name, _):
            throw CELError("unknown type '\(name)': protobuf messages are not supported")
        case .conditional(let condition, let then, let otherwise):
            guard case .bool(let flag) = try eval(condition) else { throw CELError("no matching overload for '_?_:_'") }
            return try eval(flag ? then : otherwise)
        case .and(let left, let right):
            return try logical(left, right, absorbing: false)
        case .or(let left, let right):
            return try logical(left, right, absorbing: true)
        case .not(let operand):
            guard case .bool(let value) = try eval(operand) else { throw CELError("no matching overload for '!_'") }
            return .bool(!value)
        case .negate(let operand):
            switch try eval(operand) {
            case .int(let value):
                guard value != Int64.min else { throw CELError("return error for overflow") }
                return .int(-value)
            case .double(let value): return .double(-value)
            case .duration(let seconds, let nanos): return .duration(seconds: -seconds, nanos: -nanos)
            default: throw CELError("no matching overload for '-_'")
            }
        case .binary(let op, let left, let right):
            let (a, b) = (try eval(left), try eval(right))
            try charge(Self.weight(a) + Self.weight(b))
            let result = try Operators.binary(op, a, b)
            try charge(Self.weight(result))
            return result
        case .call(let name, let target, let args):
            var receiver: CELValue?
            if let target {
                if let qualified = Self.qualifiedName(target).map({ "\($0).\(name)" }), Functions.namespaced.contains(qualified) {
                    return try call(qualified, receiver: nil, args: try args.map { try eval($0) })
                }
                receiver = try eval(target)
            }
            var values: [CELValue] = []
            for arg in args { values.append(try eval(arg)) }
            return try call(name, receiver: receiver, args: values)
        case .comprehension(let kind, let variable, let range, let predicate, let transform):
            return try comprehension(kind, variable: variable, range: try eval(range), predicate: predicate, transform: transform)
        }
    }

    /// A function call, charged for its operands before and its result after; `replace`, whose
    /// output can outgrow its inputs many times over, is charged for its output before building it.
    mutating func call(_ name: String, receiver: CELValue?, args: [CELValue]) throws -> CELValue {
        try charge(receiver.map(Self.weight) ?? 0)
        for arg in args { try charge(Self.weight(arg)) }
        if name == "replace", case .string(let text)? = receiver, args.count >= 2, case .string(let old) = args[0], case .string(let new) = args[1] {
            var limit = -1
            if args.count == 3, case .int(let n) = args[2] { limit = Int(clamping: n) }
            let size = StringExtensions.replacedSize(text, old, new, limit: limit)
            try charge(size == Int.max ? costLimit + 1 : size / 16)
        }
        if name == "matches", let (text, pattern) = Self.matchOperands(receiver, args) {
            // Compiling a pattern costs its program size (once: compiled patterns are cached);
            // matching costs the text's length scaled by the program's size. Both before the work.
            let (regex, fresh) = try RegularExpression.compiled(pattern)
            if fresh { try charge(regex.programSize) }
            let cost = regex.matchCost(textBytes: text.utf8.count)
            try charge(cost == Int.max ? costLimit + 1 : cost)
            return .bool(regex.search(text))
        }
        let result = try Functions.call(name, receiver: receiver, args: args)
        try charge(Self.weight(result))
        return result
    }

    /// The text and pattern of `s.matches(p)` or `matches(s, p)`.
    static func matchOperands(_ receiver: CELValue?, _ args: [CELValue]) -> (String, String)? {
        let all = (receiver.map { [$0] } ?? []) + args
        guard all.count == 2, case .string(let text) = all[0], case .string(let pattern) = all[1] else { return nil }
        return (text, pattern)
    }

    /// `a.b.c` as one dotted name, when the expression is only identifiers and selections.
    static func qualifiedName(_ expr: Expr) -> String? {
        switch expr {
        case .ident(let name): name
        case .select(let operand, let field): qualifiedName(operand).map { "\($0).\(field)" }
        default: nil
        }
    }

    /// `&&` and `||` with CEL's commutative error absorption: a decisive operand wins over an error.
    mutating func logical(_ left: Expr, _ right: Expr, absorbing decisive: Bool) throws -> CELValue {
        var firstError: Error?
        var sawNonBool = false
        for side in [left, right] {
            do {
                let value = try eval(side)
                guard case .bool(let flag) = value else { sawNonBool = true; continue }
                if flag == decisive { return .bool(decisive) }
            } catch let error as CELError where !error.message.contains("cost limit") {
                if firstError == nil { firstError = error }
            }
        }
        if let firstError { throw firstError }
        if sawNonBool { throw CELError("no matching overload for '\(decisive ? "_||_" : "_&&_")'") }
        return .bool(!decisive)
    }

    mutating func comprehension(_ kind: Expr.Comprehension, variable: String, range: CELValue,
                                predicate: Expr?, transform: Expr?) throws -> CELValue {
        let items: [CELValue]
        switch range {
        case .list(let values): items = values
        case .map(let map): items = map.entries.map(\.key)
        default: throw CELError("expression does not evaluate to a list or map")
        }
        scopes.append([:])
        defer { scopes.removeLast() }
        var results: [CELValue] = []
        var count = 0
        var pendingError: Error?
        for item in items {
            try charge()
            scopes[scopes.count - 1][variable] = item
            switch kind {
            case .all, .exists:
                do {
                    guard case .bool(let flag) = try eval(predicate!) else { throw CELError("no matching overload") }
                    if kind == .all && !flag { return .bool(false) }
                    if kind == .exists && flag { return .bool(true) }
                } catch let error as CELError where !error.message.contains("cost limit") {
                    if pendingError == nil { pendingError = error }
                }
            case .existsOne:
                guard case .bool(let flag) = try eval(predicate!) else { throw CELError("no matching overload") }
                if flag { count += 1 }
            case .filter:
                guard case .bool(let flag) = try eval(predicate!) else { throw CELError("no matching overload") }
                if flag { results.append(item) }
            case .map:
                if let predicate {
                    guard case .bool(let flag) = try eval(predicate) else { throw CELError("no matching overload") }
                    if !flag { continue }
                }
                results.append(try eval(transform!))
            }
        }
        switch kind {
        case .all, .exists:
            if let pendingError { throw pendingError }
            return .bool(kind == .all)
        case .existsOne: return .bool(count == 1)
        case .filter, .map: return .list(results)
        }
    }
}

extension Expr {
    /// The height of the tree, counted without recursion and without going past `limit + 1`.
    func height(limit: Int) -> Int {
        var highest = 0
        var pending: [(Expr, Int)] = [(self, 1)]
        while let (expr, depth) = pending.popLast() {
            highest = max(highest, depth)
            if highest > limit { return highest }
            for child in expr.children { pending.append((child, depth + 1)) }
        }
        return highest
    }

    var children: [Expr] {
        switch self {
        case .literal, .ident: []
        case .select(let operand, _), .presence(let operand, _), .not(let operand), .negate(let operand): [operand]
        case .call(_, let target, let args): (target.map { [$0] } ?? []) + args
        case .list(let items): items
        case .map(let entries): entries.flatMap { [$0.0, $0.1] }
        case .message(_, let fields): fields.map(\.1)
        case .comprehension(_, _, let range, let predicate, let transform): [range] + [predicate, transform].compactMap { $0 }
        case .conditional(let a, let b, let c): [a, b, c]
        case .and(let a, let b), .or(let a, let b), .binary(_, let a, let b): [a, b]
        }
    }
}
