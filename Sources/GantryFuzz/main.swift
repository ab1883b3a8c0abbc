// `make fuzz` (docs/fuzzing.md).
//
// Fuzzing build (`-DFUZZING`, coverage and AddressSanitizer, linked with libFuzzer's no-main
// runtime): `GantryFuzz <target> [libFuzzer flags] [corpus dirs | files]` hands control to
// libFuzzer's driver with that target.
//
// Normal build: `GantryFuzz <target> <file or directory>...` replays inputs through the target,
// e.g. a crash file from Fuzz/findings/ once it is fixed; `-v` says what became of each input;
// `GantryFuzz list` names the targets.
import Foundation
import FuzzTargets

func usage() -> Never {
    let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
    FileHandle.standardError.write(Data("usage: GantryFuzz <target> [inputs...]   targets: \(names)\n".utf8))
    exit(2)
}

let arguments = CommandLine.arguments
if arguments.count >= 2, arguments[1] == "list" {
    for target in FuzzTarget.allCases { print("\(target)\tmax_len \(target.maxLength)") }
    exit(0)
}
// The target is the first argument, or (for the processes libFuzzer's -fork mode starts, whose
// arguments are libFuzzer's alone) $GANTRY_FUZZ_TARGET.
let named = arguments.count >= 2 ? FuzzTarget(rawValue: arguments[1]) : nil
guard let chosen = named ?? ProcessInfo.processInfo.environment["GANTRY_FUZZ_TARGET"].flatMap(FuzzTarget.init(rawValue:)) else { usage() }

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

nonisolated(unsafe) var selected = chosen
// Processes libFuzzer starts itself (-fork, -jobs) are told the target by the environment.
setenv("GANTRY_FUZZ_TARGET", chosen.rawValue, 1)
// libFuzzer sees argv without the target name.
var argv: [UnsafeMutablePointer<CChar>?] = [strdup(arguments[0])]
argv += arguments.dropFirst(named == nil ? 1 : 2).map { strdup($0) }
argv.append(nil)
var argc = CInt(argv.count - 1)
let status = argv.withUnsafeMutableBufferPointer { buffer -> CInt in
    var base = buffer.baseAddress!
    return LLVMFuzzerRunDriver(&argc, &base) { bytes, count in
        selected.run(bytes, count)
        return 0
    }
}
exit(status)
#else
var files: [String] = []
for path in arguments.dropFirst(named == nil ? 1 : 2) {
    if path == "-v" {
        FuzzTarget.trace = { print("  \($0)") }
        continue
    }
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        FileHandle.standardError.write(Data("no such file: \(path)\n".utf8))
        exit(1)
    }
    if isDirectory.boolValue {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        files += names.filter { !$0.hasPrefix(".") }.sorted().map { "\(path)/\($0)" }
    } else {
        files.append(path)
    }
}
for file in files {
    guard let data = FileManager.default.contents(atPath: file) else { continue }
    let start = Date()
    chosen.run(data)
    print(String(format: "%@ %@: %d bytes, %.3f s", chosen.rawValue, file, data.count, Date().timeIntervalSince(start)))
}
print("\(chosen): \(files.count) input(s) replayed without a crash")
#endif
