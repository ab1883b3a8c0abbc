import Foundation
import Testing
@testable import SpecLoading

@Suite struct YAMLParserTests {
    let parser = YAMLParser()

    func parse(_ text: String) throws -> YAMLNode { try parser.parse(Data(text.utf8), file: "f.yaml") }

    func error(_ text: String) -> Diagnostic? {
        do { _ = try parse(text); return nil } catch { return error as? Diagnostic }
    }

    @Test func positionsAreOneBased() throws {
        let node = try parse("a: 1\nb:\n  c: [x, y]\n")
        let c = References.find(node, ["b", "c"])!
        #expect(c.mark.line == 3)
        #expect(c.mark.column == 6)
    }

    @Test func billionLaughsFailsFastWithAClearError() throws {
        var text = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        for level in 1...9 {
            text += "a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 9).joined(separator: ", ") + "]\n"
        }
        let start = Date()
        let problem = try #require(error(text))
        #expect(problem.message.contains("alias bomb"))
        #expect(Date().timeIntervalSince(start) < 5)
    }

    @Test func deepNestingIsRejected() throws {
        let text = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        let problem = try #require(error(text))
        #expect(problem.message.contains("nesting deeper than 64"))
    }

    @Test func hugeDocumentIsRejectedBeforeParsing() throws {
        let text = "a: \"" + String(repeating: "x", count: (1 << 20) + 10) + "\"\n"
        let problem = try #require(error(text))
        #expect(problem.message.contains("limited to 1048576 bytes"))
    }

    @Test func duplicateKeysNameBothLines() throws {
        let problem = try #require(error("name: a\nother: 1\nname: b\n"))
        #expect(problem.mark.line == 3)
        #expect(problem.message.contains("duplicate key 'name' (first at line 1)"))
    }

    @Test func nonUTF8NamesTheByte() throws {
        var data = Data("name: ok\nbad: ".utf8)
        data.append(contentsOf: [0xff, 0xfe])
        do {
            _ = try parser.parse(data, file: "f.yaml")
            Issue.record("expected an error")
        } catch let problem as Diagnostic {
            #expect(problem.message.contains("not valid UTF-8 (byte 14)"))
            #expect(problem.mark.line == 2)
            #expect(problem.mark.column == 6)
        }
    }

    @Test func syntaxErrorsCarryLineAndColumn() throws {
        let problem = try #require(error("a: [1, 2\nb: 3\n"))
        #expect(problem.description.hasPrefix("f.yaml:"))
        #expect(problem.message.contains("YAML syntax error"))
    }

    @Test func mergeKeysAndAliasesResolve() throws {
        let node = try parse("base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n")
        #expect(References.find(node, ["derived", "x"])?.scalarText == "1")
        #expect(References.find(node, ["derived", "y"])?.scalarText == "3")
    }

    @Test func undefinedAliasIsAnError() throws {
        let problem = try #require(error("a: *nowhere\n"))
        #expect(problem.message.contains("no anchor") || problem.message.contains("YAML syntax error"))
    }

    @Test func multipleDocumentsAreRejected() throws {
        let problem = try #require(error("a: 1\n---\nb: 2\n"))
        #expect(problem.message.contains("2 YAML documents"))
    }
}

@Suite struct HostileYAMLTests {
    let parser = YAMLParser()

    @Test func aLargeFileWithoutAliasesIsNotCalledAnAliasBomb() throws {
        let items = "- " + (0..<60_000).map(String.init).joined(separator: "\n- ")
        #expect { try parser.parse(Data(items.utf8), file: "f.yaml") } throws: {
            "\($0)".contains("more than 50000 nodes; split it") && !"\($0)".contains("alias")
        }
        let problems = (0..<250).map { Diagnostic(SourceMark(file: "f.yaml", line: $0 + 1, column: 1), "problem \($0)") }
        #expect(Diagnostic.problemCount(Diagnostic.capped(problems)) == 250)
        #expect(Diagnostic.capped(problems).count == Diagnostic.maxReported + 1)
    }

    @Test func largeMappingsAndListsParseInLinearTime() throws {
        // 20,000 keys and 40,000 items: a quadratic duplicate check or copy is 10^9 steps.
        let keys = (0..<20_000).map { "k\($0): \($0)" }.joined(separator: "\n")
        let start = Date()
        guard case .mapping(let pairs, _) = try parser.parse(Data(keys.utf8), file: "f.yaml") else { Issue.record("not a mapping"); return }
        #expect(pairs.count == 20_000)
        let items = "- " + (0..<40_000).map(String.init).joined(separator: "\n- ")
        guard case .sequence(let values, _) = try parser.parse(Data(items.utf8), file: "f.yaml") else { Issue.record("not a list"); return }
        #expect(values.count == 40_000)
        #expect(Date().timeIntervalSince(start) < 30)
        // The duplicate check still names both lines.
        let duplicate = keys + "\nk7: again\n"
        #expect { try parser.parse(Data(duplicate.utf8), file: "f.yaml") } throws: {
            ($0 as? Diagnostic)?.message == "duplicate key 'k7' (first at line 8); keep one" && ($0 as? Diagnostic)?.mark.line == 20_001
        }
    }

    @Test func mergeKeysOverManyEntriesStayLinear() throws {
        let base = (0..<10_000).map { "  b\($0): \($0)" }.joined(separator: "\n")
        let text = "base: &base\n\(base)\nover:\n  <<: *base\n  b1: replaced\n"
        guard case .mapping(let top, _) = try parser.parse(Data(text.utf8), file: "f.yaml"),
              case .mapping(let over, _)? = top.last?.value else { Issue.record("not a mapping"); return }
        #expect(over.count == 10_000)
        #expect(over.first { $0.key.scalarText == "b1" }?.value.scalarText == "replaced")
    }
}
