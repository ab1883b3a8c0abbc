import Audit
import Foundation
import GitStore
import SpecModel

/// Who made one commit, as far as its signature proves, or why it proves nothing.
public struct CommitIdentity: Sendable {
    public let commit: ObjectID
    /// The principal of `allowed_signers` whose key signed the commit.
    public let principal: String?
    public let actor: Actor?
    public let agent: String?
    public let onBehalfOf: String?
    public let task: String?
    /// Why the commit cannot be admitted; nil when it can.
    public let problem: String?
    /// Made through Gantry's API: signed by Gantry's key (principal `gantry`) for the principal its
    /// `Api-Actor` trailer names, who is `principal`.
    public var viaAPI = false

    public var isVerified: Bool { principal != nil && problem == nil }

    /// Everyone who had a hand in `commit` (this identity's commit): its author and committer
    /// e-mails, its verified signer and its On-Behalf-Of principal. None of them may approve it.
    public func people(of commit: CommitInfo) -> Set<String> {
        var people: Set<String> = [commit.authorEmail.lowercased(), commit.committerEmail.lowercased()]
        if let principal { people.insert(principal.lowercased()) }
        if let onBehalfOf { people.insert(onBehalfOf.lowercased()) }
        return people
    }

    /// The teams this commit acts with: the signer's, and for an agent acting On-Behalf-Of a human,
    /// that human's too.
    public func teams(actors: [String: Actor]) -> Set<String> {
        var teams = Set(actor?.teams ?? [])
        if actor?.kind == .agent, let onBehalfOf, let human = actors[onBehalfOf] { teams.formUnion(human.teams) }
        return teams
    }
}

/// Judges commits' signatures against the governance read from the protected branch.
public struct IdentityJudge: Sendable {
    /// The principal of `identities/allowed_signers` whose key is Gantry's own (`gantry keys`).
    /// A commit it signs is one the API made for the principal its one `Api-Actor` trailer names,
    /// and is judged as that principal's; no other signer's commit may carry that trailer.
    public static let apiPrincipal = "gantry"
    public static let apiActorTrailer = "Api-Actor"
    public let signers: AllowedSigners
    public let actors: [String: Actor]
    /// `signing.required` of gantry.yaml: when false, unsigned commits pass as unverified.
    public let required: Bool

    public init(signers: AllowedSigners, actors: [String: Actor], required: Bool) {
        self.signers = signers
        self.actors = actors
        self.required = required
    }

    /// Checks one commit's SSH signature (namespace `git`) at time `now`, then its signer's actor
    /// entry and its `On-Behalf-Of` trailer.
    /// Commit messages longer than this are refused before anything reads them (their trailers
    /// reach every record and policy input).
    public static let maxMessageBytes = 64 * 1024

    public func judge(_ commit: CommitInfo, signature: CommitSignature?, now: Date) -> CommitIdentity {
        guard commit.message.utf8.count <= Self.maxMessageBytes else {
            return CommitIdentity(commit: commit.id, principal: nil, actor: nil, agent: nil, onBehalfOf: nil, task: nil,
                                  problem: "commit \(commit.id.short) has a message of \(commit.message.utf8.count) bytes, more than the \(Self.maxMessageBytes) Gantry reads; shorten it")
        }
        var agent: String?, onBehalfOf: String?, task: String?
        var behalf: [String] = []
        for trailer in commit.trailers {
            switch trailer.key.lowercased() {
            // The first of a repeated trailer counts, as in `commit.trailers` (a second is refused
            // below for a signed commit; an unsigned one is recorded with the first).
            case "agent": agent = agent ?? trailer.value
            case "on-behalf-of": onBehalfOf = onBehalfOf ?? trailer.value; behalf.append(trailer.value)
            case "task": task = task ?? trailer.value
            default: break
            }
        }
        let short = commit.id.short
        func result(_ principal: String?, _ problem: String?) -> CommitIdentity {
            CommitIdentity(commit: commit.id, principal: principal, actor: principal.flatMap { actors[$0] },
                           agent: agent, onBehalfOf: onBehalfOf, task: task, problem: problem)
        }
        guard let signature else {
            return result(nil, required
                ? "commit \(short) is not signed; sign it with an SSH key listed in identities/allowed_signers on main (git config gpg.format ssh; git commit -S)"
                : nil)
        }
        let signer: SSHPublicKey
        do {
            signer = try SSHSignature.verify(signature.signature, message: signature.signedData, namespace: "git")
        } catch {
            return result(nil, "commit \(short) has a signature that does not verify: \(error)")
        }
        switch signers.lookup(signer, namespace: "git", at: now) {
        case .unknownKey:
            return result(nil, "commit \(short) is signed by key \(signer.fingerprint), which identities/allowed_signers on main does not list; add the key there (on main) or re-sign with a listed key")
        case .namespaceNotAllowed(let principal, let namespaces):
            return result(nil, "commit \(short) is signed by \(principal), whose key is allowed for namespaces \(namespaces.joined(separator: ",")) only, not git")
        case .notYetValid(let principal, let after):
            return result(nil, "commit \(short) is signed by \(principal) with a key valid only after \(Self.format(after)); use the current key")
        case .expired(let principal, let before):
            return result(nil, "commit \(short) is signed by \(principal) with a key that expired or was revoked at \(Self.format(before)); re-sign with a current key")
        case .allowed(let signer):
            let apiActors = commit.trailers.filter { $0.key.lowercased() == Self.apiActorTrailer.lowercased() }.map(\.value)
            var principal = signer
            if signer == Self.apiPrincipal {
                guard apiActors.count == 1, let named = apiActors.first else {
                    return result(nil, "commit \(short) is signed by Gantry's own key (principal \(Self.apiPrincipal)) but names \(apiActors.isEmpty ? "no" : "\(apiActors.count)") \(Self.apiActorTrailer) trailers; Gantry's key signs only commits its API makes for one token's principal, so this commit was not made by the API")
                }
                principal = named
            } else if !apiActors.isEmpty {
                return result(nil, "commit \(short) is signed by \(signer) but carries an \(Self.apiActorTrailer) trailer, which only Gantry's API writes (signed with Gantry's key); remove the trailer")
            }
            guard let actor = actors[principal] else {
                if signer == Self.apiPrincipal {
                    return result(nil, "commit \(short) was made through the API for \(principal), who has no entry in identities/actors.yaml on main; add one (kind, teams, roles) or use a token of a listed principal")
                }
                return result(principal, "commit \(short) is signed by \(principal), who has no entry in identities/actors.yaml on main; add one (kind, teams, roles)")
            }
            if behalf.count > 1 {
                return result(principal, "commit \(short) has \(behalf.count) On-Behalf-Of trailers (\(behalf.joined(separator: ", "))); a commit acts for one principal: keep one")
            }
            if let onBehalfOf, !actor.actsFor.contains(onBehalfOf) {
                return result(principal, "commit \(short) says On-Behalf-Of: \(onBehalfOf), but \(principal) may act only for \(actor.actsFor.isEmpty ? "nobody" : actor.actsFor.joined(separator: ", ")) (actsFor in identities/actors.yaml)")
            }
            var identity = result(principal, nil)
            identity.viaAPI = signer == Self.apiPrincipal
            return identity
        }
    }

    static func format(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }
}
