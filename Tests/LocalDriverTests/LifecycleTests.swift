import Audit
import Foundation
@testable import LocalDriver
import Logging
@testable import Reconciler
import SpecModel
import StateStore
import TestSupport
import Testing

/// A clock the test moves by hand.
final class FakeClock: @unchecked Sendable {
    private let lock = NSLock()
    private var current: Date
    init(_ start: Date) { current = start }
    var now: Date { lock.withLock { current } }
    func advance(_ seconds: Double) { lock.withLock { current = current.addingTimeInterval(seconds) } }
}

/// Lifecycle and budgets on the real local driver and reconciler, with a fake clock for spend,
/// alerts, TTLs and idle timers.
@Suite(.serialized) struct LifecycleTests {
    /// 2026-12-07 10:00 UTC.
    static let start = Date(timeIntervalSince1970: 1_796_637_600)

    /// The example repository with `settings` as its gantry.yaml (in the anchored seed commit),
    /// a harness whose reconciler and lifecycle run on `clock`, and one pass done.
    func seeded(_ settings: String, clock: FakeClock, extraSigners: [String] = [],
                options: LifecycleController.Options = LifecycleController.Options()) throws -> (TestRepository, Harness, LifecycleController) {
        let repo = try TestRepository()
        try repo.seedExample(extraSigners: extraSigners)
        try repo.write("gantry.yaml", settings)
        try repo.signing(with: repo.ownerKeyPath) { _ = try repo.git("commit", "-q", "-a", "--amend", "-m", "Seed from example-repo") }
        let harness = try Harness(repo: repo)
        let lifecycle = LifecycleController(state: harness.state, driver: harness.driver, audit: AuditLog(repository: try repo.open(), key: harness.key),
                                  logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }, options: options, clock: { clock.now })
        harness.reconciler.clock = { clock.now }
        harness.reconciler.lifecycle = lifecycle
        try harness.pass()
        return (repo, harness, lifecycle)
    }

    static func settings(previews: String = "{ttl: 72h, idleSleepAfter: 10h}", budgets: String = "{}",
                         pricing: String = "{cpuHour: 1.0, memoryGiBHour: 0, postgresHour: 0, redisHour: 0}") -> String {
        """
        apiVersion: gantry/v1
        kind: Settings
        protectedBranch: main
        domain: localhost
        signing: {required: true}
        approvals:
          production: {count: 1, role: approver, distinctFromAuthors: true}
          governance: {count: 1, role: admin, distinctFromAuthors: true}
        previews: \(previews)
        pricing: \(pricing)
        budgets: \(budgets)

        """
    }

    /// A preview of web on `branch`, committed by the repository's agent.
    @discardableResult
    func pushPreview(_ repo: TestRepository, branch: String, greeting: String, extra: String = "") throws -> String {
        try repo.checkout("main")
        try repo.checkout(branch, create: true)
        try repo.write("environments/web.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: web, team: payments, class: production}
            spec:
              template: python-web
              services:
                web:
                  env: {GREETING: "\(greeting)"}
            \(extra)
            """)
        let commit = try repo.commit("Preview \(branch)")
        try repo.checkout("main")
        return commit
    }

    func events(_ harness: Harness, _ lifecycle: LifecycleController, _ event: AuditEvent) throws -> [AuditRecord] {
        lifecycle.flush()
        return try harness.records().filter { $0.event == event.rawValue }
    }

    @Test func spendAccruesAlertsOncePerThresholdAndASpentBudgetPausesPreviewsNotProduction() throws {
        let clock = FakeClock(Self.start)
        let (repo, harness, lifecycle) = try seeded(Self.settings(previews: "{ttl: 72h, idleSleepAfter: 100h}", budgets: "{alertAt: 0.5, teams: {payments: {daily: 13}}}"), clock: clock)
        try pushPreview(repo, branch: "feature-a", greeting: "a")
        try harness.pass()
        // (The loop's next pass, within a second, meters what that pass applied.)
        try harness.pass()
        let preview = try #require(try harness.state.environments().first { $0.branch == "feature-a" })
        #expect(preview.phase == .running)
        #expect(preview.actor == repo.principal && preview.agent == repo.principal)
        // web (production) and the preview: 0.5 cpu each at 1.0 per cpu-hour, both team payments.
        var limit = Settings.BudgetLimit()
        limit.daily = 13
        for _ in 0..<6 { clock.advance(3600); try harness.pass() }
        let spending = try Spending.load(harness.state, now: clock.now)
        let payments = try #require(spending.status(scope: "team", name: "payments", limit: limit).first)
        #expect(abs(payments.spent - 6.0) < 0.01, "six hours of two environments at 0.5/h each: \(payments.spent)")
        #expect(abs(payments.hourly - 1.0) < 0.001)
        #expect(payments.top.map(\.environment).sorted() == [preview.name, "web"].sorted() && payments.top.allSatisfy { abs($0.amount - 3.0) < 0.01 },
                "\(payments.top)")
        #expect(try events(harness, lifecycle, .budgetAlert).isEmpty, "46% is below alertAt")
        clock.advance(3600)
        try harness.pass()
        let firstAlerts = try events(harness, lifecycle, .budgetAlert)
        #expect(firstAlerts.count == 1)
        #expect(firstAlerts.first?.value("threshold") == "0.5" && firstAlerts.first?.value("name") == "payments")
        try harness.pass()
        #expect(try events(harness, lifecycle, .budgetAlert).count == 1, "an alert is recorded once per threshold and period")
        // By 23:00 the rest is spent: 100%, the preview pauses, production keeps running.
        for _ in 0..<6 { clock.advance(3600); try harness.pass() }
        #expect(eventually(15) { (try? harness.state.lifecycleState(of: preview.name))??.state == .paused })
        #expect(try events(harness, lifecycle, .budgetAlert).count == 2)
        let paused = try events(harness, lifecycle, .budgetPaused)
        #expect(paused.map { $0.value("environment") } == [preview.name])
        #expect(try harness.state.lifecycleState(of: "web") == nil, "production is alerted, never paused")
        #expect(!isRunning(try harness.service(preview.name)?.pid), "a paused preview's process is stopped")
        #expect(isRunning(try harness.service("web")?.pid))
        // Its database and files stay; a request does not wake it.
        #expect(lifecycle.ensureServing(environment: preview.name, service: "web")?.contains("paused") == true)
        // A new preview of the team is denied while the budget is spent, with the numbers.
        try pushPreview(repo, branch: "feature-b", greeting: "b")
        try harness.pass()
        let denied = try #require(try harness.state.environments().first { $0.branch == "feature-b" })
        #expect(denied.phase == .denied)
        let message = denied.message ?? ""
        #expect(message.contains("budget: team payments daily") && message.contains("the budget is spent"), "\(message)")
        // The next day the budget allows it again: the paused preview may be woken, a new commit is admitted.
        clock.advance(2 * 3600)
        try harness.pass()
        #expect(try harness.state.lifecycleState(of: preview.name)?.state == .sleeping)
        try repo.checkout("feature-b")
        try repo.write("environments/web.yaml", try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8) + "\n")
        try repo.commit("Retry the next day")
        try repo.checkout("main")
        try harness.pass()
        #expect(try harness.environment(denied.name)?.phase == .running)
        #expect(lifecycle.ensureServing(environment: preview.name, service: "web") == nil)
        #expect(try harness.state.lifecycleState(of: preview.name) == nil)
        #expect(isRunning(try harness.service(preview.name)?.pid), "woken: its process runs again")
        #expect(try events(harness, lifecycle, .woke).count == 1)
        #expect(try harness.verify().isValid)
    }

    @Test func idleSleepCountsFromTheLastRequestAndARequestWakesIt() throws {
        let clock = FakeClock(Self.start)
        let (repo, harness, lifecycle) = try seeded(Self.settings(previews: "{ttl: 72h, idleSleepAfter: 30m}"), clock: clock)
        try pushPreview(repo, branch: "idle", greeting: "idle", extra: "  databases: {local: {engine: sqlite}}\n")
        try harness.pass()
        let name = try #require(try harness.state.environments().first { $0.branch == "idle" }?.name)
        // A request every 20 minutes keeps it awake (every request resets the timer, not only the first).
        for _ in 0..<3 {
            clock.advance(20 * 60)
            lifecycle.requestStarted(environment: name, service: "web")
            lifecycle.requestEnded(environment: name, service: "web")
            try harness.pass()
            #expect(try harness.state.lifecycleState(of: name) == nil)
        }
        // A request in flight for longer than the limit keeps it awake too.
        lifecycle.requestStarted(environment: name, service: "web")
        clock.advance(45 * 60)
        try harness.pass()
        #expect(try harness.state.lifecycleState(of: name) == nil)
        lifecycle.requestEnded(environment: name, service: "web")
        // Production never sleeps without its own spec saying so.
        clock.advance(31 * 60)
        try harness.pass()
        #expect(eventually(15) { (try? harness.state.lifecycleState(of: name)) != nil })
        #expect(try harness.state.lifecycleState(of: "web") == nil)
        #expect(!isRunning(try harness.service(name)?.pid))
        #expect(try harness.service(name)?.phase == "Sleeping")
        let slept = try events(harness, lifecycle, .slept)
        #expect(slept.count == 1 && slept.first?.value("reason")?.contains("idle") == true)
        #expect(try EnvironmentSummary.read(harness.state, observer: LocalObserver(state: harness.state), routerPort: nil, only: name).first?.phase == .sleeping)
        // Asleep, its dropped database is not recreated (that would start its services) until it wakes.
        let database = harness.stateDirectory.path + "/envs/\(name)/data/db-local.sqlite3"
        #expect(FileManager.default.fileExists(atPath: database))
        try FileManager.default.removeItem(atPath: database)
        try harness.pass()
        try harness.pass()
        #expect(!isRunning(try harness.service(name)?.pid))
        #expect(try harness.state.lifecycleState(of: name) != nil)
        // Asleep, it costs nothing for its services.
        clock.advance(60)
        try harness.pass()
        #expect(try harness.state.meters().first { $0.environment == name }?.hourly == 0)
        // A request wakes it: the services start and answer.
        #expect(lifecycle.ensureServing(environment: name, service: "web") == nil)
        #expect(try harness.get(name, "/healthz") != nil)
        #expect(try events(harness, lifecycle, .woke).count == 1)
        #expect(try harness.state.meters().first { $0.environment == name }?.hourly == 0.5)
        // Awake, its drift is corrected.
        try harness.pass()
        #expect(eventually(15) { FileManager.default.fileExists(atPath: database) })
        // Asleep again, a new commit wakes it for good (the apply starts it; nothing stops it again).
        #expect(lifecycle.sleep(name, actor: "test", reason: "by hand") == nil)
        try repo.checkout("idle")
        try repo.write("environments/web.yaml", try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
            .replacingOccurrences(of: "GREETING: \"idle\"", with: "GREETING: \"idle again\""))
        try repo.commit("A new revision")
        try repo.checkout("main")
        try harness.pass()
        try harness.pass()
        try harness.pass()
        #expect(try harness.state.lifecycleState(of: name) == nil)
        #expect(isRunning(try harness.service(name)?.pid), "\(harness.diagnose(name))")
        #expect(try harness.get(name, "/")?.contains("idle again") == true)
    }

    @Test func aPreviewExpiresAfterItsTTLWithWarningsAndANewCommitBringsItBack() throws {
        let clock = FakeClock(Self.start)
        let (repo, harness, lifecycle) = try seeded(Self.settings(previews: "{ttl: 26h, idleSleepAfter: 100h}"), clock: clock)
        // (Its own file asks for ten years: the protected branch's 26 h is what counts.)
        try pushPreview(repo, branch: "short-lived", greeting: "ttl", extra: "  lifecycle: {ttl: 3650d}\n")
        try harness.pass()
        let name = try #require(try harness.state.environments().first { $0.branch == "short-lived" }?.name)
        clock.advance(3 * 3600)
        try harness.pass()
        #expect(try events(harness, lifecycle, .ttlWarning).count == 1, "24 h before")
        clock.advance(22 * 3600 + 60)
        try harness.pass()
        try harness.pass()
        #expect(try events(harness, lifecycle, .ttlWarning).count == 2, "1 h before, once each")
        #expect(try harness.environment(name)?.phase == .running)
        clock.advance(3600)
        try harness.pass()
        #expect(try harness.environment(name)?.phase == .destroyed)
        let expired = try events(harness, lifecycle, .ttlExpired)
        #expect(expired.count == 1 && expired.first?.value("reason")?.contains("ttl 26h") == true)
        #expect(try harness.records().last { $0.value("environment") == name }?.event == AuditEvent.destroyed.rawValue)
        // Passes without a new commit leave it destroyed; a new commit brings it back.
        try harness.pass()
        #expect(try harness.environment(name)?.phase == .destroyed)
        try repo.checkout("short-lived")
        try repo.write("environments/web.yaml", try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8) + "\n")
        try repo.commit("Keep it")
        try repo.checkout("main")
        try harness.pass()
        #expect(try harness.environment(name)?.phase == .running)
    }

    @Test func capsAndTheHourlyBudgetDenyWithTheNumbersAndHowToFixIt() throws {
        let clock = FakeClock(Self.start)
        let (repo, harness, _) = try seeded(Self.settings(previews: "{ttl: 72h, idleSleepAfter: 10h, maxPerTeam: 5, maxPerAgent: 1}"), clock: clock)
        try pushPreview(repo, branch: "first", greeting: "one")
        try pushPreview(repo, branch: "second", greeting: "two")
        try harness.pass()
        let records = try harness.state.environments().filter { $0.envClass == "preview" }
        let first = try #require(records.first { $0.branch == "first" })
        let second = try #require(records.first { $0.branch == "second" })
        #expect(first.phase == .running)
        #expect(second.phase == .denied)
        let message = second.message ?? ""
        #expect(message.contains("agent \(repo.principal) already runs 1 previews") && message.contains(first.name) && message.contains("free a slot"), "\(message)")
        // Leaving the team out changes nothing: a preview of web is charged to, and counted for, web's team.
        try repo.checkout("main")
        try repo.checkout("teamless", create: true)
        try repo.write("environments/web.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: web, class: production}
            spec:
              template: python-web
            """)
        try repo.write("environments/orphan.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: orphan, class: development}
            spec:
              template: python-web
            """)
        try repo.commit("No team")
        try repo.checkout("main")
        try harness.pass()
        let teamless = try #require(try harness.state.environments().first { $0.branch == "teamless" && $0.source == "web" })
        #expect(teamless.phase == .denied, "one agent, one preview: \(teamless.message ?? "")")
        let rules = try harness.records().last { $0.event == "denied" && $0.value("environment") == teamless.name }?.values("rule") ?? []
        #expect(rules.contains { $0.hasPrefix("previews: team payments runs 1 of at most 5") }, "\(rules)")
        // A new file of no team is no team's: the agent's cap still counts it.
        let orphan = try #require(try harness.state.environments().first { $0.branch == "teamless" && $0.source == "orphan" })
        #expect(orphan.message?.contains("agent \(repo.principal) already runs 1 previews") == true, "\(orphan.message ?? "")")
        // Over its own hourly budget: denied with the breakdown (0.5 cpu at 1.0 = 0.5/h > 0.25).
        try pushPreview(repo, branch: "third", greeting: "three", extra: "  budget: {hourly: 0.25}\n")
        try harness.pass()
        let third = try #require(try harness.state.environments().first { $0.branch == "third" })
        #expect(third.message?.contains("costs 0.5/h (service web 0.5), over its spec.budget.hourly of 0.25") == true, "\(third.message ?? "")")
        // Deleting the first branch frees the slot: the second is admitted on its next commit.
        try repo.git("branch", "-D", "first")
        try harness.pass()
        try repo.checkout("second")
        try repo.write("environments/web.yaml", try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8) + "\n")
        try repo.commit("Again")
        try repo.checkout("main")
        try harness.pass()
        #expect(try harness.environment(second.name)?.phase == .running)
    }

    @Test func anotherAgentTakingOverAPreviewNeedsASlotOfItsOwn() throws {
        let clock = FakeClock(Self.start)
        let claude = try TestRepository(principal: "claude@payments")
        let (repo, harness, _) = try seeded(Self.settings(previews: "{ttl: 72h, idleSleepAfter: 10h, maxPerAgent: 1}"), clock: clock,
                                            extraSigners: [claude.allowedSignersLine])
        // claude's preview, and the repository's agent's own.
        try repo.checkout("claude-a", create: true)
        try repo.write("environments/web.yaml", try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8) + "\n")
        try repo.signing(with: claude.keyPath) { _ = try repo.commit("claude's preview") }
        try repo.checkout("main")
        try pushPreview(repo, branch: "mine", greeting: "mine")
        try harness.pass()
        let theirs = try #require(try harness.state.environments().first { $0.branch == "claude-a" })
        #expect(theirs.phase == .running && theirs.agent == "claude@payments")
        #expect(try harness.state.environments().first { $0.branch == "mine" }?.phase == .running)
        // The repository's agent commits onto claude's preview: it would become its second; denied, claude's keeps running.
        try repo.checkout("claude-a")
        try repo.write("environments/web.yaml", try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8) + "\n")
        try repo.commit("take it over")
        try repo.checkout("main")
        try harness.pass()
        let after = try #require(try harness.environment(theirs.name))
        #expect(after.message?.contains("agent \(repo.principal) already runs 1 previews") == true, "\(after.message ?? "")")
        #expect(after.phase == .running && after.agent == "claude@payments")
    }

    @Test func namingATeamLaterNeedsASlotUnderThatTeamsCap() throws {
        let clock = FakeClock(Self.start)
        let (repo, harness, _) = try seeded(Self.settings(previews: "{ttl: 72h, idleSleepAfter: 10h, maxPerTeam: 1, maxPerAgent: 5}"), clock: clock)
        // A new file of no team, then a preview of web (team payments: its one slot).
        try repo.checkout("solo", create: true)
        let solo = """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: solo, class: development}
            spec:
              template: python-web

            """
        try repo.write("environments/solo.yaml", solo)
        try repo.commit("No team")
        try repo.checkout("main")
        try pushPreview(repo, branch: "paid", greeting: "paid")
        try harness.pass()
        let preview = try #require(try harness.state.environments().first { $0.branch == "solo" })
        #expect(preview.phase == .running && preview.team == nil)
        // Naming payments afterwards: it would be payments' second.
        try repo.checkout("solo")
        try repo.write("environments/solo.yaml", solo.replacingOccurrences(of: "class: development", with: "team: payments, class: development"))
        try repo.commit("Now payments'")
        try repo.checkout("main")
        try harness.pass()
        let after = try #require(try harness.environment(preview.name))
        #expect(after.message?.contains("team payments already runs 1 previews") == true, "\(after.message ?? "")")
        #expect(after.team == nil, "still no team's: the change was denied")
    }

    @Test func aWakeHoldsABoundedQueueOfRequests() throws {
        let clock = FakeClock(Self.start)
        var options = LifecycleController.Options()
        options.maxHeld = 2
        let (repo, harness, lifecycle) = try seeded(Self.settings(), clock: clock, options: options)
        try pushPreview(repo, branch: "queue", greeting: "queue")
        try harness.pass()
        let name = try #require(try harness.state.environments().first { $0.branch == "queue" }?.name)
        #expect(lifecycle.sleep(name, actor: "test", reason: "by hand") == nil)
        // Six requests at once while it wakes: two are held and served, the others refused at once.
        let answers = Answers()
        let group = DispatchGroup()
        for _ in 0..<6 {
            group.enter()
            Thread.detachNewThread {
                answers.add(lifecycle.ensureServing(environment: name, service: "web"))
                group.leave()
            }
        }
        group.wait()
        let all = answers.all
        #expect(all.filter { $0 == nil }.count >= 1, "\(all)")
        #expect(all.contains { $0?.contains("2 requests already wait for it") == true }, "\(all)")
        #expect(all.allSatisfy { $0 == nil || $0!.contains("already wait") }, "\(all)")
        #expect(try harness.get(name, "/healthz") != nil)
    }

    final class Answers: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [String?] = []
        func add(_ value: String?) { lock.withLock { values.append(value) } }
        var all: [String?] { lock.withLock { values } }
    }

    @Test func idleTimeIsTheSmallerForAPreviewAndProductionSleepsOnlyWhenItsSpecSaysSo() {
        var settings = Settings()
        settings.previews.idleSleepAfter = 1800
        var production = EnvironmentSpec(name: "web", team: "payments", class: .production)
        #expect(LifecycleController.idleLimit(production, settings: settings) == nil)
        production.lifecycle.idleSleepAfter = 600
        #expect(LifecycleController.idleLimit(production, settings: settings) == 600)
        var preview = EnvironmentSpec(name: "web--x", team: "payments", class: .preview)
        #expect(LifecycleController.idleLimit(preview, settings: settings) == 1800)
        preview.lifecycle.idleSleepAfter = 10 * 365 * 86_400
        #expect(LifecycleController.idleLimit(preview, settings: settings) == 1800, "a file never lengthens it")
        preview.lifecycle.idleSleepAfter = 60
        #expect(LifecycleController.idleLimit(preview, settings: settings) == 60)
    }

    @Test func costFollowsThePricingAndCELSeesIt() throws {
        var spec = EnvironmentSpec(name: "x", team: "t", class: .preview)
        var service = Service(name: "api")
        service.replicas = 2
        service.resources.cpu = 0.5
        service.resources.memory = 512 << 20
        spec.services = [service, Service(name: "bare")]
        spec.databases = [Database(name: "main", engine: "postgres"), Database(name: "local", engine: "sqlite")]
        spec.caches = [Cache(name: "sessions", engine: "redis")]
        let pricing = ["cpuHour": 0.04, "memoryGiBHour": 0.005, "postgresHour": 0.02, "redisHour": 0.01]
        let cost = CostModel.breakdown(spec, pricing: pricing)
        // api: 2 × (0.5 × 0.04 + 0.5 × 0.005) = 0.045; bare: 0.25 × 0.04 + 0.25 × 0.005 = 0.01125 (declared nothing: priced at the defaults).
        #expect(abs(cost.lines[0].hourly - 0.045) < 1e-9)
        #expect(abs(cost.lines[1].hourly - 0.01125) < 1e-9)
        #expect(abs(cost.hourly - (0.045 + 0.01125 + 0.02 + 0 + 0.01)) < 1e-9)
        #expect(CostModel.breakdown(spec, pricing: pricing, running: ["api": 0, "bare": 0]).hourly == 0.03, "asleep, services cost nothing")
        // Autoscaled, admission prices it at its max.
        spec.services[0].autoscale = Autoscale(min: 1, max: 10, targetConcurrency: 5)
        #expect(abs(CostModel.breakdown(spec, pricing: pricing, ceiling: true).lines[0].hourly - 0.225) < 1e-9)
        #expect(abs(CostModel.breakdown(spec, pricing: pricing).lines[0].hourly - 0.045) < 1e-9, "it starts at its replicas")
        #expect(abs(BudgetPeriod.monthly.hoursLeft(at: Self.start) - 730 * (24.0 * 24 + 14) / (31 * 24)) < 1e-6)
        #expect(BudgetPeriod.daily.label(at: Self.start) == "2026-12-07")
    }

    @Test func autoscalerStepsUpAtMostDoublingAndDownOnlyAfterTheWindow() {
        #expect(Autoscaler.wanted(inFlight: 25, target: 10, min: 1, max: 5) == 3)
        #expect(Autoscaler.wanted(inFlight: 0, target: 10, min: 0, max: 5) == 0)
        #expect(Autoscaler.wanted(inFlight: 5, target: 1e-300, min: 1, max: 3) == 3, "a tiny target never overflows")
        #expect(Autoscaler.next(current: 1, want: 5, recent: [5], windowFull: false, min: 1, max: 5) == 2)
        #expect(Autoscaler.next(current: 0, want: 3, recent: [3], windowFull: false, min: 0, max: 5) == 1)
        #expect(Autoscaler.next(current: 4, want: 1, recent: [4, 1], windowFull: true, min: 1, max: 5) == nil, "wanted 4 within the window")
        #expect(Autoscaler.next(current: 4, want: 1, recent: [1, 1], windowFull: false, min: 1, max: 5) == nil, "the window is not full yet")
        #expect(Autoscaler.next(current: 4, want: 1, recent: [2, 1], windowFull: true, min: 1, max: 5) == 2)
        #expect(Autoscaler.next(current: 1, want: 0, recent: [0, 0], windowFull: true, min: 0, max: 5) == 0)
        // A new revision lowered max: down to it at once, and never kept above it.
        #expect(Autoscaler.next(current: 6, want: 6, recent: [6], windowFull: false, min: 1, max: 2) == 2)
        #expect(Autoscaler.next(current: 2, want: 2, recent: [6, 2], windowFull: true, min: 1, max: 2) == nil)
    }
}
