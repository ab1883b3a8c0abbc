import Foundation
import Testing
import TestSupport
@testable import StateStore

@Suite struct RedactorTests {
    /// A secret in the forms programs print it: each is masked, and text around it is kept.
    @Test func aSecretIsMaskedInTheEncodingsProgramsPrint() throws {
        let directory = TemporaryDirectory()
        let state = try StateStore(path: directory.path + "/gantry.db")
        let secrets = try SecretStore(state: state, keyPath: directory.path + "/secrets.key")
        let value = #"Pa/y+Se"cr\et-2024zz"#
        try secrets.set("pay-key", value: Data(value.utf8), scope: .team("payments"))
        let redactor = Redactor(store: secrets)
        let bytes = Data(value.utf8)
        let basic = Data("user:\(value)".utf8).base64EncodedString()
        let unpadded = bytes.base64EncodedString().replacingOccurrences(of: "=", with: "")
        let urlSafe = Data("x\(value)".utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        let json = String(decoding: try JSONSerialization.data(withJSONObject: ["v": value]), as: UTF8.self)
        let pathEncoded = value.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed)!
        for line in ["plain \(value) end", "Authorization: Basic \(basic)", "token=\(unpadded)", "u=\(urlSafe)", json,
                     "GET /\(pathEncoded) HTTP/1.1", bytes.map { String(format: "%02x", $0) }.joined()] {
            let masked = redactor.redact(line)
            #expect(masked.contains("[redacted secret pay-key]"), "not masked: \(line) -> \(masked)")
            #expect(!masked.contains("2024zz"), "a piece is left: \(masked)")
        }
        #expect(redactor.redact("nothing secret here") == "nothing secret here")
        // Python's quote() keeps '/', and hex digits may come in lower case.
        let pythonQuoted = value.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/"))!
        for line in [pythonQuoted, pythonQuoted.replacingOccurrences(of: "%2B", with: "%2b").replacingOccurrences(of: "%5C", with: "%5c")] {
            #expect(redactor.redact(line).contains("[redacted secret pay-key]"), "not masked: \(line)")
        }
    }

    @Test func aNonASCIISecretIsMaskedAsJSONEscapesIt() throws {
        let directory = TemporaryDirectory()
        let secrets = try SecretStore(state: try StateStore(path: directory.path + "/gantry.db"), keyPath: directory.path + "/secrets.key")
        try secrets.set("umlaut", value: Data("pässwörd-Ünï-7731&x".utf8), scope: .team("payments"))
        let redactor = Redactor(store: secrets)
        for line in [#"{"v": "p\u00e4ssw\u00f6rd-\u00dcn\u00ef-7731&x"}"#, #"{"v": "p\u00e4ssw\u00f6rd-\u00dcn\u00ef-7731\u0026x"}"#] {
            #expect(redactor.redact(line).contains("[redacted secret umlaut]"), "not masked: \(line)")
        }
    }

    /// A value set by another process (another store on the same DB) is masked within moments.
    @Test func aValueSetElsewhereIsMaskedSoon() throws {
        let directory = TemporaryDirectory()
        let mine = try SecretStore(state: try StateStore(path: directory.path + "/gantry.db"), keyPath: directory.path + "/secrets.key")
        let redactor = Redactor(store: mine)
        #expect(redactor.redact("early LateValue12345") == "early LateValue12345")
        let theirs = try SecretStore(state: try StateStore(path: directory.path + "/gantry.db"), keyPath: directory.path + "/secrets.key")
        try theirs.set("late", value: Data("LateValue12345".utf8), scope: .team("payments"))
        #expect(eventually(1) { redactor.redact("now LateValue12345").contains("[redacted secret late]") })
    }
}
