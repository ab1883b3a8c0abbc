import Audit
import Foundation
import GitStore
import Reconciler
import SpecModel

/// What the control plane asks its data-plane agent to do, signed with the reconciler's key: apply
/// an environment's revision (the effective spec, which names secrets but holds no value, and the
/// files its services and seeds need), destroy one, or follow the kill switches. Each plan has a
/// sequence number the agent never accepts twice, and the time it was issued.
public struct Plan: Codable, Sendable, Equatable {
    public enum Action: String, Codable, Sendable { case apply, destroy, switches }

    public var version = 1
    public var sequence: Int
    public var issuedAt: Date
    public var action: Action
    public var environment: String
    public var branch: String?
    public var commit: String?
    public var fingerprint: String?
    public var domain: String?
    public var spec: EnvironmentSpec?
    /// The revision's files the driver reads (services' sources, seeds; everything when jobs run).
    public var files: [PlanFile] = []
    /// Object ids of the paths the driver asks about (a service restarts when its source's id changes).
    public var objects: [String: String] = [:]
    /// For `switches`: every environment of this data plane a switch covers, with its reason.
    public var killSwitches: [String: String]?

    public init(sequence: Int, issuedAt: Date, action: Action, environment: String) {
        self.sequence = sequence
        self.issuedAt = issuedAt
        self.action = action
        self.environment = environment
    }

    /// The bytes that are signed: JSON, keys sorted, dates in seconds since 1970.
    public func canonical() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .secondsSince1970
        return try encoder.encode(self)
    }

    static func decode(_ data: Data) throws -> Plan {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        return try decoder.decode(Plan.self, from: data)
    }
}

public struct PlanFile: Codable, Sendable, Equatable {
    public var path: String
    public var executable: Bool
    /// Base64.
    public var data: String
}

/// A plan as it travels: its canonical bytes (base64) and their SSHSIG (namespace `gantry-plan`).
public struct PlanEnvelope: Codable, Sendable {
    public var plan: String
    public var signature: String

    public static let namespace = "gantry-plan"

    public static func seal(_ plan: Plan, key: SigningKey) throws -> PlanEnvelope {
        let bytes = try plan.canonical()
        return PlanEnvelope(plan: bytes.base64EncodedString(), signature: try SSHSignature.sign(bytes, namespace: namespace, key: key))
    }

    public func json() throws -> Data { try JSONEncoder().encode(self) }
}

/// Why the agent refused a plan.
public struct PlanRefusal: Error, CustomStringConvertible, Sendable {
    public enum Kind: String, Sendable { case tampered, untrusted, replayed, stale, malformed }
    public let kind: Kind
    public let description: String
    /// The plan's sequence when the control plane did sign it (stale, replayed, or signed but
    /// malformed): the agent may move past it. Nil for what nobody signed.
    public var signedSequence: Int?

    public init(kind: Kind, description: String, signedSequence: Int? = nil) {
        self.kind = kind
        self.description = description
        self.signedSequence = signedSequence
    }
}

/// The agent's judge of plans: the signature must verify, by the control plane's key, over the
/// exact bytes; the sequence must be past the last one accepted; the plan not older than `maxAge`
/// nor from the future; its paths inside the revision.
public struct PlanVerifier: Sendable {
    public let trusted: SSHPublicKey
    public var maxAge: TimeInterval = 3600
    /// Clock skew tolerated for a plan "from the future".
    public var skew: TimeInterval = 300

    public init(trusted: SSHPublicKey) { self.trusted = trusted }

