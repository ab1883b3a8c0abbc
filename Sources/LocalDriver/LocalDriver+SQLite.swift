import Foundation
import Reconciler
import SpecModel
import StateStore

/// `engine: sqlite` databases: a file in the environment's directory, seeded from the repository
/// or cloned from another environment's file; removed with the environment.
extension LocalDriver {
    func sqlitePath(environment: String, database: String) -> String {
        root.appendingPathComponent(environment).appendingPathComponent("db-\(database).sqlite3").path
    }

    func applySQLite(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> [String] {
        var changes: [String] = []
        for database in environment.spec.databases where database.engine == "sqlite" {
            let path = sqlitePath(environment: environment.name, database: database.name)
            let seed = try database.seed.flatMap { try environment.repository.readFile($0, at: environment.commit) }
                .map { String(decoding: $0, as: UTF8.self) }
            if database.seed != nil && seed == nil {
                throw ProcessControl.SpawnError(description: "database \(database.name): seed \(database.seed!) does not exist at \(environment.commit.short)")
            }
            let source = database.cloneFrom.map { sqlitePath(environment: $0, database: database.name) }
            progress(source.map { "cloning database \(database.name) from \($0)" } ?? "creating database \(database.name)")
            if try SQLiteFiles.prepare(path: path, seed: seed, cloneFrom: source) {
                changes.append("+database \(database.name)")
            }
        }
        return changes
    }
}
