import Foundation
import GRDB

/// SQLite databases of environments (`engine: sqlite`): created, seeded and cloned as files.
public enum SQLiteFiles {
    /// Creates the database at `path` if absent, as a copy of `source` when that exists, else
    /// empty (a seed is the environment's code and runs with its privileges, not here). Returns
    /// true when the file was created.
    @discardableResult
    public static func prepare(path: String, cloneFrom source: String?) throws -> Bool {
        guard !FileManager.default.fileExists(atPath: path) else { return false }
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        if let source, FileManager.default.fileExists(atPath: source) {
            // A consistent copy even while the source is in use: SQLite's backup API.
            let from = try DatabaseQueue(path: source)
            let to = try DatabaseQueue(path: path)
            try from.backup(to: to)
            return true
        }
        _ = try DatabaseQueue(path: path)
        return true
    }
}
