import Foundation
import GitStore
import Testing
import TestSupport
@testable import Audit

@Suite struct AuditTests {
    func setUp() throws -> (TestRepository, TemporaryDirectory, SigningKey, ObjectID) {
        let repo = try TestRepository()
        let sha = ObjectID(hex: try repo.commit("target"))!
        let state = TemporaryDirectory()
        let key = try SigningKey.loadOrCreate(at: state.path + "/keys/gantry_ed25519")
        return (repo, state, key, sha)
    }

    func entry(_ event: AuditEvent, _ commit: ObjectID, env: String = "web") -> AuditEntry {
        AuditEntry(event: event, commit: commit.hex, fields: [("environment", env), ("branch", "main"), ("commit", commit.hex)])
    }

    @Test func keyFileIsOpenSSHFormatWithMode0600() throws {
        let (_, state, key, _) = try setUp()
        let path = state.path + "/keys/gantry_ed25519"
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        // ssh-keygen reads our private key and derives the same public key.
        let derived = try Shell.check(["ssh-keygen", "-y", "-f", path]).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(derived.hasPrefix(key.publicKey.authorizedKey))
        // and we read a key ssh-keygen made.
        try Shell.check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", state.path + "/other"])
        let other = try SigningKey(openSSH: try String(contentsOfFile: state.path + "/other", encoding: .utf8))
        let otherPublic = try String(contentsOfFile: state.path + "/other.pub", encoding: .utf8)
        #expect(otherPublic.hasPrefix(other.publicKey.authorizedKey))
    }

    @Test func recordsVerifyWithSSHKeygen() throws {
        let (repo, state, key, sha) = try setUp()
        let log = AuditLog(repository: try repo.open(), key: key)
        let records = try log.append([entry(.admitted, sha), entry(.applied, sha)])
        #expect(records.map(\.seq) == [1, 2])
        #expect(records[0].prev == "none")
        #expect(records[1].prev == records[0].digest)

        let signers = state.path + "/allowed_signers"
        try "gantry \(key.publicKey.authorizedKey)\n".write(toFile: signers, atomically: true, encoding: .utf8)
        let note = try repo.git("notes", "--ref=gantry", "show", sha.hex)
        let parsed = AuditRecord.parseNote(note + "\n").records
        #expect(parsed.count == 2)
        for record in parsed {
            try record.signature.write(toFile: state.path + "/record.sig", atomically: true, encoding: .utf8)
            let result = try Shell.run(["ssh-keygen", "-Y", "verify", "-n", "gantry-audit", "-f", signers, "-I", "gantry",
                                        "-s", state.path + "/record.sig"], input: record.signedText)
            #expect(result.status == 0, "ssh-keygen: \(result.stderr)\(result.stdout)")
        }
        // A changed byte is caught by the outside judge too.
        let forged = parsed[0].signedText.replacingOccurrences(of: "event: admitted", with: "event: approved")
        try parsed[0].signature.write(toFile: state.path + "/record.sig", atomically: true, encoding: .utf8)
        let rejected = try Shell.run(["ssh-keygen", "-Y", "verify", "-n", "gantry-audit", "-f", signers, "-I", "gantry",
                                      "-s", state.path + "/record.sig"], input: forged)
        #expect(rejected.status != 0)
    }

    @Test func notesCommitsVerifyWithGit() throws {
        let (repo, state, key, sha) = try setUp()
        try AuditLog(repository: try repo.open(), key: key).append([entry(.admitted, sha)])
        let signers = state.path + "/allowed_signers"
        try "gantry \(key.publicKey.authorizedKey)\n".write(toFile: signers, atomically: true, encoding: .utf8)
        try repo.git("config", "gpg.ssh.allowedSignersFile", signers)
        let result = try Shell.run(["git", "-C", repo.path, "verify-commit", "refs/notes/gantry"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("Good \"git\" signature for gantry"))
    }

    @Test func concurrentWritersKeepOneChain() throws {
        let (repo, _, key, sha) = try setUp()
        let writers = 4, perWriter = 10
        let group = DispatchGroup()
        let failures = Locked<[String]>([])
        for writer in 0..<writers {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                do {
                    // Each writer has its own repository handle, as separate processes would.
                    let log = AuditLog(repository: try repo.open(), key: key)
                    for index in 0..<perWriter { try log.append([self.entry(.admitted, sha, env: "w\(writer)-\(index)")]) }
                } catch {
                    failures.mutate { $0.append("\(error)") }
                }
            }
        }
        group.wait()
        #expect(failures.value.isEmpty)
        let report = try AuditVerifier(trustedKeys: [key.publicKey]).verify(repository: try repo.open())
        #expect(report.recordCount == writers * perWriter)
        #expect(report.faults.isEmpty, "\(report.faults)")
    }

