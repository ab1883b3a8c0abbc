// `make bench`: Gantry's figures beside a git-CLI baseline measured in the same run.
// Figures are printed, never asserted: the machine is shared and noisy.
import API
import Audit
import Foundation
import Gateway
import SpecModel
import GitStore
import Governance
import KubernetesDriver
import SpecLoading
import LocalDriver
import Logging
import Reconciler
import StateStore
import TestSupport
import CEL

let gantryBinary = CommandLine.arguments.dropFirst().first
    ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("gantry").path

/// Prints at once, even into a pipe or file, so a long run shows its progress.
func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

/// Runs a command with posix_spawnp and waits: far lighter than Foundation's Process, so the
/// figures measure git and gantry rather than the harness.
func spawnWait(_ arguments: [String]) -> Int32 {
    let pid = spawnQuiet(arguments)
    guard pid > 0 else { return -1 }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return status
}

func milliseconds(_ seconds: Double) -> String { String(format: "%.1f ms", seconds * 1000) }

func percentile(_ values: [Double], _ p: Double) -> Double {
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
}

func time(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

func report(_ name: String, _ samples: [Double], baseline: (String, [Double])? = nil) {
    var line = "\(name): median \(milliseconds(percentile(samples, 0.5))), p99 \(milliseconds(percentile(samples, 0.99))) (n=\(samples.count))"
    if let (label, base) = baseline {
        let ratio = percentile(samples, 0.5) / max(percentile(base, 0.5), 1e-9)
        line += " | baseline \(label): median \(milliseconds(percentile(base, 0.5))) | ratio \(String(format: "%.2fx", ratio))"
    }
    say(line)

}

/// Creates `count` branches at main's tip in one `git update-ref --stdin`.
func addBranches(_ repo: TestRepository, count: Int, prefix: String) throws {
    let tip = try repo.git("rev-parse", "main")
    let input = (0..<count).map { "create refs/heads/\(prefix)\($0) \(tip)" }.joined(separator: "\n") + "\n"
    _ = try Shell.check(["git", "-C", repo.path, "update-ref", "--stdin"], input: input)
    try repo.git("pack-refs", "--all")
}

/// Commits `content` at `path` on top of `parent` without touching the work tree; returns the commit.
func commitFile(_ repo: TestRepository, parent: String, path: String, content: String, message: String, signed: Bool = true) throws -> String {
    let blob = try Shell.check(["git", "-C", repo.path, "hash-object", "-w", "--stdin"], input: content).trimmingCharacters(in: .whitespacesAndNewlines)
    let index = repo.directory.path + "/bench-index"
    var environment = Shell.gitEnvironment
    environment["GIT_INDEX_FILE"] = index
    func git(_ arguments: [String], input: String? = nil) throws -> String {
        let result = try Shell.run(["git", "-C", repo.path] + arguments, input: input, environment: environment)
        guard result.status == 0 else { throw ShellError(description: result.stderr) }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    _ = try git(["read-tree", parent])
    _ = try git(["update-index", "--add", "--cacheinfo", "100644,\(blob),\(path)"])
    let tree = try git(["write-tree"])
    // Signed like an agent's commit: signing.required is on in the example repository.
    return try git(["commit-tree"] + (signed ? ["-S"] : []) + [tree, "-p", parent, "-m", message])
}

/// `gantry run` on `repo`, polling only every 10 minutes: passes happen on `gantry notify`.
func startReconciler(repo: TestRepository, state: TemporaryDirectory) throws -> Process {
    let run = Process()
    run.executableURL = URL(fileURLWithPath: gantryBinary)
    run.arguments = ["run", "--repo", repo.path, "--state", state.path, "--interval", "600", "--stop-on-exit", "--no-api"]
    run.standardError = FileHandle(forWritingAtPath: "/dev/null")
    try run.run()
    return run
}

/// With GANTRY_BENCH_TRACE set, the reconciler's log lines go to stderr with milliseconds (where an apply's time goes).
struct TraceHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    subscript(metadataKey key: String) -> Logger.Metadata.Value? { get { metadata[key] } set { metadata[key] = newValue } }
    func log(event: LogEvent) {
        let stamp = String(format: "%.3f", Date().timeIntervalSince1970.truncatingRemainder(dividingBy: 1000))
        FileHandle.standardError.write(Data("\(stamp) \(event.metadata?["gantry.env"] ?? "") \(event.message)\n".utf8))
    }
}
let logger = ProcessInfo.processInfo.environment["GANTRY_BENCH_TRACE"] != nil
    ? Logger(label: "bench") { _ in TraceHandler() } : Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
say("Gantry benchmarks (\(ProcessInfo.processInfo.activeProcessorCount) cores); gantry binary \(gantryBinary)")

/// `GANTRY_BENCH_ONLY=passes|push|preview|isolation|burst|admission|protected|cel|fullstack|rss|api|lifecycle|egress|kill|kubernetes|dataplane` runs one part.
let only = ProcessInfo.processInfo.environment["GANTRY_BENCH_ONLY"]
func runs(_ part: String) -> Bool { only == nil || only == part }
/// The bench runs hundreds of previews by one agent: no caps (their admission is measured on its own).
let benchPreviews = "{ttl: 72h, idleSleepAfter: 30m}"

/// A reconciler with the local driver over `repo` and a new state directory (stop its driver when done).
struct BenchReconciler {
    let state = TemporaryDirectory("gantry-bench")
    let store: StateStore
    let git: GitRepository
    let driver: LocalDriver
    let reconciler: Reconciler

    init(_ repo: TestRepository, secrets: Bool = false, driverOptions: LocalDriver.Options = LocalDriver.Options(),
         options: Reconciler.Options = Reconciler.Options()) throws {
        store = try StateStore(path: state.path + "/gantry.db")
        git = try repo.open()
        driver = LocalDriver(stateDirectory: state.url, state: store, logger: logger, options: driverOptions)
        if secrets { driver.secrets = try SecretStore(state: store, keyPath: state.path + "/keys/secrets.key") }
        reconciler = Reconciler(repository: git, state: store,
                                audit: AuditLog(repository: git, key: try SigningKey.loadOrCreate(at: state.path + "/key")),
                                driver: driver, logger: logger, options: options)
    }
}

// MARK: 1. A full pass over unchanged branches, against `git for-each-ref`.
for total in [1_000, 10_000] where runs("passes") {
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    try addBranches(repo, count: total, prefix: "agents/bench/")
    let bench = try BenchReconciler(repo)
    let (git, driver, reconciler) = (bench.git, bench.driver, bench.reconciler)
    defer { driver.shutdown() }
    // New branches are judged at most `maxBranchesPerPass` a pass: the passes go on until none is left.
    var catchUp = 0
    let first = try time { repeat { catchUp += 1 } while try reconciler.runPass().postponed > 0 }
    say("first passes over \(total) new branches (each judged once, \(Reconciler.Options().maxBranchesPerPass) a pass): \(milliseconds(first)) in \(catchUp) passes")
    let unchanged = try (0..<20).map { _ in try time { try reconciler.runPass() } }
    let baseline = (0..<20).map { _ in time { _ = spawnWait(["git", "-C", repo.path, "for-each-ref", "refs/heads"]) } }
    report("pass over \(total) unchanged branches", unchanged, baseline: ("git for-each-ref", baseline))
    report("  of which listing the branches (libgit2)", try (0..<20).map { _ in try time { _ = try git.branches() } })
    // The same total with 10 branches moved: the extra cost follows the changed refs.
    var changedSamples: [Double] = []
    for round in 0..<5 {
        let tip = try repo.git("rev-parse", "main")
        let input = (0..<10).map { index -> String in
            let commit = (try? commitFile(repo, parent: tip, path: "notes/\(round)-\(index).txt", content: "\(round)", message: "r\(round)")) ?? tip
            return "update refs/heads/agents/bench/\(index) \(commit)"
        }.joined(separator: "\n") + "\n"
        _ = try Shell.check(["git", "-C", repo.path, "update-ref", "--stdin"], input: input)
        changedSamples.append(try time { try reconciler.runPass() })
    }
    report("pass over \(total) branches with 10 changed (no environment touched)", changedSamples)
}

// MARK: 2. Push -> admitted record written, woken by `gantry notify`, 1,000 branches.
if runs("push") {
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    try repo.write("environments/bench.yaml", "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: bench, class: development}\n")
    try repo.commitAsOwner("an environment with no services, so a push costs admission and recording only")
    try addBranches(repo, count: 1_000, prefix: "agents/other/")
    try repo.git("branch", "bench-branch", "main")
    let state = TemporaryDirectory("gantry-bench")
    let run = try startReconciler(repo: repo, state: state)
    defer { kill(run.processIdentifier, SIGTERM); run.waitUntilExit() }
    let git = try repo.open()
    // Wait for the first pass (main's environments running).
    while (try? git.reference(AuditLog.defaultRef)) == nil || !FileManager.default.fileExists(atPath: state.path + "/gantry.pid") {
        usleep(50_000)
    }
    Thread.sleep(forTimeInterval: 2)
    var parent = try repo.git("rev-parse", "main")
    var commits: [String] = []
    for index in 0..<200 {
        parent = try commitFile(repo, parent: parent, path: "environments/bench.yaml",
                                content: "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: bench, class: development}\nspec: {lifecycle: {ttl: \(index + 1)h}}\n",
                                message: "push \(index)")
        commits.append(parent)
    }
    var samples: [Double] = []
    var afterNotify: [Double] = []
    var notifyOnly: [Double] = []
    for commit in commits {
        let start = DispatchTime.now().uptimeNanoseconds
        _ = spawnWait(["git", "-C", repo.path, "update-ref", "refs/heads/bench-branch", commit])
        let notifyStart = DispatchTime.now().uptimeNanoseconds
        _ = spawnWait([gantryBinary, "notify", "--state", state.path])
        let notified = DispatchTime.now().uptimeNanoseconds
        notifyOnly.append(Double(notified - notifyStart) / 1e9)
        let target = ObjectID(hex: commit)!
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let note = try? git.note(on: target, notesRef: AuditLog.defaultRef), note.contains("event: admitted") { break }
            usleep(200)
        }
        let end = DispatchTime.now().uptimeNanoseconds
        samples.append(Double(end - start) / 1e9)
        afterNotify.append(Double(end - notified) / 1e9)
        // Let the pass finish (applied) before the next push, so each push is measured alone.
        while Date() < deadline {
            if let note = try? git.note(on: target, notesRef: AuditLog.defaultRef), note.contains("event: applied") { break }
            usleep(500)
        }
    }
    var baseline: [Double] = []
    for commit in commits.prefix(50) {
        baseline.append(time { _ = spawnWait(["git", "-C", repo.path, "notes", "--ref=bench", "add", "-m", "x", commit]) })
    }
    report("push -> admitted record written (update-ref + gantry notify + pass), 1000 branches", samples,
           baseline: ("git notes add", baseline))
    report("  the `gantry notify` process alone", notifyOnly)
    report("  notify returned -> admitted record visible", afterNotify)
    // The same push with no hook at all: the ref change itself wakes Gantry (inotify).
    var unnotified: [Double] = []
    for index in 0..<100 {
        parent = try commitFile(repo, parent: parent, path: "environments/bench.yaml",
                                content: "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: bench, class: development}\nspec: {lifecycle: {ttl: \(index + 500)h}}\n",
                                message: "unnotified push \(index)")
        let target = ObjectID(hex: parent)!
        let start = DispatchTime.now().uptimeNanoseconds
        _ = spawnWait(["git", "-C", repo.path, "update-ref", "refs/heads/bench-branch", parent])
        let deadline = Date().addingTimeInterval(10)
        // (Polled every millisecond: reading the notes competes with Gantry for the 2 cores.)
        while Date() < deadline {
            if let note = try? git.note(on: target, notesRef: AuditLog.defaultRef), note.contains("event: admitted") { break }
            usleep(1_000)
        }
        unnotified.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        while Date() < deadline {
            if let note = try? git.note(on: target, notesRef: AuditLog.defaultRef), note.contains("event: applied") { break }
            usleep(500)
        }
    }
    report("push -> admitted record written (update-ref, woken by inotify on the refs, no notify), 1000 branches", unnotified,
           baseline: ("git notes add", baseline))
}

