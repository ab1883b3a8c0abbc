import Audit
import Foundation
import GitStore
import SpecLoading
import SpecModel
import Testing
import TestSupport
@testable import Governance

@Suite struct IdentityTests {
    let actors: [String: Actor] = {
        var agent = Actor(principal: "agent@example.com", kind: .agent)
        agent.actsFor = ["alice@example.com"]
        return ["agent@example.com": agent]
    }()

    /// Judges HEAD of `repo` with `signersText` as allowed_signers, and asks git itself the same.
    func judge(_ repo: TestRepository, _ signersText: String, actors: [String: Actor]? = nil, now: Date = Date())
        throws -> (identity: CommitIdentity, gitAccepts: Bool) {
        let git = try repo.open()
        let head = try #require(try git.resolveCommit("HEAD"))
        let judge = IdentityJudge(signers: AllowedSigners(text: signersText), actors: actors ?? self.actors, required: true)
        let identity = judge.judge(try git.commit(head), signature: try git.signature(of: head), now: now)
        let signersFile = repo.directory.path + "/allowed_signers_check"
        try signersText.write(toFile: signersFile, atomically: true, encoding: .utf8)
        let verdict = try Shell.run(["git", "-C", repo.path, "-c", "gpg.ssh.allowedSignersFile=\(signersFile)", "verify-commit", "HEAD"])
        return (identity, verdict.status == 0)
    }

    @Test func aListedKeyIsVerifiedAsGitVerifiesIt() throws {
        let repo = try TestRepository()
        try repo.commit("signed\n\nOn-Behalf-Of: alice@example.com\nTask: PAY-9")
        let (identity, gitAccepts) = try judge(repo, repo.allowedSignersLine + "\n")
        #expect(identity.problem == nil)
        #expect(identity.principal == "agent@example.com")
        #expect(identity.actor?.kind == .agent)
        #expect(identity.onBehalfOf == "alice@example.com")
        #expect(identity.task == "PAY-9")
        #expect(gitAccepts)
    }

    @Test func anUnsignedCommitWithRepeatedTrailersIsRecordedWithTheFirstAsCELSeesIt() throws {
        let repo = try TestRepository(signing: false)
        try repo.commit("unsigned\n\nOn-Behalf-Of: alice@example.com\nOn-Behalf-Of: mallory@example.com\nTask: A-1\nTask: B-2")
        let git = try repo.open()
        let head = try #require(try git.resolveCommit("HEAD"))
        let identity = IdentityJudge(signers: AllowedSigners(text: ""), actors: actors, required: false)
            .judge(try git.commit(head), signature: nil, now: Date())
        #expect(identity.onBehalfOf == "alice@example.com")
        #expect(identity.task == "A-1")
    }

    // MARK: Commits the API makes: signed by Gantry's key (principal `gantry`) with one Api-Actor

    @Test func aCommitSignedByGantrysKeyActsAsItsOneApiActor() throws {
        let repo = try TestRepository(principal: IdentityJudge.apiPrincipal)
        try repo.commit("Create try1 through the API\n\nApi-Actor: agent@example.com\nTask: PAY-1")
        let (identity, gitAccepts) = try judge(repo, repo.allowedSignersLine + "\n")
        #expect(identity.problem == nil)
        #expect(identity.principal == "agent@example.com")
        #expect(identity.actor?.kind == .agent)
        #expect(identity.viaAPI)
        #expect(gitAccepts)
    }

    @Test func gantrysKeyWithoutOneApiActorProvesNothing() throws {
        for message in ["no trailer", "two\n\nApi-Actor: agent@example.com\nApi-Actor: alice@example.com"] {
            let repo = try TestRepository(principal: IdentityJudge.apiPrincipal)
            try repo.commit(message)
            let (identity, _) = try judge(repo, repo.allowedSignersLine + "\n")
            #expect(identity.principal == nil)
            #expect(identity.problem?.contains("Api-Actor") == true)
            #expect(!identity.viaAPI)
        }
    }

    @Test func anApiActorNotInActorsIsRefused() throws {
        let repo = try TestRepository(principal: IdentityJudge.apiPrincipal)
        try repo.commit("made up\n\nApi-Actor: mallory@example.com")
        let (identity, _) = try judge(repo, repo.allowedSignersLine + "\n")
        #expect(identity.problem?.contains("mallory@example.com") == true)
        #expect(identity.problem?.contains("actors.yaml") == true)
    }

    @Test func aForgedApiActorTrailerOnAnAgentsOwnCommitIsRefused() throws {
        // An agent signs its own commit and claims it came through the API for a human.
        let repo = try TestRepository()
        try repo.commit("forged\n\nApi-Actor: alice@example.com")
        var alice = Actor(principal: "alice@example.com", kind: .human)
        alice.roles = ["approver"]
        var known = actors
        known["alice@example.com"] = alice
        let (identity, gitAccepts) = try judge(repo, repo.allowedSignersLine + "\n", actors: known)
        #expect(gitAccepts)  // the signature itself is good: the trailer is the lie
        #expect(identity.problem?.contains("Api-Actor") == true)
        #expect(identity.principal == nil)
    }

    @Test func unsignedCommitIsDenied() throws {
        let repo = try TestRepository(signing: false)
        try repo.commit("unsigned")
        let (identity, gitAccepts) = try judge(repo, repo.allowedSignersLine + "\n")
        #expect(identity.problem?.contains("is not signed") == true)
        #expect(!gitAccepts)
    }

