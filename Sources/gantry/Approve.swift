import ArgumentParser
import Audit
import Foundation
import Governance

struct Approve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A signed approval of exactly that commit (SSHSIG, namespace gantry-approve), stored on refs/notes/gantry-approvals.")

    @Argument(help: "The commit to approve (sha, branch or any revision).")
    var commit: String
    @Option(help: "The approver's SSH private key (unencrypted ed25519, OpenSSH format).")
    var key: String
    @Option(help: "Configuration repository path.")
    var repo = "."

    func run() throws {
        let repository = try GitRepositoryOpener.open(repo)
        let target = try Revision.resolve(commit, in: repository)
        let text: String
        do { text = try String(contentsOfFile: key, encoding: .utf8) } catch { throw Failure("cannot read the key \(key): \(error)") }
        let signingKey: SigningKey
        do { signingKey = try SigningKey(openSSH: text) } catch { throw Failure("\(key): \(error)") }
        try Approvals.approve(target, key: signingKey, in: repository)
        print("approved \(target.hex) with key \(signingKey.publicKey.fingerprint)")
        print("it counts once the key's principal is a human approver in identities/ on main, distinct from the change's authors")
    }
}
