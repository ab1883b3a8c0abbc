import Audit
import Foundation
import GitStore
import Governance
import Testing
import TestSupport
@testable import Reconciler
@testable import LocalDriver
import SpecLoading
import StateStore

/// The attacks an agent that can push to the protected branch tries first, on real repositories
/// with real keys and real processes. Each asserts the denial (or the wait), its record, and that
/// production keeps serving its admitted revision.
@Suite(.serialized) struct GovernanceAttackTests {
    func setUp() throws -> (TestRepository, TestRepository, Harness) {
        let (repo, alice, harness) = try seededWithAlice()
        let web = try harness.environment("web")
        let service = try harness.service("web")
        #expect(try harness.get("web")?.contains("hello from web") == true,
                "web \(web?.phase.rawValue ?? "none"): \(web?.message ?? "") service \(service?.phase ?? "none") pid \(service?.pid ?? 0) alive \(isRunning(service?.pid)) \(LocalDriver.recentOutput(stateDirectory: harness.stateDirectory.url, environment: "web"))")
        return (repo, alice, harness)
    }

    /// A seeded, anchored repository with one more agent, `principal`, of `team` only.
    func setUp(bot principal: String, team: String) throws -> (TestRepository, TestRepository, Harness) {
        let repo = try TestRepository()
        let bot = try TestRepository(principal: principal)
        try repo.seedExample(extraSigners: [bot.allowedSignersLine])
        try repo.write("identities/actors.yaml", try read(repo, "identities/actors.yaml") + "  \(principal): {kind: agent, teams: [\(team)]}\n")
        try repo.commitAsOwner("a \(team) bot")
        let harness = try Harness(repo: repo)
        try harness.pass()
        return (repo, bot, harness)
    }

    /// The agent changes production's greeting on main: the change waits for an approver.
    func pendingProductionChange(_ greeting: String, message: String, _ repo: TestRepository, _ harness: Harness) throws -> String {
        try repo.writeWeb(service: "{env: {GREETING: \"\(greeting) from ${env.name}\"}}")
        let change = try repo.commit(message)
        #expect(try harness.pass().pending == ["web"])
        return change
    }

    /// A deny policy: agents may not change anything under apps/.
    func writeAgentsNoCodePolicy(_ repo: TestRepository) throws {
        try repo.write("policies/agents-no-code.yaml", """
            apiVersion: gantry/v1
            kind: Policy
            metadata: {name: agents-no-code}
            spec:
              action: deny
              rules:
                - expr: "actor.kind != 'agent' || !change.files.exists(f, f.startsWith('apps/'))"
                  message: "agents may not change application code"
            """)
    }

    func read(_ repo: TestRepository, _ path: String) throws -> String {
        try String(contentsOfFile: repo.path + "/" + path, encoding: .utf8)
    }

    /// The scoped record about the protected branch on `commit`.
    func governanceRecord(_ harness: Harness, _ event: String, on commit: String) throws -> AuditRecord? {
        try harness.records().last { $0.event == event && $0.value("scope") == "governance" && $0.value("commit") == commit }
    }

    func stillServing(_ harness: Harness, _ text: String = "hello from web") throws -> Bool {
        try harness.get("web")?.contains(text) == true
    }

    // MARK: Root of trust

    @Test func anUnsignedCommitOnMainThatTurnsSigningOffIsDeniedAndChangesNothing() throws {
        let (repo, _, harness) = try setUp()
        try repo.write("gantry.yaml", try read(repo, "gantry.yaml").replacingOccurrences(of: "signing: {required: true}", with: "signing: {required: false}"))
        try repo.writeWeb(service: #"{env: {GREETING: "pwned from ${env.name}"}}"#)
        try repo.git("add", "-A")
        try repo.git("-c", "commit.gpgsign=false", "commit", "-q", "-m", "signing is optional now")
        let unsigned = try repo.git("rev-parse", "HEAD")
        // A second unsigned commit would pass under the rules the first one brings: it must not.
        try repo.write("apps/hello/EVIL", "x")
        try repo.git("add", "-A")
        try repo.git("-c", "commit.gpgsign=false", "commit", "-q", "-m", "and another")
        let summary = try harness.pass()
        #expect(summary.blocked == unsigned)
        #expect(summary.applied.isEmpty)
        let denial = try #require(try governanceRecord(harness, "denied", on: unsigned))
        #expect(denial.values("rule").contains { $0.contains("commit \(unsigned.prefix(7)) is not signed") })
        let web = try #require(try harness.records().last { $0.event == "denied" && $0.value("environment") == "web" })
        #expect(web.value("commit") == unsigned)
        #expect(try stillServing(harness))
        #expect(try harness.environment("web")?.conditions == [.admissionDenied])
        #expect(try harness.state.trust()?.revision == (try harness.environment("web")?.appliedCommit))
        #expect(try harness.verify().isValid)
    }

    @Test func aCommitOnMainSignedByAForeignKeyIsDenied() throws {
        let (repo, _, harness) = try setUp()
        let intruder = try TestRepository(principal: "intruder@evil.example")
        try repo.write("identities/allowed_signers", try read(repo, "identities/allowed_signers") + intruder.allowedSignersLine + "\n")
        try repo.writeWeb(service: #"{env: {GREETING: "pwned from ${env.name}"}}"#)
        let forged = try repo.signing(with: intruder.keyPath) { try repo.commit("let me in") }
        #expect(try harness.pass().blocked == forged)
        let denial = try #require(try governanceRecord(harness, "denied", on: forged))
        #expect(denial.values("rule").contains { $0.contains("which identities/allowed_signers on main does not list") })
        #expect(try stillServing(harness))
    }

    @Test func anAgentRemovingTheApprovalRuleCannotReleaseItsOwnPendingChange() throws {
        let (repo, alice, harness) = try setUp()
        // The agent changes production on main: that waits for a human approver.
        let change = try pendingProductionChange("sneaky", message: "change production", repo, harness)
        // Then removes the rule that holds it back.
        try repo.write("gantry.yaml", try read(repo, "gantry.yaml").replacingOccurrences(of: "  production: {count: 1, role: approver, distinctFromAuthors: true}\n", with: ""))
        let edit = try repo.commit("no more production approvals")
        let summary = try harness.pass()
        #expect(summary.blocked == edit)
        #expect(summary.applied.isEmpty)
        let pending = try #require(try governanceRecord(harness, "pending-approval", on: edit))
        #expect(pending.values("rule").contains("governance: changes gantry.yaml"))
        #expect(pending.values("rule").contains { $0.hasPrefix("approval (governance): needs 1 approval of this exact commit by a human with role admin") })
        #expect(try stillServing(harness))
        // The agent approving its own governance change counts for nothing.
        try approve(edit, as: repo, in: repo)
        #expect(try harness.pass().blocked == edit)
        #expect(try stillServing(harness))
        #expect(try harness.state.trust()?.blocked?.rules.contains { $0.contains("agent@example.com (gantry approve) is an agent") } == true)
        // explain says what is missing and what it would release.
        let explanation = try Admission(repository: try repo.open(), logger: .init(label: "test")).explain(
            commit: ObjectID(hex: edit)!, branch: "main", branches: try repo.open().branches(), protectedBranch: "main",
            known: .init(trust: try harness.state.trust()))
        #expect(explanation.contains { $0.hasPrefix("range: \(change.prefix(7))..\(edit.prefix(7)), 1 commit") })
        #expect(explanation.contains("\(edit.prefix(7)) (governance and identity): pending"))
        #expect(explanation.contains { $0.contains("to satisfy: a human with role admin") })
        // An admin approves the governance change: from the next commit on, production needs no
        // approval — but the change made before it still does.
        try approve(edit, as: alice, in: repo)
        let admitted = try harness.pass()
        #expect(admitted.blocked == nil)
        #expect(try governanceRecord(harness, "admitted", on: edit) != nil)
        #expect(try stillServing(harness))
        #expect(try harness.environment("web")?.phase == .pendingApproval)
    }

    @Test func aGovernanceChangeWaitsForAnAdminWhoIsNotItsAuthor() throws {
        let (repo, alice, harness) = try setUp()
        // alice (a human admin) loosens the policies herself and approves her own change.
        try repo.remove("policies/preview-limits.yaml")
        let edit = try repo.signing(with: alice.keyPath) { try repo.commit("alice drops the preview limits") }
        try approve(edit, as: alice, in: repo)
        #expect(try harness.pass().blocked == edit)
        let pending = try #require(try governanceRecord(harness, "pending-approval", on: edit))
        #expect(pending.values("rule").contains { $0.contains("alice@example.com (gantry approve) authored, committed, signed or was On-Behalf-Of in the approved changes") })
        // Branches are still judged by the policy she removed.
        try repo.checkout("greedy", create: true)
        try repo.writeWeb(service: "{replicas: 3}")
        try repo.commit("three replicas")
        #expect(try harness.pass().denied == ["web--greedy"])
        // The owner, another admin, approves: the policy is gone for what comes next.
        try approveAsOwner(edit, repo)
        try repo.write("apps/hello/NOTE", "again")
        try repo.commit("touch")
        let summary = try harness.pass()
        #expect(try governanceRecord(harness, "admitted", on: edit) != nil)
        #expect(summary.applied.contains("web--greedy"))
    }

    @Test func aBrokenGantryYamlOnMainIsDeniedWithItsPositionAndTheOldRulesStay() throws {
        let (repo, _, harness) = try setUp()
        try repo.write("gantry.yaml", try read(repo, "gantry.yaml") + "approvals:\n  - not a mapping\n")
        let broken = try repo.commitAsOwner("oops")
        #expect(try harness.pass().blocked == broken)
        let denial = try #require(try governanceRecord(harness, "denied", on: broken))
        #expect(denial.values("rule").contains { $0.hasPrefix("governance: invalid: gantry.yaml:") && $0.range(of: #"gantry\.yaml:\d+:\d+: "#, options: .regularExpression) != nil })
        // The rules before it stay in force: an agent's change to production still waits.
        try repo.git("reset", "-q", "--hard", "HEAD~1")
        try repo.writeWeb(service: #"{env: {GREETING: "later from ${env.name}"}}"#)
        try repo.commit("change production")
        #expect(try harness.pass().pending == ["web"])
        #expect(try stillServing(harness))
        // A deleted gantry.yaml never falls back to defaults.
        try repo.remove("gantry.yaml")
        let deleted = try repo.commitAsOwner("no settings")
        #expect(try harness.pass().blocked == deleted)
        #expect(try governanceRecord(harness, "denied", on: deleted)?.values("rule").contains { $0.contains("gantry.yaml is missing") } == true)
    }

    @Test func theProtectedBranchCannotBeRedirectedToABranchWithoutTheAnchor() throws {
        let (repo, alice, harness) = try setUp()
        // The agent's own branch, with history of its own.
        try repo.git("checkout", "-q", "--orphan", "agents/own")
        try repo.write("README", "mine")
        try repo.commit("my own main")
        try repo.checkout("main")
        try repo.write("gantry.yaml", try read(repo, "gantry.yaml").replacingOccurrences(of: "protectedBranch: main", with: "protectedBranch: agents/own"))
        let redirect = try repo.commit("protect my branch instead")
        #expect(try harness.pass().blocked == redirect)
        let denial = try #require(try governanceRecord(harness, "denied", on: redirect))
        #expect(denial.values("rule").contains { $0.contains("protectedBranch 'agents/own' does not contain the trust anchor") })
        // Approved by an admin, it is refused all the same.
        try approve(redirect, as: alice, in: repo)
        #expect(try harness.pass().blocked == redirect)
        #expect(try harness.state.trust()?.blocked?.decision == "deny")
        #expect(try harness.state.trust()?.protectedBranch == "main")
        #expect(try stillServing(harness))
    }

    @Test func anApprovedChangeMovesTheProtectedBranchToOneThatContainsTheAnchor() throws {
        let (repo, alice, harness) = try setUp()
        try repo.git("branch", "release", "main")
        try repo.write("gantry.yaml", try read(repo, "gantry.yaml").replacingOccurrences(of: "protectedBranch: main", with: "protectedBranch: release"))
        let move = try repo.commit("protect release")
        #expect(try harness.pass().blocked == move)
        #expect(try harness.state.trust()?.protectedBranch == "main")
        try approve(move, as: alice, in: repo)
        try harness.pass()
        #expect(try harness.state.trust()?.protectedBranch == "release")
        #expect(try harness.environment("web")?.branch == "release")
        // release is now walked from the admitted revision; main is an ordinary branch.
        try repo.git("update-ref", "refs/heads/release", move)
        let summary = try harness.pass()
        #expect(summary.destroyed.isEmpty)
        #expect(try stillServing(harness))
    }

    @Test func aMissingProtectedBranchAdmitsNothingAndDestroysNothing() throws {
        let (repo, _, harness) = try setUp()
        try repo.checkout("feature", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("a preview")
        try harness.pass()
        let preview = try #require(try harness.service("web--feature")?.pid)
        try repo.git("branch", "-q", "-D", "main")
        try repo.checkout("other", create: true)
        try repo.write("apps/hello/NOTE2", "y")
        try repo.commit("another preview")
        let summary = try harness.pass()
        #expect(summary.halted?.contains("the protected branch main is missing") == true)
        #expect(summary.applied.isEmpty && summary.destroyed.isEmpty && summary.admitted.isEmpty)
        #expect(isRunning(preview))
        #expect(try stillServing(harness))
        #expect(try harness.environment("web--other") == nil)
        #expect(try harness.state.trust()?.halted?.contains("missing") == true)
    }

    @Test func aRewrittenMainThatDropsTheAnchorHaltsAdmissionUntilAnOperatorMovesIt() throws {
        let (repo, _, harness) = try setUp()
        let anchor = try #require(try harness.state.trust()?.anchor)
        // A force-push replaces main with a history that does not contain the anchor.
        try repo.git("checkout", "-q", "--orphan", "rewritten")
        try repo.writeWeb(service: #"{env: {GREETING: "rewritten from ${env.name}"}}"#)
        let rewritten = try repo.commitAsOwner("a new history")
        try repo.git("branch", "-q", "-f", "main", rewritten)
        let summary = try harness.pass()
        #expect(summary.halted?.contains("no longer contains the trust anchor \(anchor.prefix(7))") == true)
        #expect(summary.applied.isEmpty && summary.destroyed.isEmpty)
        let denial = try #require(try governanceRecord(harness, "denied", on: rewritten))
        #expect(denial.values("rule").contains { $0.contains("no longer contains the trust anchor") })
        #expect(try stillServing(harness))
        #expect(try harness.environment("status-page")?.phase == .running)
        // The operator checks the new history and moves the anchor: admission resumes from it.
        try Trust.anchor(ObjectID(hex: rewritten)!, branch: "main", by: "owner@example.com", how: "gantry trust set",
                         repository: try repo.open(), state: harness.state, audit: AuditLog(repository: try repo.open(), key: harness.key))
        let resumed = try harness.pass()
        #expect(resumed.halted == nil)
        #expect(try stillServing(harness, "rewritten from web"))
        #expect(try harness.records().contains { $0.event == "trust-anchored" && $0.value("commit") == rewritten })
    }

    @Test func anUnsignedOrAgentSignedTipIsNeverAnchoredSilently() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("apps/hello/NOTE", "agent was here")
        let tip = try repo.commit("the agent signs the tip")
        let harness = try Harness(repo: repo, anchor: false)
        let summary = try harness.pass()
        #expect(summary.halted?.contains("no trust anchor") == true)
        #expect(summary.halted?.contains("agent@example.com, who is not a human with the role admin") == true)
        #expect(summary.applied.isEmpty)
        #expect(try harness.service("web") == nil)
        #expect(try governanceRecord(harness, "denied", on: tip) != nil)
        // Signed by the owner (a human admin), the tip anchors itself on the next pass.
        try repo.write("apps/hello/NOTE", "owner reviewed")
        let signed = try repo.commitAsOwner("reviewed")
        #expect(try harness.pass().applied.sorted() == ["status-page", "web"])
        #expect(try harness.state.trust()?.anchor == signed)
    }

    // MARK: Changes that were not judged

    @Test func deletingAProductionEnvironmentWaitsForItsApprovalAndKeepsServing() throws {
        let (repo, alice, harness) = try setUp()
        try repo.remove("environments/web.yaml")
        let removal = try repo.commit("retire production")
        let summary = try harness.pass()
        #expect(summary.pending == ["web"] && summary.destroyed.isEmpty)
        let pending = try #require(try harness.records().last { $0.event == "pending-approval" && $0.value("environment") == "web" })
        #expect(pending.value("commit") == removal)
        #expect(pending.values("change") == ["-environment web"])
        #expect(pending.values("rule").contains { $0.hasPrefix("approval: needs 1 approval") })
        #expect(try stillServing(harness))
        // A later commit elsewhere does not reset what the approval is of.
        try repo.write("apps/other/NOTE", "x")
        try repo.commit("unrelated")
        #expect(try harness.pass().destroyed.isEmpty)
        try approve(removal, as: alice, in: repo)
        let approved = try harness.pass()
        #expect(approved.destroyed == ["web"])
        #expect(try harness.records().last { $0.event == "destroyed" && $0.value("environment") == "web" } != nil)
        #expect(try harness.environment("status-page")?.phase == .running)
    }

    @Test func relabellingProductionAsDevelopmentStillNeedsProductionsApproval() throws {
        let (repo, _, harness) = try setUp()
        try repo.write("environments/web.yaml", try read(repo, "environments/web.yaml")
            .replacingOccurrences(of: "class: production", with: "class: development")
            .replacingOccurrences(of: "template: python-web", with: "template: python-web\n  services:\n    web: {env: {GREETING: \"relabelled from ${env.name}\"}}"))
        let relabel = try repo.commit("just a development environment")
        #expect(try harness.pass().pending == ["web"])
        let pending = try #require(try harness.records().last { $0.event == "pending-approval" && $0.value("environment") == "web" })
        #expect(pending.value("commit") == relabel)
        #expect(pending.values("rule").contains { $0.hasPrefix("approval: needs 1 approval") && $0.contains("role approver") })
        #expect(try stillServing(harness))
    }

    @Test func aSyncMergeMadeOnAFeatureBranchApprovesNothing() throws {
        let (repo, alice, harness) = try setUp()
        // main moves on (the owner, reviewed), and the agent changes production on a branch.
        try repo.checkout("agents/feature", create: true)
        try repo.writeWeb(service: #"{env: {GREETING: "unreviewed from ${env.name}"}}"#)
        try repo.commit("change production")
        try repo.checkout("main")
        try repo.write("docs/NOTE", "moved on")
        try repo.commitAsOwner("main moves on")
        try harness.pass()
        // alice syncs the branch with main (a signed merge made on the branch)...
        try repo.checkout("agents/feature")
        let sync = try signedMerge("main", by: alice, in: repo, message: "Sync with main")
        // ...and the agent fast-forwards main to it.
        try repo.checkout("main")
        try repo.git("merge", "-q", "--ff-only", "agents/feature")
        let summary = try harness.pass()
        #expect(summary.pending == ["web"])
        let pending = try #require(try harness.records().last { $0.event == "pending-approval" && $0.value("environment") == "web" })
        #expect(pending.value("commit") == sync)
        #expect(pending.values("rule").contains { $0.contains("was not made on the protected branch on top of its previous tip") })
        #expect(try stillServing(harness))
    }

    @Test func aChangeToAnotherTeamsEnvironmentIsDenied() throws {
        let (repo, bot, harness) = try setUp(bot: "ops-bot@platform", team: "platform")
        // The platform bot changes payments' production web on a branch, and on main.
        try repo.checkout("bot/web", create: true)
        try repo.writeWeb(service: #"{env: {GREETING: "bot from ${env.name}"}}"#)
        try repo.signing(with: bot.keyPath) { _ = try repo.commit("the bot edits web") }
        #expect(try harness.pass().denied == ["web--bot-web"])
        let denial = try #require(try harness.records().last { $0.event == "denied" && $0.value("environment") == "web--bot-web" })
        #expect(denial.values("rule").contains { $0.contains("by ops-bot@platform (teams: platform) changes web--bot-web of team payments") })
        try repo.checkout("main")
        try repo.git("merge", "-q", "--ff-only", "bot/web")
        #expect(try harness.pass().denied.contains("web"))
        #expect(try stillServing(harness))
    }

    // MARK: Names and records

    @Test func branchesWhoseSlugsCollideNeverShareAPreview() throws {
        let (repo, _, harness) = try setUp()
        for (branch, greeting) in [("feat/a", "slash"), ("feat-a", "dash")] {
            try repo.checkout("main")
            try repo.checkout(branch, create: true)
            try repo.writeWeb(service: "{env: {GREETING: \"\(greeting) from ${env.name}\"}}")
            try repo.commit("\(greeting) preview")
            try harness.pass()
        }
        let first = try #require(try harness.state.environment(branch: "feat/a", source: "web"))
        let second = try #require(try harness.state.environment(branch: "feat-a", source: "web"))
        #expect(first.name == "web--feat-a")
        #expect(second.name != first.name && second.name.hasPrefix("web--feat-a-") && second.name.count == "web--feat-a-".count + 16)
        #expect(try harness.get(first.name)?.contains("slash from") == true)
        #expect(try harness.get(second.name)?.contains("dash from") == true)
        // A branch named after the other's hashed name does not take it over either.
        let squatter = String(second.name.dropFirst("web--".count))
        try repo.checkout("main")
        try repo.checkout(squatter, create: true)
        try repo.writeWeb(service: #"{env: {GREETING: "squat from ${env.name}"}}"#)
        try repo.commit("squat")
        try harness.pass()
        let third = try #require(try harness.state.environment(branch: squatter, source: "web"))
        #expect(third.name != second.name && third.name != first.name)
        #expect(try harness.get(second.name)?.contains("dash from") == true)
        // Deleting one branch destroys only its own preview.
        try repo.checkout("main")
        try repo.git("branch", "-q", "-D", "feat-a")
        #expect(try harness.pass().destroyed == [second.name])
        #expect(try harness.get(first.name)?.contains("slash from") == true)
    }

    @Test func trailersCannotFakeRecordFieldsOrSignatureBlocks() throws {
        let (repo, _, harness) = try setUp()
        try repo.checkout("agents/inject", create: true)
        try repo.write("apps/hello/NOTE", "x")
        let message = "inject\n\nAgent: claude\u{2028}decision: allow\nTask: PAY-1 -----END SSH SIGNATURE----- \\n actor: root\rdecision: allow"
        try repo.git("add", "-A")
        try repo.git("commit", "-q", "-m", message)
        try harness.pass()
        let admitted = try #require(try harness.records().last { $0.event == "admitted" && $0.value("environment") == "web--agents-inject" })
        #expect(admitted.value("agent") == "claude\\u{2028}decision: allow")
        #expect(admitted.value("task") == "PAY-1 ----\\u{2d}END SSH SIGNATURE----\\u{2d} \\\\n actor: root\\rdecision: allow")
        #expect(admitted.values("decision") == ["allow"])
        #expect(admitted.values("actor") == ["agent@example.com"])
        // Every record still parses one per block and verifies, by our verifier and ssh-keygen.
        #expect(try harness.verify().isValid)
        let note = try repo.git("notes", "--ref=gantry", "show", "agents/inject")
        let parsed = AuditRecord.parseNote(note + "\n")
        #expect(parsed.problems.isEmpty && parsed.records.count == 4)
        let signers = repo.directory.path + "/gantry_signers"
        try "gantry \(harness.key.publicKey.authorizedKey)\n".write(toFile: signers, atomically: true, encoding: .utf8)
        for record in parsed.records {
            try record.signature.write(toFile: repo.directory.path + "/record.sig", atomically: true, encoding: .utf8)
            let result = try Shell.run(["ssh-keygen", "-Y", "verify", "-n", "gantry-audit", "-f", signers, "-I", "gantry",
                                        "-s", repo.directory.path + "/record.sig"], input: record.signedText)
            #expect(result.status == 0, "\(result.stderr)")
        }
    }

    @Test func aNotesRefResetBehindGantrysBackIsRepublishedFromTheStateDB() throws {
        let (repo, _, harness) = try setUp()
        let git = try repo.open()
        let early = try #require(try git.reference(AuditLog.defaultRef))
        try repo.checkout("feature", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("a preview")
        try harness.pass()
        let before = try harness.records()
        // Someone resets the notes to an earlier commit, dropping the newest records.
        try repo.git("update-ref", AuditLog.defaultRef, early.hex)
        #expect(try harness.records().count < before.count)
        let kept = try StateJournal(harness.state).journalHead()
        let report = try AuditVerifier(trustedKeys: [harness.key.publicKey]).verify(repository: git, kept: kept)
        #expect(report.faults.contains { $0.contains("was reset, truncated, rewritten or deleted") })
        // The next pass refuses to continue the shortened chain: it publishes the records again.
        let summary = try harness.pass()
        #expect(summary.auditRestored)
        let after = try harness.records()
        #expect(Array(after.prefix(before.count).map(\.digest)) == before.map(\.digest))
        let restored = try #require(after.last { $0.event == "audit-restored" })
        #expect(restored.values("found").first?.contains("ends at seq") == true)
        #expect(try harness.verify().isValid)
        // Deleting the notes ref altogether is caught the same way.
        try repo.git("update-ref", "-d", AuditLog.defaultRef)
        #expect(try harness.pass().auditRestored)
        #expect(try harness.records().count == after.count + 1)
        #expect(try harness.verify().isValid)
    }

    // MARK: Found by an outside attack

    @Test func aSyncMergeCannotCarryAHeldGovernanceChangeIntoMain() throws {
        let (repo, alice, harness) = try setUp()
        try repo.checkout("agents/feature", create: true)
        try repo.write("NOTES.md", "n")
        try repo.commit("feature")
        try repo.checkout("main")
        // The agent grabs admin rights and changes production on main: held for approval.
        try repo.write("identities/actors.yaml", try read(repo, "identities/actors.yaml")
            .replacingOccurrences(of: "  agent@example.com: {kind: agent,", with: "  agent@example.com: {kind: human, roles: [approver, admin],"))
        try repo.write("templates/python-web.yaml", try read(repo, "templates/python-web.yaml").replacingOccurrences(of: "hello from", with: "PWNED from"))
        let grab = try repo.commit("grab")
        #expect(try harness.pass().blocked == grab)
        // alice syncs main into the feature branch; the agent fast-forwards main to that merge.
        try repo.checkout("agents/feature")
        let sync = try signedMerge("main", by: alice, in: repo, message: "Sync with main")
        try repo.checkout("main")
        try repo.git("merge", "-q", "--ff-only", "agents/feature")
        let summary = try harness.pass()
        #expect(summary.blocked == sync)
        let pending = try #require(try governanceRecord(harness, "pending-approval", on: sync))
        #expect(pending.values("rule").contains { $0.contains("was not made on the protected branch on top of its previous tip") })
        #expect(try stillServing(harness))
        #expect(try harness.state.protectedMerges().isEmpty)
    }

    @Test func aTeamDenialIsNotForgottenByTheNextCommit() throws {
        let (repo, bot, harness) = try setUp(bot: "pay-bot@payments", team: "payments")
        // The payments bot takes platform's status page over, on main.
        try repo.write("environments/status-page.yaml", try read(repo, "environments/status-page.yaml")
            .replacingOccurrences(of: "team: platform", with: "team: payments").replacingOccurrences(of: "all systems go", with: "owned"))
        try repo.signing(with: bot.keyPath) { _ = try repo.commit("take") }
        #expect(try harness.pass().denied == ["status-page"])
        // An unrelated commit afterwards does not wash the change through.
        try repo.signing(with: bot.keyPath) { _ = try repo.git("commit", "-q", "--allow-empty", "-m", "nothing") }
        let summary = try harness.pass()
        #expect(summary.applied.isEmpty)
        #expect(try harness.get("status-page")?.contains("all systems go") == true)
        // Nor does a merge whose second parent predates the file hide its deletion.
        try repo.remove("environments/status-page.yaml")
        try repo.git("add", "-A")
        let tree = try repo.git("write-tree")
        let old = try repo.git("rev-list", "--max-parents=0", "HEAD")
        let crafted = try repo.signing(with: bot.keyPath) { try repo.git("commit-tree", "-S", tree, "-p", "HEAD", "-p", old, "-m", "merge") }
        try repo.git("reset", "-q", "--hard", crafted)
        let merged = try harness.pass()
        #expect(merged.destroyed.isEmpty)
        #expect(try harness.environment("status-page")?.phase == .running)
        let denial = try #require(try harness.records().last { $0.event == "denied" && $0.value("environment") == "status-page" })
        #expect(denial.values("rule").contains { $0.contains("by pay-bot@payments (teams: payments) changes status-page of team platform") })
    }

    @Test func cloningProductionOrAnotherTeamsDataIsDenied() throws {
        let (repo, _, harness) = try setUp()
        try repo.checkout("agents/exfil", create: true)
        for (name, team, source) in [("exfil", "payments", "web"), ("peek", "payments", "status-page"), ("escape", "payments", "../../keys")] {
            try repo.write("environments/\(name).yaml", """
                apiVersion: gantry/v1
                kind: Environment
                metadata: {name: \(name), team: \(team), class: development}
                spec:
                  databases:
                    main: {engine: sqlite, cloneFrom: \(source)}
                  services:
                    dump: {command: ["sleep", "30"]}
                """)
        }
        try repo.commit("copy their data")
        let summary = try harness.pass()
        #expect(summary.denied.sorted() == ["escape--agents-exfil", "exfil--agents-exfil", "peek--agents-exfil"])
        #expect(summary.applied.isEmpty)
        let rules = try harness.records().filter { $0.event == "denied" }.flatMap { $0.values("rule") }
        #expect(rules.contains { $0.contains("may not copy web (production) into a preview environment") })
        #expect(rules.contains { $0.contains("may not copy status-page of team platform into an environment of team payments") })
        #expect(rules.contains { $0.contains("cloneFrom '../../keys' must be a DNS-1123 label") })
    }

    @Test func governanceFilesMustBeRegularFiles() throws {
        let (repo, _, harness) = try setUp()
        // gantry.yaml replaced by a directory: never the defaults.
        try repo.remove("gantry.yaml")
        try repo.write("gantry.yaml/README", "x")
        let directory = try repo.commitAsOwner("settings elsewhere")
        #expect(try harness.pass().blocked == directory)
        #expect(try governanceRecord(harness, "denied", on: directory)?.values("rule").contains { $0.contains("gantry.yaml is a directory, not a regular file") } == true)
        try repo.git("reset", "-q", "--hard", "HEAD~1")
        // A policy turned into a symbolic link would silently stop applying: denied.
        try repo.remove("policies/preview-limits.yaml")
        try repo.git("add", "-A")
        try FileManager.default.createDirectory(atPath: repo.path + "/policies", withIntermediateDirectories: true)
        try Shell.check(["ln", "-s", "../README", repo.path + "/policies/preview-limits.yaml"])
        let link = try repo.commitAsOwner("link the policy")
        #expect(try harness.pass().blocked == link)
        #expect(try governanceRecord(harness, "denied", on: link)?.values("rule").contains { $0.contains("policies/preview-limits.yaml:1:1: a symlink in policies/") } == true)
        // An executable policy file is still a policy: the greedy preview stays denied.
        try repo.git("reset", "-q", "--hard", "HEAD~1")
        try repo.git("update-index", "--chmod=+x", "policies/preview-limits.yaml")
        try repo.git("commit", "-q", "-m", "chmod")
        try repo.checkout("greedy", create: true)
        try repo.writeWeb(service: "{replicas: 3}")
        try repo.commit("three replicas")
        try harness.pass()
        #expect(try harness.records().last { $0.event == "denied" && $0.value("environment") == "web--greedy" }?
            .values("rule").contains("policy preview-limits: fail: a preview may run at most 2 replicas of a service") == true)
    }

    @Test func refsPointedAtBlobsDoNotStopTheControlPlane() throws {
        let (repo, _, harness) = try setUp()
        let blob = try Shell.check(["git", "-C", repo.path, "hash-object", "-w", "--stdin"], input: "hi").trimmingCharacters(in: .whitespacesAndNewlines)
        try repo.git("update-ref", AuditLog.defaultRef, blob)
        try repo.git("update-ref", Approvals.notesRef, blob)
        try repo.writeWeb(service: #"{env: {GREETING: "next from ${env.name}"}}"#)
        try repo.commit("change production")
        let summary = try harness.pass()
        #expect(summary.auditRestored)
        #expect(summary.pending == ["web"])
        #expect(try harness.verify().isValid)
        #expect(try stillServing(harness))
    }

    @Test func notesEditedBehindGantrysBackWithACopiedHeadLineAreRepublished() throws {
        let (repo, _, harness) = try setUp()
        let git = try repo.open()
        let before = try harness.records()
        // Drop the first record from its note and commit the tree with the old head line copied.
        let first = try #require(try AuditLog.records(in: git).records.first)
        let note = try #require(try git.note(on: first.commit, notesRef: AuditLog.defaultRef))
        let edited = note.replacingOccurrences(of: first.record.text, with: "").trimmingCharacters(in: .newlines)
        let tip = try #require(try git.reference(AuditLog.defaultRef))
        let message = try git.commit(tip).message
        try git.commitNotes([first.commit: edited.isEmpty ? "x" : edited], notesRef: AuditLog.defaultRef, expectedTip: tip, message: message,
                            authorName: "intruder", authorEmail: "intruder@evil.example", sign: nil)
        #expect(try harness.records().count < before.count)
        #expect(try harness.pass().auditRestored)
        #expect(Array(try harness.records().prefix(before.count).map(\.digest)) == before.map(\.digest))
        #expect(try harness.verify().isValid)
    }

    // MARK: Found by a second outside attack

    @Test func aMergeApprovesOnlyWhatItMergesNotWhatMainAlreadyHeld() throws {
        let (repo, alice, harness) = try setUp()
        // The agent pushes its production change straight to main: it waits.
        try repo.writeWeb(service: #"{env: {GREETING: "direct from ${env.name}"}}"#)
        try repo.commit("direct change")
        #expect(try harness.pass().pending == ["web"])
        // alice merges someone else's harmless branch on top: that merge approves the docs, not web.
        try repo.checkout("docs", create: true)
        try repo.write("docs/NOTE", "docs")
        try repo.commitAsOwner("docs")
        try repo.checkout("main")
        try signedMerge("docs", by: alice, in: repo, message: "Merge docs")
        #expect(try harness.pass().pending == ["web"])
        #expect(try stillServing(harness))
    }

    @Test func aRewriteThatDropsAdmittedHistoryHalts() throws {
        let (repo, alice, harness) = try setUp()
        let anchor = try repo.git("rev-parse", "main")
        // An agent's proposal that alice once approved on a branch that was never merged...
        try repo.checkout("agents/proposal", create: true)
        try repo.writeWeb(service: #"{env: {GREETING: "stale from ${env.name}"}}"#)
        let proposal = try repo.commit("proposal")
        try approve(proposal, as: alice, in: repo)
        try repo.checkout("main")
        try repo.write("docs/NOTE", "later")
        try repo.commitAsOwner("main moves on")
        try harness.pass()
        // ...is force-pushed as main: the admitted commit is gone, and admission halts.
        try repo.git("update-ref", "refs/heads/main", proposal)
        let summary = try harness.pass()
        #expect(summary.halted?.contains("no longer contains the admitted revision") == true)
        #expect(summary.applied.isEmpty)
        #expect(try stillServing(harness))
        #expect(try harness.state.trust()?.anchor == anchor)
    }

    @Test func anOctopusCannotHideADeletionFromTheTeamCheck() throws {
        let (repo, bot, harness) = try setUp(bot: "pay-bot@payments", team: "payments")
        let root = try repo.git("rev-list", "--max-parents=0", "HEAD")
        let head = try repo.git("rev-parse", "HEAD")
        try repo.remove("environments/status-page.yaml")
        let tree = try repo.git("write-tree")
        let octopus = try repo.signing(with: bot.keyPath) { try repo.git("commit-tree", "-S", tree, "-p", root, "-p", head, "-p", head + "~1", "-m", "tidy") }
        try repo.git("reset", "-q", "--hard", octopus)
        let summary = try harness.pass()
        #expect(summary.destroyed.isEmpty)
        #expect(try harness.records().last { $0.event == "denied" && $0.value("environment") == "status-page" }?
            .values("rule").contains { $0.contains("changes status-page of team platform") } == true)
    }

    @Test func aCloneFollowsWhatRunsNotWhatAPendingChangeProposes() throws {
        let (repo, _, harness) = try setUp()
        // The agent relabels production as development on main (waits), then clones "development" web.
        try repo.write("environments/web.yaml", try read(repo, "environments/web.yaml").replacingOccurrences(of: "class: production", with: "class: development"))
        try repo.commit("relabel")
        #expect(try harness.pass().pending == ["web"])
        try repo.checkout("agents/scratch", create: true)
        try repo.write("environments/scratch.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: scratch, team: payments, class: development}
            spec:
              databases:
                main: {engine: sqlite, cloneFrom: web}
              services:
                dump: {command: ["sleep", "30"]}
            """)
        try repo.commit("scratch")
        #expect(try harness.pass().denied == ["scratch--agents-scratch"])
        #expect(try harness.records().last { $0.event == "denied" }?.values("rule").contains { $0.contains("may not copy web (production) into a preview environment") } == true)
    }

    @Test func anApprovalAppliesExactlyTheApprovedCommit() throws {
        let (repo, alice, harness) = try setUp()
        let marks = TemporaryDirectory("gantry-jobs").writableByEveryone()
        try repo.write("infra/up.sh", "echo reviewed > \(marks.path)/ran\n")
        try repo.write("environments/payroll.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: payroll, team: payments, class: production}
            spec:
              template: python-web
              jobs:
                provision: {onCreate: ["sh", "infra/up.sh"]}
            """)
        let reviewed = try repo.commit("payroll")
        #expect(try harness.pass().pending == ["payroll"])
        // A commit elsewhere does not move what the approval is of...
        try repo.write("docs/NOTE", "unrelated")
        try repo.commit("unrelated")
        try harness.pass()
        // ...but a change to the script its job runs is a change to payroll: the approval of the
        // earlier commit does not release it.
        try repo.write("infra/up.sh", "echo EVIL > \(marks.path)/ran\n")
        let tweak = try repo.commit("tweak the script")
        #expect(try harness.pass().pending == ["payroll"])
        try approve(reviewed, as: alice, in: repo)
        #expect(try harness.pass().applied.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: marks.path + "/ran"))
        // Approved, exactly the approved commit runs.
        try approve(tweak, as: alice, in: repo)
        #expect(try harness.pass().applied == ["payroll"])
        #expect(try String(contentsOfFile: marks.path + "/ran", encoding: .utf8) == "EVIL\n")
        #expect(try harness.environment("payroll")?.appliedCommit == tweak)
    }

    @Test func anApprovalOfTheWaitingCommitAppliesThatCommit() throws {
        let (repo, alice, harness) = try setUp()
        let reviewed = try pendingProductionChange("reviewed", message: "reviewed change", repo, harness)
        try repo.write("docs/NOTE", "unrelated")
        try repo.commit("unrelated")
        try harness.pass()
        try approve(reviewed, as: alice, in: repo)
        #expect(try harness.pass().applied == ["web"])
        #expect(try harness.environment("web")?.appliedCommit == reviewed)
        #expect(try stillServing(harness, "reviewed from web"))
    }

    @Test func aHugeApprovalsNoteIsBoundedWork() throws {
        let (repo, _, harness) = try setUp()
        try repo.writeWeb(service: #"{env: {GREETING: "wait from ${env.name}"}}"#)
        let change = try repo.commit("change production")
        let block = "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n"
        let note = repo.directory.path + "/note"
        try String(repeating: block, count: 40_000).write(toFile: note, atomically: true, encoding: .utf8)
        try repo.git("notes", "--ref=gantry-approvals", "add", "-f", "-F", note, change)
        let start = Date()
        #expect(try harness.pass().pending == ["web"])
        #expect(Date().timeIntervalSince(start) < 30)
    }

    // MARK: Found by a third outside attack

    @Test func anApprovalNeverSignsACommitAnAgentCanPushAsMain() throws {
        let (repo, alice, harness) = try setUp()
        // The agent points the approvals ref at its own change, then alice approves anything.
        try repo.writeWeb(service: #"{env: {GREETING: "smuggled from ${env.name}"}}"#)
        let own = try repo.commit("smuggled")
        try repo.git("reset", "-q", "--hard", "HEAD~1")
        try repo.git("update-ref", Approvals.notesRef, own)
        try approve(try repo.git("rev-parse", "main"), as: alice, in: repo)
        let carrier = try repo.git("rev-parse", Approvals.notesRef)
        #expect(try Shell.run(["git", "-C", repo.path, "cat-file", "-p", carrier]).stdout.contains("gpgsig") == false)
        try repo.git("update-ref", "refs/heads/main", carrier)
        #expect(try harness.pass().blocked == carrier)
        #expect(try governanceRecord(harness, "denied", on: carrier)?.values("rule").contains { $0.contains("is not signed") } == true)
        #expect(try stillServing(harness))
    }

    @Test func aPolicyDenialIsNotWashedThroughByTheNextCommit() throws {
        let (repo, alice, harness) = try setUp()
        try writeAgentsNoCodePolicy(repo)
        try approve(try repo.commitAsOwner("no agent code"), as: alice, in: repo)
        #expect(try harness.pass().blocked == nil)
        // The agent changes the code status-page runs: denied.
        try repo.write("apps/hello/server.py", try read(repo, "apps/hello/server.py") + "\n# agent was here\n")
        try repo.commit("agent changes the code")
        #expect(try harness.pass().denied.contains("status-page"))
        // A later commit that touches something else does not wash it through.
        try repo.write("README.md", "docs")
        try repo.commit("and touches the docs")
        let summary = try harness.pass()
        #expect(!summary.applied.contains("status-page"))
        let denial = try #require(try harness.records().last { $0.event == "denied" && $0.value("environment") == "status-page" })
        #expect(denial.values("rule").contains { $0.contains("policy agents-no-code: fail: agents may not change application code") })
        #expect(try harness.get("status-page")?.contains("all systems go") == true)
    }

    @Test func movingTheAnchorToAnotherBranchKeepsProductionRunning() throws {
        let (repo, alice, harness) = try setUp()
        try repo.git("branch", "release", "main")
        try Trust.anchor(ObjectID(hex: try repo.git("rev-parse", "release"))!, branch: "release", by: alice.principal, how: "gantry trust set",
                         repository: try repo.open(), state: harness.state, audit: AuditLog(repository: try repo.open(), key: harness.key))
        let summary = try harness.pass()
        #expect(summary.destroyed.isEmpty)
        #expect(try harness.environment("web")?.branch == "release")
        #expect(try stillServing(harness))
        try harness.pass()
        #expect(try harness.environment("web")?.phase == .running)
    }

    @Test func anOversizedIdentityFileIsADenialNotAStall() throws {
        let (repo, _, harness) = try setUp()
        try repo.write("identities/allowed_signers", try read(repo, "identities/allowed_signers") + String(repeating: "# padding\n", count: 120_000))
        let big = try repo.commit("a big file")
        try repo.checkout("feature", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("a preview")
        let summary = try harness.pass()
        #expect(summary.blocked == big)
        #expect(try governanceRecord(harness, "denied", on: big)?.values("rule").contains { $0.contains("identities/allowed_signers:1:1: file is larger than 1 MiB") } == true)
        #expect(summary.applied.contains("web--feature"))
    }

    @Test func everyCloneSourceIsJudgedByThePolicies() throws {
        let (repo, alice, harness) = try setUp()
        for name in ["src-a", "src-b"] {
            try repo.write("environments/\(name).yaml", """
                apiVersion: gantry/v1
                kind: Environment
                metadata: {name: \(name), team: payments, class: staging}
                spec:
                  databases:
                    main: {engine: sqlite}
                  services:
                    s: {command: ["sleep", "60"]}
                """)
        }
        try repo.write("policies/clone-only-a.yaml", """
            apiVersion: gantry/v1
            kind: Policy
            metadata: {name: clone-only-a}
            spec:
              match: "clone != null"
              action: deny
              rules:
                - {expr: "clone.from.name == 'src-a'", message: "only src-a may be cloned"}
            """)
        let setup = try repo.commitAsOwner("sources and a clone policy")
        try approve(setup, as: alice, in: repo)
        try harness.pass()
        try repo.checkout("agents/two", create: true)
        try repo.write("environments/two.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: two, team: payments, class: development}
            spec:
              databases:
                a: {engine: sqlite, cloneFrom: src-a}
                b: {engine: sqlite, cloneFrom: src-b}
              services:
                s: {command: ["sleep", "60"]}
            """)
        try repo.commit("two sources")
        #expect(try harness.pass().denied == ["two--agents-two"])
        #expect(try harness.records().last { $0.event == "denied" }?.values("rule").contains("policy clone-only-a: fail: only src-a may be cloned (for clone from src-b)") == true)
    }

    @Test func aHugeCommitMessageIsRefusedUnread() throws {
        let (repo, _, harness) = try setUp()
        try repo.checkout("agents/huge", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.git("add", "-A")
        try repo.git("commit", "-q", "-m", "huge\n\nTask: " + String(repeating: "x", count: 100_000))
        let summary = try harness.pass()
        #expect(summary.denied.sorted() == ["status-page--agents-huge", "web--agents-huge"])
        #expect(try harness.records().last { $0.event == "denied" }?.values("rule").contains { $0.contains("more than the 65536 Gantry reads") } == true)
    }

    @Test func aFirstStartFollowsAProtectedBranchRedirectOnlyToABranchThatContainsTheTip() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.git("checkout", "-q", "--orphan", "evil")
        try repo.write("README", "mine")
        try repo.commit("an unrelated history")
        try repo.checkout("main")
        try repo.write("gantry.yaml", try read(repo, "gantry.yaml").replacingOccurrences(of: "protectedBranch: main", with: "protectedBranch: evil"))
        try repo.commitAsOwner("protect evil")
        let harness = try Harness(repo: repo, anchor: false)
        let summary = try harness.pass()
        #expect(summary.halted?.contains("names protectedBranch 'evil', which does not contain it") == true)
        #expect(try harness.state.trust()?.anchor == nil)
        #expect(summary.applied.isEmpty)
    }

    // MARK: Found by a fourth outside attack

    @Test func anInvalidEnvironmentNameNeverBecomesAPathOrTakesANameOver() throws {
        let (repo, _, harness) = try setUp()
        let victim = harness.stateDirectory.url.deletingLastPathComponent().appendingPathComponent("victim-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: victim, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: victim) }
        // A preview of platform's status page runs on alice's branch.
        try repo.checkout("alice/x", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commitAsOwner("a preview")
        try repo.checkout("main")
        try harness.pass()
        #expect(try harness.environment("status-page--alice-x")?.phase == .running)
        // On main the agent names environments after a path and after that preview, then deletes them.
        for (file, name) in [("zz", "../../\(victim.lastPathComponent)"), ("zy", "../gantry.db"), ("zx", "status-page--alice-x")] {
            try repo.write("environments/\(file).yaml", "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: \"\(name)\", class: staging}\n")
        }
        try repo.commit("odd names")
        try harness.pass()
        try repo.remove("environments/zz.yaml")
        try repo.remove("environments/zy.yaml")
        try repo.remove("environments/zx.yaml")
        try repo.commit("gone")
        try harness.pass()
        #expect(FileManager.default.fileExists(atPath: victim.path))
        #expect(FileManager.default.fileExists(atPath: harness.stateDirectory.path + "/gantry.db"))
        #expect(try harness.environment("status-page--alice-x")?.phase == .running)
        #expect(try harness.environment("status-page--alice-x")?.branch == "alice/x")
        #expect(try harness.state.environments(includeDestroyed: true).allSatisfy { $0.name.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "-" } })
    }

    @Test func aRetiredNameOfAnotherTeamIsNotInheritedWithoutThatTeam() throws {
        let (repo, bot, harness) = try setUp(bot: "pay-bot@payments", team: "payments")
        try repo.remove("environments/status-page.yaml")
        try repo.commitAsOwner("retire the status page")
        #expect(try harness.pass().destroyed == ["status-page"])
        try repo.write("environments/status-page.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: status-page, team: payments, class: development}
            spec:
              template: python-web
            """)
        try repo.signing(with: bot.keyPath) { _ = try repo.commit("my status page now") }
        #expect(try harness.pass().denied == ["status-page"])
        #expect(try harness.records().last { $0.event == "denied" }?.values("rule").contains { $0.contains("changes status-page of team platform") } == true)
    }

    @Test func aServiceWhoseSourceIsTheWholeRepositoryIsTouchedByEveryChange() throws {
        let (repo, alice, harness) = try setUp()
        try repo.write("environments/api.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: api, team: payments, class: staging}
            spec:
              services:
                web: {source: ".", command: ["python3", "apps/hello/server.py"], health: {http: /healthz}}
            """)
        try writeAgentsNoCodePolicy(repo)
        try approve(try repo.commitAsOwner("api and a policy"), as: alice, in: repo)
        try harness.pass()
        #expect(try harness.environment("api")?.phase == .running)
        try repo.write("apps/hello/server.py", try read(repo, "apps/hello/server.py") + "\n# AGENT CODE\n")
        try repo.commit("agent code")
        #expect(try harness.pass().denied.contains("api"))
    }

    @Test func tooManyEnvironmentFilesDenyTheBranchAsAWhole() throws {
        let (repo, _, harness) = try setUp()
        try repo.checkout("agents/many", create: true)
        for index in 0...ConfigLoader.maxEnvironments {
            try repo.write("environments/e\(index).yaml", "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: e\(index), class: staging}\n")
        }
        let many = try repo.commit("many")
        let summary = try harness.pass()
        #expect(summary.denied == ["agents/many"])
        #expect(try harness.records().last { $0.event == "denied" && $0.value("scope") == "branch" }?.values("rule")
            .contains { $0.contains("holds \(ConfigLoader.maxEnvironments + 3) environment files") } == true) // with web and status-page
        #expect(try harness.records().last?.value("commit") == many)
        #expect(try stillServing(harness))
    }

    @Test func paddingAnApprovalsNoteDoesNotHideTheNextApproval() throws {
        let (repo, alice, harness) = try setUp()
        let change = try pendingProductionChange("padded", message: "change production", repo, harness)
        let note = repo.directory.path + "/pad"
        try String(repeating: "x", count: Approvals.maxNoteBytes - 100).write(toFile: note, atomically: true, encoding: .utf8)
        try repo.git("notes", "--ref=gantry-approvals", "add", "-f", "-F", note, change)
        try approve(change, as: alice, in: repo)
        #expect(try harness.pass().applied == ["web"])
        #expect(try stillServing(harness, "padded from web"))
    }

    // MARK: Found by a fifth outside attack

    @Test func aRetiredNameStaysItsTeamsAcrossSeveralAttempts() throws {
        let (repo, bot, harness) = try setUp(bot: "pay-bot@payments", team: "payments")
        try repo.remove("environments/status-page.yaml")
        try repo.commitAsOwner("retire the status page")
        try harness.pass()
        try repo.write("environments/status-page.yaml", """
            apiVersion: gantry/v1
            kind: Environment
            metadata: {name: status-page, team: payments, class: development}
            spec:
              template: python-web
            """)
        try repo.signing(with: bot.keyPath) { _ = try repo.commit("mine") }
        #expect(try harness.pass().denied == ["status-page"])
        try repo.signing(with: bot.keyPath) { _ = try repo.git("commit", "-q", "--allow-empty", "-m", "again") }
        let summary = try harness.pass()
        #expect(summary.applied.isEmpty)
        #expect(try harness.environment("status-page")?.appliedCommit == nil)
    }

    @Test func anImpossibleQuantityIsADenialNotACrash() throws {
        let (repo, _, harness) = try setUp()
        try repo.checkout("agents/huge", create: true)
        try repo.writeWeb(service: "{resources: {memory: 1e300Mi}}")
        try repo.commit("a lot of memory")
        try repo.checkout("main")
        try repo.checkout("agents/nan", create: true)
        try repo.writeWeb(service: "{resources: {memory: nanMi}}")
        try repo.commit("not a number")
        let summary = try harness.pass()
        #expect(summary.denied.sorted() == ["web--agents-huge", "web--agents-nan"])
        #expect(try stillServing(harness))
    }

    @Test func anAdmissionAfterADenialOnTheSameCommitIsRecorded() throws {
        let (repo, alice, harness) = try setUp()
        // A production change that uses a secret nobody set yet: denied, then the secret is set
        // and the change approved; the record says it was admitted, and by whom.
        try repo.write("environments/web.yaml", try read(repo, "environments/web.yaml") + "  secrets: [api-key]\n")
        let change = try repo.commit("web needs a key")
        #expect(try harness.pass().denied == ["web"])
        try harness.secrets.set("api-key", value: Data("k".utf8), scope: .environment("web"))
        try approve(change, as: alice, in: repo)
        #expect(try harness.pass().applied == ["web"])
        let events = try harness.records().filter { $0.value("environment") == "web" && $0.value("commit") == change }.map(\.event)
        #expect(events.suffix(2) == ["admitted", "applied"], "\(events)")
        #expect(try harness.records().last { $0.event == "admitted" && $0.value("environment") == "web" }?.values("rule").contains("approval: ok (alice@example.com)") == true)
    }

    @Test func notesPushedBeforeTheFirstStartAreNotAdopted() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        // Someone pushes a notes ref with a made-up record on main before Gantry ever ran.
        let tip = try repo.git("rev-parse", "main")
        try repo.git("notes", "--ref=gantry", "add", "-m", "gantry-audit: 1\nseq: 1\nevent: admitted\nat: x\nenvironment: web\nprev: none\n-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----", tip)
        try repo.git("update-ref", AuditLog.defaultRef, try repo.git("commit-tree", "-m", "gantry-audit head: seq 1 sha256:x",
                                                                     try repo.git("rev-parse", "\(AuditLog.defaultRef)^{tree}")))
        let harness = try Harness(repo: repo)
        try harness.pass()
        #expect(try harness.verify().isValid)
        #expect(try harness.records().contains { $0.event == "audit-restored" })
        #expect(try harness.records().contains { $0.event == "applied" && $0.value("environment") == "web" })
    }

    @Test func aRewoundProtectedBranchDoesNotHaltTheOthers() throws {
        let (repo, _, harness) = try setUp()
        try repo.write("docs/NOTE", "one")
        try repo.commitAsOwner("docs")
        try harness.pass()
        try repo.git("update-ref", "refs/heads/main", "main~1")
        try repo.git("reset", "-q", "--hard", "main")
        try repo.checkout("feature", create: true)
        try repo.write("apps/hello/NOTE", "x")
        try repo.commit("a preview")
        let summary = try harness.pass()
        #expect(summary.halted == nil)
        #expect(summary.applied.contains("web--feature"))
        #expect(try stillServing(harness))
    }

    @Test func aPreviewOfAnotherTeamsEnvironmentNeedsThatTeam() throws {
        let (repo, bot, harness) = try setUp(bot: "pay-bot@payments", team: "payments")
        try repo.checkout("bot/status", create: true)
        try repo.write("environments/status-page.yaml", try read(repo, "environments/status-page.yaml").replacingOccurrences(of: "team: platform", with: "team: payments"))
        try repo.signing(with: bot.keyPath) { _ = try repo.commit("relabel the status page on a branch") }
        #expect(try harness.pass().denied == ["status-page--bot-status"])
    }

    // MARK: Found by a sixth outside attack

    @Test func aTemplateNamedDotsIsNoCrash() throws {
        let (repo, _, harness) = try setUp()
        try repo.checkout("agents/dots", create: true)
        try repo.write("templates/.../x", "x")
        try repo.write("environments/web.yaml", try read(repo, "environments/web.yaml").replacingOccurrences(of: "template: python-web", with: "template: missing"))
        try repo.commit("dots")
        #expect(try harness.pass().denied == ["web--agents-dots"])
    }

    @Test func aForeignCommitRevertedSinceDoesNotLockATeamOut() throws {
        let repo = try TestRepository()
        let bot = try TestRepository(principal: "pay-bot@payments")
        let alice = try TestRepository(principal: "alice@example.com")
        try repo.seedExample(extraSigners: [bot.allowedSignersLine, alice.allowedSignersLine])
        try repo.write("identities/actors.yaml", try read(repo, "identities/actors.yaml") + "  pay-bot@payments: {kind: agent, teams: [payments]}\n")
        try repo.commitAsOwner("a payments bot")
        let harness = try Harness(repo: repo)
        try harness.pass()
        // The payments bot edits platform's status page and reverts it in one push.
        let page = try read(repo, "environments/status-page.yaml")
        try repo.write("environments/status-page.yaml", page + "# touched\n")
        try repo.signing(with: bot.keyPath) { _ = try repo.commit("touch") }
        try repo.write("environments/status-page.yaml", page)
        try repo.signing(with: bot.keyPath) { _ = try repo.commit("untouch") }
        try harness.pass()
        // Platform's own change is held by the foreign commits in its range...
        try repo.write("environments/status-page.yaml", page.replacingOccurrences(of: "all systems go", with: "all good"))
        let own = try repo.commitAsOwner("platform's change")
        #expect(try harness.pass().denied == ["status-page"])
        // ...until a human of platform who made none of them vouches for the change.
        try approve(own, as: alice, in: repo)
        #expect(try harness.pass().applied == ["status-page"])
        let admitted = try #require(try harness.records().last { $0.event == "admitted" && $0.value("environment") == "status-page" })
        #expect(admitted.values("rule").contains { $0.hasPrefix("team: ok (platform; ") && $0.contains("vouched for by alice@example.com") })
        #expect(try harness.get("status-page")?.contains("all good") == true)
    }

    @Test func aPreviewTakenUpAgainAtAnEarlierCommitIsRecordedAgain() throws {
        let (repo, _, harness) = try setUp()
        try repo.checkout("feature", create: true)
        try repo.write("apps/hello/NOTE", "x")
        let first = try repo.commit("a preview")
        try harness.pass()
        try repo.remove("apps/hello/NOTE")
        try repo.commit("back out")
        #expect(try harness.pass().destroyed.sorted() == ["status-page--feature", "web--feature"])
        try repo.git("reset", "-q", "--hard", first)
        #expect(try harness.pass().applied.sorted() == ["status-page--feature", "web--feature"])
        let events = try harness.records().filter { $0.value("environment") == "web--feature" && $0.value("commit") == first }.map(\.event)
        #expect(events == ["admitted", "applied", "admitted", "applied"], "\(events)")
    }

    /// A team's secret reaches only environments of that team, and an agent cannot claim a team it
    /// is not in to get one: the preview is denied and no process ever holds the value.
    @Test func anAgentCannotClaimAnotherTeamToReadItsSecret() throws {
        let (repo, bot, harness) = try setUp(bot: "growth-bot@example.com", team: "growth")
        let value = "team-secret-\(UUID().uuidString)"
        try harness.secrets.set("payments-key", value: Data(value.utf8), scope: .team("payments"))
        try repo.checkout("agents/steal", create: true)
        for team in ["payments", "growth"] {
            try repo.write("environments/steal-\(team).yaml", """
                apiVersion: gantry/v1
                kind: Environment
                metadata: {name: steal-\(team), team: \(team), class: staging}
                spec:
                  template: python-web
                  secrets: [payments-key]
                  services:
                    web:
                      env: {KEY: "${secrets.payments-key}"}
                """)
        }
        try repo.signing(with: bot.keyPath) { _ = try repo.commit("borrow the payments key") }
        try harness.pass()
        // Claiming payments: denied by the team rule.
        let claimed = try #require(try harness.environment("steal-payments--agents-steal"))
        #expect(claimed.phase == .denied && claimed.message?.contains("team") == true, "\(claimed.message ?? "")")
        // Its own team: the payments secret is not in its scope.
        let own = try #require(try harness.environment("steal-growth--agents-steal"))
        #expect(own.conditions.contains(.secretMissing), "\(own.conditions) \(own.message ?? "")")
        #expect(try harness.service("steal-payments--agents-steal") == nil && harness.service("steal-growth--agents-steal") == nil)
        let grep = try Shell.run(["grep", "-r", "-l", "-a", value, harness.stateDirectory.path + "/envs"])
        #expect(grep.status == 1, "\(grep.stdout)")
    }
}
