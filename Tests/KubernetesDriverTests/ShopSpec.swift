import Foundation
import GitStore
import SpecLoading
import SpecModel
import Testing
import TestSupport

/// The environment `shop` (team payments, production) with `spec` (the lines under `spec:`),
/// loaded from a real repository as Gantry loads it.
func shopSpec(_ spec: String) throws -> EnvironmentSpec {
    let repo = try TestRepository()
    try repo.seedExample()
    let indented = spec.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n")
    try repo.write("environments/shop.yaml", "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: shop, team: payments, class: production}\nspec:\n" + indented + "\n")
    let sha = try repo.commitAsOwner("shop")
    let loaded = try ConfigLoader(repository: try repo.open()).environments(at: ObjectID(hex: sha)!)
    return try #require(loaded.first { $0.name == "shop" }?.spec)
}
