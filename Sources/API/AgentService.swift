import Audit
import Foundation
import GitStore
import Governance
import Logging
import Reconciler
import SpecLoading
import SpecModel
import StateStore

/// Who calls the API: a token's principal, as the protected branch's identities describe it now.
public struct Caller: Sendable {
    public let tokenID: String
    public let principal: String
    public let actor: Actor

    public var isAdmin: Bool { actor.kind == .human && actor.roles.contains("admin") }
    /// The branch prefix under which the API makes this principal's environments.
    public var branchPrefix: String { "agents/\(principal)/" }
}

/// The one service layer under the HTTP API and the MCP server: every answer is a `PlainValue`
/// (JSON) or an `APIError`. It holds the rules of who may do what; the transports only carry.
///
/// A token acts as its principal under the governance of the last admitted protected revision,
/// read at each request (a principal removed from identities/actors.yaml on main loses its
/// tokens' power at once). What changes environments goes through Git, signed with Gantry's key
/// and an `Api-Actor:` trailer, and is judged by the reconciler like any push.
public final class AgentService: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// The repository Gantry watches: a local path (or its mirror of a remote, see `remote`).
        public var repositoryPath: String
        /// Where branches the API makes are pushed, when the repository mirrors a remote.
        public var remote: String?
        public var stateDirectory: URL
        /// The protected branch until the trust state names one.
        public var protectedBranch = "main"
        /// Requests per second each token may make on average, and at once.
        public var requestsPerSecond = 20.0
        public var burst = 60.0
        /// Longest `exec` a caller may ask for, and the default.
        public var maxExecSeconds = 600.0
        public var defaultExecSeconds = 60.0
        /// Longest `?wait=serving`.
        public var maxWaitSeconds = 600.0
        /// Requests each token may have under way at once.
        public var maxInFlight = 8
        /// The token `gantry agent` proves itself with (nil: no data plane; its endpoints answer 404).
        public var dataPlaneToken: String?

        public init(repositoryPath: String, stateDirectory: URL) {
            self.repositoryPath = repositoryPath
            self.stateDirectory = stateDirectory
        }
    }

    public let configuration: Configuration
    public let store: StateStore
    let key: SigningKey
    let observer: any EnvironmentObserver
    let logger: Logger
    /// Runs `exec`; nil where no driver runs (`gantry api` alone).
    public var executor: (any EnvironmentExecutor)?
    /// An environment's recent log lines (file, lines), secret values masked.
    public var logs: (@Sendable (_ environment: String, _ tail: Int) -> [(file: String, lines: [String])])?
    /// Where the router listens, when one runs.
    public var routerPort: @Sendable () -> Int? = { nil }
    /// Where `exec` and `destroy-requested` records go.
    public var audit: AuditLog?
    /// Masks secret values.
    public var redact: @Sendable (String) -> String = { $0 }
    /// Wakes the reconciler after the API changed a branch (nil: it sees the change on its own).
    public var wakeReconciler: (@Sendable () -> Void)?
    /// The servers environments share on this host (for the budgets' sharing figures).
    public var sharedServers: @Sendable () -> [SharedServer] = { [] }
    public let metrics = GantryMetrics()
    let limiter: RateLimiter
    public let inFlight: InFlight
    /// Creates refused after their commit was written (the objects stay until Git collects them):
    /// 20 an hour per token.
    let refusedCreates = RateLimiter(rate: 20.0 / 3600, burst: 20)
    /// Governance read at the trusted revision, kept while it is the one in force.
    private let governanceLock = NSLock()
    private var governanceCache: GovernanceRevision?
    /// Branch writes (check, commit, ref) one at a time.
    let writeLock = NSLock()
    /// `madeFor`'s answers, by "principal base tip" (dropped whole past 4096 entries).
    private let ancestryLock = NSLock()
    private var ancestry: [String: Bool] = [:]

    public init(configuration: Configuration, store: StateStore, key: SigningKey, observer: any EnvironmentObserver, logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.key = key
        self.observer = observer
        self.logger = logger
        limiter = RateLimiter(rate: configuration.requestsPerSecond, burst: configuration.burst)
        inFlight = InFlight(limit: configuration.maxInFlight)
    }

    func repository() throws -> GitRepository { try GitRepository.open(path: configuration.repositoryPath) }

    // MARK: Who calls

    /// The caller a `Authorization` header names, or why it names none (401), is over its rate
    /// (429), or has no actor on the protected branch (403).
    public func authenticate(authorization: String?) throws -> Caller {
        guard let authorization, !authorization.isEmpty else {
            throw APIError(401, "unauthorized", "no bearer token was sent",
                           fix: "send `Authorization: Bearer TOKEN`; an operator makes one with `gantry token create --actor PRINCIPAL`")
        }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            throw APIError(401, "unauthorized", "the Authorization header is not `Bearer TOKEN`", fix: "send `Authorization: Bearer TOKEN`")
        }
        let record: TokenRecord
        switch try store.authenticate(String(parts[1]).trimmingCharacters(in: .whitespaces)) {
        case .success(let found): record = found
        case .failure(let problem):
            throw APIError(401, "unauthorized", problem.description, fix: "ask an operator for a valid token (`gantry token create --actor PRINCIPAL`)")
        }
        if let wait = limiter.take(record.id) {
            var error = APIError(429, "rate-limited", "token \(record.id) made more than \(Int(configuration.burst)) requests at once (\(Int(configuration.requestsPerSecond))/s on average)",
                                 fix: "wait \(wait) s (Retry-After) and slow down")
            error.retryAfter = wait
            throw error
        }
        let governance = try trustedGovernance()
        guard let actor = governance.identity.actors[record.actor] else {
            throw APIError.forbidden("token \(record.id) acts as \(record.actor), who has no entry in identities/actors.yaml on \(governance.settings.protectedBranch) (revision \(governance.commit.short))",
                                     fix: "add \(record.actor) to identities/actors.yaml on the protected branch, or use a token of a listed principal")
        }
        return Caller(tokenID: record.id, principal: record.actor, actor: actor)
    }

    /// The governance in force: that of the last admitted protected revision.
    func trustedGovernance() throws -> GovernanceRevision {
        guard let trust = try store.trust(), let hex = trust.revision ?? trust.anchor, let revision = ObjectID(hex: hex) else {
            throw APIError.conflict("Gantry has no trust anchor yet: nothing on the protected branch is admitted, so no principal is known",
                                    fix: "an operator anchors the protected branch (`gantry trust set COMMIT --key KEY`); `gantry status` says how")
        }
        if let cached = governanceLock.withLock({ governanceCache }), cached.commit == revision { return cached }
        let loaded = try GovernanceRevision.load(at: revision, repository: try repository())
        governanceLock.withLock { governanceCache = loaded }
        return loaded
    }

    /// What a caller may see inside (logs, diagnose, exec): an environment of one of its teams,
    /// one the API made for it, one of no team; everything for a human admin.
    func mayInspect(_ caller: Caller, _ record: EnvironmentRecord) -> Bool {
        if caller.isAdmin || madeFor(caller.principal, record) { return true }
        guard let team = record.team else { return true }
        return caller.actor.teams.contains(team)
    }

    /// Whether the API made `record`'s branch for `principal` and the environment is at that
    /// commit, or at one built on it by that principal alone (each commit since made through the
    /// API for it, or signed by it). A branch name proves nothing: anyone who can push can name a
    /// branch `agents/<principal>/...`, or push someone else's commits onto one the API made.
    func madeFor(_ principal: String, _ record: EnvironmentRecord) -> Bool {
        guard let made = try? store.apiBranch(record.branch), made.principal == principal else { return false }
        if made.commit == record.commit { return true }
        let key = "\(principal) \(made.commit) \(record.commit)"
        if let known = ancestryLock.withLock({ ancestry[key] }) { return known }
        let owned: Bool = {
            guard let base = ObjectID(hex: made.commit), let tip = ObjectID(hex: record.commit),
                  let repository = try? repository(), (try? repository.isReachable(base, from: tip)) == true,
                  let since = try? repository.newCommits(tip: tip, hiding: [base], limit: 101), since.count <= 100,
                  let judge = try? trustedGovernance().identity else { return false }
            return since.allSatisfy { id in
                guard let info = try? repository.commit(id) else { return false }
                let identity = judge.judge(info, signature: try? repository.signature(of: id), now: Date())
                return identity.problem == nil && identity.principal == principal
            }
        }()
        ancestryLock.withLock {
            if ancestry.count > 4096 { ancestry.removeAll() }
            ancestry[key] = owned
        }
        return owned
    }

    func inspectable(_ caller: Caller, _ name: String) throws -> EnvironmentRecord {
        let record = try environmentRecord(name, caller: caller)
        guard mayInspect(caller, record) else {
            throw APIError.forbidden("\(caller.principal) is not in team \(record.team ?? "-") of \(record.name)",
                                     fix: "use a token of a principal in team \(record.team ?? "-") (identities/actors.yaml on the protected branch)")
        }
        return record
    }

    /// The environment `name` names: its full name, else the one the API made for the caller
    /// under that short name.
    func environmentRecord(_ name: String, caller: Caller) throws -> EnvironmentRecord {
        if let record = try store.environment(name), record.phase != .destroyed { return record }
        if let record = try store.environments(branch: caller.branchPrefix + name).first(where: { $0.phase != .destroyed }) { return record }
        throw APIError.notFound("no environment named '\(name)'", fix: "GET /v1/environments lists them; an environment the API made is named as its answer's `environment` says")
    }

    // MARK: Reads

    func summary(_ record: EnvironmentRecord) throws -> EnvironmentSummary {
        EnvironmentSummary(record, services: try observer.services(of: record.name), routerPort: routerPort(),
                           sleep: try store.lifecycleState(of: record.name), killSwitch: killSwitch(record))
    }

    public func listEnvironments(_ caller: Caller) throws -> PlainValue {
        let records = try store.environments().filter { mayInspect(caller, $0) }
        return .map([("environments", .list(try records.map { try summary($0).plain }))])
    }

    public func environment(_ caller: Caller, _ name: String) throws -> PlainValue {
        try summary(try inspectable(caller, name)).plain
    }

    public func logs(_ caller: Caller, _ name: String, service: String?, tail: Int?) throws -> PlainValue {
        let record = try inspectable(caller, name)
        let lines = min(max(tail ?? 50, 1), 1000)
        var files = logs?(record.name, lines) ?? []
        if let service {
            let known = Set((record.appliedSpec?.services.map(\.name) ?? []) + (record.appliedSpec?.caches.map { "redis-\($0.name)" } ?? []))
            guard known.contains(service) else {
                throw APIError.notFound("\(record.name) has no service '\(service)'", fix: "services: \(known.sorted().joined(separator: ", "))")
            }
            files = files.filter { $0.file == "\(service).log" }
        }
        return .map([("environment", .string(record.name)),
                     ("files", .list(files.map { file in
                         .map([("file", .string(file.file)), ("lines", .list(file.lines.map { .string(redact($0)) }))])
                     }))])
    }

    public func explain(_ caller: Caller, commit text: String) throws -> PlainValue {
        guard (4...40).contains(text.count), text.allSatisfy(\.isHexDigit) else {
            throw APIError.badRequest("'\(text)' is not a commit id", fix: "give 4 to 40 hex digits of a commit of the configuration repository")
        }
        let repository = try repository()
        guard let commit = try repository.commit(idPrefix: text.lowercased()) else {
            throw APIError.notFound("no commit \(text) in the configuration repository", fix: "push it first; give its full id")
        }
        let admission = Admission(repository: repository, logger: Logger(label: "gantry.api") { _ in SwiftLogNoOpLogHandler() })
        do {
            let lines = try admission.explain(commit: commit, branch: nil, store: store, defaultProtectedBranch: configuration.protectedBranch)
            // An environment's section (`NAME: decision` and its indented rules) is shown only to
            // whoever may see inside it.
            // One Gantry has not recorded yet is judged by the team its file names (fail closed).
            let teams = Dictionary(try ConfigLoader(repository: repository).environments(at: commit).map { ($0.name, $0.spec?.team) },
                                   uniquingKeysWith: { first, _ in first })
            func visible(_ name: String) throws -> Bool {
                if let record = try store.environment(name) { return mayInspect(caller, record) }
                if caller.isAdmin { return true }
                let base = name.components(separatedBy: "--").first ?? name
                guard let team = teams[base] else { return false }
                return team.map { caller.actor.teams.contains($0) } ?? true
            }
            var shown: [PlainValue] = []
            var hidden = 0
            var hiding = false
            for line in lines {
                if !line.hasPrefix(" "), let colon = line.firstIndex(of: ":"), ["allow", "deny", "pending"].contains(line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)) {
                    let name = String(line[..<colon])
                    hiding = try !visible(name)
                    if hiding { hidden += 1 }
                } else if !line.hasPrefix(" ") {
                    hiding = false
                }
                if !hiding { shown.append(.string(line)) }
            }
            if hidden > 0 { shown.append(.string("(\(hidden) environment\(hidden == 1 ? "" : "s") of other teams not shown)")) }
            return .map([("commit", .string(commit.hex)), ("lines", .list(shown))])
        } catch let error as Admission.ExplainError {
            throw APIError.notFound(error.description, fix: "push the commit to a branch")
        }
    }

    /// Audit records, newest first, of the environments the caller may inspect (and those of no
    /// environment: trust anchors, restores).
    public func audit(_ caller: Caller, environment: String?, actor: String?, event: String?, since: String?, limit: Int?) throws -> PlainValue {
        let wanted = min(max(limit ?? 100, 1), 1000)
        if let since, AuditRecord.date(since) == nil {
            throw APIError.badRequest("since=\(since) is not a time", fix: "give an RFC 3339 time such as 2026-12-01T00:00:00Z")
        }
        var rows: [PlainValue] = []
        var before: Int?
        var visible: [String: Bool] = [:]
        scan: while rows.count < wanted {
            let page = try store.recentAuditRecords(environment: environment, limit: 500, beforeSeq: before)
            guard !page.isEmpty else { break }
            for entry in page {
                before = entry.seq
                guard let record = AuditRecord.parseNote(entry.text).records.first else { continue }
                if let since, let at = AuditRecord.date(record.at), let from = AuditRecord.date(since), at < from { break scan }
                if let event, record.event != event { continue }
                if let actor, record.value("actor") != actor { continue }
                if let name = record.value("environment") {
                    let allowed = try visible[name] ?? {
                        let known = try store.environment(name)
                        return known.map { mayInspect(caller, $0) } ?? caller.isAdmin
                    }()
                    visible[name] = allowed
                    guard allowed else { continue }
                }
                rows.append(record.plain(note: entry.target))
                if rows.count == wanted { break scan }
            }
        }
        return .map([("records", .list(rows))])
    }
}
