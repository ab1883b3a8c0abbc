import Foundation
@testable import Gateway
import Testing

/// DLP on its own: each credential shape of the rule table, and a managed secret's value as is,
/// percent-encoded, base64 at every alignment, URL-safe base64 and inside Basic credentials.
@Suite struct DLPTests {
    /// Samples of each shape, assembled here so the source holds no credential-shaped literal.
    static let samples: [(rule: String, text: String)] = {
        let upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", mixed = "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC2dF4gH6jK8"
        return [
            ("aws-access-key-id", "AKIA" + String(upper.prefix(16))),
            ("github-token", "ghp_" + String(mixed.prefix(36))),
            ("github-fine-grained-token", "github_pat_" + String(repeating: "a1B2c3D4e5_", count: 8) + "xy"),
            ("slack-token", "xoxb-" + "123456789012-" + "abcdefABCDEF1234"),
            ("slack-webhook", "https://hooks.slack.com/services/" + "T0000000/B0000000/" + String(mixed.prefix(24))),
            ("stripe-live-key", "sk_" + "live_" + String(mixed.prefix(24))),
            ("anthropic-api-key", "sk-ant-" + "api03-" + String(repeating: mixed, count: 3) + "AA"),
            ("openai-api-key", "sk-proj-" + String(mixed.prefix(24)) + "T3Blbk" + "FJ" + String(mixed.prefix(24))),
            ("private-key", "-----BEGIN OPENSSH " + "PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"),
        ]
    }()

    @Test func everyRuleOfTheTableCatchesItsShape() {
        let scanner = DLPScanner(secrets: [])
        #expect(Set(Self.samples.map(\.rule)) == Set(DLPScanner.patterns.map(\.name)), "a rule without a sample, or a sample without a rule")
        for sample in Self.samples {
            let finding = scanner.scan(Array("POST /upload HTTP/1.1\r\nX: 1\r\n\r\nkey=\(sample.text)&x=1".utf8), place: "body")
            #expect(finding?.rule == "pattern:\(sample.rule)", "\(sample.rule): \(String(describing: finding))")
            #expect(!(finding?.description.contains(sample.text) ?? false), "the finding holds the value")
        }
    }

    @Test func ordinaryTrafficPasses() {
        let scanner = DLPScanner(secrets: [("stripe-key", "sk_test_4eC39HqLyjWDarjtT1zdp7dc")])
        for text in ["GET /simple/requests/ HTTP/1.1\r\nHost: pypi.org\r\nUser-Agent: pip/24.0\r\n\r\n",
                     "{\"name\": \"AKIA\", \"skip\": \"ghp_short\", \"begin\": \"-----BEGIN PUBLIC KEY-----\"}",
                     "sk-ant-api03-tooShort", String(repeating: "A", count: 5000)] {
            #expect(scanner.scan(Array(text.utf8), place: "body") == nil, "\(text.prefix(60))")
        }
    }

    @Test func aManagedSecretIsCaughtInEveryEncoding() {
        let secret = "s3cr3t/value+with?odd=chars"
        let scanner = DLPScanner(secrets: [("db-password", secret)])
        let encodings: [String: String] = [
            "raw": secret,
            "percent": secret.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!,
            "base64": Data(secret.utf8).base64EncodedString(),
            "base64 shifted 1": Data(("x" + secret).utf8).base64EncodedString(),
            "base64 shifted 2": Data(("xy" + secret).utf8).base64EncodedString(),
            "base64url": Data(("z" + secret).utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_"),
        ]
        for (how, text) in encodings {
            let finding = scanner.scan(Array("GET /?q=\(text) HTTP/1.1\r\n\r\n".utf8), place: "URL")
            #expect(finding?.rule == "secret:db-password", "\(how): \(String(describing: finding))")
        }
        let basic = "Authorization: Basic " + Data("user:\(secret)".utf8).base64EncodedString()
        #expect(scanner.scan(Array("GET / HTTP/1.1\r\n\(basic)\r\n\r\n".utf8), place: "headers")?.rule == "secret:db-password")
    }

    @Test func encodingsThatKeepAPlusOrEscapeASlashAreCaughtToo() {
        let secret = "Sup3r+Secret/Value_123"
        let scanner = DLPScanner(secrets: [("api", secret)])
        // Percent-encoding that leaves '+' alone (Python's quote(safe="+"), Go's PathEscape).
        #expect(scanner.scan(Array("k=Sup3r+Secret%2FValue_123".utf8), place: "body")?.rule == "secret:api")
        // JSON encoders that escape '/' or write \u escapes.
        #expect(scanner.scan(Array(#"{"k": "Sup3r+Secret\/Value_123"}"#.utf8), place: "body")?.rule == "secret:api")
        #expect(scanner.scan(Array(#"{"k": "Sup3r\u002bSecret\/Value_123"}"#.utf8), place: "body")?.rule == "secret:api")
    }

    @Test func wrappedBase64AndJSONInsideAFormFieldAreCaught() {
        let secret = "Sup3rS3cr3t+Val/ue=XYZ"
        let scanner = DLPScanner(secrets: [("team", secret)])
        // MIME base64 (76-column lines) and base64 wrapped every 16 characters.
        let encoded = Data(("prefix-" + secret + "-suffix").utf8).base64EncodedString()
        let wrapped = stride(from: 0, to: encoded.count, by: 16).map { String(encoded.dropFirst($0).prefix(16)) }.joined(separator: "\r\n")
        #expect(scanner.scan(Array(wrapped.utf8), place: "body")?.rule == "secret:team")
        // json_encode, then urlencode (PHP's way).
        #expect(scanner.scan(Array("k=Sup3rS3cr3t%5Cu002bVal%5C%2Fue%3DXYZ".utf8), place: "body")?.rule == "secret:team")
    }

    @Test func aChunkedBodyTrickledInIsDecodedOnce() {
        var decoder = ProxyRequest.ChunkedDecoder(limit: 1 << 20)
        let whole = Array((String(repeating: "1\r\nA\r\n", count: 2000) + "0\r\nX-T: 1\r\n\r\n").utf8)
        var result = ProxyRequest.Chunked.incomplete
        for end in stride(from: 1, through: whole.count, by: 7) { result = decoder.feed(Array(whole[..<end])) }
        if result == .incomplete { result = decoder.feed(whole) }
        #expect(result == .done(body: Array(repeating: 0x41, count: 2000), used: whole.count))
        // A body of too many chunks is refused, whatever its size.
        var tiny = ProxyRequest.ChunkedDecoder(limit: 1 << 20)
        if case .invalid(let why) = tiny.feed(Array(String(repeating: "1\r\nA\r\n", count: 5000).utf8)) {
            #expect(why.contains("chunks"))
        } else {
            Issue.record("5000 one-byte chunks were accepted")
        }
        var reader = TLSHello.Reader()
        #expect(reader.feed([0x16, 3, 1]) == .needMore)
    }

    @Test func shortSecretsAreNotLookedFor() {
        let scanner = DLPScanner(secrets: [("pin", "1234")])
        #expect(scanner.scan(Array("GET /?pin=1234 HTTP/1.1\r\n\r\n".utf8), place: "URL") == nil)
    }
}
