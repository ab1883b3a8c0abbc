import Foundation
import GitStore
import Governance
import SpecLoading
import SpecModel
import CEL

extension Admission {
    /// The commits of one environment's change: every commit from its running revision (`since`)
    /// to `change` that touches its paths — not only the newest, so a denial is never washed
    /// through by a later commit. Nil (with a rule line) when there are too many to judge.
    func touchingCommits(watched: [String], change: ObjectID, since: [ObjectID], context: Context) throws -> [JudgedCommit]? {
        let range = try repository.newCommits(tip: change, hiding: since)
        guard range.count <= Self.maxCommits else { return nil }
        return try range.compactMap { id in
            let judged = try context.cache.judged(id, with: context.identity)
            let touched = try context.cache.touchedPaths(judged.info)
            return Names.touches(touched, watched) ? judged : nil
        }
    }

    /// Every commit of the change must come from a member of the environment's team (old and new):
    /// the signer's teams, or for an agent, those of its On-Behalf-Of human. A commit of another
    /// team's is vouched for when a human of the missing team, none of that commit's people, signs
    /// `gantry approve` of the changed commit (`change`): a team is never locked out of its own
    /// environment by a foreign commit, even one reverted since.
    func teamRule(environment: String, teams: [String?], touching: [JudgedCommit]?, change: ObjectID, context: Context) -> (rule: String, remedy: String?) {
        let needed = Array(Set(teams.compactMap { $0 })).sorted()
        guard !needed.isEmpty else { return ("team: none set", nil) }
        guard let touching else {
            return ("team: the change brings more than \(Self.maxCommits) commits, more than are judged at once", "push the history in smaller steps")
        }
        var vouched: [String] = []
        for judged in touching {
            let has = judged.identity.principal == nil ? [] : judged.identity.teams(actors: context.identity.actors)
            let missing = needed.filter { !has.contains($0) }
            if judged.identity.principal == nil && !context.identity.required { continue } // unverified: only without signing.required
            guard !missing.isEmpty else { continue }
            if let voucher = voucher(for: judged, teams: missing, change: change, context: context) {
                vouched.append("\(judged.info.id.short) vouched for by \(voucher)")
                continue
            }
            let remedy = "the change to \(environment) must come from a member of team \(missing.joined(separator: ", ")) (or an agent acting for one), or a human of that team who did not make it runs `gantry approve \(change.short) --key KEY`"
            guard let principal = judged.identity.principal else {
                return ("team: commit \(judged.info.id.short) changes \(environment), but its signer cannot be verified now, so its team is unknown", remedy)
            }
            let who = principal + (judged.identity.onBehalfOf.map { " on behalf of \($0)" } ?? "")
            return ("team: commit \(judged.info.id.short) by \(who) (teams: \(has.isEmpty ? "none" : has.sorted().joined(separator: ", "))) changes \(environment) of team \(missing.joined(separator: ", "))", remedy)
        }
        return ("team: ok (\(needed.joined(separator: ", "))\(vouched.isEmpty ? "" : "; " + vouched.joined(separator: ", ")))", nil)
    }

    /// A human of `teams` who approved `change` and is none of the people of `commit`.
    func voucher(for commit: JudgedCommit, teams: [String], change: ObjectID, context: Context) -> String? {
        let people = commit.identity.people(of: commit.info)
        for key in (try? Approvals.approvingKeys(of: change, in: repository)) ?? [] {
            guard case .allowed(let principal) = context.identity.signers.lookup(key, namespace: Approvals.namespace, at: Date()),
                  let actor = context.identity.actors[principal], actor.kind == .human,
                  teams.allSatisfy(actor.teams.contains), !people.contains(principal.lowercased()) else { continue }
            return principal
        }
        return nil
    }

    /// The policies hold for the whole change: evaluated as each commit of it that touches the
    /// environment (its actor, trailers and message) and as the tip, with every `cloneFrom` source;
    /// the first evaluation that denies is the verdict (naming the commit), else the tip's.
    func policyVerdict(_ input: (_ commit: JudgedCommit, _ clone: (name: String, class: String, team: String?)?) -> [String: CELValue],
                       tip: JudgedCommit, touching: [JudgedCommit], clones: [(name: String, class: String, team: String?)],
                       context: Context) -> PolicySet.Verdict {
        var seen = Set<ObjectID>()
        let commits = ([tip] + touching).filter { seen.insert($0.info.id).inserted }
        let sources: [(name: String, class: String, team: String?)?] = clones.isEmpty ? [nil] : clones.map { $0 }
        var tipVerdict: PolicySet.Verdict?
        for judged in commits {
            for source in sources {
                var verdict = context.policies.evaluate(input(judged, source))
                if judged.info.id == tip.info.id, tipVerdict == nil { tipVerdict = verdict }
                guard verdict.denied else { continue }
                if judged.info.id != tip.info.id || source != nil {
                    let what = [judged.info.id != tip.info.id ? "commit \(judged.info.id.short) by \(judged.identity.principal ?? judged.info.authorEmail)" : nil,
                                source.map { "clone from \($0.name)" }].compactMap { $0 }.joined(separator: ", ")
                    verdict.rules = verdict.rules.map { $0 + " (for \(what))" }
                }
                return verdict
            }
        }
        return tipVerdict ?? context.policies.evaluate(input(tip, sources.first ?? nil))
    }

    /// Whose data a `cloneFrom` copies: the environment of that name that runs, which must be live
    /// (never a preview), of a class `clones.<class>` allows for the cloning environment's class
    /// (default: not production) — the class it runs with, not one a pending change proposes — and
    /// of the same team.
    func cloneRules(_ spec: EnvironmentSpec, context: Context) -> (rules: [String], remedies: [String], sources: [(name: String, class: String, team: String?)]) {
        var rules: [String] = []
        var remedies: [String] = []
        var sources: [(name: String, class: String, team: String?)] = []
        for database in spec.databases {
            guard let name = database.cloneFrom else { continue }
            guard let source = context.running[name] else {
                rules.append("clone: \(database.name) from \(name): no such environment runs; the database is seeded instead")
                continue
            }
            sources.append((name, source.envClass, source.team))
            if !source.isLive {
                rules.append("clone: \(database.name) may not copy \(name), a preview; only live environments can be cloned")
                remedies.append("clone a live environment of the protected branch, or seed the database")
            } else if !context.settings.mayClone(from: source.envClass, into: spec.class.rawValue) {
                let allowed = context.settings.clones[spec.class.rawValue].map { $0.joined(separator: ", ") } ?? "every class but production"
                rules.append("clone: \(database.name) may not copy \(name) (\(source.envClass)) into a \(spec.class.rawValue) environment; clones.\(spec.class.rawValue) allows \(allowed)")
                remedies.append("clone from an environment of a class clones.\(spec.class.rawValue) in gantry.yaml allows, or seed the database")
            } else if source.team != spec.team {
                rules.append("clone: \(database.name) may not copy \(name) of team \(source.team ?? "none") into an environment of team \(spec.team ?? "none")")
                remedies.append("clone only an environment of the same team (\(source.team ?? "none"))")
            } else {
                rules.append("clone: \(database.name) from \(name) (\(source.envClass), team \(source.team ?? "none")): ok")
            }
        }
        return (rules, remedies, sources)
    }
}
