import ArgumentParser
import Audit
import Foundation
import GitStore
import Governance
import LocalDriver
import Logging
import Reconciler
import StateStore
#if canImport(Glibc)
import Glibc
#endif

/// `gantry kill (--all | --team T | --env E) [--off]`: the kill switch. On, the scope's
/// environments lose every connection through the egress proxy (open tunnels cut, new ones
/// refused) and their processes are frozen; the command returns once the running Gantry did it.
/// Lifting it takes the key of a human with a role.
struct KillCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kill",
        abstract: "Cut environments off (egress refused, tunnels cut, processes frozen), or lift that with --off.")
    @Flag(help: "Every environment.") var all = false
    @Option(help: "Every environment of this team.") var team: String?
    @Option(help: "One environment.") var env: String?
    @Flag(help: "Lift the switch (needs --key of a human with a role).") var off = false
    @Option(help: "Why (kept in the records).") var reason = ""
    @Option(help: "To lift: the SSH private key (OpenSSH ed25519) of a human with a role in identities/actors.yaml.") var key: String?
    @Option(help: "Configuration repository path (default: the one `gantry run` watches).") var repo: String?
    @OptionGroup var state: StateOption

    func validate() throws {
        guard [all, team != nil, env != nil].filter({ $0 }).count == 1 else { throw ValidationError("give exactly one of --all, --team TEAM, --env ENV") }
        if off, key == nil { throw ValidationError("--off needs --key: only a human with a role may lift a kill switch") }
        guard !reason.contains(where: { $0.isNewline }), reason.utf8.count <= 500 else { throw ValidationError("--reason must be one line of at most 500 bytes") }
    }

    func run() throws {
        let paths = StatePaths(root: state.directory)
        guard FileManager.default.fileExists(atPath: paths.database) else { throw Failure("no state in \(paths.root.path) (start `gantry run` there first)") }
        let store = try StateStore(path: paths.database)
        let scope: KillSwitch.Scope = all ? .all : team != nil ? .team : .env
        let name = team ?? env ?? ""
        let label = all ? "every environment" : "\(scope.rawValue) \(name)"
        var actor = "operator:" + (getpwuid(getuid()).flatMap { String(cString: $0.pointee.pw_name) } ?? String(getuid()))
        if off {
            let governance = try trustedGovernance(paths: paths, store: store)
            actor = try lifter(governance)
            if governance.settings.killSwitch {
                throw Failure("killSwitch: true is set in gantry.yaml on \(governance.settings.protectedBranch): revert that commit to lift it")
            }
        }
        let outcome = try KillSwitchRequest.set(store, scope: scope, name: name, on: !off, actor: actor, reason: reason, signal: {
            guard let text = try? String(contentsOfFile: paths.pidFile, encoding: .utf8),
                  let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return false }
            return kill(pid, SIGUSR2) == 0
        })
        let state = off ? "lifted" : "on"
        if outcome.applied {
            let covered = outcome.changed ? "" : " (it already was)"
            print("kill switch \(state) for \(label)\(covered): applied by the running gantry in \(String(format: "%.0f", outcome.seconds * 1000)) ms")
            return
        }
        // No `gantry run`: no proxy runs either (nothing leaves); the processes are frozen (or thawed) here.
        let switches = try store.killSwitches()
        let records = try store.environments().filter { $0.phase != .destroyed }
        let coverage = KillSwitchBoard.coverage(switches: switches, onMain: false, environments: records.map { ($0.name, $0.appliedSpec?.team ?? $0.team) })
        let driver = LocalDriver(stateDirectory: paths.root, state: store, logger: Logger(label: "gantry"))
        // (Its PostgreSQL roles' logins change too: that needs the server's password.)
        driver.secrets = try SecretStore(state: store, keyPath: paths.secretsKey)
        for record in records where (scope == .all || (scope == .env && record.name == name) || (scope == .team && (record.appliedSpec?.team ?? record.team) == name)) {
            driver.setFrozen(record.name, coverage[record.name] != nil)
        }
        LocalDriver.awaitDatabaseLogins()
        print("kill switch \(state) for \(label): recorded; no `gantry run` runs for \(paths.root.path), so the processes were \(off ? "thawed" : "frozen") here (the proxy follows when it starts)")
    }

    func trustedGovernance(paths: StatePaths, store: StateStore) throws -> GovernanceRevision {
        guard let trust = try store.trust(), let hex = trust.revision ?? trust.anchor, let revision = ObjectID(hex: hex) else {
            throw Failure("nothing on the protected branch is admitted yet, so no human with a role is known")
        }
        let repository = try RepositoryLocation.open(try RepositoryLocation.resolve(repo, paths: paths), paths: paths)
        return try GovernanceRevision.load(at: revision, repository: repository)
    }

    /// The principal of `--key` in the allowed signers, if it is a human with a role.
    func lifter(_ governance: GovernanceRevision) throws -> String {
        guard let key else { throw Failure("--off needs --key") }
        let text: String
        do { text = try String(contentsOfFile: key, encoding: .utf8) } catch { throw Failure("cannot read the key \(key): \(error)") }
        let signingKey: SigningKey
        do { signingKey = try SigningKey(openSSH: text) } catch { throw Failure("\(key): \(error)") }
        let principals = governance.identity.signers.entries.filter { $0.key == signingKey.publicKey }.flatMap(\.principals)
        guard !principals.isEmpty else {
            throw Failure("the key \(signingKey.publicKey.fingerprint) is in no allowed_signers entry on \(governance.settings.protectedBranch) (revision \(governance.commit.short))")
        }
        guard let principal = principals.first(where: { governance.identity.actors[$0].map { $0.kind == .human && !$0.roles.isEmpty } ?? false }) else {
            throw Failure("only a human with a role may lift a kill switch; \(principals.joined(separator: ", ")) \(principals.count == 1 ? "is" : "are") not (identities/actors.yaml on \(governance.settings.protectedBranch))")
        }
        return principal
    }
}