    @Test func unknownKeyIsDenied() throws {
        let repo = try TestRepository()
        try repo.commit("signed by a key main does not list")
        let other = try TestRepository()
        let (identity, gitAccepts) = try judge(repo, other.allowedSignersLine + "\n")
        #expect(identity.problem?.contains("which identities/allowed_signers on main does not list") == true)
        #expect(!gitAccepts)
    }

    @Test func revokedAndNotYetValidKeysAreDenied() throws {
        let repo = try TestRepository()
        try repo.commit("signed")
        let parts = repo.allowedSignersLine.split(separator: " ", maxSplits: 1).map(String.init)
        let revoked = "\(parts[0]) valid-before=\"20200101\" \(parts[1])\n"
        let (expired, gitAcceptsExpired) = try judge(repo, revoked)
        #expect(expired.problem?.contains("expired or was revoked at 2020-01-01") == true)
        #expect(!gitAcceptsExpired)
        let future = "\(parts[0]) valid-after=\"29990101Z\" \(parts[1])\n"
        let (early, _) = try judge(repo, future)
        #expect(early.problem?.contains("valid only after 2999-01-01") == true)
        // Key rotation: the old key expired, the new one valid from then on.
        let rotated = "\(parts[0]) valid-after=\"20200101\" \(parts[1])\n"
        #expect(try judge(repo, rotated).identity.problem == nil)
    }

    @Test func namespacesAreHonoured() throws {
        let repo = try TestRepository()
        try repo.commit("signed")
        let parts = repo.allowedSignersLine.split(separator: " ", maxSplits: 1).map(String.init)
        let (identity, gitAccepts) = try judge(repo, "\(parts[0]) namespaces=\"file,email\" \(parts[1])\n")
        #expect(identity.problem?.contains("allowed for namespaces file,email only") == true)
        #expect(!gitAccepts)
        #expect(try judge(repo, "\(parts[0]) namespaces=\"git\" \(parts[1])\n").identity.problem == nil)
    }

    @Test func aSignatureOverOtherContentIsRejectedByUsAndBySSHKeygen() throws {
        let repo = try TestRepository()
        let first = ObjectID(hex: try repo.commit("first"))!
        let second = ObjectID(hex: try repo.commit("second"))!
        let git = try repo.open()
        let stolen = try #require(try git.signature(of: first))
        let forged = CommitSignature(signature: stolen.signature, signedData: try #require(try git.signature(of: second)).signedData)
        let judge = IdentityJudge(signers: AllowedSigners(text: repo.allowedSignersLine), actors: actors, required: true)
        let identity = judge.judge(try git.commit(second), signature: forged, now: Date())
        #expect(identity.problem?.contains("does not verify") == true)
        // The outside judge agrees.
        let signatureFile = repo.directory.path + "/stolen.sig", signersFile = repo.directory.path + "/signers"
        try stolen.signature.write(toFile: signatureFile, atomically: true, encoding: .utf8)
        try repo.allowedSignersLine.write(toFile: signersFile, atomically: true, encoding: .utf8)
        let outside = try Shell.run(["ssh-keygen", "-Y", "verify", "-n", "git", "-f", signersFile, "-I", repo.principal, "-s", signatureFile],
                                    input: String(decoding: forged.signedData, as: UTF8.self))
        #expect(outside.status != 0)
    }

    @Test func actorsAndOnBehalfOfComeFromMain() throws {
        let repo = try TestRepository()
        try repo.commit("for someone else\n\nOn-Behalf-Of: mallory@example.com")
        let (identity, _) = try judge(repo, repo.allowedSignersLine)
        #expect(identity.problem?.contains("may act only for alice@example.com") == true)
        let (unlisted, _) = try judge(repo, repo.allowedSignersLine, actors: [:])
        #expect(unlisted.problem?.contains("has no entry in identities/actors.yaml") == true)
    }

    @Test func rsaKeysAreRefusedClearly() throws {
        let directory = TemporaryDirectory()
        try Shell.check(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", directory.path + "/rsa"])
        let publicKey = try String(contentsOfFile: directory.path + "/rsa.pub", encoding: .utf8)
        let signers = AllowedSigners(text: "bob@example.com \(publicKey)")
        #expect(signers.entries.isEmpty)
        #expect(signers.diagnostics.first?.description.hasPrefix("identities/allowed_signers:1:1: key type ssh-rsa is not supported") == true)

        let repo = try TestRepository()
        try repo.git("config", "user.signingkey", directory.path + "/rsa")
        try repo.commit("signed with RSA")
        let (identity, _) = try judge(repo, "bob@example.com \(publicKey)")
        #expect(identity.problem?.contains("ssh-ed25519") == true)
    }

    @Test func allowedSignersSyntax() {
        let text = """
            # comment
            a@x,b@x ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOk+J2ZBm8z0wNf6Dj4c3l4b1Cw1ZyC5lZzS2sC2y5bH comment here
            c@x namespaces="git,file",valid-after="20250101" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOk+J2ZBm8z0wNf6Dj4c3l4b1Cw1ZyC5lZzS2sC2y5bH
            d@x bogus=1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOk+J2ZBm8z0wNf6Dj4c3l4b1Cw1ZyC5lZzS2sC2y5bH
            e@x valid-before="tomorrow" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOk+J2ZBm8z0wNf6Dj4c3l4b1Cw1ZyC5lZzS2sC2y5bH
            """
        let signers = AllowedSigners(text: text)
        #expect(signers.entries.map(\.principals) == [["a@x", "b@x"], ["c@x"]])
        #expect(signers.entries[1].namespaces == ["git", "file"])
        #expect(signers.entries[1].validAfter != nil)
        #expect(signers.diagnostics.map(\.mark.line) == [4, 5])
    }
}
