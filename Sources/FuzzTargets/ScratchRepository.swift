import Foundation
import GitStore

/// A bare repository the targets write fuzzed notes and commits into, so that the code under test
/// reads them back through libgit2 exactly as `gantry audit verify` and admission do.
///
/// Every object written stays (loose, a file each), so the repository is thrown away and made
/// anew every `rotation` uses. It lives under `$GANTRY_FUZZ_SCRATCH` (set by `make fuzz`) or the
/// temporary directory, and is removed when the process exits normally.
final class ScratchRepository: @unchecked Sendable {
    static let rotation = 2_000
    /// Git's empty tree (libgit2 knows it without it being written).
    static let emptyTree = ObjectID(hex: "4b825dc642cb6eb9a060e54bf8d69288fbee4904")!

    private let lock = NSLock()
    private let root: String
    private var repository: GitRepository?
    private var generation = 0
    private var uses = 0

    nonisolated(unsafe) private static var instance: ScratchRepository?
    private static let instanceLock = NSLock()

    static var shared: ScratchRepository {
        instanceLock.lock()
        defer { instanceLock.unlock() }
        if let instance { return instance }
        let created = ScratchRepository()
        instance = created
        atexit { ScratchRepository.instance?.removeAll() }
        return created
    }

    private init() {
        let base = ProcessInfo.processInfo.environment["GANTRY_FUZZ_SCRATCH"] ?? NSTemporaryDirectory()
        root = (base as NSString).appendingPathComponent("gantry-fuzz-\(getpid())")
    }

    /// Runs `body` with a repository (a fresh one every `rotation` calls); nil when none can be made.
    func use<T>(_ body: (GitRepository) throws -> T) rethrows -> T? {
        lock.lock()
        defer { lock.unlock() }
        uses += 1
        if repository == nil || uses > Self.rotation {
            repository = nil
            try? FileManager.default.removeItem(atPath: root)
            generation += 1
            uses = 1
            repository = try? GitRepository.create(path: "\(root)/\(generation)", bare: true)
        }
        guard let repository else { return nil }
        return try body(repository)
    }

    func removeAll() {
        lock.lock()
        defer { lock.unlock() }
        repository = nil
        try? FileManager.default.removeItem(atPath: root)
    }
}
