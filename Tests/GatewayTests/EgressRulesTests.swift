import Foundation
@testable import Gateway
import SpecModel
import Testing

/// The egress judge on its own: entry shapes, wildcard depth, deny wins, addresses, injection.
@Suite struct EgressRulesTests {
    func patterns(_ entries: [String]) -> [HostPattern] { entries.map { try! HostPattern.parse($0).get() } }

    func grants(environment: [String] = [], services: [String: [String]] = [:]) -> EgressGrants {
        var grants = EgressGrants()
        grants.environment = patterns(environment)
        grants.services = services.mapValues(patterns)
        return grants
    }

    @Test func wildcardsMatchOneLabelOrAnyDepthAndNeverTheBareDomain() {
        let one = try! HostPattern.parse("*.example.com").get(), any = try! HostPattern.parse("**.example.com").get()
        #expect(one.matches(host: "a.example.com"))
        #expect(!one.matches(host: "a.b.example.com"))
        #expect(!one.matches(host: "example.com"))
        #expect(!one.matches(host: "evilexample.com"))
        #expect(any.matches(host: "a.b.c.example.com"))
        #expect(!any.matches(host: "example.com"))
        #expect(!any.matches(host: "example.com.evil.org"))
        let exact = try! HostPattern.parse("API.Stripe.com.").get()
        #expect(exact.matches(host: "api.stripe.com"))
        #expect(!exact.matches(host: "api.stripe.com.evil.org"))
    }

    @Test func malformedEntriesSayWhatIsWrong() {
        for (entry, words) in [("*.com", "two labels"), ("a.*.example.com", "first label"), ("api.stripe.com:443", "port"),
                               ("10.0.0.0/40", "network"), ("", "empty"), ("exa mple.com", "host name")] {
            guard case .failure(let error) = HostPattern.parse(entry) else { Issue.record("\(entry) was accepted"); continue }
            #expect(error.description.contains(words), "\(entry): \(error)")
        }
    }

    @Test func denyWinsOverEveryAllow() {
        let policy = EgressPolicy(defaultAllows: true, allow: patterns(["pypi.org"]), deny: patterns(["**.pypi.org", "pypi.org"]))
        let verdict = EgressJudge.decide(host: "pypi.org", policy: policy, grants: grants(environment: ["pypi.org"]), service: nil)
        guard case .deny(_, let rule, let remedy) = verdict else { Issue.record("allowed: \(verdict)"); return }
        #expect(rule == "egress.deny '**.pypi.org'" || rule == "egress.deny 'pypi.org'")
        #expect(remedy.contains("deny wins"))
    }

    @Test func aServiceListAllowsOnlyThatService() {
        let policy = EgressPolicy(allow: patterns(["pypi.org"]))
        let own = grants(services: ["api": ["api.stripe.com"]])
        #expect(EgressJudge.decide(host: "api.stripe.com", policy: policy, grants: own, service: "api").allowed)
        let other = EgressJudge.decide(host: "api.stripe.com", policy: policy, grants: own, service: "worker")
        guard case .deny(_, let rule, let remedy) = other else { Issue.record("worker reached stripe"); return }
        #expect(rule == "egress.default: deny")
        #expect(remedy.contains("spec.services.worker.egress"))
        // An unknown caller (no service found) gets the environment's and gantry.yaml's lists only.
        #expect(!EgressJudge.decide(host: "api.stripe.com", policy: policy, grants: own, service: nil).allowed)
        #expect(EgressJudge.decide(host: "pypi.org", policy: policy, grants: own, service: nil).allowed)
    }

    @Test func internalAddressesNeedTheOperatorsList() {
        let agentListed = grants(environment: ["169.254.169.254", "127.0.0.1", "10.0.0.0/8"])
        for host in ["169.254.169.254", "127.0.0.1", "10.1.2.3", "::1", "fe80::1", "0.0.0.0", "100.64.0.1", "::127.0.0.1", "::ffff:0:7f00:1", "fec0::1", "100::1"] {
            let verdict = EgressJudge.decide(host: HostName.normalize(host)!, policy: EgressPolicy(defaultAllows: true), grants: agentListed, service: nil)
            #expect(!verdict.allowed, "\(host) was allowed")
        }
        let operators = EgressPolicy(allow: patterns(["10.9.0.0/16"]))
        #expect(EgressJudge.decide(host: "10.9.1.1", policy: operators, grants: EgressGrants(), service: nil).allowed)
        // The C resolver's other spellings of an address are that address.
        #expect(HostName.normalize("2130706433") == "127.0.0.1")
        #expect(HostName.normalize("0x7f.1") == "127.0.0.1")
        #expect(HostName.normalize("[::ffff:127.0.0.1]") == "127.0.0.1")
    }