    public func verify(_ envelope: PlanEnvelope, after lastSequence: Int, now: Date = Date()) throws -> Plan {
        guard let bytes = Data(base64Encoded: envelope.plan) else {
            throw PlanRefusal(kind: .malformed, description: "the plan is not base64")
        }
        let signer: SSHPublicKey
        do {
            signer = try SSHSignature.verify(envelope.signature, message: bytes, namespace: PlanEnvelope.namespace)
        } catch {
            throw PlanRefusal(kind: .tampered, description: "its signature does not verify over its contents (\(error)): altered or forged")
        }
        guard signer == trusted else {
            throw PlanRefusal(kind: .untrusted, description: "it is signed by \(signer.fingerprint), not by the control plane's key \(trusted.fingerprint)")
        }
        let plan: Plan
        do { plan = try Plan.decode(bytes) } catch {
            throw PlanRefusal(kind: .malformed, description: "its contents are not a plan (\(error))")
        }
        let signed = plan.sequence
        guard plan.version == 1 else {
            throw PlanRefusal(kind: .malformed, description: "plan version \(plan.version) is not known to this agent", signedSequence: signed)
        }
        guard plan.sequence > lastSequence else {
            throw PlanRefusal(kind: .replayed, description: "plan \(plan.sequence) is not after the last one accepted (\(lastSequence)): a replay", signedSequence: signed)
        }
        let age = now.timeIntervalSince(plan.issuedAt)
        guard age <= maxAge else {
            throw PlanRefusal(kind: .stale, description: "plan \(plan.sequence) was issued \(Int(age)) s ago, more than \(Int(maxAge)) s: stale", signedSequence: signed)
        }
        guard age >= -skew else {
            throw PlanRefusal(kind: .stale, description: "plan \(plan.sequence) claims to be issued \(Int(-age)) s in the future", signedSequence: signed)
        }
        // An environment's name is a DNS-1123 label (empty for the kill switches).
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-")
        guard plan.environment.count <= 63, plan.environment.allSatisfy({ allowed.contains($0) }),
              !plan.environment.hasPrefix("-"), plan.environment.isEmpty == (plan.action == .switches) else {
            throw PlanRefusal(kind: .malformed, description: "plan \(plan.sequence) names an environment that is no DNS-1123 label: \(plan.environment.prefix(80))",
                              signedSequence: signed)
        }
        for file in plan.files where !PlanSnapshot.isInside(file.path) {
            throw PlanRefusal(kind: .malformed, description: "plan \(plan.sequence) names a file outside the revision: \(file.path)", signedSequence: signed)
        }
        return plan
    }
}

/// The files of a plan, read as a driver reads a revision.
public struct PlanSnapshot: SourceSnapshot {
    public let commit: ObjectID
    let files: [String: PlanFile]
    let objects: [String: String]

    public init(_ plan: Plan) {
        commit = plan.commit.flatMap(ObjectID.init(hex:)) ?? ObjectID(hex: String(repeating: "0", count: 40))!
        files = Dictionary(plan.files.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first })
        objects = plan.objects
    }

    /// A relative path without `..`, `.` or empty parts.
    static func isInside(_ path: String) -> Bool {
        !path.hasPrefix("/") && !path.isEmpty && path.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { !$0.isEmpty && $0 != ".." && $0 != "." }
    }

    public func objectID(at path: String) throws -> ObjectID? { objects[path].flatMap(ObjectID.init(hex:)) }

    public func readFile(_ path: String, limit: Int) throws -> Data? {
        guard let file = files[path], let data = Data(base64Encoded: file.data) else { return nil }
        return data.count > limit ? nil : data
    }

    public func materialize(_ path: String, into directory: URL) throws {
        let prefix = path.isEmpty ? "" : path + "/"
        for (name, file) in files where path.isEmpty || name == path || name.hasPrefix(prefix) {
            guard Self.isInside(name), let data = Data(base64Encoded: file.data) else { continue }
            let relative = name == path ? URL(fileURLWithPath: name).lastPathComponent : String(name.dropFirst(prefix.count))
            let target = directory.appendingPathComponent(relative)
            try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
            try data.write(to: target)
            _ = chmod(target.path, file.executable ? 0o755 : 0o644)
        }
    }

    /// The files under `paths` of `source` (each a file or a tree; "" for everything), at most `limit` bytes in all.
    public static func files(of source: any SourceSnapshot, paths: [String], limit: Int = 32 << 20) throws -> [PlanFile] {
        var found: [String: PlanFile] = [:]
        var total = 0
        for path in Set(paths).sorted() {
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-plan-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: scratch) }
            try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
            if !path.isEmpty, let single = (try? source.readFile(path, limit: limit)) ?? nil {
                found[path] = PlanFile(path: path, executable: false, data: single.base64EncodedString())
                total += single.count
                continue
            }
            try source.materialize(path, into: scratch)
            let enumerator = FileManager.default.enumerator(at: scratch, includingPropertiesForKeys: [.isRegularFileKey])
            while let url = enumerator?.nextObject() as? URL {
                guard (try? url.resourceValues(forKeys: [.isRegularFileKey]))?.isRegularFile == true else { continue }
                let relative = String(url.path.dropFirst(scratch.path.count + 1))
                let name = path.isEmpty ? relative : path + "/" + relative
                let data = try Data(contentsOf: url)
                total += data.count
                guard total <= limit else {
                    throw RevisionError("the files the data plane needs exceed \(limit >> 20) MiB (at \(name)): keep services' sources small, or build an image")
                }
                found[name] = PlanFile(path: name, executable: FileManager.default.isExecutableFile(atPath: url.path), data: data.base64EncodedString())
            }
        }
        return found.values.sorted { $0.path < $1.path }
    }
}
