import Foundation
import Testing
import TestSupport
@testable import LocalDriver
@testable import Reconciler
import StateStore

@Suite(.serialized) struct ReconcileLoopTests {
    @Test func liveEnvironmentsComeUpAndServe() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        let summary = try harness.pass()
        #expect(summary.applied.sorted() == ["status-page", "web"])
        #expect(try harness.environment("web")?.phase == .running)
        #expect(try harness.get("web")?.contains("\"greeting\": \"hello from web\"") == true)
        let statusPage = try #require(try harness.get("status-page"), "\(harness.diagnose("status-page"))")
        #expect(statusPage.contains("status of status-page: all systems go"))
        // Both admitted, then both applied (concurrently: in either order).
        let records = try harness.records()
        #expect(records.map(\.event) == ["trust-anchored", "admitted", "admitted", "applied", "applied"])
        #expect(Set(records.filter { $0.event == "applied" }.compactMap { $0.value("environment") }) == ["web", "status-page"])
        #expect(try harness.verify().isValid)
        // A second pass with nothing new changes nothing.
        let pid = try harness.service("web")?.pid
        let again = try harness.pass()
        #expect(again.changedBranches.isEmpty && again.applied.isEmpty)
        #expect(try harness.service("web")?.pid == pid)
    }

    @Test func previewLifecycleFromPushToMergeAndDeletion() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        let livePid = try harness.service("web")?.pid

        // Push: a branch that changes the web environment gets an isolated preview.
        try repo.checkout("agents/claude/greeting", create: true)
        try repo.writeWeb(service: #"{env: {GREETING: "howdy from ${env.name}"}}"#)
        let first = try repo.commit("Change the greeting\n\nAgent: claude-code\nTask: PAY-1")
        let summary = try harness.pass()
        #expect(summary.applied == ["web--agents-claude-greeting"])
        let preview = try #require(try harness.environment("web--agents-claude-greeting"))
        #expect(preview.envClass == "preview")
        #expect(preview.branch == "agents/claude/greeting")
        #expect(try harness.get("web--agents-claude-greeting")?.contains("howdy from web--agents-claude-greeting") == true)
        // Isolation: its own port and working directory, and the live environment untouched.
        let previewService = try #require(try harness.service("web--agents-claude-greeting"))
        let liveService = try #require(try harness.service("web"))
        #expect(previewService.port != liveService.port)
        #expect(previewService.workdir != liveService.workdir)
        #expect(liveService.pid == livePid)
        let admitted = try #require(try harness.records().last { $0.event == "admitted" })
        #expect(admitted.value("task") == "PAY-1")
        #expect(admitted.value("agent") == "claude-code")
        #expect(admitted.value("commit") == first)

        // A new commit replaces the preview's process with the new revision.
        try repo.write("apps/hello/VERSION", "2")
        try repo.commit("Bump the app")
        try harness.pass()
        let replaced = try #require(try harness.service("web--agents-claude-greeting"))
        #expect(replaced.pid != previewService.pid)
        #expect(!isRunning(previewService.pid))
        #expect(replaced.port == previewService.port)

        // Merge: the branch's tip becomes reachable from main, and the preview is destroyed.
        try repo.checkout("main")
        try repo.git("merge", "-q", "--no-ff", "-m", "Merge greeting", "agents/claude/greeting")
        let merged = try harness.pass()
        #expect(merged.destroyed.contains("web--agents-claude-greeting"))
        #expect(try harness.environment("web--agents-claude-greeting")?.phase == .destroyed)
        #expect(!isRunning(replaced.pid))
        #expect(try harness.service("web--agents-claude-greeting") == nil)
        #expect(replaced.workdir.map { !FileManager.default.fileExists(atPath: $0) } == true)
        // web is production: the agent's merge waits for a human approver, the old revision serving.
        #expect(merged.pending == ["web"])
        #expect(try harness.environment("web")?.phase == .pendingApproval)
        #expect(try harness.get("web")?.contains("hello from web") == true)
        #expect(try harness.verify().isValid)
    }

    /// Many branches pushed at once are judged a few per pass, in turn: a branch pushed after
    /// them is judged within a few passes, and so are their teardowns once they are deleted.
    @Test func manyBranchesAreJudgedAndTornDownInTurnAcrossPasses() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.checkout("flood", create: true)
        try repo.write("environments/bad.yaml", "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: bad, class: staging}\nspec: {bogus: 1}\n")
        let flood = try repo.commit("invalid")
        try repo.checkout("main")
        _ = try Shell.check(["git", "-C", repo.path, "update-ref", "--stdin"],
                            input: (0..<12).map { "create refs/heads/many/b\($0) \(flood)\n" }.joined())
        let harness = try Harness(repo: repo, reconcile: { $0.maxBranchesPerPass = 5; $0.maxTeardownsPerPass = 4 })
        let first = try harness.pass()
        #expect(first.changedBranches.filter { $0 != "main" }.count == 5 && first.postponed == 8, "\(first)")
        // A branch pushed now (sorting last) waits at most the passes the others need.
        try repo.checkout("zz/good", create: true)
        try repo.write("apps/hello/NOTE", "good\n")
        try repo.commit("good")
        try repo.checkout("main")
        var passes = 1
        while try harness.environment("web--zz-good") == nil, passes < 5 { try harness.pass(); passes += 1 }
        #expect(try harness.environment("web--zz-good")?.phase == .running, "judged after \(passes) passes")
        #expect(try (0..<12).allSatisfy { try harness.environment("bad--many-b\($0)")?.phase == .denied })
        // Deleted together, they are torn down four per pass.
        _ = try Shell.check(["git", "-C", repo.path, "update-ref", "--stdin"],
                            input: (0..<12).map { "delete refs/heads/many/b\($0)\n" }.joined())
        let sweep = try harness.pass()
        #expect(sweep.destroyed.count == 4 && sweep.postponed > 0, "\(sweep)")
        for _ in 0..<4 { try harness.pass() }
        #expect(try (0..<12).allSatisfy { try harness.environment("bad--many-b\($0)")?.phase == .destroyed })
        #expect(try harness.verify().isValid)
    }

    @Test func deletedBranchDestroysItsPreview() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        try repo.checkout("feature", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("touch the app")
        try harness.pass()
        let pids = try ["web--feature", "status-page--feature"].map { try harness.service($0)?.pid }
        #expect(pids.allSatisfy(isRunning))
        try repo.checkout("main")
        try repo.git("branch", "-D", "feature")
        let summary = try harness.pass()
        #expect(summary.destroyed.sorted() == ["status-page--feature", "web--feature"])
        #expect(pids.allSatisfy { !isRunning($0) })
        #expect(try harness.records().filter { $0.event == "destroyed" }.allSatisfy { $0.value("reason") == "branch feature was deleted" })
        // History is kept.
        #expect(try harness.environment("web--feature")?.phase == .destroyed)
    }

    @Test func invalidSpecIsDeniedAndNothingIsHalfApplied() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        let before = try harness.service("web")
        try repo.checkout("broken", create: true)
        try repo.write("environments/web.yaml", "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: web, class: production}\nspec:\n  template: python-web\n  sevices: {}\n")
        let commit = try repo.commit("typo")
        let summary = try harness.pass()
        #expect(summary.denied == ["web--broken"])
        #expect(try harness.environment("web--broken")?.phase == .denied)
        #expect(try harness.environment("web--broken")?.conditions == [.specInvalid])
        #expect(try harness.service("web--broken") == nil)
        let denial = try #require(try harness.records().last)
        #expect(denial.event == "denied")
        #expect(denial.value("decision") == "deny")
        #expect(denial.values("rule").contains { $0.contains("environments/web.yaml:6:3: unknown field 'spec.sevices'; did you mean 'services'?") })
        #expect(try repo.git("notes", "--ref=gantry", "show", commit).contains("event: denied"))
        #expect(try harness.service("web")?.pid == before?.pid)

        // On main, a broken commit keeps the previous revision running (fail safe).
        try repo.checkout("main")
        try repo.write("environments/web.yaml", "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: web, class: production}\nspec: {template: nope}\n")
        try repo.commit("break main")
        try harness.pass()
        let live = try #require(try harness.environment("web"))
        #expect(live.phase == .running)
        #expect(live.message?.contains("denied") == true)
        let pid = try harness.service("web")?.pid
        #expect(isRunning(pid))

        // Reverting to the running revision clears the denial without a restart.
        try repo.git("revert", "--no-edit", "HEAD")
        try harness.pass()
        #expect(try harness.environment("web")?.message == nil)
        #expect(try harness.service("web")?.pid == pid)
    }

    @Test func crashedServiceIsRestartedWithBackoff() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo) { $0.restartBackoff = 2 }
        try harness.pass()
        let original = try #require(try harness.service("web"))
        kill(original.pid!, SIGKILL)
        #expect(eventually(5) { !isRunning(original.pid) })
        try harness.pass()
        let restarted = try #require(try harness.service("web"))
        #expect(restarted.pid != original.pid)
        #expect(restarted.restarts == 1)
        #expect(eventually(10) { (try? harness.get("web")) != nil })
        // A second crash right away waits out the backoff (2 × 2s) before restarting.
        kill(restarted.pid!, SIGKILL)
        #expect(eventually(5) { !isRunning(restarted.pid) })
        try harness.pass()
        #expect(try harness.service("web")?.pid == restarted.pid)
        #expect(eventually(10) { (try? harness.pass()) != nil && (try? harness.service("web")?.restarts) == 2 })
    }

    @Test func failingHealthCheckIsReportedWithTheLog() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("environments/crash.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: crash, class: development}
            spec:
              services:
                web:
                  source: apps/hello
                  command: ["python3", "-c", "import sys; print('boom: missing config'); sys.exit(3)"]
            """)
        try repo.commit("add a crashing environment")
        let harness = try Harness(repo: repo)
        let summary = try harness.pass()
        #expect(summary.failed == ["crash"], "\(harness.diagnose("web"))")
        let failed = try #require(try harness.environment("crash"))
        #expect(failed.phase == .failed)
        #expect(failed.conditions == [.applyFailed])
        // The message says where the output is; the output (which could hold a secret) stays in the log.
        #expect(failed.message?.contains("service web exited during start; its output is in envs/crash/logs/web.log") == true, "\(failed.message ?? "")")
        #expect(failed.message?.contains("boom") == false)
        #expect(LocalDriver.recentOutput(stateDirectory: harness.stateDirectory.url, environment: "crash")
            .contains { $0.file == "web.log" && $0.lines.contains("boom: missing config") })
        #expect(try harness.records().last { $0.event == "failed" }?.value("environment") == "crash")

        // A commit elsewhere does not retry (or re-record) the failed environment...
        try repo.write("README.txt", "docs")
        try repo.commit("docs")
        #expect(try harness.pass().failed.isEmpty)
        #expect(try harness.records().filter { $0.event == "failed" }.count == 1)
        // ...a commit that touches it does.
        let spec = try String(contentsOfFile: repo.path + "/environments/crash.yaml", encoding: .utf8)
        try repo.write("environments/crash.yaml", spec + "\n# retry\n")
        try repo.commit("retry")
        #expect(try harness.pass().failed == ["crash"])
        #expect(try harness.records().filter { $0.event == "failed" }.count == 2)
    }

    /// A failed apply heals without a new commit: it is retried with exponential backoff, and
    /// the environment says when the next attempt is.
    /// A service that runs but never passes its health check: each retry checks it again, and it
    /// is never recorded as applied (a retry once found the failed attempt's process alive and
    /// took it for the running revision).
    @Test func aServiceThatNeverBecomesHealthyIsNeverRecordedApplied() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("environments/sick.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: sick, class: development}
            spec:
              services:
                web:
                  source: apps/hello
                  command: ["sh", "-c", "exec python3 -m http.server --bind 127.0.0.1 $PORT"]
                  health: {http: /healthz}
            """)
        try repo.commit("a service whose health check answers 404")
        let harness = try Harness(repo: repo, configure: { $0.startTimeout = 1.5 }, reconcile: { $0.retryBackoff = 0.2 })
        // (The example's own services have 1.5 s to start too: on a loaded machine one may fail
        // and be retried beside it; only sick's outcome is asserted.)
        let first = try harness.pass()
        #expect(first.failed.contains("sick"), "\(first.failed) \(harness.diagnose("sick"))")
        for attempt in 2...3 {
            Thread.sleep(forTimeInterval: attempt == 2 ? 0.25 : 0.45)
            let summary = try harness.pass()
            #expect(summary.failed.contains("sick") && !summary.applied.contains("sick"), "attempt \(attempt): \(harness.diagnose("sick"))")
            let record = try #require(try harness.environment("sick"))
            #expect(record.phase == .failed && record.attempts == attempt, "\(record.message ?? "")")
        }
        #expect(!(try harness.records().contains { $0.event == "applied" && $0.value("environment") == "sick" }))
    }

    @Test func aFailedApplyIsRetriedWithBackoffWithoutANewCommit() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let marks = TemporaryDirectory("gantry-ready").writableByEveryone()
        try repo.write("environments/flaky.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: flaky, class: development}
            spec:
              services:
                web:
                  source: apps/hello
                  command: ["sh", "-c", "test -f \(marks.path)/ready && exec python3 server.py"]
                  health: {http: /healthz}
            """)
        try repo.commit("a service that needs something not there yet")
        let harness = try Harness(repo: repo, reconcile: { $0.retryBackoff = 4; $0.maxRetryBackoff = 8 })
        func waitUntilDue() throws {
            let due = try #require(try harness.environment("flaky")?.nextAttemptAt)
            Thread.sleep(until: due.addingTimeInterval(0.1))
        }
        #expect(try harness.pass().failed == ["flaky"])
        let failed = try #require(try harness.environment("flaky"))
        #expect(failed.attempts == 1 && failed.nextAttemptAt != nil)
        #expect(failed.message?.contains("(attempt 1; next attempt in 4s)") == true, "\(failed.message ?? "")")
        // Not due yet: nothing happens.
        #expect(try harness.pass().failed.isEmpty)
        // Due: tried again, and fails again with a longer wait.
        try waitUntilDue()
        #expect(try harness.pass().failed == ["flaky"])
        #expect(try harness.environment("flaky")?.attempts == 2)
        #expect(try harness.environment("flaky")?.message?.contains("(attempt 2; next attempt in 8s)") == true)
        // What it needed appears: the next due attempt succeeds, with no commit in between.
        FileManager.default.createFile(atPath: marks.path + "/ready", contents: Data())
        try waitUntilDue()
        #expect(try harness.pass().applied == ["flaky"])
        let healed = try #require(try harness.environment("flaky"))
        #expect(healed.phase == .running && healed.attempts == 0 && healed.nextAttemptAt == nil && healed.conditions.isEmpty)
        #expect(try harness.get("flaky") != nil)
    }

    @Test func removedEnvironmentOnMainIsDestroyed() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        let pid = try harness.service("status-page")?.pid
        try repo.remove("environments/status-page.yaml")
        try repo.commit("retire the status page")
        let summary = try harness.pass()
        #expect(summary.destroyed == ["status-page"])
        #expect(!isRunning(pid))
        #expect(isRunning(try harness.service("web")?.pid))
    }
}

@Suite(.serialized) struct JudgingTests {
    @Test func everyCommitThatTouchesAnEnvironmentIsJudgedButOnlyChangesRestart() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        let web = try harness.service("web")
        let statusPage = try harness.service("status-page")

        // A comment in web.yaml: judged and recorded, but nothing restarts.
        let spec = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
        try repo.write("environments/web.yaml", spec + "# reviewed\n")
        let commented = try repo.commit("comment only")
        let summary = try harness.pass()
        #expect(summary.admitted == ["web"])
        #expect(summary.applied.isEmpty)
        let note = try repo.git("notes", "--ref=gantry", "show", commented)
        #expect(note.contains("environment: web\n") && note.contains("change: none: the running revision already matches"))
        #expect(!note.contains("environment: status-page"))
        #expect(try harness.service("web")?.pid == web?.pid)
        #expect(try harness.environment("web")?.commit == commented)

        // A commit touching neither environment records nothing for them.
        try repo.write("README.txt", "docs")
        let docs = try repo.commit("docs")
        #expect(try harness.pass().admitted.isEmpty)
        #expect(try Shell.run(["git", "-C", repo.path, "notes", "--ref=gantry", "show", docs]).status != 0)
        #expect(try harness.service("status-page")?.pid == statusPage?.pid)
    }
}

@Suite struct LogTests {
    @Test func serviceOutputIsCapturedAndRotated() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("environments/chatty.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: chatty, class: development}
            spec:
              services:
                web:
                  command: ["python3", "-u", "-c", "import time\\nwhile True:\\n    print('x' * 99, flush=True)\\n    time.sleep(0.001)"]
            """)
        try repo.commit("a chatty service")
        let harness = try Harness(repo: repo) { $0.maxLogBytes = 20_000; $0.keptLogs = 2 }
        try harness.pass()
        let log = harness.stateDirectory.path + "/envs/chatty/logs/web.log"
        func size(_ path: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? 0 }
        #expect(eventually(10) { size(log) > 20_000 })
        _ = harness.driver.supervise()
        #expect(size(log + ".1") > 20_000)
        #expect(size(log) < 20_000)
        // The service keeps writing to the truncated file, and older files are capped at keptLogs.
        #expect(eventually(10) { size(log) > 20_000 })
        _ = harness.driver.supervise()
        #expect(eventually(10) { size(log) > 20_000 })
        _ = harness.driver.supervise()
        #expect(FileManager.default.fileExists(atPath: log + ".2"))
        #expect(!FileManager.default.fileExists(atPath: log + ".3"))
        #expect(try String(contentsOfFile: log + ".1", encoding: .utf8).hasPrefix("x"))
    }
}