    @Test func aPublicAddressMustBeListedEvenWhenTheDefaultAllows() {
        let verdict = EgressJudge.decide(host: "203.0.113.7", policy: EgressPolicy(defaultAllows: true), grants: EgressGrants(), service: nil)
        #expect(!verdict.allowed)
        #expect(EgressJudge.decide(host: "203.0.113.7", policy: EgressPolicy(), grants: grants(environment: ["203.0.113.7"]), service: nil).allowed)
    }

    @Test func aNameThatResolvesInsideIsRefusedUnlessTheOperatorNamedIt() {
        let addresses = [IPAddress("127.0.0.1")!]
        #expect(EgressJudge.checkResolved(host: "localtest.me", port: 80, addresses: addresses, policy: EgressPolicy(defaultAllows: true)) != nil)
        #expect(EgressJudge.checkResolved(host: "registry.corp", port: 443, addresses: addresses, policy: EgressPolicy(allow: patterns(["registry.corp"]))) == nil)
        #expect(EgressJudge.checkResolved(host: "a.corp.example", port: 443, addresses: addresses, policy: EgressPolicy(allow: patterns(["*.corp.example"]))) != nil)
        // A pin to loopback opens its one port, not Gantry's API or the router beside it.
        let pinned = EgressPolicy(pinned: ["pinned.test": addresses], pinnedPorts: ["pinned.test": 8443])
        #expect(EgressJudge.checkResolved(host: "pinned.test", port: 8443, addresses: addresses, policy: pinned) == nil)
        #expect(EgressJudge.checkResolved(host: "pinned.test", port: 7070, addresses: addresses, policy: pinned) != nil)
        #expect(EgressJudge.checkResolved(host: "pypi.org", port: 443, addresses: [IPAddress("151.101.0.223")!], policy: EgressPolicy()) == nil)
    }

