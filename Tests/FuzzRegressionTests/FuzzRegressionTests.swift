import Foundation
import FuzzTargets
import Testing

/// Every seed (Fuzz/corpus/<target>/) and every input that once crashed, hung or blew up a target
/// and has since been fixed (Fuzz/regressions/<target>/) runs through the same target body that
/// `make fuzz` drives: none may crash, and none may take long. Inputs that still crash stay in
/// Fuzz/findings/ until their fix lands (docs/fuzzing.md).
@Suite struct FuzzRegressionTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    static func inputs(_ kind: String, _ target: FuzzTarget) -> [URL] {
        let directory = fuzzDirectory.appendingPathComponent(kind).appendingPathComponent(target.rawValue)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { directory.appendingPathComponent($0) }
    }

    @Test(arguments: FuzzTarget.allCases)
    func seedsAndFixedFindingsRunQuickly(_ target: FuzzTarget) throws {
        let seeds = Self.inputs("corpus", target)
        #expect(!seeds.isEmpty, "Fuzz/corpus/\(target) holds the target's seeds")
        for file in seeds + Self.inputs("regressions", target) {
            let data = try Data(contentsOf: file)
            let start = Date()
            target.run(data)
            // libFuzzer's limit is 1 s with AddressSanitizer in a release build; a debug build is slower.
            let seconds = Date().timeIntervalSince(start)
            #expect(seconds < 10, "\(target) took \(seconds) s on \(file.path)")
        }
    }
}
