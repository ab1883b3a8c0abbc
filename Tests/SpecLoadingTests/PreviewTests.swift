import Foundation
import GitStore
import Testing
import TestSupport
@testable import SpecLoading

@Suite struct PreviewTests {
    @Test func slugsFollowTheContract() {
        #expect(Names.slug("agents/Claude/Fix_Login!!") == "agents-claude-fix-login")
        #expect(Names.slug("--feature--") == "feature")
        #expect(Previews.name(environment: "web", branch: "agents/claude/fix-login") == "web--agents-claude-fix-login")
    }

    @Test func longNamesAreCutWithAHash() {
        let branch = "agents/claude/" + String(repeating: "very-long-branch-name-", count: 5)
        let name = Previews.name(environment: "web", branch: branch)
        #expect(name.count <= 63)
        #expect(Names.problem(withLabel: name) == nil)
        #expect(name != Previews.name(environment: "web", branch: branch + "x"))
        #expect(name.hasPrefix("web--agents-claude-very-long"))
    }

    func desired(_ repo: TestRepository, _ branch: String) throws -> [String] {
        let git = try repo.open()
        let tip = try #require(try git.resolveCommit(branch))
        return try ConfigLoader(repository: git).desiredEnvironments(
            branch: branch, commit: tip, protectedBranch: "main", protectedTip: try git.resolveCommit("main")).map(\.name)
    }

    @Test func previewsAreMadeForWhatTheBranchChanged() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        #expect(try desired(repo, "main") == ["status-page", "web"])

        try repo.checkout("env-only", create: true)
        try repo.write("environments/web.yaml", try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8) + "\n# touch\n")
        try repo.commit("touch web")
        #expect(try desired(repo, "env-only") == ["web--env-only"])

        try repo.checkout("main")
        try repo.checkout("source-change", create: true)
        try repo.write("apps/hello/extra.txt", "x")
        try repo.commit("change the app both environments run")
        #expect(try desired(repo, "source-change") == ["status-page--source-change", "web--source-change"])

        try repo.checkout("main")
        try repo.checkout("docs", create: true)
        try repo.write("README.txt", "unrelated")
        try repo.commit("docs only")
        #expect(try desired(repo, "docs").isEmpty)

        // main moves on after the branch: the branch is judged against its merge-base, not main's tip.
        try repo.checkout("main")
        try repo.write("environments/status-page.yaml", try String(contentsOfFile: repo.path + "/environments/status-page.yaml", encoding: .utf8) + "\n")
        try repo.commit("main changes status-page")
        #expect(try desired(repo, "env-only") == ["web--env-only"])
    }

    @Test func previewSpecIsIsolated() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.checkout("feature", create: true)
        try repo.write("templates/python-web.yaml", try String(contentsOfFile: repo.path + "/templates/python-web.yaml", encoding: .utf8) + "\n")
        try repo.commit("template change")
        let git = try repo.open()
        let previews = try ConfigLoader(repository: git).desiredEnvironments(
            branch: "feature", commit: try git.resolveCommit("feature")!, protectedBranch: "main", protectedTip: try git.resolveCommit("main"))
        #expect(previews.map(\.name) == ["status-page--feature", "web--feature"])
        for preview in previews {
            #expect(preview.spec?.class == .preview)
            #expect(preview.spec?.name == preview.name)
        }
    }
}
