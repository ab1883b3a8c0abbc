import CLibgit2

/// A libgit2 failure, with the operation Gantry was attempting, libgit2's code and its message.
public struct GitError: Error, CustomStringConvertible, Sendable, Equatable {
    public let operation: String
    public let code: Int32
    public let message: String

    public var description: String { "git \(operation) failed (\(code)): \(message)" }

    /// True when a compare-and-swap reference update lost the race (the ref moved).
    public var isConflict: Bool {
        code == GIT_EMODIFIED.rawValue || code == GIT_ELOCKED.rawValue || code == GIT_EEXISTS.rawValue
    }

    public var isNotFound: Bool { code == GIT_ENOTFOUND.rawValue }

    /// A blob larger than the reader's limit (refused before it was inflated).
    public static let tooLargeCode: Int32 = -1_000
    public var isTooLarge: Bool { code == Self.tooLargeCode }

    public init(operation: String, code: Int32, message: String) {
        self.operation = operation
        self.code = code
        self.message = message
    }
}

/// Calls a libgit2 function and turns a negative result into a `GitError`, reading
/// `git_error_last()` at once, on the same thread, as libgit2 requires.
@discardableResult
func check(_ operation: @autoclosure () -> String, _ result: Int32) throws -> Int32 {
    guard result < 0 else { return result }
    let message: String
    if let last = git_error_last(), let text = last.pointee.message {
        message = String(cString: text)
    } else {
        message = "no detail from libgit2"
    }
    throw GitError(operation: operation(), code: result, message: message)
}
