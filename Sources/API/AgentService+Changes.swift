import Audit
import Foundation
import GitStore
import Governance
import Reconciler
import SpecLoading
import SpecModel
import StateStore

extension AgentService {
    /// An environment the API committed: where, and how to follow it.
    public struct Created: Sendable {
        public let environment: String
        public let branch: String
        public let commit: ObjectID
        public let file: String
    }

    /// `POST /v1/environments`: commits `environments/NAME.yaml` to branch
    /// `agents/<principal>/<name>` (made from the protected branch's tip), signed with Gantry's key
    /// with an `Api-Actor:` trailer. The reconciler judges it like any push; nothing else is
    /// trusted to the API. `{"name", "template"}`, `{"name", "spec"}` or `{"name", "cloneFrom"}`,
    /// with optional `team` and `task`.
    public func create(_ caller: Caller, body: Data) throws -> Created {
        let fields = try JSONInput.object(body, what: "the request body")
        try fields.refuseUnknown(["name", "template", "spec", "cloneFrom", "team", "task"], in: "the request body")
        guard let name = try fields.string("name", in: "the request body") else {
            throw APIError.invalid("the request body has no name", fix: "give {\"name\": \"my-preview\", \"template\": \"python-web\"}")
        }
        if let problem = Names.problem(withLabel: name) ?? (name.contains("--") ? "must not contain '--' (reserved for previews)" : nil)
            ?? (name.count > 40 ? "is longer than 40 characters (the preview's name adds the branch)" : nil) {
            throw APIError.invalid("name '\(name)' \(problem)", fix: "use lowercase letters, digits and single '-', at most 40 characters")
        }
        let template = try fields.string("template", in: "the request body")
        let cloneFrom = try fields.string("cloneFrom", in: "the request body")
        let spec = fields[field: "spec"].flatMap { $0 == .null ? nil : $0 }
        guard [template != nil, cloneFrom != nil, spec != nil].filter({ $0 }).count == 1 else {
            throw APIError.invalid("give exactly one of template, spec and cloneFrom",
                                   fix: "{\"name\", \"template\"} uses templates/TEMPLATE.yaml; {\"name\", \"spec\"} a spec; {\"name\", \"cloneFrom\"} copies an environment of the protected branch")
        }
        if let spec, case .map = spec {} else if spec != nil {
            throw APIError.invalid("spec must be a JSON object (an environment's spec: services, databases, ...)", fix: "give spec as an object")
        }
        let task = try fields.string("task", in: "the request body")
        if let task, task.count > 200 || task.contains(where: { $0.isNewline || ($0.asciiValue.map { $0 < 32 } ?? false) }) {
            throw APIError.invalid("task must be one line of at most 200 characters", fix: "give the ticket or task id, e.g. PAY-123")
        }
        let governance = try trustedGovernance()
        let team = try fields.string("team", in: "the request body")
        if let team, !caller.actor.teams.contains(team) {
            throw APIError.forbidden("\(caller.principal) is not in team \(team)", fix: "give one of \(caller.actor.teams.joined(separator: ", ")) or leave team out")
        }
        guard Self.isRefComponentSafe(caller.principal) else {
            throw APIError.invalid("principal \(caller.principal) cannot name a branch", fix: "use a token of a principal without spaces, '..', '~^:?*[\\' or control characters")
        }
        switch governance.identity.signers.lookup(key.publicKey, namespace: "git", at: Date()) {
        case .allowed(IdentityJudge.apiPrincipal): break
        default:
            throw APIError.conflict("identities/allowed_signers on \(governance.settings.protectedBranch) does not list Gantry's key as principal \(IdentityJudge.apiPrincipal) for namespace git, so a commit the API makes could never be admitted",
                                    fix: "add the line `gantry keys` prints to identities/allowed_signers on the protected branch (a governance change)")
        }
        let branch = caller.branchPrefix + name
        let protectedBranch = governance.settings.protectedBranch
        return try writeLock.withLock {
            let repository = try repository()
            if try repository.reference("refs/heads/\(branch)") != nil {
                throw APIError.conflict("branch \(branch) exists already", fix: "DELETE /v1/environments/\(name) first, or choose another name")
            }
            let live = try store.apiBranches(principal: caller.principal).filter { (try? repository.reference("refs/heads/\($0)")) != nil }
            guard live.count < Self.maxBranchesPerPrincipal else {
                throw APIError(429, "too-many-branches", "\(caller.principal) has \(live.count) branches the API made, the most it keeps at once",
                               fix: "DELETE environments you no longer need (GET /v1/environments lists them)")
            }
            guard let base = try repository.reference("refs/heads/\(protectedBranch)") else {
                throw APIError.conflict("the protected branch \(protectedBranch) does not exist", fix: "push the protected branch first")
            }
            let loader = ConfigLoader(repository: repository)
            let onMain = try loader.environments(at: base)
            let file = "\(ConfigLoader.environmentsDirectory)/\(name).yaml"
            if onMain.contains(where: { $0.file == file || $0.spec?.name == name }) {
                throw APIError.conflict("\(protectedBranch) already has an environment named \(name)",
                                        fix: "choose another name, or {\"name\": \"other\", \"cloneFrom\": \"\(name)\"} to preview a copy of it")
            }
            var metadata: [(key: String, value: PlainValue)] = [("name", .string(name))]
            var body: PlainValue
            if let cloneFrom {
                guard let source = onMain.first(where: { $0.name == cloneFrom }),
                      let data = try repository.readFile(source.file, at: base), case .map(var document) = try YAMLParser().parse(data, file: source.file).plainValue,
                      let index = document.firstIndex(where: { $0.key == "metadata" }), case .map(var sourceMetadata) = document[index].value else {
                    throw APIError.notFound("\(protectedBranch) has no environment named \(cloneFrom)", fix: "GET /v1/environments lists them; cloneFrom names one of the protected branch")
                }
                let sourceTeam = sourceMetadata.first { $0.key == "team" }.flatMap { if case .string(let text) = $0.value { return text } else { return nil } }
                if team == nil, let sourceTeam, !caller.actor.teams.contains(sourceTeam), !caller.isAdmin {
                    throw APIError.forbidden("\(cloneFrom) is of team \(sourceTeam), which \(caller.principal) is not in",
                                             fix: "give \"team\": one of \(caller.actor.teams.joined(separator: ", ")), or clone an environment of your team")
                }
                sourceMetadata.removeAll { $0.key == "name" || ($0.key == "team" && team != nil) }
                sourceMetadata.insert(("name", .string(name)), at: 0)
                if let team { sourceMetadata.append(("team", .string(team))) }
                document[index] = ("metadata", .map(sourceMetadata))
                body = .map(document)
            } else {
                if let template {
                    guard Names.problem(withLabel: template) == nil, try repository.readFile("\(ConfigLoader.templatesDirectory)/\(template).yaml", at: base, limit: 1 << 20) != nil else {
                        let known = (try repository.listDirectory(ConfigLoader.templatesDirectory, at: base) ?? []).map(\.name).filter { $0.hasSuffix(".yaml") }.map { String($0.dropLast(5)) }
                        throw APIError.notFound("\(protectedBranch) has no template \(template)", fix: known.isEmpty ? "the protected branch has no templates/; give a spec" : "templates: \(known.sorted().joined(separator: ", "))")
                    }
                }
                metadata.append(("team", team.map { .string($0) } ?? caller.actor.teams.first.map { .string($0) } ?? .null))
                metadata.append(("class", .string("development")))
                body = .map([("apiVersion", .string("gantry/v1")), ("kind", .string("Environment")), ("metadata", .map(metadata.filter { $0.value != .null })),
                             ("spec", spec ?? .map([("template", .string(template!))]))])
            }
            let text = "# Made through Gantry's API for \(caller.principal) (JSON is YAML).\n" + body.json(indent: "  ") + "\n"
            guard text.utf8.count <= Self.maxFileBytes else {
                throw APIError.invalid("the environment file would be \(text.utf8.count) bytes, more than the \(Self.maxFileBytes) the API writes",
                                       fix: "keep specs small: large values belong in secrets or in files of the repository")
            }
            var message = "Create \(name) through the API\n\n\(IdentityJudge.apiActorTrailer): \(caller.principal)\n"
            if let task { message += "Task: \(task)\n" }
            if let wait = refusedCreates.peek(caller.tokenID) {
                var error = APIError(429, "too-many-refused", "token \(caller.tokenID) had 20 creates refused in the last hour (each leaves objects in the repository)",
                                     fix: "check specs with `gantry validate` before sending them; wait \(wait) s")
                error.retryAfter = wait
                throw error
            }
            let key = self.key
            let commit = try repository.commit(adding: Data(text.utf8), at: file, parent: base, message: message,
                                               authorName: caller.principal, authorEmail: caller.principal) { data in
                try SSHSignature.sign(data, namespace: "git", key: key)
            }
            // Checked before any branch points at it: a spec that does not load is the caller's to fix.
            if let loaded = try ConfigLoader(repository: repository).environments(at: commit).first(where: { $0.file == file }), !loaded.diagnostics.isEmpty {
                _ = refusedCreates.take(caller.tokenID)
                throw APIError.invalid("the environment does not load: " + loaded.diagnostics.prefix(10).map(\.description).joined(separator: "; "),
                                       fix: "correct the spec (each problem names its line and column in \(file) as the API writes it: JSON, indented by two)")
            }
            try repository.updateReference("refs/heads/\(branch)", to: commit, expected: nil, message: "gantry api: create \(name) for \(caller.principal)")
            try store.recordAPIBranch(branch, principal: caller.principal, commit: commit.hex)
            if let remote = configuration.remote {
                do {
                    try repository.push(url: remote, reference: "refs/heads/\(branch)", expected: nil)
                } catch {
                    try? repository.deleteReference("refs/heads/\(branch)", expected: commit)
                    throw APIError.conflict("could not push \(branch) to the repository: \(error)", fix: "try again; check that Gantry may push to \(remote)")
                }
            }
            logger.info("api: created", metadata: ["gantry.env": "\(name)", "git.branch": "\(branch)", "git.commit": "\(commit.short)", "actor": "\(caller.principal)"])
            return Created(environment: Previews.name(environment: name, branch: branch), branch: branch, commit: commit, file: file)
        }
    }

