import Foundation

/// The bodies of `make fuzz`'s coverage-guided targets (docs/fuzzing.md). Each takes any bytes and
/// must return: a crash, a hang or an unbounded allocation in one of them is a bug of the code it
/// drives, never of the target. `GantryFuzz` runs them under libFuzzer or replays files through
/// them; `FuzzRegressionTests` replays `Fuzz/corpus/` and `Fuzz/regressions/` in `make test`.
public enum FuzzTarget: String, CaseIterable, Sendable, CustomStringConvertible {
    /// YAML loader (libyaml events → nodes) and every spec decoder: Environment, Template, Settings,
    /// Actors, Policy (compiled and evaluated as `PolicySet`), template merging, `${...}` checks.
    case spec
    /// The CEL parser, and the evaluator over policy variables with the policies' cost limit.
    case cel
    /// An audit note as `gantry audit verify` reads it: records, signatures, digests, the chain.
    case auditNote = "audit-note"
    /// SSHSIG signatures (armored, or the binary blob), OpenSSH public keys and private key files.
    case sshsig
    /// `identities/allowed_signers` lines, key lookups, and a commit's identity (trailers, signature).
    case allowedSigners = "allowed-signers"

    public var description: String { rawValue }

    /// Inputs longer than this are cut by libFuzzer (`-max_len`); replays take any length.
    public var maxLength: Int {
        switch self {
        case .spec: 16_384
        case .cel: 4_096
        case .auditNote: 16_384
        case .sshsig: 4_096
        case .allowedSigners: 8_192
        }
    }

    /// Runs the target once on `data`.
    public func run(_ data: Data) {
        switch self {
        case .spec: SpecTarget.run(data)
        case .cel: CELTarget.run(data)
        case .auditNote: AuditNoteTarget.run(data)
        case .sshsig: SSHSigTarget.run(data)
        case .allowedSigners: AllowedSignersTarget.run(data)
        }
    }

    /// Runs the target on raw memory, as libFuzzer hands it over.
    public func run(_ bytes: UnsafePointer<UInt8>?, _ count: Int) {
        guard let bytes, count > 0 else { return run(Data()) }
        run(Data(bytes: bytes, count: count))
    }

    /// Set by `GantryFuzz -v` when replaying: the targets say what became of an input (for checking
    /// that seeds reach deep, e.g. that a seed's signature verifies). Never set while fuzzing.
    nonisolated(unsafe) public static var trace: ((String) -> Void)?

    static func trace(_ message: @autoclosure () -> String) {
        if let trace { trace(message()) }
    }

    /// Splits `data` at every `separator` line (`\n%%\n`), for targets whose input has parts.
    static func parts(_ data: Data, count: Int) -> [Data] {
        let separator = Data("\n%%\n".utf8)
        var parts: [Data] = []
        var rest = data[...]
        while parts.count < count - 1, let range = rest.range(of: separator) {
            parts.append(Data(rest[rest.startIndex..<range.lowerBound]))
            rest = rest[range.upperBound...]
        }
        parts.append(Data(rest))
        while parts.count < count { parts.append(Data()) }
        return parts
    }
}
