import Foundation
import GRDB

extension StateStore {
    /// The objects `driver` holds for `environment` (its own encoding of a reference each), sorted.
    public func inventory(of environment: String, driver: String) throws -> [String] {
        try pool.read { db in
            try String.fetchAll(db, sql: "SELECT entry FROM clusterInventory WHERE environment = ? AND driver = ? ORDER BY entry",
                                arguments: [environment, driver])
        }
    }

    /// Replaces the inventory of `environment` on `driver` (empty: forgets it).
    public func setInventory(_ entries: [String], of environment: String, driver: String) throws {
        try pool.write { db in
            try db.execute(sql: "DELETE FROM clusterInventory WHERE environment = ? AND driver = ?", arguments: [environment, driver])
            for entry in Set(entries).sorted() {
                try db.execute(sql: "INSERT INTO clusterInventory(environment, driver, entry) VALUES (?, ?, ?)",
                               arguments: [environment, driver, entry])
            }
        }
    }

    /// The environments `driver` holds objects for.
    public func inventoried(driver: String) throws -> [String] {
        try pool.read { db in
            try String.fetchAll(db, sql: "SELECT DISTINCT environment FROM clusterInventory WHERE driver = ? ORDER BY environment", arguments: [driver])
        }
    }
}
