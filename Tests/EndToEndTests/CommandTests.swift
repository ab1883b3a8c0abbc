import Foundation
import Testing
import TestSupport

@Suite(.serialized) struct CommandTests {
    @Test func validatePrintsPositionsAndExitsOne() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        #expect(try gantry("validate", "--repo", repo.path, "--ref", "main").status == 0)
        try repo.write("environments/web.yaml", "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: web, class: production}\nspec:\n  template: python-web\n  servces: {}\n")
        try repo.commit("typo")
        let result = try gantry("validate", "--repo", repo.path, "--ref", "main")
        #expect(result.status == 1)
        #expect(result.stdout.contains("environments/web.yaml:6:3: unknown field 'spec.servces'; did you mean 'services'?"))
    }

    @Test func renderShowsThePreviewRewrite() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.checkout("agents/x", create: true)
        try repo.write("apps/hello/NOTE", "n")
        try repo.commit("touch")
        let state = TemporaryDirectory()
        let result = try gantry("render", "--repo", repo.path, "--ref", "agents/x", "--env", "web", "--state", state.path)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("\"name\" : \"web--agents-x\""))
        #expect(result.stdout.contains("\"class\" : \"preview\""))
        #expect(result.stdout.contains("hello from web--agents-x"))
    }

    @Test func keysPrintsAnAllowedSignersLine() throws {
        let state = TemporaryDirectory()
        let line = try gantry("keys", "--state", state.path).stdout
        #expect(line.hasPrefix("gantry ssh-ed25519 AAAA"))
        #expect(try gantry("keys", "--state", state.path).stdout == line)
    }

    @Test func helpListsTheCommands() throws {
        let help = try gantry("--help").stdout
        for command in ["run", "status", "validate", "render", "audit", "keys", "notify", "demo"] {
            #expect(help.contains("  \(command)"), "help lacks \(command)")
        }
    }

    @Test func demoSetsUpASignedRepositoryAndConverges() throws {
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let result = try Shell.run([TestPaths.gantryBinary, "demo", "--state", state.path, "--once",
                                    "--example", TestPaths.packageRoot.appendingPathComponent("example-repo").path])
        #expect(result.status == 0, "\(result.stderr)")
        let demo = state.path + "/demo-repo"
        // The demo's commits are signed: git itself verifies them against the demo's allowed_signers.
        let verify = try Shell.run(["git", "-C", demo, "-c", "gpg.ssh.allowedSignersFile=\(demo)/identities/allowed_signers",
                                    "verify-commit", "HEAD"])
        #expect(verify.status == 0, "\(verify.stderr)")
        let status = try gantry("status", "--state", state.path, "--json").stdout
        #expect(status.contains("\"phase\": \"Running\""))
        #expect(try gantry("audit", "verify", "--state", state.path).status == 0)
        let history = try gantry("status", "--state", state.path, "--env", "web").stdout
        #expect(history.contains("history (newest first):") && history.contains("applied: revision"))
        #expect(try gantry("status", "--state", state.path, "--env", "nope").status != 0)
    }

    @Test func badArgumentsAreRefusedWithAReason() throws {
        let result = try gantry("run", "--repo", "/nonexistent", "--interval", "0")
        #expect(result.status == 64)
        #expect(result.stderr.contains("--interval must be a positive number of seconds"))
        let state = TemporaryDirectory()
        let missing = try gantry("run", "--repo", "/nonexistent/repo", "--state", state.path, "--once")
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("open /nonexistent/repo"))
    }
}
