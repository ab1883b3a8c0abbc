import Audit
import Foundation
import GitStore
import Governance
import Logging
@testable import Reconciler
import StateStore
import Testing
import TestSupport

/// The reconcile loop over a real repository, real signatures and a real state DB, with the fake
/// driver standing for the infrastructure: each step of the loop on its own.
final class Loop: @unchecked Sendable {
    let repo: TestRepository
    let directory: TemporaryDirectory
    let state: StateStore
    let key: SigningKey
    let driver = FakeDriver()
    /// The driver named `kubernetes` when the loop routes (`routed`): gantry.yaml's `drivers` choose.
    let cluster = FakeDriver()
    let reconciler: Reconciler

    init(repo: TestRepository, reusing previous: Loop? = nil, routed: Bool = false, configure: (inout Reconciler.Options) -> Void = { _ in }) throws {
        self.repo = repo
        directory = previous?.directory ?? TemporaryDirectory("gantry-loop")
        state = try StateStore(path: directory.path + "/gantry.db")
        key = try SigningKey.loadOrCreate(at: directory.path + "/keys/gantry_ed25519")
        let git = try repo.open()
        var options = Reconciler.Options()
        configure(&options)
        let audit = AuditLog(repository: git, key: key)
        reconciler = Reconciler(repository: git, state: state, audit: audit,
                                driver: routed ? DriverRouter(drivers: ["local": driver, "kubernetes": cluster]) : driver,
                                logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }, options: options)
        if try state.trust()?.anchor == nil, let main = try git.resolveCommit("refs/heads/main") {
            try Trust.anchor(main, branch: "main", by: "the test's operator", how: "gantry trust set", repository: git, state: state, audit: audit)
        }
    }

    @discardableResult
    func pass(wait: Bool = true) throws -> Reconciler.PassSummary { try reconciler.runPass(waitForOperations: wait) }

    func records() throws -> [AuditRecord] { try AuditLog.records(in: try repo.open()).records.map(\.record) }

    /// The audit trail in short (for failure messages).
    func trail() -> String {
        ((try? records()) ?? []).map { "\($0.event) \($0.value("environment") ?? "")" }.joined(separator: ", ")
    }

    func events(of environment: String) throws -> [String] {
        try records().filter { $0.value("environment") == environment }.map(\.event)
    }

    /// A branch off main whose commit changes web's greeting: a preview `web--<branch slug>`.
    @discardableResult
    func pushPreview(_ branch: String) throws -> String {
        try repo.checkout("main")
        try repo.checkout(branch, create: true)
        try repo.writeWeb(service: "{env: {GREETING: \"\(branch)\"}}")
        let commit = try repo.commit("Preview \(branch)\n\nAgent: claude-code")
        try repo.checkout("main")
        return commit
    }

    /// A branch `agents/data` with an environment that has a SQLite database (so the driver is
    /// asked for drift), passed once; its preview's name.
    func pushDatabasePreview() throws -> String {
        try repo.checkout("agents/data", create: true)
        try repo.write("environments/data.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: data, class: development}
            spec:
              template: python-web
              databases:
                main: {engine: sqlite}
            """)
        try repo.commit("an environment with a database\n\nAgent: claude-code")
        try repo.checkout("main")
        try pass()
        return "data--agents-data"
    }

    /// Passes without waiting until `condition` holds (or 10 s pass).
    func passUntil(_ condition: () throws -> Bool) throws -> Bool {
        try eventually(10, interval: 0.02) {
            try pass(wait: false)
            return try condition()
        }
    }
}

extension Loop {
    /// The example repository on main, passed once; previews without caps.
    static func seeded(configure: (inout Reconciler.Options) -> Void = { _ in }) throws -> Loop {
        let repo = try TestRepository()
        try repo.seedExample(previews: "{ttl: 72h, idleSleepAfter: 30m, maxPerTeam: 100, maxPerAgent: 100}")
        let loop = try Loop(repo: repo, configure: configure)
        try loop.pass()
        return loop
    }
}

@Suite(.serialized) struct ReconcilerStepTests {
    func seeded(configure: (inout Reconciler.Options) -> Void = { _ in }) throws -> Loop { try Loop.seeded(configure: configure) }

    @Test func detectionJudgesOnlyWhatMoved() throws {
        let loop = try seeded()
        #expect(Set(loop.driver.started.map(\.environment)) == ["web", "status-page"])
        let quiet = try loop.pass()
        #expect(quiet.changedBranches.isEmpty && quiet.admitted.isEmpty && loop.driver.started.count == 2)
        try loop.pushPreview("agents/a")
        let moved = try loop.pass()
        #expect(moved.changedBranches == ["agents/a"])
        #expect(moved.applied == ["web--agents-a"])
        #expect(try loop.state.environment("web--agents-a")?.phase == .running)
        #expect(try loop.state.environment("web--agents-a")?.conditions.isEmpty == true)
    }

    @Test func aDeniedCommitNeverReachesTheDriver() throws {
        let loop = try seeded()
        try loop.repo.checkout("agents/unsigned", create: true)
        try loop.repo.writeWeb(service: "{env: {GREETING: unsigned}}")
        try loop.repo.git("-c", "commit.gpgsign=false", "commit", "-q", "-am", "No signature")
        try loop.repo.checkout("main")
        let summary = try loop.pass()
        #expect(summary.denied == ["web--agents-unsigned"])
        #expect(!loop.driver.started.contains { $0.environment == "web--agents-unsigned" })
        #expect(try loop.events(of: "web--agents-unsigned") == ["denied"])
    }

    @Test func appliesRunConcurrentlyUpToTheLimitAndNeverTwicePerEnvironment() throws {
        let loop = try seeded { $0.maxConcurrentOperations = 3 }
        loop.driver.delay = 0.15
        for index in 0..<9 { try loop.pushPreview("agents/p\(index)") }
        let summary = try loop.pass()
        #expect(summary.admitted.count == 9 && summary.applied.count == 9)
        #expect(loop.driver.mostAtOnce == 3, "at most the limit, and the limit reached")
        #expect(loop.driver.overlapped.isEmpty)
        // Each admitted record precedes its applied record, and each environment is applied once.
        for index in 0..<9 { #expect(try loop.events(of: "web--agents-p\(index)") == ["admitted", "applied"]) }
        #expect(try AuditVerifier(trustedKeys: [loop.key.publicKey]).verify(repository: try loop.repo.open()).isValid)
    }

    @Test func aSlowApplyHoldsBackNoOtherBranchsAdmissionOrApply() throws {
        let loop = try seeded()
        loop.driver.hold("web--agents-slow")
        try loop.pushPreview("agents/slow")
        try loop.pass(wait: false)
        #expect(try loop.passUntil { loop.driver.started.contains { $0.environment == "web--agents-slow" } })
        try loop.pushPreview("agents/fast")
        #expect(try loop.passUntil { try loop.events(of: "web--agents-fast") == ["admitted", "applied"] })
        // The slow one is admitted, still applying, and says so.
        #expect(try loop.events(of: "web--agents-slow") == ["admitted"])
        let slow = try #require(try loop.state.environment("web--agents-slow"))
        #expect(slow.conditions == [.applying] && slow.phase == .pending)
        loop.driver.release("web--agents-slow")
        try loop.pass()
        #expect(try loop.events(of: "web--agents-slow") == ["admitted", "applied"])
        #expect(try loop.state.environment("web--agents-slow")?.phase == .running)
    }

    /// Correcting drift (a database recreated, its seed run again) is an operation on the pool
    /// like an apply: while it runs, the loop goes on judging and applying other branches, and
    /// the `drift-corrected` record is written when it finishes.
    @Test func aDriftCorrectionHoldsBackNoOtherBranch() throws {
        let loop = try seeded()
        let name = try loop.pushDatabasePreview()
        #expect(try loop.state.environment(name)?.phase == .running, "\(loop.trail())")
        loop.driver.hold(name)
        loop.driver.drifted(name, ["database main (sqlite) is missing"])
        let start = Date()
        try loop.pass(wait: false)
        #expect(try loop.passUntil { loop.driver.started.filter { $0.environment == name }.count == 2 })
        #expect(Date().timeIntervalSince(start) < 5)
        try loop.pushPreview("agents/other")
        #expect(try loop.passUntil { try loop.events(of: "web--agents-other") == ["admitted", "applied"] }, "\(loop.trail())")
        #expect(try !loop.events(of: name).contains("drift-corrected"))
        loop.driver.release(name)
        try loop.pass()
        let corrected = try loop.records().filter { $0.event == "drift-corrected" && $0.value("environment") == name }
        #expect(corrected.count == 1 && corrected.first?.values("found") == ["database main (sqlite) is missing; recreated"], "\(loop.trail())")
        #expect(loop.driver.overlapped.isEmpty)
    }

    /// `--detect-only` reports what others changed and corrects nothing of it, but what the driver
    /// itself cut off under a kill switch, since lifted, is restored.
    @Test func detectOnlyLeavesOthersDriftButRestoresAGantryCut() throws {
        let loop = try seeded { $0.detectOnly = true }
        let name = try loop.pushDatabasePreview()
        #expect(try loop.state.environment(name)?.phase == .running, "\(loop.trail())")
        let applies = { loop.driver.finished.filter { $0.environment == name }.count }
        let before = applies()
        loop.driver.drifted(name, ["database main (sqlite) is missing"])
        try loop.pass()
        #expect(applies() == before, "drift by others is only reported")
        #expect(try loop.state.events(of: name).contains { $0.kind == "drift-detected" && $0.message.contains("not corrected (--detect-only)") })
        loop.driver.drifted(name, ["the kill switch was lifted: its replicas and network policy are restored"], ownCut: true)
        try loop.pass()
        #expect(try loop.passUntil { applies() == before + 1 }, "\(loop.trail())")
        try loop.pass()
        let corrected = try loop.records().filter { $0.event == "drift-corrected" && $0.value("environment") == name }
        #expect(corrected.first?.values("found") == ["the kill switch was lifted: its replicas and network policy are restored; recreated"], "\(loop.trail())")
    }

    @Test func productionAndTheProtectedBranchGoFirst() throws {
        let loop = try seeded { $0.maxConcurrentOperations = 1 }
        loop.driver.hold("web--agents-a")
        try loop.pushPreview("agents/a")
        #expect(try loop.passUntil { loop.driver.started.last?.environment == "web--agents-a" })
        try loop.pushPreview("agents/b")
        try loop.pushPreview("agents/c")
        try loop.pass(wait: false)
        // Then main changes status-page: it is queued after b and c, and starts before them.
        try loop.repo.write("environments/status-page.yaml", try String(contentsOfFile: loop.repo.path + "/environments/status-page.yaml", encoding: .utf8)
            .replacingOccurrences(of: "all systems go", with: "all systems nominal"))
        try loop.repo.commitAsOwner("Reword the status page")
        try loop.pass(wait: false)
        loop.driver.release("web--agents-a")
        try loop.pass()
        let order = loop.driver.started.map(\.environment).suffix(4)
        #expect(Array(order) == ["web--agents-a", "status-page", "web--agents-b", "web--agents-c"], "\(loop.driver.started.map(\.environment)) \(loop.trail())")
    }

    @Test func aCloneWaitsForTheEnvironmentItClonesFrom() throws {
        let loop = try seeded()
        loop.driver.hold("status-page")
        try loop.repo.write("environments/status-page.yaml", try String(contentsOfFile: loop.repo.path + "/environments/status-page.yaml", encoding: .utf8)
            .replacingOccurrences(of: "all systems go", with: "all systems nominal"))
        try loop.repo.commitAsOwner("Reword the status page")
        try loop.repo.checkout("agents/copy", create: true)
        try loop.repo.write("environments/copy.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: copy, team: platform, class: development}
            spec:
              databases:
                main: {engine: sqlite, cloneFrom: status-page}
              services:
                dump: {command: ["sleep", "30"]}
            """)
        try loop.repo.commit("A copy of the status page's data")
        try loop.repo.checkout("main")
        #expect(try loop.passUntil { try loop.events(of: "copy--agents-copy") == ["admitted"] })
        Thread.sleep(forTimeInterval: 0.2)
        #expect(!loop.driver.started.contains { $0.environment == "copy--agents-copy" }, "the clone started while its source was being applied")
        loop.driver.release("status-page")
        try loop.pass()
        let order = loop.driver.started.map(\.environment)
        #expect(order.lastIndex(of: "status-page")! < order.firstIndex(of: "copy--agents-copy")!, "\(order) \(loop.trail())")
    }

    @Test func aDeletedBranchIsTornDownWithEvidence() throws {
        let loop = try seeded()
        let commit = try loop.pushPreview("agents/gone")
        try loop.pass()
        try loop.repo.git("branch", "-D", "agents/gone")
        let summary = try loop.pass()
        #expect(summary.destroyed == ["web--agents-gone"])
        #expect(loop.driver.finished.last == FakeDriver.Operation(kind: "destroy", environment: "web--agents-gone", commit: nil))
        let record = try #require(try loop.records().last { $0.event == "destroyed" })
        #expect(record.value("environment") == "web--agents-gone" && record.value("commit") == commit)
        #expect(record.value("reason") == "branch agents/gone was deleted")
        #expect(try loop.state.environment("web--agents-gone")?.phase == .destroyed)
        // Nothing more on later passes.
        try loop.pass()
        #expect(loop.driver.started.filter { $0.kind == "destroy" }.count == 1, "\(loop.trail())")
    }

    @Test func aFailedApplyIsRetriedWithBackoffWithoutANewCommit() throws {
        let loop = try seeded { $0.retryBackoff = 0.3 }
        loop.driver.fail("web--agents-flaky", times: 2)
        try loop.pushPreview("agents/flaky")
        try loop.pass()
        var record = try #require(try loop.state.environment("web--agents-flaky"))
        #expect(record.phase == .failed && record.conditions == [.applyFailed] && record.attempts == 1)
        let due = try #require(record.nextAttemptAt)
        #expect(due > Date() && due < Date().addingTimeInterval(1))
        // Not before it is due.
        try loop.pass()
        #expect(loop.driver.started.filter { $0.environment == "web--agents-flaky" }.count == 1)
        Thread.sleep(forTimeInterval: 0.35)
        try loop.pass()
        record = try #require(try loop.state.environment("web--agents-flaky"))
        #expect(record.attempts == 2 && record.message?.contains("attempt 2; next attempt in 1s") == true, "\(record.message ?? "")")
        Thread.sleep(forTimeInterval: 0.65)
        try loop.pass()
        record = try #require(try loop.state.environment("web--agents-flaky"))
        #expect(record.phase == .running && record.attempts == 0 && record.conditions.isEmpty)
        // (One failed record per commit: the attempts are counted in the state, not in the notes.)
        #expect(try loop.events(of: "web--agents-flaky") == ["admitted", "failed", "applied"], "\(loop.trail())")
    }

    @Test func aRevisionThatNoRetryCanFixWaitsForANewCommit() throws {
        let loop = try seeded { $0.retryBackoff = 0.05 }
        loop.driver.failWith("web--agents-broken", RevisionError("seed db/seed.sql does not exist"))
        try loop.pushPreview("agents/broken")
        try loop.pass()
        let record = try #require(try loop.state.environment("web--agents-broken"))
        #expect(record.phase == .failed && record.nextAttemptAt == nil)
        #expect(record.message?.contains("not retried until a new commit changes it: seed db/seed.sql does not exist") == true, "\(record.message ?? "")")
        Thread.sleep(forTimeInterval: 0.1)
        try loop.pass()
        #expect(loop.driver.started.filter { $0.environment == "web--agents-broken" }.count == 1)
        // A new commit that changes the environment is applied.
        try loop.repo.checkout("agents/broken")
        try loop.repo.writeWeb(service: "{env: {GREETING: fixed}}")
        try loop.repo.commit("Fix it")
        try loop.repo.checkout("main")
        try loop.pass()
        #expect(try loop.state.environment("web--agents-broken")?.phase == .running)
    }

    @Test func aBranchMadeAgainAtAnOldCommitIsJudgedWithTodaysSigners() throws {
        let repo = try TestRepository()
        let alice = try TestRepository(principal: "alice@example.com")
        try repo.seedExample(extraSigners: [alice.allowedSignersLine])
        let loop = try Loop(repo: repo)
        try loop.pass()
        let old = try loop.pushPreview("agents/old")
        try loop.pass()
        #expect(try loop.state.environment("web--agents-old")?.phase == .running)
        // The agent's key is revoked on main (the owner's change, approved by alice).
        let signers = try String(contentsOfFile: repo.path + "/identities/allowed_signers", encoding: .utf8)
        try repo.write("identities/allowed_signers", signers.split(separator: "\n").filter { !$0.hasPrefix(repo.principal) }.joined(separator: "\n") + "\n")
        let revoke = try repo.commitAsOwner("Revoke the agent's key")
        let aliceKey = try SigningKey(openSSH: try String(contentsOfFile: alice.keyPath, encoding: .utf8))
        try Approvals.approve(ObjectID(hex: revoke)!, key: aliceKey, in: try repo.open())
        try loop.pass()
        #expect(try loop.state.trust()?.revision == revoke, "\(loop.trail())")
        // Deleted, then made again at the commit admitted before: denied, never applied again.
        try repo.git("branch", "-D", "agents/old")
        try loop.pass()
        try repo.git("branch", "agents/old", old)
        let summary = try loop.pass()
        #expect(summary.denied == ["web--agents-old"] && summary.applied.isEmpty, "\(loop.trail())")
        #expect(loop.driver.started.filter { $0.environment == "web--agents-old" && $0.kind == "apply" }.count == 1)
        let denial = try #require(try loop.records().last { $0.event == "denied" })
        #expect(denial.values("rule").contains { $0.contains("allowed_signers") }, "\(denial.values("rule"))")
    }

    @Test func aRevisionAppliedAgainAfterAnotherIsRecordedAgain() throws {
        let loop = try seeded()
        let first = try loop.pushPreview("agents/flap")
        try loop.pass()
        try loop.repo.checkout("agents/flap")
        try loop.repo.writeWeb(service: "{env: {GREETING: second}}")
        let second = try loop.repo.commit("Second")
        try loop.repo.checkout("main")
        try loop.pass()
        // The branch is moved back: the first revision runs again, and the log says so last.
        try loop.repo.git("update-ref", "refs/heads/agents/flap", first)
        try loop.pass()
        #expect(try loop.state.environment("web--agents-flap")?.appliedCommit == first)
        let applied = try loop.records().filter { $0.event == "applied" && $0.value("environment") == "web--agents-flap" }.compactMap { $0.value("commit") }
        #expect(applied == [first, second, first], "\(loop.trail())")
        // A pass with nothing new records nothing more.
        try loop.pass()
        #expect(try loop.records().filter { $0.event == "applied" && $0.value("environment") == "web--agents-flap" }.count == 3)
    }

    @Test func anOlderRevisionStillWaitingIsNotAppliedAndATeardownDropsIt() throws {
        let loop = try seeded { $0.maxConcurrentOperations = 1 }
        loop.driver.hold("status-page")
        // The only worker is busy: what follows waits in the queue.
        try loop.repo.write("environments/status-page.yaml", try String(contentsOfFile: loop.repo.path + "/environments/status-page.yaml", encoding: .utf8)
            .replacingOccurrences(of: "all systems go", with: "all systems nominal"))
        try loop.repo.commitAsOwner("Reword the status page")
        #expect(try loop.passUntil { loop.driver.started.last?.environment == "status-page" })
        try loop.pushPreview("agents/flip")
        try loop.pass(wait: false)
        try loop.repo.checkout("agents/flip")
        try loop.repo.writeWeb(service: "{env: {GREETING: second}}")
        let second = try loop.repo.commit("Second")
        try loop.repo.checkout("main")
        try loop.pass(wait: false)
        loop.driver.release("status-page")
        try loop.pass()
        // Only the second revision was applied.
        #expect(loop.driver.started.filter { $0.environment == "web--agents-flip" }.map(\.commit) == [second])
        #expect(try loop.state.environment("web--agents-flip")?.appliedCommit == second)
        // A branch deleted while its apply waits: the apply never starts.
        loop.driver.hold("status-page")
        try loop.repo.write("environments/status-page.yaml", try String(contentsOfFile: loop.repo.path + "/environments/status-page.yaml", encoding: .utf8)
            .replacingOccurrences(of: "all systems nominal", with: "all systems fine"))
        try loop.repo.commitAsOwner("Touch the status page")
        #expect(try loop.passUntil { loop.driver.started.filter { $0.environment == "status-page" }.count == 3 })
        try loop.pushPreview("agents/gone-soon")
        try loop.pass(wait: false)
        try loop.repo.git("branch", "-D", "agents/gone-soon")
        try loop.pass(wait: false)
        loop.driver.release("status-page")
        try loop.pass()
        #expect(!loop.driver.started.contains { $0.environment == "web--agents-gone-soon" && $0.kind == "apply" })
        #expect(try loop.state.environment("web--agents-gone-soon")?.phase == .destroyed)
        #expect(try loop.events(of: "web--agents-gone-soon") == ["admitted", "destroyed"])
    }

    @Test func anApplyCutShortByAStopIsAppliedOnceAfterARestart() throws {
        let first = try seeded()
        first.driver.hold("web--agents-cut")
        try first.pushPreview("agents/cut")
        #expect(try first.passUntil { first.driver.started.contains { $0.environment == "web--agents-cut" } })
        // Gantry stops here (the apply never finishes for it); a new one starts over the same state.
        let second = try Loop(repo: first.repo, reusing: first)
        second.reconciler.recover()
        #expect(second.driver.recovered?.contains("web--agents-cut") == true)
        try second.pass()
        #expect(second.driver.started.map(\.environment) == ["web--agents-cut"])
        #expect(try second.state.environment("web--agents-cut")?.phase == .running)
        #expect(try second.events(of: "web--agents-cut") == ["admitted", "applied"])
        first.driver.release("web--agents-cut")
    }

    @Test func productionsFirstApplyCutShortIsResumedNotJudgedAgain() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let first = try Loop(repo: repo)
        first.driver.hold("web")
        // The anchored revision is taken as found (no approval asked); Gantry stops mid-apply.
        #expect(try first.passUntil { first.driver.started.contains { $0.environment == "web" } })
        let second = try Loop(repo: repo, reusing: first)
        try second.pass()
        let web = try #require(try second.state.environment("web"))
        #expect(web.phase == .running && web.conditions.isEmpty, "\(web.phase) \(web.message ?? "")")
        #expect(try second.events(of: "web") == ["admitted", "applied"])
        first.driver.release("web")
    }

    @Test func aTeardownCutShortByAStopGoesOnAfterARestart() throws {
        let first = try seeded()
        try first.pushPreview("agents/short")
        try first.pass()
        first.driver.hold("web--agents-short")
        try first.repo.git("branch", "-D", "agents/short")
        #expect(try first.passUntil { first.driver.started.last?.kind == "destroy" })
        #expect(try first.state.environment("web--agents-short")?.conditions == [.destroying])
        let second = try Loop(repo: first.repo, reusing: first)
        let summary = try second.pass()
        #expect(summary.destroyed == ["web--agents-short"])
        #expect(try second.events(of: "web--agents-short") == ["admitted", "applied", "destroyed"])
        first.driver.release("web--agents-short")
    }
}
