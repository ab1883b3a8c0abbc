import Audit
@testable import DataPlane
import Foundation
import GitStore
import Reconciler
import SpecModel
import Testing
import TestSupport

/// Plans as the agent judges them: signed by the control plane's key over their exact bytes (and
/// `ssh-keygen -Y verify` agrees), in sequence, fresh, with paths inside the revision.
@Suite struct PlanTests {
    let key = SigningKey()

    func plan(_ sequence: Int, issued: Date = Date(), files: [PlanFile] = []) -> Plan {
        var plan = Plan(sequence: sequence, issuedAt: issued, action: .apply, environment: "shop")
        plan.commit = String(repeating: "a", count: 40)
        plan.spec = EnvironmentSpec(name: "shop", team: "payments", class: .development)
        plan.files = files
        return plan
    }

    @Test func aSealedPlanVerifiesHereAndWithSSHKeygen() throws {
        let envelope = try PlanEnvelope.seal(plan(7), key: key)
        let verified = try PlanVerifier(trusted: key.publicKey).verify(envelope, after: 6)
        #expect(verified == plan(7).with(issuedAt: verified.issuedAt))
        // The outside judge: OpenSSH verifies the signature over the plan's bytes, namespace gantry-plan.
        let directory = TemporaryDirectory("gantry-plan")
        try "control \(key.publicKey.authorizedKey)\n".write(toFile: directory.path + "/signers", atomically: true, encoding: .utf8)
        try envelope.signature.write(toFile: directory.path + "/plan.sig", atomically: true, encoding: .utf8)
        let bytes = String(decoding: Data(base64Encoded: envelope.plan)!, as: UTF8.self)
        let result = try Shell.run(["ssh-keygen", "-Y", "verify", "-n", "gantry-plan", "-f", directory.path + "/signers", "-I", "control",
                                    "-s", directory.path + "/plan.sig"], input: bytes)
        #expect(result.status == 0, "\(result.stderr)")
        // ...and refuses it under another namespace (an audit note's signature is no plan's).
        let other = try Shell.run(["ssh-keygen", "-Y", "verify", "-n", "gantry", "-f", directory.path + "/signers", "-I", "control",
                                   "-s", directory.path + "/plan.sig"], input: bytes)
        #expect(other.status != 0)
    }

    @Test func aTamperedPlanIsRefused() throws {
        var envelope = try PlanEnvelope.seal(plan(7), key: key)
        var altered = plan(7)
        altered.spec?.services = [Service(name: "miner")]
        envelope.plan = try altered.canonical().base64EncodedString()
        let refusal = try #require(throws: PlanRefusal.self) { try PlanVerifier(trusted: key.publicKey).verify(envelope, after: 0) }
        #expect(refusal.kind == .tampered)
        // A signature cut short, or not a signature at all.
        envelope = try PlanEnvelope.seal(plan(7), key: key)
        envelope.signature = String(envelope.signature.prefix(80))
        #expect(try #require(throws: PlanRefusal.self) { try PlanVerifier(trusted: key.publicKey).verify(envelope, after: 0) }.kind == .tampered)
    }

    @Test func aPlanSignedByAnotherKeyIsRefused() throws {
        let forger = SigningKey()
        let envelope = try PlanEnvelope.seal(plan(7), key: forger)
        let refusal = try #require(throws: PlanRefusal.self) { try PlanVerifier(trusted: key.publicKey).verify(envelope, after: 0) }
        #expect(refusal.kind == .untrusted && refusal.description.contains(forger.publicKey.fingerprint) && refusal.signedSequence == nil)
    }

    @Test func aReplayedPlanIsRefused() throws {
        let envelope = try PlanEnvelope.seal(plan(7), key: key)
        let verifier = PlanVerifier(trusted: key.publicKey)
        _ = try verifier.verify(envelope, after: 6)
        for last in [7, 8, 100] {
            let refusal = try #require(throws: PlanRefusal.self) { try verifier.verify(envelope, after: last) }
            #expect(refusal.kind == .replayed)
        }
    }