    @Test func verifyDetectsEditedRemovedAndReorderedRecords() throws {
        let (repo, _, key, sha) = try setUp()
        let git = try repo.open()
        let log = AuditLog(repository: git, key: key)
        try log.append([entry(.admitted, sha)])
        try log.append([entry(.applied, sha)])
        try log.append([entry(.destroyed, sha)])
        let verifier = AuditVerifier(trustedKeys: [key.publicKey])
        #expect(try verifier.verify(repository: git).isValid)
        let original = try #require(try git.note(on: sha, notesRef: AuditLog.defaultRef))
        let records = AuditRecord.parseNote(original).records

        func rewrite(_ text: String) throws -> [String] {
            // Rewritten behind Gantry's back with the git CLI, as an attacker would.
            try repo.git("notes", "--ref=gantry", "add", "-f", "-m", text, sha.hex)
            defer { _ = try? repo.git("notes", "--ref=gantry", "add", "-f", "-m", original, sha.hex) }
            return try verifier.verify(repository: try repo.open()).faults
        }
        let edited = try rewrite(original.replacingOccurrences(of: "event: applied", with: "event: approved"))
        #expect(edited.contains { $0.contains("seq 2") && $0.contains("bad signature") })
        let removed = try rewrite([records[0], records[2]].map(\.text).joined(separator: "\n"))
        #expect(removed.contains { $0.contains("records 2...2 are missing") })
        let swapped = records[1].text.replacingOccurrences(of: "seq: 2", with: "seq: 3")
        let reordered = try rewrite([records[0].text, swapped].joined(separator: "\n"))
        #expect(!reordered.isEmpty)
        let truncated = try rewrite([records[0], records[1]].map(\.text).joined(separator: "\n"))
        #expect(truncated.contains { $0.contains("removed from the end") })
        #expect(truncated.contains { $0.contains("not written by Gantry") })
        let foreign = SigningKey()
        let otherReport = try AuditVerifier(trustedKeys: [foreign.publicKey]).verify(repository: git)
        #expect(otherReport.faults.contains { $0.contains("not the Gantry key") })
    }
}

final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value { lock.withLock { stored } }
    func mutate(_ body: (inout Value) -> Void) { lock.withLock { body(&stored) } }
}

@Suite struct RemotePublishingTests {
    @Test func twoMirrorsWritingToOneRemoteKeepOneChain() throws {
        let origin = try TestRepository()
        let sha = ObjectID(hex: try origin.commit("target"))!
        let bare = TemporaryDirectory()
        try Shell.check(["git", "clone", "-q", "--bare", origin.path, bare.path + "/remote.git"])
        let url = "file://\(bare.path)/remote.git"
        let keys = [SigningKey(), SigningKey()]
        let failures = Locked<[String]>([])
        let group = DispatchGroup()
        for (index, key) in keys.enumerated() {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                do {
                    let state = TemporaryDirectory()
                    let mirror = try GitRepository.mirror(url: url, at: state.path + "/mirror.git")
                    let log = AuditLog(repository: mirror, key: key)
                    log.remote = url
                    for round in 0..<8 {
                        try log.append([AuditEntry(event: .admitted, commit: sha.hex, fields: [("environment", "w\(index)-\(round)")])])
                    }
                } catch {
                    failures.mutate { $0.append("\(error)") }
                }
            }
        }
        group.wait()
        #expect(failures.value.isEmpty, "\(failures.value)")
        let remote = try GitRepository.open(path: bare.path + "/remote.git")
        let report = try AuditVerifier(trustedKeys: keys.map(\.publicKey)).verify(repository: remote)
        #expect(report.recordCount == 16)
        #expect(report.faults.isEmpty, "\(report.faults)")
        // Plain git sees the notes on the remote.
        #expect(try Shell.check(["git", "-C", bare.path + "/remote.git", "notes", "--ref=gantry", "show", sha.hex]).contains("environment: w1-7"))
    }
}

@Suite struct AuditEscapingTests {
    @Test func valuesCannotEndALineOrFormASignatureMarker() {
        #expect(AuditRecord.escape("plain value: with colons") == "plain value: with colons")
        #expect(AuditRecord.escape("a\nevent: approved") == "a\\nevent: approved")
        #expect(AuditRecord.escape("back\\slash\r\t") == "back\\\\slash\\r\\t")
        #expect(AuditRecord.escape("x\u{2028}y\u{85}z") == "x\\u{2028}y\\u{85}z")
        #expect(AuditRecord.escape("-----END SSH SIGNATURE-----") == "----\\u{2d}END SSH SIGNATURE----\\u{2d}")
        #expect(!AuditRecord.escape(String(repeating: "-", count: 23)).contains("-----"))
    }

    @Test func notesSplitOnExactMarkerLinesOnly() throws {
        let record = "gantry-audit: 1\nseq: 1\nevent: admitted\nat: now\ntask: -----END SSH SIGNATURE-----\nprev: none\n-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"
        let parsed = AuditRecord.parseNote(record)
        #expect(parsed.records.count == 1 && parsed.problems.isEmpty)
        #expect(parsed.records.first?.value("task") == "-----END SSH SIGNATURE-----")
    }
}
