import ArgumentParser
import Audit
import Foundation
import GitStore
import Governance
import Reconciler
import SpecLoading
import StateStore

struct TrustCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "trust", abstract: "The trust anchor of the protected branch.",
                                                    subcommands: [Show.self, SetAnchor.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The anchor, the admitted revision, and what admission waits for.")
        @OptionGroup var state: StateOption
        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            let paths = StatePaths(root: state.directory)
            guard FileManager.default.fileExists(atPath: paths.database), let trust = try StateStore(path: paths.database).trust() else {
                throw Failure("no trust state at \(paths.root.path): start `gantry run`, or set an anchor with `gantry trust set COMMIT --key KEY`")
            }
            if json {
                print(GovernanceSummary.value(trust).json(indent: "  "))
                return
            }
            for line in GovernanceSummary.lines(trust) { print(Printable.line(line)) }
        }
    }

    struct SetAnchor: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set",
            abstract: "Set or move the trust anchor to COMMIT of the protected branch (an operator's act, recorded).")
        @Argument(help: "The commit to anchor (sha, branch or any revision); it must be on the protected branch.")
        var commit: String
        @Option(help: "The operator's SSH private key (unencrypted ed25519): a human with the governance role.")
        var key: String
        @Option(help: "Configuration repository (default: the one `gantry run` watches).")
        var repo: String?
        @OptionGroup var state: StateOption
        @Option(help: "The protected branch (default: the one in the state, else main).")
        var branch: String?

        func run() throws {
            let paths = StatePaths(root: state.directory)
            try FileManager.default.createDirectory(at: paths.root, withIntermediateDirectories: true)
            let location = try RepositoryLocation.resolve(repo, paths: paths)
            let repository = try RepositoryLocation.open(location, paths: paths)
            if repo != nil, !FileManager.default.fileExists(atPath: paths.repositoryFile) {
                let saved = RepositoryLocation.isRemote(location) ? location : URL(fileURLWithPath: location).standardizedFileURL.path
                try Data((saved + "\n").utf8).write(to: URL(fileURLWithPath: paths.repositoryFile))
            }
            let target = try Revision.resolve(commit, in: repository)
            let store = try StateStore(path: paths.database)
            let current = try store.trust()
            let protectedBranch = branch ?? current?.protectedBranch ?? "main"
            guard let tip = try repository.branches()[protectedBranch] else {
                throw Failure("the protected branch \(protectedBranch) does not exist; name it with --branch")
            }
            guard try tip == target || repository.isReachable(target, from: tip) else {
                throw Failure("\(target.short) is not on \(protectedBranch) (tip \(tip.short)); anchor a commit the protected branch contains")
            }
            let text: String
            do { text = try String(contentsOfFile: key, encoding: .utf8) } catch { throw Failure("cannot read the key \(key): \(error)") }
            let signingKey: SigningKey
            do { signingKey = try SigningKey(openSSH: text) } catch { throw Failure("\(key): \(error)") }
            // The operator must be a human with the governance role in the governance in force; only
            // for a first anchor (none in force yet) in the anchored commit's own.
            var refusals: [String] = []
            var operatorName: String?
            let revisions = [current?.revision.flatMap(ObjectID.init(hex:)) ?? target]
            for revision in revisions where operatorName == nil {
                let governance = try GovernanceRevision.load(at: revision, repository: repository)
                switch governance.identity.signers.lookup(signingKey.publicKey, namespace: Trust.namespace, at: Date()) {
                case .allowed(let principal) where governance.mayAnchor(principal): operatorName = principal
                case .allowed(let principal): refusals.append("at \(revision.short), \(principal) is not a human with the governance role")
                default: refusals.append("at \(revision.short), identities/allowed_signers does not allow key \(signingKey.publicKey.fingerprint) for \(Trust.namespace)")
                }
            }
            guard let operatorName else { throw Failure("the key may not move the anchor: \(refusals.joined(separator: "; "))") }
            let audit = AuditLog(repository: repository, key: try SigningKey.loadOrCreate(at: paths.key))
            if RepositoryLocation.isRemote(location) { audit.remote = location }
            audit.journal = StateJournal(store)
            try Trust.anchor(target, branch: protectedBranch, by: "\(operatorName) (\(signingKey.publicKey.fingerprint))", how: "gantry trust set",
                             repository: repository, state: store, audit: audit)
            print("anchored \(target.hex) of \(protectedBranch); its governance is in force and its environments converge as found")
        }
    }
}

/// The trust state as `status` and `trust show` print it.
enum GovernanceSummary {
    static func lines(_ trust: TrustState) -> [String] {
        var lines = ["protected branch: \(trust.protectedBranch)"]
        lines.append("trust anchor: \(trust.anchor ?? "none")" + (trust.anchoredBy.map { " (\($0))" } ?? ""))
        lines.append("admitted revision: \(trust.revision ?? "none")")
        if let halted = trust.halted { lines.append("admission halted: \(halted)") }
        if let blocked = trust.blocked {
            lines.append("held at \(blocked.commit.prefix(7)): \(blocked.decision == "pending" ? "waits for approval" : "denied")")
            lines += blocked.rules.map { "  rule \($0)" } + blocked.remedies.map { "  to satisfy: \($0)" }
        }
        return lines
    }

    static func value(_ trust: TrustState) -> PlainValue {
        var fields: [(key: String, value: PlainValue)] = [
            ("protectedBranch", .string(trust.protectedBranch)), ("anchor", trust.anchor.map { .string($0) } ?? .null),
            ("anchoredBy", trust.anchoredBy.map { .string($0) } ?? .null), ("revision", trust.revision.map { .string($0) } ?? .null),
            ("halted", trust.halted.map { .string($0) } ?? .null),
        ]
        fields.append(("blocked", trust.blocked.map {
            .map([("commit", .string($0.commit)), ("decision", .string($0.decision)), ("rules", .list($0.rules.map { .string($0) })),
                  ("remedies", .list($0.remedies.map { .string($0) }))])
        } ?? .null))
        return .map(fields)
    }
}
