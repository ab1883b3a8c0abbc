import GitStore
import SpecLoading

/// What the loop does about an error, decided in one place (`ErrorDisposition.of`). An error
/// outside an environment's apply or a branch's judgement (the repository or the state DB failing)
/// ends the pass instead: nothing is destroyed, and the next pass starts over.
public enum ErrorDisposition: String, Sendable {
    /// Transient (a service that did not become healthy, a tool that failed, a busy database): the
    /// same revision is tried again after a backoff, without a new commit.
    case retryWithBackoff
    /// The revision itself cannot converge (a seed file it names is missing, a name no driver can
    /// use, a branch with too many environment files): nothing is retried until a new commit
    /// changes it.
    case stallUntilNewCommit

    /// How the loop treats `error`: a driver says so with `ClassifiedError`; anything else from a
    /// driver is taken as transient.
    public static func of(_ error: any Error) -> ErrorDisposition {
        (error as? any ClassifiedError)?.disposition ?? .retryWithBackoff
    }
}

/// An error that says what the loop should do about it.
public protocol ClassifiedError: Error {
    var disposition: ErrorDisposition { get }
}

/// A spec or branch that cannot be judged at its commit: refused until a new commit.
extension Diagnostic: ClassifiedError {
    public var disposition: ErrorDisposition { .stallUntilNewCommit }
}

extension TooManyChanges: ClassifiedError {
    public var disposition: ErrorDisposition { .stallUntilNewCommit }
}

/// A revision that no retry can converge: the driver names what the next commit must change.
public struct RevisionError: ClassifiedError, CustomStringConvertible {
    public let description: String
    public var disposition: ErrorDisposition { .stallUntilNewCommit }
    public init(_ description: String) { self.description = description }
}
