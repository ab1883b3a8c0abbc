import Audit
import Foundation
import GitStore
import Governance
@testable import LocalDriver
import Logging
import Reconciler
import StateStore
import TestSupport

/// A real reconciler with the local driver over a real repository and state directory.
final class Harness: @unchecked Sendable {
    let repo: TestRepository
    let stateDirectory: TemporaryDirectory
    let state: StateStore
    let key: SigningKey
    let driver: LocalDriver
    /// The secret store the driver resolves from (`driver.secrets`).
    let secrets: SecretStore
    let reconciler: Reconciler

    /// A new reconciler; with `reusing`, a restart over the same state directory (a new process would
    /// have the same view: the state DB, the key and the running services).
    /// With `anchor` (the default) main's tip is anchored as an operator would with
    /// `gantry trust set`, unless the state already has an anchor.
    init(repo: TestRepository, reusing previous: Harness? = nil, stateDirectory given: TemporaryDirectory? = nil, detectOnly: Bool = false, anchor: Bool = true,
         configure: (inout LocalDriver.Options) -> Void = { _ in }, reconcile: (inout Reconciler.Options) -> Void = { _ in }) throws {
        self.repo = repo
        stateDirectory = previous?.stateDirectory ?? given ?? TemporaryDirectory("gantry-state")
        state = try StateStore(path: stateDirectory.path + "/gantry.db")
        key = try SigningKey.loadOrCreate(at: stateDirectory.path + "/keys/gantry_ed25519")
        let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
        let git = try repo.open()
        var options = LocalDriver.Options()
        options.startTimeout = 15
        options.stopGrace = 2
        configure(&options)
        driver = LocalDriver(stateDirectory: stateDirectory.url, state: state, logger: logger, options: options)
        secrets = try SecretStore(state: state, keyPath: stateDirectory.path + "/keys/secrets.key")
        driver.secrets = secrets
        var reconcilerOptions = Reconciler.Options()
        reconcilerOptions.detectOnly = detectOnly
        reconcile(&reconcilerOptions)
        let audit = AuditLog(repository: git, key: key)
        reconciler = Reconciler(repository: git, state: state, audit: audit, driver: driver, logger: logger, options: reconcilerOptions)
        reconciler.useSecrets(secrets)
        if anchor, try state.trust()?.anchor == nil, let main = try git.resolveCommit("refs/heads/main") {
            try Trust.anchor(main, branch: "main", by: "the test's operator", how: "gantry trust set", repository: git, state: state, audit: audit)
        }
    }

    deinit { driver.shutdown() }

    @discardableResult
    func pass() throws -> Reconciler.PassSummary { try reconciler.runPass() }

    func environment(_ name: String) throws -> EnvironmentRecord? { try state.environment(name) }

    func service(_ environment: String, _ name: String = "web") throws -> ServiceRecord? {
        try state.services(of: environment).first { $0.name == name }
    }

    /// Why an environment may not be serving: its record, its service's process and last output.
    func diagnose(_ environment: String) -> String {
        let record = try? state.environment(environment)
        let service = try? self.service(environment)
        let alive = service?.pid.map { ProcessControl.isAlive($0, start: service?.pidStart) } ?? false
        let output = LocalDriver.recentOutput(stateDirectory: stateDirectory.url, environment: environment)
        return "\(environment): \(record?.phase.rawValue ?? "none") \(record?.message ?? ""); service \(service?.phase ?? "none") pid \(service?.pid ?? 0) alive \(alive) restarts \(service?.restarts ?? 0) last exit \(service?.lastExit ?? "-"); output \(output)"
    }

    func get(_ environment: String, _ path: String = "/") throws -> String? {
        guard let service = try service(environment) else { return nil }
        return httpGet(url(service) + path)
    }

    /// `command` the way the environment's own code runs (as root: in its network namespace, as its
    /// user; otherwise as is).
    func inEnvironment(_ environment: String, _ command: [String]) throws -> [String] {
        guard let uid = try state.allocations(LocalDriver.uidAllocation, of: environment).first.flatMap({ uid_t($0) }),
              Networks.exists(uid) else { return command }
        return Networks.entering(uid, LocalDriver.asUser(uid, command))
    }

    /// Where the host reaches a service: its environment's own address (network namespace) or loopback.
    func url(_ service: ServiceRecord) -> String {
        "http://\(LocalDriver.address(of: service.environment, in: state)):\(service.port)"
    }

    func records() throws -> [AuditRecord] {
        try AuditLog.records(in: try repo.open()).records.map(\.record)
    }

    func verify() throws -> AuditVerifier.Report {
        try AuditVerifier(trustedKeys: [key.publicKey]).verify(repository: try repo.open())
    }
}

func isRunning(_ pid: Int32?) -> Bool {
    guard let pid else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
    return !stat.contains(") Z ")
}

/// `gantry approve COMMIT` by the repository's owner (a human admin and approver).
func approveAsOwner(_ commit: String, _ repo: TestRepository) throws {
    let key = try SigningKey(openSSH: try String(contentsOfFile: repo.ownerKeyPath, encoding: .utf8))
    try Approvals.approve(ObjectID(hex: commit)!, key: key, in: try repo.open())
}

/// A seeded repository whose main also lists alice (a human approver and admin in example-repo's
/// actors.yaml), anchored and converged: web (production) and status-page (staging) serve.
func seededWithAlice() throws -> (repo: TestRepository, alice: TestRepository, harness: Harness) {
    let repo = try TestRepository()
    let alice = try TestRepository(principal: "alice@example.com")
    try repo.seedExample(extraSigners: [alice.allowedSignersLine])
    let harness = try Harness(repo: repo)
    try harness.pass()
    return (repo, alice, harness)
}

/// `gantry approve COMMIT` by `approver` (a repository whose key and principal stand for a person).
func approve(_ commit: String, as approver: TestRepository, in repo: TestRepository) throws {
    let key = try SigningKey(openSSH: try String(contentsOfFile: approver.keyPath, encoding: .utf8))
    try Approvals.approve(ObjectID(hex: commit)!, key: key, in: try repo.open())
}

/// `signer` merges `branch` into the branch checked out (a signed `--no-ff` merge); its id.
@discardableResult
func signedMerge(_ branch: String, by signer: TestRepository, in repo: TestRepository, message: String) throws -> String {
    try repo.signing(with: signer.keyPath) {
        try repo.git("merge", "-q", "--no-ff", "-m", message, branch)
        return try repo.git("rev-parse", "HEAD")
    }
}
