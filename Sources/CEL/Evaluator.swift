import Foundation

/// A compiled CEL program: parse once, evaluate many times against different bindings.
public struct CELProgram: Sendable {
    let expr: Expr
    public let source: String

    /// Parses `source`; throws `CELSyntaxError` with line and column.
    public init(_ source: String) throws {
        self.source = source
        self.expr = try Parser.parse(source)
    }

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
        cost += amount
        if cost > costLimit { throw CELError("evaluation cost limit of \(costLimit) exceeded") }
    }

    func lookup(_ name: String) -> CELValue? {
        for scope in scopes.reversed() { if let value = scope[name] { return value } }
        return nil
    }

    static let typeNames: Set<String> = ["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type",
                                         "google.protobuf.Timestamp", "google.protobuf.Duration"]

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
            if let qualified = Self.qualifiedName(expr), let root = qualified.split(separator: ".").first,
               !scopes.dropFirst().contains(where: { $0[String(root)] != nil }), let value = lookup(qualified) {
                return value
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
            return try Operators.binary(op, try eval(left), try eval(right))
        case .call(let name, let target, let args):
            var receiver: CELValue?
            if let target {
                if let qualified = Self.qualifiedName(target).map({ "\($0).\(name)" }), Functions.namespaced.contains(qualified) {
                    return try Functions.call(qualified, receiver: nil, args: try args.map { try eval($0) })
                }
                receiver = try eval(target)
            }
            var values: [CELValue] = []
            for arg in args { values.append(try eval(arg)) }
            return try Functions.call(name, receiver: receiver, args: values)
        case .comprehension(let kind, let variable, let range, let predicate, let transform):
            return try comprehension(kind, variable: variable, range: try eval(range), predicate: predicate, transform: transform)
        }
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
