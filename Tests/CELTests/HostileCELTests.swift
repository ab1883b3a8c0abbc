import Foundation
import Testing
@testable import CEL

/// What a policy author or an agent's data can throw at the evaluator: every case ends with a
/// result or a CEL error, in time linear in its input.
@Suite struct HostileCELTests {
    func eval(_ source: String, _ bindings: [String: CELValue] = [:], costLimit: Int = 1_000_000) throws -> CELValue {
        try CELProgram(source).evaluate(bindings, costLimit: costLimit)
    }

    func costLimitError(_ error: any Error) -> Bool { (error as? CELError)?.message.contains("cost limit") == true }

    @Test func matchesIsLinearOnPathologicalPatternsOverAThousandPaths() throws {
        // A backtracking engine takes 2^40 steps on each of these paths; RE2 takes 40.
        let paths: CELValue = .list((0..<1000).map { .string(String(repeating: "a", count: 40 + $0 % 7) + "!") })
        let start = Date()
        #expect(try eval("files.all(f, !f.matches('^(a|aa)+$') && !f.matches('^(a+)+$'))", ["files": paths]) == .bool(true))
        #expect(try eval("files.exists(f, f.matches('(a*)*!$'))", ["files": paths]) == .bool(true))
        #expect(Date().timeIntervalSince(start) < 20, "a pathological regex over 1,000 paths must not backtrack")
    }

