import Foundation
import GitStore
import Testing
import TestSupport
@testable import Reconciler
import StateStore

/// The adversarial identity scenarios of the governance issue, on real repositories.
@Suite(.serialized) struct IdentityAdmissionTests {
    func branchTouchingWeb(_ repo: TestRepository, _ name: String) throws {
        try repo.checkout("main")
        try repo.checkout(name, create: true)
        try repo.write("apps/hello/\(name).txt", name)
    }

    @Test func admittedRecordsNameTheVerifiedActor() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        try branchTouchingWeb(repo, "signed")
        try repo.commit("a signed change")
        try harness.pass()
        let admitted = try #require(try harness.records().last { $0.event == "admitted" })
        #expect(admitted.value("actor") == "agent@example.com")
        #expect(admitted.value("actor-kind") == "agent")
        #expect(admitted.values("rule").contains("signature: ok (agent@example.com)"))
    }

    @Test func aBranchCannotAdmitItselfByEditingIdentities() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        // An intruder with their own key adds it to allowed_signers and actors.yaml on their branch.
        let intruder = try TestRepository(principal: "intruder@evil.example")
        try branchTouchingWeb(repo, "self-admit")
        let signers = try String(contentsOfFile: repo.path + "/identities/allowed_signers", encoding: .utf8)
        try repo.write("identities/allowed_signers", signers + intruder.allowedSignersLine + "\n")
        try repo.write("identities/actors.yaml", "apiVersion: gantry/v1\nkind: Actors\nactors:\n  intruder@evil.example: {kind: human, roles: [approver]}\n")
        try repo.git("config", "user.signingkey", intruder.keyPath)
        let commit = try repo.commit("let me in")
        let summary = try harness.pass()
        #expect(summary.denied.sorted() == ["status-page--self-admit", "web--self-admit"])
        #expect(summary.applied.isEmpty)
        let denial = try #require(try harness.records().last { $0.event == "denied" })
        #expect(denial.value("commit") == commit)
        #expect(denial.values("rule").contains { $0.contains("which identities/allowed_signers on main does not list") })
        #expect(try harness.environment("web--self-admit")?.conditions == [.admissionDenied])
    }

    @Test func aValidTipOnTopOfAnUnsignedCommitIsDenied() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        try branchTouchingWeb(repo, "sneaky")
        try repo.git("add", "-A")
        try repo.git("-c", "commit.gpgsign=false", "commit", "-q", "-m", "unsigned change")
        let unsigned = try repo.git("rev-parse", "HEAD")
        try repo.write("apps/hello/more.txt", "signed on top")
        try repo.commit("signed tip")
        let summary = try harness.pass()
        #expect(summary.denied.sorted() == ["status-page--sneaky", "web--sneaky"])
        let denial = try #require(try harness.records().last { $0.event == "denied" })
        #expect(denial.values("rule").contains { $0.contains("commit \(unsigned.prefix(7)) is not signed") })
        // Signing the history again (a rewrite) admits it: every new commit is now signed.
        try repo.git("reset", "-q", "--soft", "main")
        try repo.commit("both changes, signed")
        #expect(try harness.pass().applied.sorted() == ["status-page--sneaky", "web--sneaky"])
    }

    @Test func aRevokedKeyIsDenied() throws {
        let repo = try TestRepository()
        let human = try TestRepository(principal: "alice@example.com")
        try repo.seedExample(extraSigners: [human.allowedSignersLine])
        let harness = try Harness(repo: repo)
        try harness.pass()
        // Main revokes the agent's key (valid-before in the past); the revocation itself is signed
        // by a human whose key stays valid.
        let parts = repo.allowedSignersLine.split(separator: " ", maxSplits: 1).map(String.init)
        try repo.write("identities/allowed_signers", "\(parts[0]) valid-before=\"20200101\" \(parts[1])\n\(human.allowedSignersLine)\n\(try repo.ownerSignersLine())\n")
        try repo.git("config", "user.signingkey", human.keyPath)
        let revocation = try repo.commit("revoke the agent's key")
        // A governance change: it waits for an admin other than its author, then takes effect.
        #expect(try harness.pass().blocked == revocation)
        try approveAsOwner(revocation, repo)
        #expect(try harness.pass().blocked == nil)
        try repo.git("config", "user.signingkey", repo.keyPath)
        try branchTouchingWeb(repo, "after-revocation")
        try repo.commit("signed with the revoked key")
        let summary = try harness.pass()
        #expect(summary.denied.sorted() == ["status-page--after-revocation", "web--after-revocation"])
        let denial = try #require(try harness.records().last { $0.event == "denied" })
        #expect(denial.values("rule").contains { $0.contains("expired or was revoked") })
    }

    @Test func onBehalfOfOutsideActsForIsDenied() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        try branchTouchingWeb(repo, "impersonate")
        try repo.commit("pretend\n\nOn-Behalf-Of: bob@example.com")
        #expect(try harness.pass().denied.count == 2)
        let denial = try #require(try harness.records().last { $0.event == "denied" })
        #expect(denial.values("rule").contains { $0.contains("may act only for alice@example.com") })
    }

    @Test func aSignatureOverDifferentContentIsDenied() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        let git = try repo.open()
        let main = try #require(try git.resolveCommit("main"))
        let stolen = try #require(try git.signature(of: main)).signature
        // A commit whose tree adds a file, carrying the signature of main's commit.
        try repo.checkout("forged", create: true)
        try repo.write("apps/hello/EVIL", "x")
        try repo.git("add", "-A")
        let tree = ObjectID(hex: try repo.git("write-tree"))!
        let forged = try git.createCommit(tree: tree, parents: [main], message: "looks signed", authorName: "Test Agent",
                                          authorEmail: "agent@example.com") { _ in stolen }
        try repo.git("update-ref", "refs/heads/forged", forged.hex)
        // git itself rejects it too.
        #expect(try Shell.run(["git", "-C", repo.path, "-c", "gpg.ssh.allowedSignersFile=\(repo.path)/identities/allowed_signers",
                               "verify-commit", forged.hex]).status != 0)
        #expect(try harness.pass().denied.sorted() == ["status-page--forged", "web--forged"])
        let denial = try #require(try harness.records().last { $0.event == "denied" })
        #expect(denial.values("rule").contains { $0.contains("commit \(forged.short) has a signature that does not verify") })
    }

    @Test func anRSASignedCommitIsDeniedWithAClearMessage() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        let harness = try Harness(repo: repo)
        try harness.pass()
        try Shell.check(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", repo.directory.path + "/rsa"])
        try branchTouchingWeb(repo, "rsa")
        try repo.git("config", "user.signingkey", repo.directory.path + "/rsa")
        try repo.commit("signed with RSA")
        #expect(try harness.pass().denied.count == 2)
        let denial = try #require(try harness.records().last { $0.event == "denied" })
        #expect(denial.values("rule").contains { $0.contains("unsupported key type 'ssh-rsa'") && $0.contains("ssh-ed25519") })
    }
}