    @Test func aStaleOrFuturePlanIsRefused() throws {
        var verifier = PlanVerifier(trusted: key.publicKey)
        verifier.maxAge = 60
        let old = try PlanEnvelope.seal(plan(7, issued: Date().addingTimeInterval(-120)), key: key)
        let refusal = try #require(throws: PlanRefusal.self) { try verifier.verify(old, after: 0) }
        // Signed by the control plane: the agent may move past it (a backlog cannot wedge it).
        #expect(refusal.kind == .stale && refusal.signedSequence == 7)
        let future = try PlanEnvelope.seal(plan(7, issued: Date().addingTimeInterval(3600)), key: key)
        #expect(try #require(throws: PlanRefusal.self) { try verifier.verify(future, after: 0) }.description.contains("in the future"))
    }

    @Test func filesOutsideTheRevisionAreRefusedAndTheRestMaterialize() throws {
        for path in ["../etc/passwd", "/etc/passwd", "apps/../../x", "apps//x", "./x"] {
            let envelope = try PlanEnvelope.seal(plan(7, files: [PlanFile(path: path, executable: false, data: "eA==")]), key: key)
            let refusal = try #require(throws: PlanRefusal.self) { try PlanVerifier(trusted: key.publicKey).verify(envelope, after: 0) }
            #expect(refusal.kind == .malformed, "\(path)")
        }
        var good = plan(7, files: [PlanFile(path: "apps/shop/server.py", executable: false, data: Data("print(1)".utf8).base64EncodedString()),
                                   PlanFile(path: "apps/shop/run.sh", executable: true, data: Data("#!/bin/sh".utf8).base64EncodedString()),
                                   PlanFile(path: "seeds/shop.sql", executable: false, data: Data("select 1;".utf8).base64EncodedString())])
        good.objects = ["apps/shop": String(repeating: "b", count: 40)]
        let snapshot = PlanSnapshot(try PlanVerifier(trusted: key.publicKey).verify(try PlanEnvelope.seal(good, key: key), after: 0))
        let directory = TemporaryDirectory("gantry-plan-files")
        try snapshot.materialize("apps/shop", into: directory.url)
        #expect(try String(contentsOfFile: directory.path + "/server.py", encoding: .utf8) == "print(1)")
        #expect(FileManager.default.isExecutableFile(atPath: directory.path + "/run.sh"))
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/shop.sql"))
        #expect(try snapshot.readFile("seeds/shop.sql") == Data("select 1;".utf8))
        #expect(try snapshot.objectID(at: "apps/shop")?.hex == String(repeating: "b", count: 40))
    }

    @Test func anEnvironmentNameThatIsNoLabelIsRefused() throws {
        for name in ["../agent", "Shop", "a/b", "-x", String(repeating: "a", count: 64), ""] {
            var bad = plan(7)
            bad.environment = name
            let refusal = try #require(throws: PlanRefusal.self) { try PlanVerifier(trusted: key.publicKey).verify(try PlanEnvelope.seal(bad, key: key), after: 0) }
            #expect(refusal.kind == .malformed, "\(name)")
        }
        var switches = Plan(sequence: 8, issuedAt: Date(), action: .switches, environment: "shop")
        #expect(throws: PlanRefusal.self) { try PlanVerifier(trusted: key.publicKey).verify(try PlanEnvelope.seal(switches, key: key), after: 0) }
        switches.environment = ""
        #expect(try PlanVerifier(trusted: key.publicKey).verify(try PlanEnvelope.seal(switches, key: key), after: 0).sequence == 8)
    }

    /// The files a plan carries come from a real revision: the service's tree, a seed, nothing else.
    @Test func aPlanCarriesTheFilesItsServicesNeed() throws {
        let repo = try TestRepository()
        try repo.seedExample()
        try repo.write("apps/shop/server.py", "print('shop')\n")
        try repo.write("seeds/shop.sql", "select 1;\n")
        let sha = try repo.commitAsOwner("shop")
        let snapshot = GitSnapshot(path: repo.path, commit: ObjectID(hex: sha)!)
        let files = try PlanSnapshot.files(of: snapshot, paths: ["apps/shop", "seeds/shop.sql"])
        #expect(files.map { $0.path } == ["apps/shop/server.py", "seeds/shop.sql"])
        #expect(throws: (any Error).self) { try PlanSnapshot.files(of: snapshot, paths: [""], limit: 10) }
    }
}

extension Plan {
    func with(issuedAt: Date) -> Plan {
        var copy = self
        copy.issuedAt = issuedAt
        return copy
    }
}
