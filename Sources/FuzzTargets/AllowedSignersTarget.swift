import Audit
import Foundation
import GitStore
import Governance
import SpecModel

/// The input is three parts separated by `\n%%\n` lines: an `identities/allowed_signers` file, a
/// commit signature (an armored `SSH SIGNATURE` block, or its binary blob, which is armored here),
/// and a commit message. The file is parsed and every key it lists looked up; then a commit with
/// that message and that `gpgsig` header is written on a scratch repository, read back
/// (`signature(of:)`, `commit(_:)`, trailers) and judged by `IdentityJudge` as admission does.
///
/// The commit is made with a fixed tree, author and date, so a seed can carry a signature that
/// verifies: `ssh-keygen -Y sign -n git` over `payload(message:)`.
enum AllowedSignersTarget {
    static let now = Date(timeIntervalSince1970: 1_735_689_600)
    static let authorName = "gantry-fuzz"
    static let authorEmail = "fuzz@localhost"

    /// identities/actors.yaml of example-repo/.
    static let actors: [String: Actor] = {
        var alice = Actor(principal: "alice@example.com", kind: .human)
        alice.teams = ["payments", "platform"]
        alice.roles = ["approver", "admin"]
        var claude = Actor(principal: "claude@payments", kind: .agent)
        claude.teams = ["payments"]
        claude.actsFor = ["alice@example.com"]
        return [alice.principal: alice, claude.principal: claude]
    }()

    /// The bytes a commit with `message` made by this target signs.
    public static func payload(message: String) -> String {
        let stamp = "\(authorName) <\(authorEmail)> \(Int(now.timeIntervalSince1970)) +0000"
        return "tree \(ScratchRepository.emptyTree.hex)\nauthor \(stamp)\ncommitter \(stamp)\n\n\(message)"
    }

    static func run(_ data: Data) {
        let parts = FuzzTarget.parts(data, count: 3)
        let signers = AllowedSigners(text: String(decoding: parts[0], as: UTF8.self))
        for diagnostic in signers.diagnostics { FuzzTarget.trace("allowed_signers: \(diagnostic)") }
        for entry in signers.entries.prefix(64) {
            for namespace in ["git", "file"] { _ = signers.lookup(entry.key, namespace: namespace, at: now) }
        }
        let armored = parts[1].starts(with: Data("SSHSIG".utf8))
            ? SSHSigTarget.armor(parts[1], label: "SSH SIGNATURE")
            : String(decoding: parts[1], as: UTF8.self)
        let message = String(decoding: parts[2], as: UTF8.self)
        let judge = IdentityJudge(signers: signers, actors: actors, required: true)
        _ = ScratchRepository.shared.use { repository in
            do {
                let id = try repository.createCommit(tree: ScratchRepository.emptyTree, parents: [], message: message,
                                                     authorName: authorName, authorEmail: authorEmail, date: now,
                                                     sign: parts[1].isEmpty ? nil : { _ in armored })
                let commit = try repository.commit(id)
                _ = commit.trailers
                let identity = judge.judge(commit, signature: try repository.signature(of: id), now: now)
                FuzzTarget.trace("identity: principal \(identity.principal ?? "none"), problem: \(identity.problem ?? "none")")
                _ = identity.people(of: commit)
                _ = identity.teams(actors: actors)
            } catch {
                FuzzTarget.trace("error: \(error)")
            }
        }
    }
}