    /// Wakes the reconciler and, when it runs here, waits a moment for it to name the
    /// environment (a name another branch holds makes it choose another): the name it chose.
    func named(_ created: Created) -> Created {
        guard let wake = wakeReconciler else { return created }
        wake()
        let source = String(created.file.dropFirst("environments/".count).dropLast(5))
        let deadline = Date().addingTimeInterval(3)
        repeat {
            if let record = try? store.environment(branch: created.branch, source: source) {
                return Created(environment: record.name, branch: created.branch, commit: created.commit, file: created.file)
            }
            Thread.sleep(forTimeInterval: 0.02)
        } while Date() < deadline
        return created
    }

    /// Branches the API keeps for one principal at once (previews' own caps come with budgets).
    static let maxBranchesPerPrincipal = 50

    /// The largest environment file the API writes (every refused one stays in the object store
    /// until Git collects it).
    static let maxFileBytes = 64 << 10

    /// The answer to a create: where the environment will be, and how to follow it.
    public func plain(_ created: Created, state: PlainValue? = nil) -> PlainValue {
        var fields: [(key: String, value: PlainValue)] = [
            ("environment", .string(created.environment)), ("branch", .string(created.branch)), ("commit", .string(created.commit.hex)),
            ("file", .string(created.file)), ("status", .string("/v1/environments/\(created.environment)")),
            ("diagnose", .string("/v1/environments/\(created.environment)/diagnose")),
        ]
        if let state { fields.append(("state", state)) }
        return .map(fields)
    }

