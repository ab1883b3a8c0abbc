import Foundation
import GRDB

/// SQLite databases of environments (`engine: sqlite`): created, seeded and cloned as files.
public enum SQLiteFiles {
    /// Creates the database at `path` if absent; runs `seed` (SQL text) when it is created.
    /// Returns true when the file was created.
    @discardableResult
    public static func prepare(path: String, seed: String?, cloneFrom source: String?) throws -> Bool {
        guard !FileManager.default.fileExists(atPath: path) else { return false }
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        if let source, FileManager.default.fileExists(atPath: source) {
            // A consistent copy even while the source is in use: SQLite's backup API.
            let from = try DatabaseQueue(path: source)
            let to = try DatabaseQueue(path: path)
            try from.backup(to: to)
            return true
        }
        let queue = try DatabaseQueue(path: path)
        if let seed, !seed.isEmpty {
            try queue.write { db in try db.execute(sql: seed) }
        }
        return true
    }
}