@Suite(.serialized) struct FailSafeTests {
    @Test func previewOfAPassCutShortIsStillDestroyedWhenItsBranchGoes() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        try repo.checkout("cut-short", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("touch")
        try harness.pass()
        let pid = try harness.service("web--cut-short")?.pid
        #expect(isRunning(pid))
        // As if Gantry died after starting the preview but before marking the branch processed.
        try harness.state.setProcessed(branch: "cut-short", commit: nil)
        let restarted = try Harness(repo: repo, reusing: harness)
        try repo.checkout("main")
        try repo.git("branch", "-D", "cut-short")
        let summary = try restarted.pass()
        #expect(summary.destroyed.sorted() == ["status-page--cut-short", "web--cut-short"])
        #expect(!isRunning(pid))
    }

    @Test func deletingTheProtectedBranchNeverDestroysLiveEnvironments() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.git("branch", "keep", "main")
        let harness = try Harness(repo: repo)
        try harness.pass()
        try repo.checkout("keep")
        try repo.git("branch", "-D", "main")
        let summary = try harness.pass()
        #expect(summary.destroyed.isEmpty)
        #expect(isRunning(try harness.service("web")?.pid))
    }
}

@Suite struct RecordOnceTests {
    @Test func aRedonePassDoesNotRecordTwiceButARecreatedEnvironmentIsRecordedAgain() {
        let seen = { (event: String, events: [String]) in Reconciler.alreadyRecorded(event, in: events) }
        #expect(!seen("admitted", []))
        #expect(seen("admitted", ["admitted"]))
        #expect(seen("admitted", ["admitted", "applied"]))
        #expect(!seen("applied", ["admitted"]))
        #expect(seen("applied", ["admitted", "applied"]))
        #expect(seen("destroyed", ["admitted", "applied", "destroyed"]))
        // Destroyed, then re-created on the same commit: a new cycle.
        #expect(!seen("admitted", ["admitted", "applied", "destroyed"]))
        #expect(!seen("applied", ["admitted", "applied", "destroyed", "admitted"]))
        #expect(!seen("destroyed", ["admitted", "applied", "destroyed", "admitted", "applied"]))
        #expect(seen("denied", ["denied"]))
        #expect(!seen("failed", ["admitted", "failed", "admitted"]))
    }
}
