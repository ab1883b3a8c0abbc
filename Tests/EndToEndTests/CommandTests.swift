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
        // The cluster driver's manifests: a service needs an image there, and the file is named.
        let noImage = try gantry("render", "--repo", repo.path, "--ref", "agents/x", "--env", "web", "--format", "kubernetes")
        #expect(noImage.status != 0 && noImage.stderr.contains("environments/web.yaml") && noImage.stderr.contains("image is required"), "\(noImage.stderr)")
        let web = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
        try repo.write("environments/web.yaml", web.replacingOccurrences(of: "  template: python-web", with: "  template: python-web\n  services: {web: {image: registry.example/web:1}}"))
        try repo.commit("an image for the cluster")
        let manifests = try gantry("render", "--repo", repo.path, "--ref", "agents/x", "--env", "web", "--format", "kubernetes")
        #expect(manifests.status == 0, "\(manifests.stderr)")
        #expect(manifests.stdout.contains("\"namespace\" : \"gantry-web--agents-x\"") && manifests.stdout.contains("\"kind\" : \"Ingress\""))
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

@Suite(.serialized) struct GovernanceCommandTests {
    @Test func explainAndApproveAProductionChange() throws {
        let repo = try TestRepository()
        let alice = try TestRepository(principal: "alice@example.com")
        try repo.seedExample(extraSigners: [alice.allowedSignersLine])
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once").status == 0)

        try repo.checkout("agents/greeting", create: true)
        let spec = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
        try repo.write("environments/web.yaml", spec + "  lifecycle: {ttl: 24h}\n")
        try repo.commit("web lives a day")
        try repo.checkout("main")
        try repo.git("merge", "-q", "--no-ff", "-m", "Merge greeting", "agents/greeting")

        let before = try gantry("explain", "main", "--repo", repo.path, "--state", state.path)
        #expect(before.status == 0, "\(before.stderr)")
        #expect(before.stdout.contains("web: pending"))
        #expect(before.stdout.contains("rule signature: ok (agent@example.com)"))
        #expect(before.stdout.contains("rule approval: needs 1 approval of this exact commit by a human with role approver"))
        #expect(before.stdout.contains("to satisfy: a human with role approver signs the merge into main, or runs `gantry approve"))
        #expect(!before.stdout.contains("status-page:"))

        let approve = try gantry("approve", "main", "--key", alice.keyPath, "--repo", repo.path)
        #expect(approve.status == 0, "\(approve.stderr)")
        // The approval is an SSHSIG of the exact commit that ssh-keygen verifies for alice.
        let merge = try repo.git("rev-parse", "main")
        let note = try repo.git("notes", "--ref=gantry-approvals", "show", merge)
        let signature = String(note[note.range(of: "-----BEGIN SSH SIGNATURE-----")!.lowerBound...])
        try signature.write(toFile: state.path + "/approval.sig", atomically: true, encoding: .utf8)
        try alice.allowedSignersLine.write(toFile: state.path + "/signers", atomically: true, encoding: .utf8)
        let outside = try Shell.run(["ssh-keygen", "-Y", "verify", "-n", "gantry-approve", "-f", state.path + "/signers",
                                     "-I", "alice@example.com", "-s", state.path + "/approval.sig"],
                                    input: "gantry-approve: 1\ncommit: \(merge)\n")
        #expect(outside.status == 0, "\(outside.stderr)")

        let after = try gantry("explain", "main", "--repo", repo.path, "--state", state.path)
        #expect(after.stdout.contains("web: allow"))
        #expect(after.stdout.contains("rule approval: ok (alice@example.com)"))
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--stop-on-exit").status == 0)
        let status = try gantry("status", "--state", state.path, "--env", "web").stdout
        #expect(status.contains("main@\(merge.prefix(7))"))
        #expect(status.contains("applied: revision \(merge.prefix(7)) running"))
    }