// MARK: 2b. The pass a push starts, alone (in this process, no wake-up): where push -> admitted goes.
if runs("admit") {
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    try repo.write("environments/bench.yaml", "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: bench, class: development}\n")
    try repo.commitAsOwner("an environment with no services")
    try addBranches(repo, count: 1_000, prefix: "agents/other/")
    let bench = try BenchReconciler(repo)
    defer { bench.driver.shutdown() }
    try bench.reconciler.runPass()
    var parent = try repo.git("rev-parse", "main")
    var passes: [Double] = []
    for index in 0..<100 {
        parent = try commitFile(repo, parent: parent, path: "environments/bench.yaml",
                                content: "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: bench, class: development}\nspec: {lifecycle: {ttl: \(index + 1)h}}\n",
                                message: "push \(index)")
        _ = spawnWait(["git", "-C", repo.path, "update-ref", "refs/heads/bench-branch", parent])
        passes.append(try time { try bench.reconciler.runPass(waitForOperations: false) })
        try bench.reconciler.runPass()
    }
    report("the pass a push starts (judged, admitted record written; applies not waited for), 1000 branches, in process", passes)
}

// MARK: 3. Push -> preview serving HTTP 200, over 20 branches.
if runs("preview") {
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    let state = TemporaryDirectory("gantry-bench")
    let run = try startReconciler(repo: repo, state: state)
    defer { kill(run.processIdentifier, SIGTERM); run.waitUntilExit() }
    let store = try StateStore(path: state.path + "/gantry.db")
    while ((try? store.environments()) ?? []).filter({ $0.phase == .running }).count < 2 { usleep(50_000) }
    let main = try repo.git("rev-parse", "main")
    var samples: [Double] = []
    var baseline: [Double] = []
    for index in 0..<20 {
        let commit = try commitFile(repo, parent: main, path: "apps/hello/VERSION", content: "\(index)", message: "preview \(index)")
        let start = DispatchTime.now().uptimeNanoseconds
        _ = spawnWait(["git", "-C", repo.path, "update-ref", "refs/heads/p\(index)", commit])
        _ = spawnWait([gantryBinary, "notify", "--state", state.path])
        let name = "web--p\(index)"
        let deadline = Date().addingTimeInterval(30)
        var served = false
        while Date() < deadline && !served {
            if let port = (try? store.services(of: name))?.first?.port, (try? store.environment(name))?.phase == .running {
                served = httpGet("http://\(LocalDriver.address(of: name, in: store)):\(port)/healthz") != nil
            }
            if !served { usleep(2_000) }
        }
        samples.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        // Baseline: the bare cost of starting the same app by hand and waiting for its first 200.
        let port = 20_000 + index
        let app = Process()
        app.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        app.arguments = ["python3", TestPaths.packageRoot.appendingPathComponent("example-repo/apps/hello/server.py").path]
        app.environment = ["PORT": String(port), "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"]
        app.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        let bareStart = DispatchTime.now().uptimeNanoseconds
        try app.run()
        while httpGet("http://127.0.0.1:\(port)/healthz") == nil { usleep(2_000) }
        baseline.append(Double(DispatchTime.now().uptimeNanoseconds - bareStart) / 1e9)
        app.terminate()
        app.waitUntilExit()
    }
    report("push -> preview serving HTTP 200 (2 previews per push)", samples, baseline: ("python3 server.py started by hand", baseline))
}
// MARK: 3b. The cost of isolation: a preview applied with its own user, control groups and network, and
// without them, in the same run (as root; without root both are the same and it says so).
if runs("isolation") {
    // One PATH for both runs (an isolated service gets the searchable part of Gantry's: a PATH
    // through /root, as pyenv's, would make only the other run slower).
    let savedPath = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    setenv("PATH", LocalDriver.searchablePath(savedPath), 1)
    defer { setenv("PATH", savedPath, 1) }
    var medians: [Bool: Double] = [:]
    for isolated in [true, false] {
        let repo = try TestRepository()
        try repo.seedExample(previews: benchPreviews)
        // The example's cpu limit (half a core) would slow the isolated start on its own: the mechanism is measured.
        let template = try String(contentsOfFile: repo.path + "/templates/python-web.yaml", encoding: .utf8)
        try repo.write("templates/python-web.yaml", template.replacingOccurrences(of: "cpu: 0.5, ", with: ""))
        try repo.commitAsOwner("no cpu limit for the isolation benchmark")
        var options = LocalDriver.Options()
        options.isolateUsers = isolated
        options.useControlGroups = isolated
        options.isolateNetwork = isolated
        let bench = try BenchReconciler(repo, driverOptions: options)
        defer { bench.driver.shutdown() }
        try bench.reconciler.runPass()
        let main = try repo.git("rev-parse", "main")
        var samples: [Double] = []
        for index in 0..<10 {
            let commit = try commitFile(repo, parent: main, path: "apps/hello/VERSION", content: "\(index)", message: "isolation \(index)")
            _ = spawnWait(["git", "-C", repo.path, "update-ref", "refs/heads/iso\(index)", commit])
            let name = "web--iso\(index)"
            samples.append(try time {
                try bench.reconciler.runPass()
                guard let port = try bench.store.services(of: name).first?.port else { return }
                let address = LocalDriver.address(of: name, in: bench.store)
                while httpGet("http://\(address):\(port)/healthz") == nil { usleep(2_000) }
            })
        }
        medians[isolated] = percentile(samples, 0.5)
        report("apply a preview and serve HTTP 200, \(isolated ? "isolated (own uid, cgroups, network namespace)" : "not isolated (Gantry's user, no cgroups, host network)") [\(bench.driver.isolationSummary.prefix(60))...]", samples)
    }
    if let on = medians[true], let off = medians[false] {
        say(String(format: "cost of isolation per environment (own uid, control groups with a memory limit, network namespace; no cpu limit): median %@ isolated vs %@ not | ratio %.2fx", milliseconds(on), milliseconds(off), on / off))
    }
}

// MARK: 3c. A burst: 200 branches pushed at once, each a preview, until all serve HTTP 200 — applies on
// the operations pool, and one at a time (a pool of one) in the same run.
if runs("burst") {
    // (GANTRY_BENCH_BURST=N pushes N instead, to look at where the time goes.)
    let count = ProcessInfo.processInfo.environment["GANTRY_BENCH_BURST"].flatMap { Int($0) } ?? 200
    var figures: [Int: Double] = [:]
    let pool = Reconciler.Options().maxConcurrentOperations
    for limit in [pool, 1] {
        let repo = try TestRepository()
        try repo.seedExample(previews: benchPreviews)
        var options = Reconciler.Options()
        options.maxConcurrentOperations = limit
        var driverOptions = LocalDriver.Options()
        if ProcessInfo.processInfo.environment["GANTRY_BENCH_SHARED"] != nil {
            driverOptions.isolateUsers = false
            driverOptions.useControlGroups = false
            driverOptions.isolateNetwork = false
        }
        let bench = try BenchReconciler(repo, driverOptions: driverOptions, options: options)
        defer { bench.driver.shutdown() }
        try bench.reconciler.runPass()
        let main = try repo.git("rev-parse", "main")
        let web = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
        var input = ""
        for index in 0..<count {
            let commit = try commitFile(repo, parent: main, path: "environments/web.yaml",
                                        content: web + "  services:\n    web: {env: {GREETING: burst \(index)}}\n", message: "burst \(index)")
            input += "create refs/heads/burst/\(index) \(commit)\n"
        }
        // All 200 refs move at once.
        _ = try Shell.check(["git", "-C", repo.path, "update-ref", "--stdin"], input: input)
        var judged = 0.0, applied = 0.0
        let elapsed = try time {
            judged = try time { try bench.reconciler.runPass(waitForOperations: false) }
            applied = try time { try bench.reconciler.runPass() }
            for index in 0..<count {
                let name = "web--burst-\(index)"
                guard let port = try bench.store.services(of: name).first?.port else { continue }
                let address = LocalDriver.address(of: name, in: bench.store)
                // (A socket of our own: a curl per check would cost more than what is measured.)
                while HTTPProbe.get(host: address, port: port, path: "/healthz", timeout: 2) != .status(200) { usleep(2_000) }
            }
        }
        let serving = try bench.store.environments().filter { $0.name.hasPrefix("web--burst-") && $0.phase == .running }.count
        if serving != count { say("  warning: \(serving) of \(count) burst previews are running") }
        figures[limit] = elapsed
        say("\(count) previews pushed at once -> all serving HTTP 200, \(limit) at a time: \(String(format: "%.2f s", elapsed)) (at most \(bench.reconciler.operations.highWater) ran at once; the pass that judged them took \(String(format: "%.2f s", judged)), then the applies \(String(format: "%.2f s", applied)))")
    }
    if let concurrent = figures[pool], let sequential = figures[1] {
        say(String(format: "burst of \(count) previews: %.2f s on the pool of %d | baseline one at a time: %.2f s | ratio %.2fx", concurrent, pool, sequential, concurrent / sequential))
    }
}

// MARK: 3d. Gantry's memory with 1,000 environments known, 200 of them running (the other 800 denied:
// unsigned commits), measured on the `gantry run` process, against a bare Swift process.
if runs("rss") {
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    let main = try repo.git("rev-parse", "main")
    let web = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
    var input = ""
    for index in 0..<1_000 {
        let commit = try commitFile(repo, parent: main, path: "environments/web.yaml",
                                    content: web + "  services:\n    web: {env: {GREETING: known \(index)}}\n", message: "known \(index)",
                                    signed: index < 200)
        input += "create refs/heads/known/\(index) \(commit)\n"
    }
    _ = try Shell.check(["git", "-C", repo.path, "update-ref", "--stdin"], input: input)
    let state = TemporaryDirectory("gantry-bench")
    let run = try startReconciler(repo: repo, state: state)
    defer { kill(run.processIdentifier, SIGTERM); run.waitUntilExit() }
    let store = try StateStore(path: state.path + "/gantry.db")
    let deadline = Date().addingTimeInterval(300)
    var known: [EnvironmentRecord] = []
    while Date() < deadline {
        known = ((try? store.environments()) ?? []).filter { $0.name.hasPrefix("web--known-") }
        if known.count == 1_000 && known.filter({ $0.phase == .running }).count == 200 && known.filter({ $0.phase == .denied }).count == 800 { break }
        usleep(200_000)
    }
    // A few passes over the settled state (supervision, drift checks), then the resident set.
    Thread.sleep(forTimeInterval: 3)
    func residentKiB(_ pid: Int32) -> Double {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Double(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    let rss = residentKiB(run.processIdentifier)
    // Baseline: `gantry run` over the bare example (its 2 environments), in the same run.
    let bare = try TestRepository()
    try bare.seedExample()
    let bareState = TemporaryDirectory("gantry-bench")
    let bareRun = try startReconciler(repo: bare, state: bareState)
    defer { kill(bareRun.processIdentifier, SIGTERM); bareRun.waitUntilExit() }
    let bareStore = try StateStore(path: bareState.path + "/gantry.db")
    while ((try? bareStore.environments()) ?? []).filter({ $0.phase == .running }).count < 2 && Date() < deadline { usleep(100_000) }
    Thread.sleep(forTimeInterval: 3)
    let idleKiB = residentKiB(bareRun.processIdentifier)
    say(String(format: "gantry run RSS with %d environments known (%d running, %d denied): %.1f MiB | baseline with the example's 2: %.1f MiB",
               known.count, known.filter { $0.phase == .running }.count + 2, known.filter { $0.phase == .denied }.count, rss / 1024, idleKiB / 1024))
}

// MARK: 4. Admission of one commit: its signature and 20 policies.
if runs("admission") {
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    let checks = ["env.spec.services.all(s, env.spec.services[s].replicas <= 5)", "actor.kind in ['human', 'agent']",
                  "size(change.files) < 1000", "!env.name.contains('prod') || env.class == 'production'",
                  "branch.name.matches('^[a-z0-9/._-]+$')", "env.spec.routes.all(r, r.service in env.spec.services)"]
    for index in 0..<20 {
        try repo.write("policies/p\(index).yaml", """
            apiVersion: gantry/v1
            kind: Policy
            metadata: {name: p\(index)}
            spec:
              match: "env.class == 'preview' || \(index) >= 0"
              action: \(index % 3 == 0 ? "warn" : "deny")
              rules:
                - {expr: "\(checks[index % checks.count])", message: "check \(index)"}
            """)
    }
    try repo.commit("20 policies")
    try repo.checkout("agents/bench", create: true)
    try repo.write("apps/hello/NOTE", "x")
    let tip = ObjectID(hex: try repo.commit("touch"))!
    let git = try repo.open()
    let admission = Admission(repository: git, logger: logger)
    let main = try git.resolveCommit("main")!
    let contextTimes = try (0..<20).map { _ in try time {
        _ = try admission.context(governance: try GovernanceRevision.load(at: main, repository: git), protectedBranch: "main",
                                  protectedTip: main, revision: main, protectedMerges: [])
    } }
    var lines: [String] = []
    let samples = try (0..<200).map { _ in
        try time { lines = try admission.explain(commit: tip, branch: "agents/bench", branches: try git.branches(), protectedBranch: "main", known: .init()) }
    }
    let baseline = (0..<50).map { _ in time { _ = spawnWait(["git", "-C", repo.path, "-c", "gpg.ssh.allowedSignersFile=\(repo.path)/identities/allowed_signers", "verify-commit", tip.hex]) } }
    let rules = lines.drop { !$0.hasSuffix(": allow") && !$0.hasSuffix(": deny") }.dropFirst().prefix { $0.hasPrefix("  rule") }.count
    report("admission of one commit (signature + 20 policies, 2 environments, \(rules) rules each)", samples,
           baseline: ("git verify-commit", baseline))
    report("  reading governance from main (settings, signers, actors, 20 policies compiled)", contextTimes)
}

// MARK: 4b. The protected branch walked commit by commit: 200 signed commits pushed to main at once.
if runs("protected") {
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    let bench = try BenchReconciler(repo)
    let (store, driver, reconciler) = (bench.store, bench.driver, bench.reconciler)
    defer { driver.shutdown() }
    try reconciler.runPass()
    let before = try repo.git("rev-parse", "main")
    for index in 0..<200 {
        try repo.write("docs/walk-\(index).md", "\(index)")
        try repo.commit("docs \(index)")
    }
    let walk = try time { try reconciler.runPass() }
    let commits = try repo.git("rev-list", "\(before)..main").split(separator: "\n").map(String.init)
    let verify = time {
        for commit in commits {
            _ = spawnWait(["git", "-C", repo.path, "-c", "gpg.ssh.allowedSignersFile=\(repo.path)/identities/allowed_signers", "verify-commit", commit])
        }
    }
    say("protected branch: one pass judging 200 new signed commits one step at a time (identity + governance each): \(milliseconds(walk))"
        + " | baseline git verify-commit of the same 200: \(milliseconds(verify)) | ratio \(String(format: "%.2fx", walk / verify))")
    if try store.trust()?.revision != commits.first { say("  warning: the walk did not reach the tip") }
}

// MARK: 5. CEL evaluation throughput against cel-expr-python on the same expressions.
if runs("cel") {
    let expressions = ["[1, 2, 3, 4, 5].all(x, x > 0) && 'web--fix'.startsWith('web')",
                       "{'a': 1, 'b': 2}.exists(k, k == 'b') ? 42 * 3 - 7 : 0",
                       "size('hello world') + int('17') > 20 || 3.5 * 2.0 < 1.0",
                       "[1, 2, 3].map(x, x * x).filter(y, y % 2 == 1) == [1, 9]",
                       "timestamp('2026-11-27T03:40:12Z') + duration('72h') > timestamp('2026-11-29T00:00:00Z')"]
    let iterations = 20_000
    let programs = try expressions.map { try CELProgram($0) }
    let elapsed = try time {
        for _ in 0..<(iterations / expressions.count) { for program in programs { _ = try program.evaluate() } }
    }
    let ours = Double(iterations) / elapsed
    let script = """
        import json, sys, time
        from cel_expr_python import cel
        env = cel.NewEnv()
        programs = [env.compile(e, disable_check=True) for e in json.loads(sys.argv[1])]
        n = int(sys.argv[2])
        start = time.perf_counter()
        for _ in range(n // len(programs)):
            for p in programs:
                p.eval()
        print(n / (time.perf_counter() - start))
        """
    let data = try JSONSerialization.data(withJSONObject: expressions)
    let result = try Shell.run(["python3", "-c", script, String(decoding: data, as: UTF8.self), String(iterations)])
    if result.status == 0, let theirs = Double(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) {
        say(String(format: "CEL evaluation: %.0f evaluations/s | baseline cel-expr-python (C++ CEL from Python): %.0f evaluations/s | ratio %.2fx",
                   ours, theirs, ours / theirs))
    } else {
        say(String(format: "CEL evaluation: %.0f evaluations/s | baseline cel-expr-python unavailable (pip install cel-expr-python): %@",
                   ours, result.stderr.split(separator: "\n").last.map(String.init) ?? ""))
    }
}
// MARK: 6. Full stack: push -> preview with a seeded PostgreSQL database serving a query; a 100 MB clone.
if runs("fullstack") {
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    try repo.write("db/seed.sql", "CREATE TABLE users(name text); INSERT INTO users SELECT 'user' || g FROM generate_series(1, 1000) g;")
    try repo.write("apps/pgapp/server.py", """
        import http.server, os, subprocess
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                out = subprocess.run(["psql", os.environ["DATABASE_URL"], "-Atc", "select count(*) from users"], capture_output=True, text=True)
                self.send_response(200 if out.returncode == 0 else 500); self.end_headers(); self.wfile.write(out.stdout.encode())
            def log_message(self, *args): pass
        http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
        """)
    try repo.write("environments/shop.yaml", """
        apiVersion: gantry/v1
        kind: Environment
        metadata: {name: shop, class: development}
        spec:
          databases:
            main: {engine: postgres, seed: db/seed.sql}
          services:
            web:
              source: apps/pgapp
              command: ["python3", "server.py"]
              env: {DATABASE_URL: "${databases.main.url}"}
              health: {http: /}
        """)
    try repo.commitAsOwner("a shop with PostgreSQL")
    let bench = try BenchReconciler(repo, secrets: true)
    let (state, store, driver, reconciler) = (bench.state, bench.store, bench.driver, bench.reconciler)
    defer { driver.shutdown() }
    let first = try time { try reconciler.runPass() }
    say("first pass with PostgreSQL (initdb, server start, seeded database): \(milliseconds(first))")
    var samples: [Double] = []
    for index in 0..<10 {
        try repo.checkout("main")
        try repo.checkout("pg-\(index)", create: true)
        try repo.write("environments/shop.yaml", try String(contentsOfFile: repo.path + "/environments/shop.yaml", encoding: .utf8) + "# \(index)\n")
        try repo.commit("preview \(index)")
        let name = "shop--pg-\(index)"
        samples.append(try time {
            try reconciler.runPass()
            let port = try store.services(of: name).first { $0.name == "web" }?.port ?? 0
            let address = LocalDriver.address(of: name, in: store)
            while httpGet("http://\(address):\(port)/")?.contains("1000") != true { usleep(2_000) }
        })
    }
    report("push -> preview with a seeded PostgreSQL database serving a query over HTTP", samples)

    // A 100 MB database, cloned by a new environment, against pg_dump | psql by hand.
    guard let postgres = try store.services(of: "_host").first(where: { $0.name == "postgres" }) else {
        throw ShellError(description: "PostgreSQL did not start: \(try store.environment("shop")?.message ?? "")")
    }
    let socket = state.path + "/postgres/run"
    // The superuser's password (SCRAM: nothing is trusted), for the psql calls below.
    let secretStore = driver.secrets as! SecretStore
    let superuser = try secretStore.lookup("gantry.postgres.superuser", environment: "_host", class: "", team: nil)
    setenv("PGPASSWORD", String(decoding: superuser?.value ?? Data(), as: UTF8.self), 1)
    let shopDatabase = LocalDriver.postgresName(environment: "shop", database: "main")
    func sql(_ text: String, database: String = shopDatabase) throws {
        _ = try Shell.check(["psql", "-h", socket, "-p", String(postgres.port), "-U", "postgres", "-d", database, "-q", "-v", "ON_ERROR_STOP=1"], input: text)
    }
    try sql("CREATE TABLE blobs(id int, payload text); INSERT INTO blobs SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 110000) g; ANALYZE;")
    let size = try Shell.check(["psql", "-h", socket, "-p", String(postgres.port), "-U", "postgres", "-d", shopDatabase, "-At", "-c",
                                "select pg_size_pretty(pg_database_size('\(shopDatabase)'))"]).trimmingCharacters(in: .whitespacesAndNewlines)
    try repo.checkout("main")
    try repo.write("environments/shop-copy.yaml", """
        apiVersion: gantry/v1
        kind: Environment
        metadata: {name: shop-copy, class: development}
        spec:
          databases:
            main: {engine: postgres, cloneFrom: shop}
        """)
    try repo.commit("clone the shop")
    let clone = try time { try reconciler.runPass() }
    try sql("CREATE DATABASE manual_copy", database: "postgres")
    let manual = try time {
        _ = try Shell.check(["bash", "-c", "pg_dump -h \(socket) -p \(postgres.port) -U postgres --no-owner \(shopDatabase) | psql -q -h \(socket) -p \(postgres.port) -U postgres manual_copy"])
    }
    say("clone of a \(size) database (cloneFrom): \(milliseconds(clone)) | baseline pg_dump | psql by hand: \(milliseconds(manual)) | ratio \(String(format: "%.2fx", clone / manual))")
}
// The agents' API: diagnose of an environment with 3 services over HTTP (target: under 20 ms),
// against what an agent does without it: `gantry diagnose ENV --json` as a process of its own.
if runs("api") {
    let repo = try TestRepository()
    let state = TemporaryDirectory("gantry-bench-api")
    _ = spawnWait([gantryBinary, "keys", "--state", state.path])
    let key = try SigningKey.loadOrCreate(at: state.path + "/keys/gantry_ed25519")
    try repo.seedExample(extraSigners: ["gantry \(key.publicKey.authorizedKey)"])
    try repo.write("environments/trio.yaml", """
        apiVersion: gantry/v1
        kind: Environment
        metadata: {name: trio, team: payments, class: development}
        spec:
          services:
            a: {source: apps/hello, command: ["python3", "server.py"], health: {http: /healthz}}
            b: {source: apps/hello, command: ["python3", "server.py"], health: {http: /healthz}}
            c: {source: apps/hello, command: ["python3", "server.py"], health: {http: /healthz}}
        """)
    try repo.commitAsOwner("three services")
    let run = Process()
    run.executableURL = URL(fileURLWithPath: gantryBinary)
    run.arguments = ["run", "--repo", repo.path, "--state", state.path, "--interval", "1", "--stop-on-exit", "--router-port", "0",
                     "--api", "127.0.0.1:0", "--api-rate", "100000", "--api-burst", "100000"]
    run.standardError = FileHandle(forWritingAtPath: "/dev/null")
    try run.run()
    defer { run.terminate(); run.waitUntilExit() }
    let addressFile = state.path + "/api.address"
    guard eventually(60, { ((try? String(contentsOfFile: addressFile, encoding: .utf8)) ?? "").hasSuffix("\n") }) else {
        throw ShellError(description: "the API did not start")
    }
    let base = try String(contentsOfFile: addressFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    let token = try Shell.check([gantryBinary, "token", "create", "--state", state.path, "--actor", "claude@payments"]).trimmingCharacters(in: .whitespacesAndNewlines)
    guard eventually(60, { (try? LoopbackHTTP.request(base: base, path: "/v1/environments/trio", token: token).body.contains("\"phase\":\"Running\"")) == true }) else {
        throw ShellError(description: "trio did not run")
    }
    var http: [Double] = []
    for _ in 0..<200 {
        http.append(try time {
            let answer = try LoopbackHTTP.request(base: base, path: "/v1/environments/trio/diagnose", token: token)
            guard answer.status == 200 else { throw ShellError(description: "diagnose answered \(answer.status)") }
        })
    }
    var process: [Double] = []
    for _ in 0..<20 { process.append(time { _ = spawnWait([gantryBinary, "diagnose", "trio", "--json", "--state", state.path]) }) }
    report("GET /v1/environments/trio/diagnose (3 services, over HTTP; target < 20 ms)", http,
           baseline: ("`gantry diagnose trio --json` as a process", process))
    var list: [Double] = []
    for _ in 0..<100 { list.append(try time { _ = try LoopbackHTTP.request(base: base, path: "/v1/environments", token: token) }) }
    report("GET /v1/environments (4 environments)", list)
}

// MARK: 7. Lifecycle: a sleeping environment's first byte through the router (its services started
// and checked healthy first; target under 500 ms, moonshot 150 ms), and what the router adds to a
// request against the same request sent to the service directly.
/// GET `path` from 127.0.0.1:`port` (the environment's own address for a `10.` host) with `host` as
/// Host, reading the whole answer: seconds to its first byte and to its end, its size and status line.
/// (`path` is an absolute URL when `port` is the egress proxy's.)
func fetch(port: Int, host: String, path: String = "/") throws -> (firstByte: Double, total: Double, bytes: Int, status: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ShellError(description: "socket failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr(host.hasPrefix("10.") ? host : "127.0.0.1")
    let started = DispatchTime.now().uptimeNanoseconds
    let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard connected == 0 else { throw ShellError(description: "cannot connect to port \(port)") }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    var head = [UInt8](), total = 0
    var first: UInt64?
    while true {
        let count = recv(fd, &buffer, buffer.count, 0)
        if count <= 0 { break }
        if first == nil { first = DispatchTime.now().uptimeNanoseconds }
        if head.count < 256 { head += buffer[0..<min(count, 256)] }
        total += count
    }
    let end = DispatchTime.now().uptimeNanoseconds
    let status = String(decoding: head.prefix { $0 != 13 }, as: UTF8.self)
    return (Double((first ?? end) - started) / 1e9, Double(end - started) / 1e9, total, status)
}

func firstByte(port: Int, host: String, path: String = "/") throws -> (seconds: Double, status: String) {
    let answer = try fetch(port: port, host: host, path: path)
    return (answer.firstByte, answer.status)
}

if runs("lifecycle") {
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    try repo.write("environments/nap.yaml", """
        apiVersion: gantry/v1
        kind: Environment
        metadata: {name: nap, team: payments, class: development}
        spec:
          template: python-web
        """)
    try repo.commitAsOwner("an environment to put to sleep and wake")
    let state = TemporaryDirectory("gantry-bench-lifecycle")
    let run = Process()
    run.executableURL = URL(fileURLWithPath: gantryBinary)
    run.arguments = ["run", "--repo", repo.path, "--state", state.path, "--interval", "0.2", "--stop-on-exit", "--router-port", "0", "--no-api"]
    run.standardError = FileHandle(forWritingAtPath: "/dev/null")
    try run.run()
    defer { run.terminate(); run.waitUntilExit() }
    let store = try StateStore(path: state.path + "/gantry.db")
    guard eventually(90, { (try? store.environment("nap"))??.phase == .running }),
          let port = (try? String(contentsOfFile: state.path + "/router.port", encoding: .utf8)).flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
        throw ShellError(description: "nap did not run")
    }
    let host = "www.nap.localhost"
    var wakes: [Double] = []
    for _ in 0..<20 {
        guard spawnWait([gantryBinary, "sleep", "nap", "--state", state.path]) == 0 else { throw ShellError(description: "gantry sleep failed") }
        let answer = try firstByte(port: port, host: host, path: "/healthz")
        guard answer.status.contains(" 200") else { throw ShellError(description: "a woken request answered \(answer.status)") }
        wakes.append(answer.seconds)
    }
    report("wake on request: first byte of a sleeping environment through the router (target < 500 ms, moonshot < 150 ms)", wakes)
    guard let service = try store.services(of: "nap").first(where: { $0.name == "web" }) else { throw ShellError(description: "no service") }
    let direct = LocalDriver.address(of: "nap", in: store)
    var routed: [Double] = [], straight: [Double] = []
    for _ in 0..<200 {
        routed.append(try firstByte(port: port, host: host, path: "/healthz").seconds)
        straight.append(try firstByte(port: service.port, host: direct, path: "/healthz").seconds)
    }
    report("a request through the router (awake)", routed, baseline: ("the same request sent to the service directly", straight))
    say("router added latency: median \(milliseconds(percentile(routed, 0.5) - percentile(straight, 0.5))), p99 \(milliseconds(percentile(routed, 0.99) - percentile(straight, 0.99)))")
}

if runs("egress") {
    // An outside host stood in for by a Python server on loopback, reached directly and through
    // the egress proxy (the caller is 127.0.0.1, as an environment's address would be).
    let files = TemporaryDirectory("gantry-bench-egress")
    try Data(repeating: 97, count: 100).write(to: URL(fileURLWithPath: files.path + "/small.txt"))
    try Data(repeating: 98, count: 32 << 20).write(to: URL(fileURLWithPath: files.path + "/big.bin"))
    let upstreamPort = try freeLoopbackPort()
    let upstream = SpawnedProcess()
    upstream.start(["python3", "-m", "http.server", "\(upstreamPort)", "--bind", "127.0.0.1", "--directory", files.path])
    defer { upstream.stop() }
    guard eventually(10, { (try? fetch(port: upstreamPort, host: "127.0.0.1", path: "/small.txt").bytes) ?? 0 > 100 }) else {
        throw ShellError(description: "the upstream server did not start")
    }
    var grants = EgressGrants()
    grants.environment = [try HostPattern.parse("bench.test").get()]
    let proxy = try EgressProxy(snapshot: EgressSnapshot(policy: EgressPolicy(pinned: ["bench.test": [IPAddress("127.0.0.1")!]], pinnedPorts: ["bench.test": upstreamPort]),
                                                         callers: ["127.0.0.1": EgressCaller(environment: "bench", grants: grants, killed: nil)],
                                                         dlp: DLPScanner(secrets: [("bench-secret", "bench-secret-value-0123456789")])),
                                hooks: EgressHooks(identify: { _, _ in nil }, event: { _ in }))
    try proxy.start(host: "127.0.0.1", port: 0)
    defer { proxy.stop() }
    let url = "http://bench.test:\(upstreamPort)"
    var proxied: [Double] = [], direct: [Double] = []
    for _ in 0..<200 {
        proxied.append(try firstByte(port: proxy.port, host: "bench.test", path: url + "/small.txt").seconds)
        direct.append(try firstByte(port: upstreamPort, host: "127.0.0.1", path: "/small.txt").seconds)
    }
    report("a small GET through the egress proxy (allow-list, DLP, resolution)", proxied, baseline: ("the same GET sent directly", direct))
    say("egress proxy added latency: median \(milliseconds(percentile(proxied, 0.5) - percentile(direct, 0.5))), p99 \(milliseconds(percentile(proxied, 0.99) - percentile(direct, 0.99)))")
    var proxiedRate: [Double] = [], directRate: [Double] = []
    for _ in 0..<5 {
        let through = try fetch(port: proxy.port, host: "bench.test", path: url + "/big.bin")
        let straight = try fetch(port: upstreamPort, host: "127.0.0.1", path: "/big.bin")
        guard through.bytes > 32 << 20, straight.bytes > 32 << 20 else { throw ShellError(description: "a download was cut short") }
        proxiedRate.append(Double(through.bytes) / through.total / 1e6)
        directRate.append(Double(straight.bytes) / straight.total / 1e6)
    }
    let rate = percentile(proxiedRate, 0.5), baseRate = percentile(directRate, 0.5)
    say(String(format: "egress proxy throughput (32 MiB answers, n=5): median %.0f MB/s | baseline direct: median %.0f MB/s | ratio %.2fx", rate, baseRate, rate / baseRate))
}

if runs("kill") {
    // A real `gantry run` with an environment holding a tunnel through the proxy to a TCP echo
    // server here, cut off by `gantry kill` ten times: how long the command takes, and when the
    // far end sees the tunnel close, measured from the moment the command returned.
    let repo = try TestRepository()
    try repo.seedExample(previews: benchPreviews)
    try repo.write("apps/hold/server.py", #"""
        import http.server, os, socket, urllib.parse
        held = []
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                q = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
                if 'target' in q:
                    proxy = urllib.parse.urlparse(os.environ['HTTPS_PROXY'])
                    s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
                    s.sendall(('CONNECT %s HTTP/1.1\r\n\r\n' % q['target']).encode()); answer = s.recv(4096); held.append(s)
                    if b' 200 ' not in answer.split(b'\r\n')[0]: return self.send_error(502)
                self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers(); self.wfile.write(b'ok')
            def log_message(self, *a): pass
        http.server.ThreadingHTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()
        """#)
    try repo.write("environments/hold.yaml", """
        apiVersion: gantry/v1
        kind: Environment
        metadata: {name: hold, team: payments, class: development}
        spec:
          egress: [tunnel.test]
          services:
            web: {source: apps/hold, command: [python3, server.py], health: {http: /healthz}}
          routes:
            - {name: www, service: web}
        """)
    try repo.commitAsOwner("an environment that holds a tunnel")
    let work = TemporaryDirectory("gantry-bench-kill")
    let closedLog = work.path + "/closed.log"
    try """
        import socket, sys, time, threading
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(64)
        def serve(c):
            while c.recv(4096): pass
            with open(sys.argv[2], 'a') as log: log.write('%f\\n' % time.time())
        while True:
            c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
        """.write(toFile: work.path + "/far.py", atomically: true, encoding: .utf8)
    let farPort = try freeLoopbackPort()
    let far = SpawnedProcess()
    far.start(["python3", work.path + "/far.py", "\(farPort)", closedLog])
    defer { far.stop() }
    let state = TemporaryDirectory("gantry-bench-kill-state")
    let run = Process()
    run.executableURL = URL(fileURLWithPath: gantryBinary)
    run.arguments = ["run", "--repo", repo.path, "--state", state.path, "--interval", "0.5", "--stop-on-exit", "--router-port", "0",
                     "--egress-port", "0", "--no-api", "--egress-resolve", "tunnel.test:\(farPort)=127.0.0.1"]
    FileManager.default.createFile(atPath: work.path + "/run.log", contents: nil)
    run.standardError = FileHandle(forWritingAtPath: work.path + "/run.log")
    try run.run()
    defer { run.terminate(); run.waitUntilExit() }
    let store = try StateStore(path: state.path + "/gantry.db")
    guard eventually(90, { (try? store.environment("hold"))??.phase == .running }),
          let port = (try? String(contentsOfFile: state.path + "/router.port", encoding: .utf8)).flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
        throw ShellError(description: "hold did not run")
    }
    var commands: [Double] = [], cuts: [Double] = []
    for round in 0..<10 {
        // Lifted (from the round before), the service opens a tunnel again.
        guard eventually(10, { (try? firstByte(port: port, host: "www.hold.localhost", path: "/open?target=tunnel.test:\(farPort)").status.contains(" 200")) ?? false }) else {
            _ = try? FileManager.default.copyItem(atPath: work.path + "/run.log", toPath: "/tmp/kill-run-\(getpid()).log")
            throw ShellError(description: "round \(round): no tunnel (the run's log: /tmp/kill-run-\(getpid()).log)")
        }
        let before = ((try? String(contentsOfFile: closedLog, encoding: .utf8)) ?? "").split(separator: "\n").count
        let began = Date()
        guard spawnWait([gantryBinary, "kill", "--env", "hold", "--state", state.path]) == 0 else { throw ShellError(description: "gantry kill failed") }
        let returned = Date()
        commands.append(returned.timeIntervalSince(began))
        guard eventually(2, interval: 0.001, { ((try? String(contentsOfFile: closedLog, encoding: .utf8)) ?? "").split(separator: "\n").count > before }),
              let closed = ((try? String(contentsOfFile: closedLog, encoding: .utf8)) ?? "").split(separator: "\n").last.flatMap({ Double($0) }) else {
            throw ShellError(description: "round \(round): the tunnel was not cut within 2 s")
        }
        cuts.append(closed - returned.timeIntervalSince1970)
        guard spawnWait([gantryBinary, "kill", "--env", "hold", "--off", "--key", repo.ownerKeyPath, "--state", state.path, "--repo", repo.path]) == 0 else {
            throw ShellError(description: "gantry kill --off failed")
        }
    }
    report("gantry kill --env: the command, until the running gantry reports the tunnels cut and processes frozen", commands)
    say("kill switch: the tunnel's far end saw the close, measured from the command's return (negative: before it returned): median \(milliseconds(percentile(cuts, 0.5))), worst \(milliseconds(cuts.max() ?? 0)) (target: within 100 ms, 1 s at worst)")
}

/// The cluster driver against the test API server (Tests/Fixtures/kube-apiserver.py, TLS and a
/// token): an apply that creates everything, one that finds nothing changed (a GET and a dry-run
/// per object, then the rollouts' watches), a teardown; the baseline is plain GETs of the same
/// objects through the same client in the same run.
if runs("kubernetes") {
    say("--- kubernetes: the driver against the test API server")
    let cluster = try FakeCluster()
    defer { cluster.stop() }
    let state = TemporaryDirectory("gantry-bench-kube")
    let store = try StateStore(path: state.path + "/gantry.db")
    let secrets = try SecretStore(state: store, keyPath: state.path + "/secrets.key", environment: [:])
    let client = try KubeClient(config: try KubeConfig.load(path: cluster.kubeconfig))
    var options = KubernetesDriver.Options()
    options.teardownTimeout = 30
    let driver = KubernetesDriver(client: client, state: store, logger: logger, options: options)
    driver.secrets = secrets
    let repo = try TestRepository()
    try repo.seedExample()
    let services = (0..<5).map { "    s\($0): {image: registry.example/s\($0):1, replicas: 2, env: {DATABASE_URL: \"${databases.main.url}\"}}" }.joined(separator: "\n")
    var plans: [PlannedEnvironment] = []
    for index in 0..<5 {
        try repo.write("environments/k\(index).yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: k\(index), team: payments, class: development}
            spec:
              services:
            \(services)
              databases:
                main: {engine: postgres}
              caches:
                sessions: {engine: redis}
              routes:
                - {name: www, service: s0}
            """)
    }
    let sha = try repo.commitAsOwner("clusters")
    let commit = ObjectID(hex: sha)!
    for loaded in try ConfigLoader(repository: try repo.open()).environments(at: commit) where loaded.name.hasPrefix("k") {
        guard let spec = loaded.spec else { continue }
        plans.append(PlannedEnvironment(name: loaded.name, branch: "main", commit: commit, spec: spec, fingerprint: "f", domain: "example.com",
                                        source: GitSnapshot(path: repo.path, commit: commit)))
    }
    var creates: [Double] = [], unchanged: [Double] = [], gets: [Double] = [], teardowns: [Double] = []
    var objects = 0
    for plan in plans {
        creates.append(try time { _ = try driver.apply(plan) { _ in } })
        let refs = try store.inventory(of: plan.name, driver: KubernetesDriver.name).compactMap(ObjectRef.init(entry:))
        objects = refs.count
        for _ in 0..<4 {
            unchanged.append(try time {
                let outcome = try driver.apply(plan) { _ in }
                guard outcome.changes.isEmpty else { throw ShellError(description: "an unchanged apply changed \(outcome.changes)") }
            })
            gets.append(try time { for ref in refs { _ = try client.get(ref) } })
        }
    }
    for plan in plans { teardowns.append(try time { _ = try driver.destroy(environment: plan.name, sources: nil) { _ in } }) }
    report("apply creating an environment (\(objects) objects, 7 rollouts awaited)", creates)
    report("apply with nothing changed (GET and dry-run per object, rollouts checked)", unchanged, baseline: ("\(objects) GETs", gets))
    report("teardown (namespace deleted and gone)", teardowns)
}

/// The data plane end to end: `gantry run` and `gantry agent` as two processes; a commit changes
/// two environments alike, one on the agent and one local; the time from the commit until each is
/// recorded applied (the agent's: plan issued, fetched, verified, applied, reported). The local one
/// is the baseline, in the same run.
if runs("dataplane") {
    say("--- dataplane: commit to applied, through gantry agent vs the local driver")
    let repo = try TestRepository()
    try repo.seedExample()
    let settings = try String(contentsOfFile: repo.path + "/gantry.yaml", encoding: .utf8)
    try repo.write("gantry.yaml", settings + "drivers: {development: agent, lo: local}\n")
    func spec(_ name: String, _ round: Int) -> String {
        """
        apiVersion: gantry/v1
        kind: Environment
        metadata: {name: \(name), team: payments, class: development}
        spec:
          services:
            web:
              source: apps/hello
              command: [python3, server.py]
              health: {http: /healthz}
              env: {GREETING: "round \(round)"}
        """
    }
    try repo.write("environments/dp.yaml", spec("dp", 0))
    try repo.write("environments/lo.yaml", spec("lo", 0))
    try repo.commitAsOwner("data plane bench")
    let control = TemporaryDirectory("gantry-bench-control"), agentState = TemporaryDirectory("gantry-bench-agent")
    let token = control.path + "/token"
    try "bench-token-0123456789abcdef".write(toFile: token, atomically: true, encoding: .utf8)
    let apiPort = try freeLoopbackPort()
    let run = Process(), agent = Process()
    run.executableURL = URL(fileURLWithPath: gantryBinary)
    run.arguments = ["run", "--repo", repo.path, "--state", control.path, "--api", "127.0.0.1:\(apiPort)", "--no-router", "--no-egress",
                     "--stop-on-exit", "--interval", "0.2", "--data-plane-token-file", token]
    run.standardError = FileHandle(forWritingAtPath: "/dev/null")
    try run.run()
    guard eventually(30, { FileManager.default.fileExists(atPath: control.path + "/keys/gantry_ed25519.pub") }) else { throw ShellError(description: "no control plane") }
    agent.executableURL = URL(fileURLWithPath: gantryBinary)
    agent.arguments = ["agent", "--control", "http://127.0.0.1:\(apiPort)", "--key", control.path + "/keys/gantry_ed25519.pub", "--token-file", token,
                       "--state", agentState.path, "--no-router", "--interval", "0.2", "--stop-on-exit"]
    agent.standardError = FileHandle(forWritingAtPath: "/dev/null")
    try agent.run()
    defer {
        agent.terminate(); agent.waitUntilExit()
        run.terminate(); run.waitUntilExit()
    }
    let store = try StateStore(path: control.path + "/gantry.db")
    func applied(_ name: String, _ commit: String) -> Bool { (try? store.environment(name))??.appliedCommit == commit }
    var remote: [Double] = [], local: [Double] = []
    let first = try repo.git("rev-parse", "main")
    guard eventually(120, { applied("dp", first) && applied("lo", first) }) else { throw ShellError(description: "the first revision did not apply") }
    for round in 1...8 {
        try repo.write("environments/dp.yaml", spec("dp", round))
        try repo.write("environments/lo.yaml", spec("lo", round))
        let start = Date()
        let commit = try repo.commitAsOwner("round \(round)")
        var doneRemote: Double?, doneLocal: Double?
        guard eventually(120, interval: 0.01, {
            if doneRemote == nil, applied("dp", commit) { doneRemote = Date().timeIntervalSince(start) }
            if doneLocal == nil, applied("lo", commit) { doneLocal = Date().timeIntervalSince(start) }
            return doneRemote != nil && doneLocal != nil
        }) else { throw ShellError(description: "round \(round) did not apply") }
        remote.append(doneRemote!)
        local.append(doneLocal!)
    }
    report("commit to applied through gantry agent (plan, fetch, verify, apply, report)", remote, baseline: ("the same on the local driver", local))
}

say("done")
