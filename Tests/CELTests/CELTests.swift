import Foundation
import Testing
import TestSupport
@testable import CEL

@Suite struct CELTests {
    func eval(_ source: String, _ bindings: [String: CELValue] = [:], costLimit: Int = 1_000_000) throws -> CELValue {
        try CELProgram(source).evaluate(bindings, costLimit: costLimit)
    }

    /// The official conformance vectors of the core language files, all run by our evaluator.
    @Test(arguments: ["basic", "comparisons", "conversions", "fields", "fp_math", "integer_math", "lists", "logic",
                      "macros", "namespace", "parse", "plumbing", "string", "timestamps", "string_ext",
                      "timestamps_upstream"])
    func conformance(_ file: String) throws {
        let path = TestPaths.conformanceVectors.appendingPathComponent("\(file).json").path
        try #require(FileManager.default.fileExists(atPath: path), "the conformance vectors belong at \(path)")
        let results = try Conformance.run(file: path)
        let failures = results.compactMap { result -> String? in
            if case .fail(let why) = result.outcome { return "\(result.name): \(why)" }
            return nil
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        #expect(results.contains { $0.outcome == .pass })
    }

    @Test func errorsAreAbsorbedByLogicalOperatorsBothWays() throws {
        #expect(try eval("1/0 == 1 || true") == .bool(true))
        #expect(try eval("true || 1/0 == 1") == .bool(true))
        #expect(try eval("1/0 == 1 && false") == .bool(false))
        #expect(throws: CELError.self) { try eval("1/0 == 1 && true") }
        #expect(throws: CELError.self) { try eval("1/0 == 1 || false") }
    }

    @Test func hostileExpressionsEndWithAnErrorNotAHang() throws {
        let list: CELValue = .list((0..<100).map { .int($0) })
        let start = Date()
        #expect { try eval("l.map(a, l.map(b, l.map(c, l.map(d, a + b + c + d))))", ["l": list]) } throws: {
            ($0 as? CELError)?.message.contains("cost limit") == true
        }
        #expect(Date().timeIntervalSince(start) < 10)
        // Deep nesting is a syntax error, not a stack overflow.
        let deep = String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000)
        #expect(throws: CELSyntaxError.self) { try CELProgram(deep) }
        let chain = Array(repeating: "a", count: 3000).joined(separator: " + ")
        #expect(throws: (any Error).self) { try eval(chain, ["a": .int(1)]) }
    }

    @Test func syntaxErrorsCarryLineAndColumn() {
        do {
            _ = try CELProgram("env.name ==\n  'x' &&")
            Issue.record("expected a syntax error")
        } catch let error as CELSyntaxError {
            #expect(error.line == 2)
            #expect(error.description.hasPrefix("2:"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func policyShapedExpressions() throws {
        let env: CELValue = .map(try CELMap([
            (.string("name"), .string("web--fix")), (.string("class"), .string("preview")),
            (.string("spec"), .map(try CELMap([(.string("services"), .map(try CELMap([
                (.string("api"), .map(try CELMap([(.string("replicas"), .int(3))]))),
            ])))]))),
        ]))
        #expect(try eval("env.spec.services.all(s, env.spec.services[s].replicas <= 2)", ["env": env]) == .bool(false))
        #expect(try eval("has(env.spec.services) && env.name.matches('^web--')", ["env": env]) == .bool(true))
        #expect(try eval("timestamp('2026-11-27T03:40:12Z') + duration('72h') > timestamp('2026-11-29T00:00:00Z')") == .bool(true))
    }
}

extension CELValue: Equatable {
    public static func == (lhs: CELValue, rhs: CELValue) -> Bool { Conformance.matches(lhs, rhs) }
}
