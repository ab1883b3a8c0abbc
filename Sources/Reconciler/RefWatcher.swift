import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Wakes the reconcile loop the moment a branch or an approval of a local repository changes
/// (inotify on `refs/heads`, `refs/notes` and `packed-refs`): a push is seen without `gantry
/// notify` and without waiting for the next poll. The audit notes Gantry writes itself
/// (`refs/notes/gantry`) wake nothing. The poll stays as the safety net (a missed event, a file
/// system without inotify).
public final class RefWatcher: @unchecked Sendable {
    // @unchecked: `watched` is touched only by the watching thread after `init` returns.
    private let descriptor: Int32
    private let gitDirectory: String
    private let onChange: @Sendable () -> Void
    /// Watch descriptor → directory (relative to the git directory; "" for the git directory).
    private var watched: [Int32: String] = [:]

    /// Starts watching `gitDirectory`; nil when inotify is unavailable (the poll still runs).
    public init?(gitDirectory: String, onChange: @escaping @Sendable () -> Void) {
        let descriptor = inotify_init1(Int32(IN_CLOEXEC))
        guard descriptor >= 0 else { return nil }
        self.descriptor = descriptor
        self.gitDirectory = gitDirectory.hasSuffix("/") ? String(gitDirectory.dropLast()) : gitDirectory
        self.onChange = onChange
        add("")
        addTree("refs/heads")
        add("refs/notes")
        Thread.detachNewThread { [self] in watch() }
    }

    /// What changes a ref: a file renamed into place (git writes `NAME.lock`, then renames it),
    /// created, written or deleted, and directories coming and going.
    private static let mask = UInt32(IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CLOSE_WRITE | IN_DELETE_SELF)

    private func add(_ relative: String) {
        let path = relative.isEmpty ? gitDirectory : gitDirectory + "/" + relative
        let watch = inotify_add_watch(descriptor, path, Self.mask | UInt32(IN_ONLYDIR))
        if watch >= 0 { watched[watch] = relative }
    }

    /// `relative` and every directory under it (branch names with slashes are directories).
    private func addTree(_ relative: String) {
        add(relative)
        let path = gitDirectory + "/" + relative
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] {
            var info = stat()
            if lstat(path + "/" + entry, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { addTree(relative + "/" + entry) }
        }
    }

    private func watch() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        let header = MemoryLayout<inotify_event>.size
        while true {
            let count = read(descriptor, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            var offset = 0
            var changed = false
            while offset + header <= count {
                let (watch, mask, length) = buffer.withUnsafeBytes { raw -> (Int32, UInt32, Int) in
                    let event = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                    return (event.wd, event.mask, Int(event.len))
                }
                let nameBytes = buffer[(offset + header)..<min(count, offset + header + length)]
                let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
                offset += header + length
                guard let directory = watched[watch] else { continue }
                if mask & UInt32(IN_IGNORED) != 0 { watched[watch] = nil; continue }
                if directory.isEmpty {
                    // The git directory itself: only packed-refs matters.
                    if name == "packed-refs" { changed = true }
                    continue
                }
                // Gantry's own audit notes.
                if directory == "refs/notes", name == "gantry" || name == "gantry.lock" { continue }
                if mask & UInt32(IN_ISDIR) != 0, mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 {
                    // A new directory may already hold refs written before its watch existed.
                    addTree(directory + "/" + name)
                }
                if !name.hasSuffix(".lock") { changed = true }
            }
            if changed { onChange() }
        }
    }
}