    /// The host's own public address answers for every server it runs on all its addresses: an
    /// environment that lists it (or a name resolving to it) is refused, as for loopback.
    @Test func thisHostsOwnAddressesAreInternalWhateverTheirRange() throws {
        let own = HostInterfaces.read().addresses
        #expect(own.contains(IPAddress("127.0.0.1")!), "\(own)")
        let policy = EgressPolicy(defaultAllows: true, hostAddresses: [IPAddress("198.51.100.20")!, IPAddress("2001:db8::20")!])
        let listed = grants(environment: ["198.51.100.20", "2001:db8::20", "host.example"])
        for host in ["198.51.100.20", "2001:db8::20"] {
            let verdict = EgressJudge.decide(host: HostName.normalize(host)!, policy: policy, grants: listed, service: nil)
            #expect(verdict == .deny(reason: "\(HostName.normalize(host)!) is an internal address (an address of this host)", rule: "internal addresses",
                                     remedy: "only an admin can open it, by listing it in egress.allow in gantry.yaml"), "\(verdict)")
        }
        #expect(EgressJudge.decide(host: "198.51.100.21", policy: policy, grants: grants(environment: ["198.51.100.21"]), service: nil).allowed)
        let resolved = EgressJudge.checkResolved(host: "host.example", port: 9999, addresses: [IPAddress("198.51.100.20")!], policy: policy)
        #expect(resolved.map { !$0.allowed } == true)
        // A prefix on a loopback device makes its whole network local.
        let network = EgressPolicy(defaultAllows: true, hostNetworks: [(network: 0xC633_6400, mask: 0xFFFF_FF00)])
        #expect(!EgressJudge.decide(host: "198.51.100.77", policy: network, grants: grants(environment: ["198.51.100.77"]), service: nil).allowed)
        #expect(EgressJudge.decide(host: "198.51.101.77", policy: network, grants: grants(environment: ["198.51.101.77"]), service: nil).allowed)
        #expect(HostInterfaces.read().loopbackNetworks.contains { $0.network == 0x7F00_0000 && $0.mask == 0xFF00_0000 }, "127.0.0.0/8 on lo")
        let operators = EgressPolicy(allow: patterns(["198.51.100.20"]), hostAddresses: policy.hostAddresses)
        #expect(EgressJudge.decide(host: "198.51.100.20", policy: operators, grants: EgressGrants(), service: nil).allowed)
    }

    /// A denied name goes into signed notes every reader of the repository gets: a short, plain
    /// one as it is, one long enough to carry a secret (hex, base32) cut to its last two labels
    /// and a digest that only Gantry's log can match.
    @Test func recordsNameShortHostsAndDigestLongOnes() {
        #expect(RecordedHost.shown("denied.test") == ("denied.test", nil))
        #expect(RecordedHost.shown("api.eu-west-1.amazonaws.com").digest == nil)
        #expect(RecordedHost.shown("203.0.113.7") == ("203.0.113.7", nil))
        let secret = "sk_live_0123456789abcdefghij"
        let hex = Data(secret.utf8).map { String(format: "%02x", $0) }.joined() + ".exfil.example"
        let spaced = "a.b.c.d.e." + secret.lowercased().replacingOccurrences(of: "_", with: "-").prefix(20) + ".exfil.example"
        for host in [hex, spaced, String(repeating: "x", count: 30) + ".example"] {
            let shown = RecordedHost.shown(host)
            #expect(shown.host.hasPrefix("….") && shown.digest?.count == 16, "\(shown)")
            #expect(!shown.host.contains("736b5f6c697665") && !shown.host.contains("0123456789"), "\(shown)")
            #expect(RecordedHost.shown(host).digest == shown.digest, "the same name has the same digest in one run")
        }
        #expect(RecordedHost.shown(hex).host == "….exfil.example")
        // A TLS server name the environment sent is quoted in the reason: cut the same way.
        let sni = "leak-" + hex.prefix(48) + "-end"
        let reason = RecordedHost.bounded("the TLS server name '\(sni)' is not \(hex)", host: hex)
        #expect(reason == "the TLS server name '….\(sni.prefix(24))…' is not ….exfil.example", "\(reason)")
    }

    @Test func requestHeadsAreParsedStrictly() throws {
        func parse(_ text: String) -> Result<ProxyRequest, ProxyRequest.Refusal> { ProxyRequest.parse(head: Array(text.utf8)) }
        guard case .success(let connect) = parse("CONNECT api.stripe.com:443 HTTP/1.1\r\nHost: api.stripe.com:443") else { Issue.record("CONNECT refused"); return }
        #expect(connect.kind == .connect && connect.host == "api.stripe.com" && connect.port == 443)
        guard case .success(let plain) = parse("POST http://user:pw@Example.com:8080/a?b=1#frag HTTP/1.1\r\nHost: evil.test\r\nContent-Length: 3") else {
            Issue.record("plain refused"); return
        }
        #expect(plain.host == "example.com" && plain.port == 8080 && plain.path == "/a?b=1" && plain.contentLength == 3)
        let upstream = String(decoding: plain.upstreamHead(bodyLength: 3, injected: [("Authorization", "Bearer x")]), as: UTF8.self)
        #expect(upstream.hasPrefix("POST /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\n"))
        #expect(!upstream.contains("evil.test"))
        #expect(upstream.contains("Authorization: Bearer x\r\n") && upstream.contains("Connection: close\r\n"))
        for bad in ["GET /relative HTTP/1.1", "GET https://x.test/ HTTP/1.1", "POST http://x.test/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
                    "GET http://x.test/ HTTP/1.1\r\n folded", "CONNECT x.test:99999 HTTP/1.1",
                    "GET http://x.test/ HTTP/1.1\r\nX-A: 1\nContent-Length: 5", "GET http://x.test/ HTTP/1.1\r\nX-A: 1\r2"] {
            guard case .failure(let refusal) = parse(bad) else { Issue.record("accepted: \(bad)"); continue }
            #expect(refusal.status == 400)
        }
    }

    @Test func chunkedBodiesAreDecodedWithinTheBound() {
        #expect(ProxyRequest.dechunk(Array("3\r\nabc\r\n0\r\n\r\n".utf8), limit: 10) == .done(body: Array("abc".utf8), used: 13))
        #expect(ProxyRequest.dechunk(Array("3\r\nab".utf8), limit: 10) == .incomplete)
        if case .invalid = ProxyRequest.dechunk(Array("ff\r\n".utf8), limit: 10) {} else { Issue.record("a chunk over the bound was accepted") }
        if case .invalid = ProxyRequest.dechunk(Array("zz\r\n".utf8), limit: 10) {} else { Issue.record("a bad size was accepted") }
    }

    @Test func dnsQueriesAreParsedAndAnswered() {
        // id 0x1234, RD, one question: a.test A IN.
        let query: [UInt8] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x61, 4, 0x74, 0x65, 0x73, 0x74, 0, 0, 1, 0, 1]
        let parsed = EgressDNS.parse(query)
        #expect(parsed?.name == "a.test" && parsed?.type == 1 && parsed?.id == 0x1234)
        let answer = EgressDNS.answer(parsed!, rcode: 0, addresses: [IPAddress("192.0.2.5")!])
        #expect(answer[3] & 0x0f == 0 && answer[7] == 1)
        #expect(Array(answer.suffix(4)) == [192, 0, 2, 5])
        #expect(EgressDNS.answer(parsed!, rcode: 3, addresses: [])[3] & 0x0f == 3)
        #expect(EgressDNS.parse(Array(query.prefix(10))) == nil)
    }
}