    /// The environment a branch holds as it stands now (nil while the reconciler has not recorded it).
    public func currentState(branch: String, source: String) -> PlainValue? {
        guard let record = try? store.environment(branch: branch, source: source) else { return nil }
        return try? summary(record).plain
    }

    /// Waits until the environment a branch holds serves (Running with every service up) or is
    /// refused (Denied, Failed, PendingApproval): its summary then, or nil on time out.
    public func waitServing(branch: String, source: String, commit: ObjectID, seconds: Double) -> PlainValue? {
        let deadline = Date().addingTimeInterval(min(max(seconds, 0), configuration.maxWaitSeconds))
        repeat {
            if let record = try? store.environment(branch: branch, source: source), record.commit == commit.hex,
               let summary = try? summary(record) {
                switch record.phase {
                case .running where record.appliedCommit == commit.hex && summary.conditions.isEmpty:
                    return summary.plain
                case .denied, .failed, .pendingApproval:
                    if record.phase != .failed || record.nextAttemptAt == nil { return (try? diagnosis(of: record)) ?? summary.plain }
                default: break
                }
            }
            Thread.sleep(forTimeInterval: 0.05)
        } while Date() < deadline
        return nil
    }

    /// `DELETE /v1/environments/{name}`: deletes the branch the API made for the caller (a human
    /// admin may delete any `agents/` branch); the reconciler destroys what the branch held.
    public func destroy(_ caller: Caller, _ name: String) throws -> PlainValue {
        let record = try environmentRecord(name, caller: caller)
        let made = try store.apiBranch(record.branch)
        guard madeFor(caller.principal, record) || (caller.isAdmin && made != nil) else {
            throw APIError.forbidden("\(record.name) lives on branch \(record.branch), which the API did not make for \(caller.principal)",
                                     fix: "the API deletes only branches it made for you; others are deleted with git by whoever owns them")
        }
        let governance = try trustedGovernance()
        guard record.branch != governance.settings.protectedBranch else {
            throw APIError.forbidden("\(record.name) is on the protected branch", fix: "remove environments from the protected branch with a reviewed commit")
        }
        return try writeLock.withLock {
            let repository = try repository()
            let reference = "refs/heads/\(record.branch)"
            guard let tip = try repository.reference(reference) else {
                return .map([("environment", .string(record.name)), ("branch", .string(record.branch)), ("deleted", .bool(false)),
                             ("message", .string("the branch is gone already; the environment is destroyed at the next pass"))])
            }
            // The tip deleted is the one judged: commits pushed since the environment was last
            // recorded must be the caller's too.
            if tip.hex != record.commit {
                var atTip = record
                atTip.commit = tip.hex
                guard madeFor(caller.principal, atTip) || (caller.isAdmin && made != nil) else {
                    throw APIError.forbidden("branch \(record.branch) moved to \(tip.short), which holds commits not made for \(caller.principal)",
                                             fix: "the API deletes only branches it made for you; others are deleted with git by whoever owns them")
                }
            }
            // One record per environment the branch holds: each teardown names who asked for it.
            let held = try store.environments(branch: record.branch).filter { $0.phase != .destroyed }.map(\.name)
            try audit?.append((held.isEmpty ? [record.name] : held).map { environment in
                AuditEntry(event: .destroyRequested, commit: tip.hex, fields: [
                    ("environment", environment), ("branch", record.branch), ("commit", tip.hex),
                    ("actor", caller.principal), ("actor-kind", caller.actor.kind.rawValue), ("via", "api token \(caller.tokenID)"),
                ])
            })
            try repository.deleteReference(reference, expected: tip)
            try store.forgetAPIBranch(record.branch)
            if let remote = configuration.remote { try repository.push(url: remote, reference: reference, expected: tip, delete: true) }
            logger.info("api: branch deleted", metadata: ["gantry.env": "\(record.name)", "git.branch": "\(record.branch)", "actor": "\(caller.principal)"])
            wakeReconciler?()
            return .map([("environment", .string(record.name)), ("branch", .string(record.branch)), ("deleted", .bool(true)),
                         ("status", .string("/v1/environments/\(record.name)"))])
        }
    }

    /// A principal fit to be one component of a branch name (`git check-ref-format`).
    static func isRefComponentSafe(_ text: String) -> Bool {
        !text.isEmpty && !text.hasPrefix(".") && !text.hasPrefix("-") && !text.hasSuffix(".lock") && !text.hasSuffix(".")
            && !text.contains("..") && !text.contains("@{") && text != "@"
            && !text.unicodeScalars.contains { $0.value < 0x21 || $0.value == 0x7f || "~^:?*[\\/".unicodeScalars.contains($0) }
    }
}