    @Test func anUnanchoredStartWaitsForAnOperatorsTrustSet() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("apps/hello/NOTE", "x")
        let tip = try repo.commit("the agent signs the tip")
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--no-router").status == 0)
        let status = try gantry("status", "--state", state.path, "--json").stdout
        let object = try #require(try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
        #expect((object["environments"] as? [Any])?.isEmpty == true)
        let halted = try #require((object["governance"] as? [String: Any])?["halted"] as? String)
        #expect(halted.contains("no trust anchor") && halted.contains("gantry trust set"))
        #expect(try gantry("trust", "show", "--state", state.path).stdout.contains("admission halted: no trust anchor"))
        // An agent's key may not anchor; the owner's (a human admin) may.
        let refused = try gantry("trust", "set", "main", "--key", repo.keyPath, "--repo", repo.path, "--state", state.path)
        #expect(refused.status != 0 && refused.stderr.contains("agent@example.com is not a human with the governance role"), "\(refused.stderr)")
        let set = try gantry("trust", "set", "main", "--key", repo.ownerKeyPath, "--repo", repo.path, "--state", state.path)
        #expect(set.status == 0, "\(set.stderr)")
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--no-router", "--stop-on-exit").status == 0)
        let shown = try gantry("trust", "show", "--state", state.path).stdout
        #expect(shown.contains("trust anchor: \(tip) (gantry trust set by owner@example.com"))
        #expect(!shown.contains("halted"))
        #expect(try gantry("status", "--state", state.path).stdout.contains("web  Running  production  main@\(tip.prefix(7))"))
        let log = try gantry("audit", "log", "--state", state.path).stdout
        #expect(log.contains("trust-anchored") && log.contains("anchored-by: owner@example.com"))
    }

    @Test func auditVerifyWithTheStateCatchesAResetNotesRefAndRunRepublishes() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--no-router", "--stop-on-exit").status == 0)
        let first = try repo.git("rev-list", "refs/notes/gantry").split(separator: "\n").last.map(String.init)!
        try repo.git("update-ref", "refs/notes/gantry", first)
        // What is left verifies on its own; the state DB knows it was more.
        try "gantry \(try gantry("keys", "--state", state.path).stdout.dropFirst("gantry ".count))".write(toFile: state.path + "/signers", atomically: true, encoding: .utf8)
        #expect(try gantry("audit", "verify", "--repo", repo.path, "--allowed-signers", state.path + "/signers").status == 0)
        let caught = try gantry("audit", "verify", "--state", state.path)
        #expect(caught.status == 1)
        #expect(caught.stdout.contains("FAULT the notes ref refs/notes/gantry was reset, truncated, rewritten or deleted"))
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--no-router", "--stop-on-exit").status == 0)
        let verified = try gantry("audit", "verify", "--state", state.path)
        #expect(verified.status == 0, "\(verified.stdout)")
        #expect(try gantry("audit", "log", "--state", state.path).stdout.contains("audit-restored"))
    }

    @Test func aTagNamedLikeTheBranchIsRefusedNotApproved() throws {
        let repo = try TestRepository()
        let alice = try TestRepository(principal: "alice@example.com")
        try repo.seedExample(extraSigners: [alice.allowedSignersLine])
        try repo.checkout("evil", create: true)
        let evil = try repo.commit("evil")
        try repo.checkout("main")
        try repo.git("tag", "main", evil)
        let result = try gantry("approve", "main", "--key", alice.keyPath, "--repo", repo.path)
        #expect(result.status != 0 && result.stderr.contains("names both branch main"), "\(result.stderr)")
        #expect(try gantry("approve", "refs/heads/main", "--key", alice.keyPath, "--repo", repo.path).status == 0)
    }

    @Test func aBranchNamedLikeACommitIdDoesNotRedirectAnApproval() throws {
        let repo = try TestRepository()
        let alice = try TestRepository(principal: "alice@example.com")
        try repo.seedExample(extraSigners: [alice.allowedSignersLine])
        let target = try repo.commit("the reviewed change")
        let evil = try repo.commit("the evil child")
        try repo.git("update-ref", "refs/heads/\(target)", evil)
        try repo.git("update-ref", "refs/heads/\(target.prefix(7))", evil)
        try repo.git("update-ref", "refs/remotes/\(target.prefix(8))/HEAD", evil)
        let full = try gantry("approve", target, "--key", alice.keyPath, "--repo", repo.path)
        #expect(full.status == 0 && full.stdout.contains("approved \(target)"), "\(full.stdout)\(full.stderr)")
        // Hex digits are found by object id alone, whatever refs are named like them.
        for digits in [7, 8] {
            let short = try gantry("approve", String(target.prefix(digits)), "--key", alice.keyPath, "--repo", repo.path)
            #expect(short.status == 0 && short.stdout.contains("approved \(target)"), "\(short.stdout)\(short.stderr)")
        }
        #expect(try gantry("explain", String(target.prefix(8)), "--repo", repo.path).stdout.contains("commit \(target.prefix(7))"))
    }

    @Test func explainNamesTheUnsignedCommit() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.checkout("agents/unsigned", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.git("add", "-A")
        try repo.git("-c", "commit.gpgsign=false", "commit", "-q", "-m", "unsigned")
        let result = try gantry("explain", "agents/unsigned", "--repo", repo.path)
        #expect(result.stdout.contains("web--agents-unsigned: deny"))
        #expect(result.stdout.contains("is not signed"))
        #expect(result.stdout.contains("to satisfy: sign every new commit of the branch"))
    }
}

