import Foundation
import GitStore
import SpecModel
import Testing
import TestSupport
@testable import SpecLoading

/// gantry.yaml's `drivers`: which driver runs an environment, by its name or its class.
@Suite struct DriverSettingsTests {
    func settings(_ text: String) throws -> (Settings, [String]) {
        let repo = try TestRepository()
        try repo.seedExample()
        let current = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
        try repo.write("gantry.yaml", current + text)
        let commit = ObjectID(hex: try repo.commit("drivers"))!
        let loader = ConfigLoader(repository: try repo.open())
        let loaded = loader.settings(at: commit)
        return (loaded.settings, loaded.diagnostics.map { "\($0)" })
    }

    @Test func anEnvironmentsNameWinsOverItsClassAndLocalIsTheDefault() throws {
        let (settings, problems) = try settings("drivers: {production: kubernetes, web: local}\n")
        #expect(problems.isEmpty, "\(problems)")
        #expect(settings.driver(for: "shop", class: "production") == "kubernetes")
        #expect(settings.driver(for: "web", class: "production") == "local")
        #expect(settings.driver(for: "shop", class: "preview") == "local")
    }

    @Test func anUnknownDriverIsRefusedWithItsPlace() throws {
        let (settings, problems) = try settings("drivers:\n  production: kubernete\n  preview: [local]\n")
        let text = problems.joined(separator: "\n")
        #expect(text.contains("gantry.yaml:") && text.contains("drivers.production: unknown driver 'kubernete'") && text.contains("did you mean 'kubernetes'"), "\(text)")
        #expect(text.contains("drivers.preview"))
        #expect(settings.drivers.isEmpty)
    }
}
