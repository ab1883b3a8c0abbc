import Foundation
import Testing
import TestSupport
@testable import LocalDriver
@testable import Reconciler
import StateStore

@Suite(.serialized) struct JobTests {
    @Test func onCreateRunsOnceAndOnDestroyRunsAtTeardownWhichCompletesEvenWhenAJobFails() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let marks = TemporaryDirectory("gantry-jobs").writableByEveryone()
        // The test's file, open to the jobs (a file the environment's user made in /tmp would go with
        // its teardown).
        #expect(FileManager.default.createFile(atPath: marks.path + "/journal", contents: nil, attributes: [.posixPermissions: 0o666]))
        _ = chmod(marks.path + "/journal", 0o666)
        try repo.write("infra/up.sh", "echo \"up $GANTRY_ENVIRONMENT\" >> \(marks.path)/journal\n")
        try repo.write("infra/down.sh", "echo \"down $GANTRY_ENVIRONMENT\" >> \(marks.path)/journal; echo 'cannot reach the cloud' >&2; exit 3\n")
        try repo.write("environments/infra.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: infra, class: development}
            spec:
              template: python-web
              jobs:
                provision: {onCreate: ["sh", "infra/up.sh"], onDestroy: ["sh", "infra/down.sh"]}
            """)
        try repo.commit("an environment with jobs")
        let harness = try Harness(repo: repo)
        let first = try harness.pass()
        #expect(first.applied.contains("infra"))
        #expect(try String(contentsOfFile: marks.path + "/journal", encoding: .utf8) == "up infra\n")
        let applied = try #require(try harness.records().last { $0.event == "applied" && $0.value("environment") == "infra" })
        #expect(applied.values("change").contains("job provision: onCreate ran"))

        // A new revision does not run onCreate again.
        try repo.write("apps/hello/VERSION", "2")
        try repo.commit("new revision")
        try harness.pass()
        #expect(try String(contentsOfFile: marks.path + "/journal", encoding: .utf8) == "up infra\n")

        // Removing the environment runs onDestroy; its failure is recorded and teardown completes.
        let pid = try harness.service("infra")?.pid
        try repo.remove("environments/infra.yaml")
        try repo.commit("retire infra")
        let summary = try harness.pass()
        #expect(summary.destroyed == ["infra"])
        #expect(try String(contentsOfFile: marks.path + "/journal", encoding: .utf8) == "up infra\ndown infra\n")
        #expect(!isRunning(pid))
        let destroyed = try #require(try harness.records().last { $0.event == "destroyed" })
        // The record says where the output is, never the output itself (it could hold a secret).
        #expect(destroyed.values("problem").contains { $0.contains("job provision (onDestroy) failed") && $0.contains("exited with status 3")
            && $0.contains("its output is in envs/infra/logs/job-provision.log") && !$0.contains("cannot reach the cloud") })
    }

    @Test func aFailingOnCreateJobFailsTheApplyWithItsOutput() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("environments/broken-infra.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: broken-infra, class: development}
            spec:
              template: python-web
              jobs:
                migrate: {onCreate: ["sh", "-c", "echo 'relation users does not exist' >&2; exit 1"]}
            """)
        try repo.commit("a failing migration")
        let harness = try Harness(repo: repo)
        let summary = try harness.pass()
        #expect(summary.failed == ["broken-infra"])
        let message = try harness.environment("broken-infra")?.message ?? ""
        #expect(message.contains("job migrate (onCreate) exited with status 1") && message.contains("envs/broken-infra/logs/job-migrate.log"), "\(message)")
        #expect(LocalDriver.recentOutput(stateDirectory: harness.stateDirectory.url, environment: "broken-infra")
            .contains { $0.file == "job-migrate.log" && $0.lines.contains("relation users does not exist") })
        #expect(try harness.service("broken-infra") == nil)
    }
}