@Suite(.serialized) struct SecretTests {
    /// example-repo plus `pay`, whose service shows the secret api-key in its greeting.
    func payRepository() throws -> TestRepository {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("environments/pay.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: pay, team: payments, class: staging}
            spec:
              template: python-web
              secrets: [api-key]
              services:
                web:
                  env: {GREETING: "key=${secrets.api-key}"}
            """)
        try repo.commitAsOwner("an environment with a secret")
        return repo
    }

    @Test func secretsReachOnlyTheirScopeAndNeverAppearInPlainText() throws {
        let value = "sk_live_\(UUID().uuidString)"
        let repo = try payRepository()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }

        // Missing: a clear denial naming the secret.
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once").status == 0)
        let denied = try gantry("status", "--state", state.path, "--env", "pay").stdout
        #expect(denied.contains("Denied") && denied.contains("secret: api-key is not set for pay"))
        // diagnose reads the same summary, and says what would admit it.
        let diagnosis = try gantry("diagnose", "--state", state.path, "--env", "pay").stdout
        #expect(diagnosis.contains("pay: Denied [AdmissionDenied, SecretMissing]")
                && diagnosis.contains("next: store the missing secret (`gantry secret set NAME --env pay`"), "\(diagnosis)")
        #expect(try gantry("diagnose", "--state", state.path).stdout.contains("1 need attention"))

        // Set (from standard input): the next pass admits and delivers it.
        let set = try gantry("secret", "set", "api-key", "--env", "pay", "--state", state.path, input: value)
        #expect(set.status == 0, "\(set.stderr)")
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once").status == 0)
        let status = try gantry("status", "--state", state.path, "--json").stdout
        let pay = try #require(((try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])?["environments"] as? [[String: Any]])?
            .first { $0["name"] as? String == "pay" })
        #expect(pay["phase"] as? String == "Running")
        let url = try #require((pay["services"] as? [[String: Any]])?.first?["url"] as? String)
        #expect(httpGet(url)?.contains("key=\(value)") == true)

        // A preview does not see a secret scoped to the live environment.
        try repo.checkout("agents/pay", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("touch")
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--stop-on-exit").status == 0)
        #expect(try gantry("status", "--state", state.path, "--env", "pay--agents-pay").stdout.contains("secret: api-key is not set for pay--agents-pay"))

        // list shows names only; render masks; nothing Gantry wrote holds the value.
        let list = try gantry("secret", "list", "--state", state.path).stdout
        #expect(list.contains("api-key  --env pay  v1") && !list.contains(value))
        let render = try gantry("render", "--repo", repo.path, "--ref", "main", "--env", "pay", "--state", state.path).stdout
        #expect(render.contains("key=********") && !render.contains(value))
        let grep = try Shell.run(["grep", "-r", "-l", "-a", value, state.path, repo.path + "/.git"])
        #expect(grep.status == 1, "the value was found in: \(grep.stdout)")
        let audit = try gantry("audit", "log", "--state", state.path).stdout
        #expect(!audit.contains(value))
    }

    /// A service prints its secret and its cache's URL (with the generated password), then crashes
    /// during start: what Gantry writes about it (status, history, audit notes, its own log, the
    /// state DB) holds neither value; only the service's own log file does.
    @Test func aCrashingServiceThatPrintsItsSecretsLeaksThemNowhere() throws {
        let value = "sk_live_\(UUID().uuidString)"
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("environments/leaky.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: leaky, team: payments, class: staging}
            spec:
              secrets: [api-key]
              caches:
                c: {engine: redis}
              services:
                web:
                  command: [sh, -c, 'echo "key is $API_KEY, cache at $CACHE_URL"; exit 3']
                  env: {API_KEY: "${secrets.api-key}", CACHE_URL: "${caches.c.url}"}
            """)
        try repo.commitAsOwner("a service that prints its secrets and crashes")
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        #expect(try gantry("secret", "set", "api-key", "--env", "leaky", "--state", state.path, input: value).status == 0)
        let run = try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--stop-on-exit")
        let serviceLog = try String(contentsOfFile: state.path + "/envs/leaky/logs/web.log", encoding: .utf8)
        #expect(serviceLog.contains("key is \(value)"), "the service printed its secret: \(serviceLog)")
        let cachePassword = try #require(serviceLog.split(separator: "redis://default:").last?.prefix { $0 != "@" }).description
        #expect(cachePassword.count == 64, "\(serviceLog)")
        let status = try gantry("status", "--state", state.path, "--env", "leaky").stdout
        #expect(status.contains("Failed") && status.contains("[redacted secret api-key]"), "\(status)")
        let outputs = [run.stdout + run.stderr, status, try gantry("status", "--state", state.path, "--json").stdout,
                       try gantry("audit", "log", "--state", state.path).stdout, try repo.git("log", "-p", "refs/notes/gantry")]
        for (index, output) in outputs.enumerated() {
            #expect(!output.contains(value) && !output.contains(cachePassword), "output \(index) holds a secret: \(output)")
        }
        let grep = try Shell.run(["grep", "-r", "-l", "-a", "-e", value, "-e", cachePassword, state.path, repo.path + "/.git"])
        #expect(grep.stdout.split(separator: "\n") == [Substring(state.path + "/envs/leaky/logs/web.log")], "found in: \(grep.stdout)")
    }

