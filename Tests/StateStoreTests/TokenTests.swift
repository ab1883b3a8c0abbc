import Foundation
import GRDB
import Testing
import TestSupport
@testable import StateStore

@Suite struct TokenTests {
    @Test func aTokenIsKeptAsAHashAndAuthenticatesUntilRevoked() throws {
        let directory = TemporaryDirectory()
        let path = directory.path + "/gantry.db"
        let store = try StateStore(path: path)
        let (value, record) = try store.createToken(actor: "claude@payments", ttl: nil)
        #expect(value.hasPrefix("gnt_\(record.id)_"))
        let found = try store.authenticate(value)
        #expect((try? found.get())?.actor == "claude@payments")
        // Neither the database nor its WAL holds the value: only its SHA-256.
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix("gantry.db") }
        let secretPart = String(value.dropFirst("gnt_\(record.id)_".count))
        #expect(secretPart.count >= 43)
        for file in files {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: directory.path + "/" + file))
            #expect(bytes.range(of: Data(secretPart.utf8)) == nil, "\(file) holds the token")
        }
        // One character off, the same id with another secret, and garbage: all refused.
        var wrong = value
        wrong.removeLast()
        wrong.append(value.last == "A" ? "B" : "A")
        #expect(try store.authenticate(wrong) == .failure(.unknown))
        #expect(try store.authenticate("gnt_\(record.id)_" + String(repeating: "x", count: 43)) == .failure(.unknown))
        #expect(try store.authenticate("Bearer nonsense") == .failure(.malformed))
        #expect(try store.revokeToken(record.id))
        guard case .failure(.revoked) = try store.authenticate(value) else {
            Issue.record("a revoked token still authenticates")
            return
        }
    }

    @Test func anExpiredTokenIsRefused() throws {
        let store = try StateStore(path: TemporaryDirectory().path + "/gantry.db")
        let (value, _) = try store.createToken(actor: "claude@payments", ttl: 60, now: Date().addingTimeInterval(-120))
        guard case .failure(.expired) = try store.authenticate(value) else {
            Issue.record("an expired token still authenticates")
            return
        }
        #expect(try store.tokens().first?.isValid(at: Date()) == false)
    }

    @Test func revokingNeedsOneMatchingToken() throws {
        let store = try StateStore(path: TemporaryDirectory().path + "/gantry.db")
        _ = try store.createToken(actor: "a", ttl: nil)
        _ = try store.createToken(actor: "b", ttl: nil)
        #expect(try !store.revokeToken(""))        // matches both: refused
        #expect(try !store.revokeToken("zzzz"))    // matches none
        #expect(try !store.revokeToken("%"))       // an id, not a pattern
        #expect(try store.tokens().allSatisfy { $0.revokedAt == nil })
    }
}
