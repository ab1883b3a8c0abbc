import ArgumentParser
import CEL
import Foundation

struct CELCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cel", abstract: "Evaluate CEL expressions and run conformance vectors.",
                                                    subcommands: [Eval.self, ConformanceRun.self, Batch.self])

    struct Batch: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Evaluate one expression per line of standard input; print one JSON result per line (for differential fuzzing).")

        func run() throws {
            while let line = readLine(strippingNewline: true) {
                let result: Any
                do {
                    result = Conformance.vector(try CELProgram(line).evaluate([:], costLimit: 100_000))
                } catch {
                    result = ["error": "\(error)"]
                }
                let data = try JSONSerialization.data(withJSONObject: result, options: [.fragmentsAllowed])
                FileHandle.standardOutput.write(data + Data("\n".utf8))
            }
        }
    }

    struct Eval: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Evaluate a CEL expression and print the result.")
        @Argument(help: "The expression.")
        var expression: String
        @Option(help: "Variables as a JSON object, e.g. '{\"x\": 1}'.")
        var bindings: String?
        @Option(help: "The evaluation cost limit.")
        var costLimit = 1_000_000

        func run() throws {
            var values: [String: CELValue] = [:]
            if let bindings {
                guard let object = try? JSONSerialization.jsonObject(with: Data(bindings.utf8)) as? [String: Any] else {
                    throw Failure("--bindings must be a JSON object, e.g. '{\"x\": 1}'")
                }
                for (key, raw) in object { values[key] = try Conformance.value(fromJSON: raw) }
            }
            let program: CELProgram
            do { program = try CELProgram(expression) } catch { throw Failure("syntax error at \(error)") }
            do {
                print(Conformance.describe(try program.evaluate(values, costLimit: costLimit)))
            } catch {
                throw Failure("evaluation error: \(error)")
            }
        }
    }

    struct ConformanceRun: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "conformance",
                                                        abstract: "Run conformance vector files: PASS/FAIL per test, then 'N passed, N failed, N skipped'.")
        @Argument(help: "Vector files (JSON).")
        var files: [String]
        @Flag(help: "Print only failures and the summary.")
        var quiet = false

        func run() throws {
            var passed = 0, failed = 0, skipped = 0
            for file in files {
                for result in try Conformance.run(file: file) {
                    switch result.outcome {
                    case .pass:
                        passed += 1
                        if !quiet { print("PASS \(result.name)") }
                    case .fail(let why):
                        failed += 1
                        print("FAIL \(result.name): \(why)")
                    case .skip(let why):
                        skipped += 1
                        if !quiet { print("SKIP \(result.name): \(why)") }
                    }
                }
            }
            print("\(passed) passed, \(failed) failed, \(skipped) skipped")
            if failed > 0 { throw ExitCode(1) }
        }
    }
}