    @Test func rotatingASecretRestartsItsServicesAndIsRecordedByName() throws {
        let repo = try payRepository()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        #expect(try gantry("secret", "set", "api-key", "--team", "payments", "--state", state.path, input: "first-value").status == 0)
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "0.2", "--stop-on-exit"],
                                    log: state.path + "/run.log")
        func served() -> String? {
            guard let text = try? gantry("status", "--state", state.path, "--json").stdout,
                  let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                  let pay = (object["environments"] as? [[String: Any]])?.first(where: { $0["name"] as? String == "pay" }),
                  let url = (pay["services"] as? [[String: Any]])?.first?["url"] as? String else { return nil }
            return httpGet(url)
        }
        #expect(eventually(30) { served()?.contains("key=first-value") == true })
        #expect(try gantry("secret", "set", "api-key", "--team", "payments", "--state", state.path, input: "second-value").status == 0)
        #expect(eventually(30) { served()?.contains("key=second-value") == true },
                "\((try? String(contentsOfFile: state.path + "/run.log", encoding: .utf8))?.suffix(3000) ?? "")")
        let log = try gantry("audit", "log", "--state", state.path, "--env", "pay").stdout
        #expect(log.contains("rotated: secret api-key"))
        #expect(!log.contains("second-value") && !log.contains("first-value"))
        run.terminate()
    }
}

@Suite(.serialized) struct EnvCloneTests {
    @Test func cloneCreatesASignedBranchCommitWhosePreviewRuns() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let clone = try gantry("env", "clone", "web", "--as", "web-copy", "--repo", repo.path, "--key", repo.keyPath, "--email", "agent@example.com")
        #expect(clone.status == 0, "\(clone.stderr)")
        #expect(clone.stdout.contains("created environments/web-copy.yaml on branch clone/web-copy"))
        let copy = try repo.git("show", "clone/web-copy:environments/web-copy.yaml")
        #expect(copy.contains("name: web-copy") && copy.contains("template: python-web"))
        #expect(try Shell.run(["git", "-C", repo.path, "-c", "gpg.ssh.allowedSignersFile=\(repo.path)/identities/allowed_signers",
                               "verify-commit", "clone/web-copy"]).status == 0)
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--no-router").status == 0)
        let status = try gantry("status", "--state", state.path, "--env", "web-copy--clone-web-copy").stdout
        #expect(status.contains("Running") && status.contains("preview"), "\(status)")
        #expect(try gantry("env", "clone", "web", "--as", "bad--name", "--repo", repo.path).status != 0)
        #expect(try gantry("env", "clone", "nope", "--as", "x", "--repo", repo.path).stderr.contains("has no environment 'nope'"))
    }
}