    @Test func regexesFollowRE2SyntaxAndRefuseWhatRE2Cannot() throws {
        #expect(try eval("'infra/db/main.tf'.matches('^infra/')") == .bool(true))
        #expect(try eval("'Ünïcode'.matches('^.n.code$')") == .bool(true))
        #expect(try eval("'x'.matches('')") == .bool(true))
        // Backreferences and lookarounds are not RE2: an error naming the pattern, not a hang.
        for pattern in ["(a)\\\\1", "(?=a)", "(?<name>a)"] {
            #expect { try eval("'aa'.matches('\(pattern)')") } throws: {
                ($0 as? CELError)?.message.contains("invalid regular expression") == true
            }
        }
        let long = String(repeating: "a", count: RegularExpression.maxPatternBytes + 1)
        #expect(throws: CELError.self) { try eval("'a'.matches(p)", ["p": .string(long)]) }
    }

    @Test func stringFunctionsAreChargedByLengthAndStayLinear() throws {
        let haystack = String(repeating: "a", count: 200_000)
        let needle = String(repeating: "a", count: 100_000) + "b"
        let bindings: [String: CELValue] = ["s": .string(haystack), "t": .string(needle)]
        // A naive scan is 10^10 steps here.
        #expect(try eval("s.indexOf(t)", bindings) == .int(-1))
        #expect(try eval("s.contains(t)", bindings) == .bool(false))
        #expect(try eval("s.lastIndexOf(t)", bindings) == .int(-1))
        #expect(try eval("size(s.split(t))", bindings) == .int(1))
        // Long strings cost by their length: a loop over them runs out of budget.
        #expect { try eval("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10].all(i, s.contains(t) == false)", bindings, costLimit: 50_000) } throws: { costLimitError($0) }
    }

    @Test func replaceIsChargedForItsOutputBeforeBuildingIt() throws {
        let s: CELValue = .string(String(repeating: "x", count: 10_000))
        // 10,001 insertions of 10,000 bytes: 100 MB that must never be allocated.
        #expect { try eval("s.replace('', s)", ["s": s]) } throws: { costLimitError($0) }
        #expect { try eval("s.replace('x', s + s)", ["s": s]) } throws: { costLimitError($0) }
        #expect(try eval("size(s.replace('x', 'yy', 3))", ["s": s]) == .int(10_003))
        // Doubling a string charges each result: the budget ends the growth.
        #expect { try eval("[s + s].map(a, a + a).map(b, b + b).map(c, c + c).map(d, d + d).map(e, e + e + e + e)", ["s": s], costLimit: 20_000) } throws: { costLimitError($0) }
    }

    @Test func replaceOverAMebibyteIsLinear() throws {
        // Once 35 s (an output grown piece by piece): now one buffer.
        let s: CELValue = .string(String(repeating: "a", count: 1 << 20))
        let start = Date()
        #expect(try eval("size(s.replace('a', 'b'))", ["s": s]) == .int(1 << 20))
        #expect(try eval("s.replace('a', 'b').startsWith('bbbb')", ["s": s]) == .bool(true))
        #expect(Date().timeIntervalSince(start) < 20)
    }

    @Test func compilingAndMatchingLargeRegexProgramsIsCharged() throws {
        let big: CELValue = .string(String(repeating: "a", count: 1 << 20))
        // Sixty distinct large programs: each compilation is charged its size, the budget ends it.
        let list = (0..<60).map(String.init).joined(separator: ", ")
        #expect { try eval("[\(list)].all(i, !'a'.matches('\\\\pL{400}x' + string(i)))", costLimit: 100_000) } throws: { costLimitError($0) }
        // A large program over a mebibyte is refused on cost before matching...
        #expect { try eval("s.matches('\\\\pL{300}b')", ["s": big]) } throws: { costLimitError($0) }
        // ...while a small one over the same text is cheap, and a large one over a short text is fine.
        #expect(try eval("s.matches('a+b')", ["s": big]) == .bool(false))
        #expect(try eval("'a'.matches('\\\\pL{400}x')") == .bool(false))
    }

    @Test func timeZoneOffsetsAreBoundedNotTrapped() throws {
        let zones = ["+9223372036854775807:00", "+2562047788015215:00", "+0:153722867280912930", "+99:99", "+24:00", "-1:60",
                     "+1:2", "+:00", "+01:", "+٠١:٠٠", "+-1:00"]
        for zone in zones {
            #expect(throws: CELError.self, "\(zone)") { try eval("timestamp('2020-01-01T00:00:00Z').getHours('\(zone)')") }
        }
        #expect(throws: CELError.self) { try eval("timestamp('2020-01-01T00:00:00Z').getDayOfWeek('+0:153722867280912930')") }
        #expect(throws: CELError.self) { try eval("timestamp('1970-01-01T00:00:00+99:99')") }
        #expect(try eval("timestamp('2020-01-01T00:00:00Z').getHours('+05:30')") == .int(5))
        #expect(try eval("timestamp('2020-01-01T00:00:00Z').getHours('-8:00')") == .int(16))
        #expect(try eval("timestamp('2020-01-01T00:00:00Z').getHours('23:59')") == .int(23))
        #expect(try eval("timestamp('2020-01-01T10:00:00+05:00').getHours()") == .int(5))
    }

    @Test func formatPrecisionIsBounded() throws {
        #expect(try eval("'%.3f'.format([1.0])") == .string("1.000"))
        #expect { try eval("'%.999999999f'.format([1.0])") } throws: { ($0 as? CELError)?.message.contains("precision") == true }
    }

    @Test func largeMapsAndListsAreBuiltAndSearchedInLinearTime() throws {
        let entries = (0..<100_000).map { (CELValue.string("key-\($0)"), CELValue.int(Int64($0))) }
        let map = try CELMap(entries)
        #expect(map[.string("key-99999")] == .int(99_999))
        #expect(map[.string("key-100000")] == nil)
        // Numeric keys are one key across int, uint and double.
        let numbers = try CELMap([(.int(1), .string("one")), (.uint(2), .string("two"))])
        #expect(numbers[.uint(1)] == .string("one"))
        #expect(numbers[.double(2.0)] == .string("two"))
        #expect(throws: CELError.self) { try CELMap([(.int(3), .null), (.double(3.0), .null)]) }
        #expect(try eval("m['key-5'] == 5 && 'key-77' in m", ["m": .map(map)]) == .bool(true))
        // A map literal pays per entry; repeated keys are an error.
        #expect { try eval("{1: 'a', 1u: 'b'}") } throws: { ($0 as? CELError)?.message.contains("repeated key") == true }
    }

    @Test func treesTooHighAreRefusedBeforeEvaluation() throws {
        // Chains inside parentheses inside chains: each level is shallow for the parser, the whole
        // is thousands of levels for the evaluator.
        var source = "a"
        for _ in 0..<20 { source = "(" + source + Array(repeating: " + a", count: 200).joined() + ")" }
        #expect { try CELProgram(source) } throws: { ($0 as? CELSyntaxError)?.message.contains("levels deep") == true }
        let fine = "(" + Array(repeating: "a", count: 100).joined(separator: " + ") + ")"
        #expect(try eval(fine, ["a": .int(1)]) == .int(100))
        #expect(throws: CELSyntaxError.self) { try CELProgram(String(repeating: " ", count: CELProgram.maxSourceBytes + 1) + "1") }
    }

    @Test func wellKnownTypeNamesAreTypes() throws {
        #expect(try eval("type(timestamp('2024-01-01T00:00:00Z')) == google.protobuf.Timestamp") == .bool(true))
        #expect(try eval("type(duration('1s')) == google.protobuf.Duration") == .bool(true))
        #expect(try eval("type(google.protobuf.Timestamp) == type") == .bool(true))
        // A binding named like the package is still the binding.
        #expect(try eval("google.x", ["google": .map(try CELMap([(.string("x"), .int(1))]))]) == .int(1))
    }
}

@Suite struct FuzzFindingCELTests {
    /// Found by `make fuzz`: more than nine fraction digits made the parser build a backwards range.
    @Test func timestampsWithMoreThanNineFractionDigitsAreNoCrash() throws {
        let value = try CELProgram("timestamp('2024-01-01T00:00:00.0000000001Z')").evaluate()
        #expect(Conformance.matches(value, .timestamp(seconds: 1_704_067_200, nanos: 0)))
        #expect(throws: CELError.self) { try CELProgram("timestamp('0001-01-01T00:00:01.999919999001-01-01T00:00:01-999999998Z')").evaluate() }
    }
}