@Suite struct CELCommandTests {
    @Test func evalTakesTypedJSONBindings() throws {
        let result = try gantry("cel", "eval", "n + 1 == 2 && flag && type(ratio) == double && name.startsWith('w')",
                                "--bindings", #"{"n": 1, "flag": true, "ratio": 0.5, "name": "web"}"#)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == "true\n")
        let error = try gantry("cel", "eval", "1 / 0")
        #expect(error.status != 0 && error.stderr.contains("division by zero"))
        let syntax = try gantry("cel", "eval", "1 +")
        #expect(syntax.status != 0 && syntax.stderr.contains("syntax error at 1:"))
    }

    @Test func conformanceEndsWithTheSummaryLine() throws {
        let file = TestPaths.conformanceVectors.appendingPathComponent("logic.json").path
        let result = try gantry("cel", "conformance", file)
        #expect(result.status == 0)
        #expect(result.stdout.contains("PASS logic/"))
        #expect(result.stdout.hasSuffix("23 passed, 0 failed, 0 skipped\n"))
    }
}

@Suite struct DiagnoseTests {
    /// `gantry diagnose` says what isolation this host allows, and the state directory's modes
    /// after a run has tightened them.
    @Test func diagnoseSaysWhatIsolationHolds() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once", "--stop-on-exit").status == 0)
        let result = try gantry("diagnose", "--state", state.path)
        #expect(result.status == 0, "\(result.stderr)")
        let root = getuid() == 0
        #expect(result.stdout.contains(root ? "users: enforced" : "users: advisory: not root"), "\(result.stdout)")
        #expect(result.stdout.contains(root ? "network: enforced: each environment in a network namespace" : "network: shared (not root)"), "\(result.stdout)")
        if root { #expect(result.stdout.contains("last gantry run: enforced") && result.stdout.contains("its own network namespace"), "\(result.stdout)") }
        #expect(result.stdout.contains("state database: mode 600") && result.stdout.contains("keys: mode 700"), "\(result.stdout)")
        #expect(result.stdout.contains("last gantry run: \(root ? "enforced" : "advisory")"))
    }
}

/// `gantry cost` and `gantry budget` against the example's pricing and budgets.
@Suite(.serialized) struct CostCommandTests {
    @Test func costPricesItemByItemAndBudgetReportsSpend() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        // web: 0.5 cpu × 0.04 + 64 MiB (0.0625 GiB) × 0.005 = 0.0203125 per hour under the example's pricing.
        let cost = try gantry("cost", "--repo", repo.path, "--env", "web")
        #expect(cost.status == 0 && cost.stdout.contains("web at main@") && cost.stdout.contains("service web: 0.0203/h = 1 × (0.5 cpu × 0.04 + 0.0625 GiB × 0.005)"),
                "\(cost.stdout)\(cost.stderr)")
        let json = try gantry("cost", "--repo", repo.path, "--env", "web", "--json")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(abs((object["hourly"] as? Double ?? 0) - 0.0203125) < 1e-9)
        #expect(try gantry("cost", "--repo", repo.path, "--env", "nope").stderr.contains("has no environment 'nope'"))
        // After a pass, the budget report: the example's team budgets, what runs, and what it costs.
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        #expect(try gantry("run", "--repo", repo.path, "--state", state.path, "--once").status == 0)
        let budget = try gantry("budget", "--state", state.path, "--json")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(budget.stdout.utf8)) as? [String: Any], "\(budget.stdout)\(budget.stderr)")
        let budgets = report["budgets"] as? [[String: Any]] ?? []
        #expect(budgets.contains { $0["scope"] as? String == "team" && $0["name"] as? String == "payments" && $0["limit"] as? Double == 500 }, "\(budgets)")
        let environments = report["environments"] as? [[String: Any]] ?? []
        #expect(Set(environments.compactMap { $0["name"] as? String }) == ["web", "status-page"])
        #expect(environments.allSatisfy { ($0["hourly"] as? Double ?? 0) > 0.02 }, "\(environments)")
        let text = try gantry("budget", "--state", state.path)
        #expect(text.stdout.contains("team payments monthly") && text.stdout.contains("running now: 2 environments"), "\(text.stdout)")
    }
}
