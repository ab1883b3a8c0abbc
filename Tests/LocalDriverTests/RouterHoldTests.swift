import Foundation
import Gateway
import TestSupport
import Testing

/// The router's side of waking: a request for a sleeping service is held while it wakes, then
/// forwarded; one that may not wake gets a 503 with Retry-After and the reason. Real sockets, a
/// real backend process.
@Suite struct RouterHoldTests {
    final class Table: @unchecked Sendable {
        private let lock = NSLock()
        private var targets: [String: RouteTarget] = [:]
        func set(_ host: String, _ target: RouteTarget) { lock.withLock { targets[host] = target } }
        var all: [String: RouteTarget] { lock.withLock { targets } }
    }

    func get(_ port: Int, host: String) throws -> (status: String, headers: String, body: String) {
        let result = try Shell.run(["curl", "-s", "-i", "--max-time", "20", "-H", "Host: \(host)", "http://127.0.0.1:\(port)/"])
        let parts = result.stdout.components(separatedBy: "\r\n\r\n")
        let head = parts.first ?? ""
        return (String(head.split(separator: " ").dropFirst().first ?? ""), head, parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    @Test func aRequestForASleepingServiceIsHeldWhileItWakesThenForwarded() throws {
        let table = Table()
        table.set("www.sleepy.localhost", RouteTarget(environment: "sleepy", ports: [], reason: "it sleeps", service: "web", asleep: true))
        let backendPort = try freeLoopbackPort()
        let backend = SpawnedProcess()
        let woken = Box()
        let router = Router { table.all }
        router.hooks = RouterHooks(started: { _, _ in false }, ended: { _, _ in }, ensureServing: { environment, service in
            // The wake: a real server started, then the table says where it listens.
            backend.start(["python3", "-m", "http.server", "\(backendPort)", "--bind", "127.0.0.1", "--directory", "/"])
            guard eventually(10, { httpGet("http://127.0.0.1:\(backendPort)/") != nil }) else { return "did not start" }
            table.set("www.sleepy.localhost", RouteTarget(environment: environment, ports: [backendPort], service: service))
            woken.set()
            return nil
        })
        try router.start(port: 0)
        defer { router.stop(); backend.stop() }
        let answer = try get(router.port, host: "www.sleepy.localhost")
        #expect(answer.status == "200", "\(answer)")
        #expect(woken.isSet)
    }

    @Test func aServiceThatMayNotWakeGetsA503WithRetryAfterAndTheReason() throws {
        let table = Table()
        table.set("www.paused.localhost", RouteTarget(environment: "paused", ports: [], reason: "paused", service: "web", asleep: true))
        let router = Router { table.all }
        router.hooks = RouterHooks(started: { _, _ in false }, ended: { _, _ in },
                                   ensureServing: { environment, _ in "\(environment) is paused: the team payments daily budget is spent" })
        try router.start(port: 0)
        defer { router.stop() }
        let answer = try get(router.port, host: "www.paused.localhost")
        #expect(answer.status == "503")
        #expect(answer.headers.lowercased().contains("retry-after: 5"), "\(answer.headers)")
        #expect(answer.body.contains("paused is paused: the team payments daily budget is spent"))
    }

    @Test func aRequestDuringAStopWaitsForItAndEveryRequestIsCounted() throws {
        let table = Table()
        let backendPort = try freeLoopbackPort()
        let backend = SpawnedProcess()
        backend.start(["python3", "-m", "http.server", "\(backendPort)", "--bind", "127.0.0.1", "--directory", "/"])
        defer { backend.stop() }
        #expect(eventually(10) { httpGet("http://127.0.0.1:\(backendPort)/") != nil })
        table.set("www.busy.localhost", RouteTarget(environment: "busy", ports: [backendPort], service: "web"))
        let counts = Counter()
        let router = Router { table.all }
        // The service is being stopped: `started` says so, and the request waits for `ensureServing`.
        router.hooks = RouterHooks(started: { _, _ in counts.add("started"); return true }, ended: { _, _ in counts.add("ended") },
                                   ensureServing: { _, _ in counts.add("ensured"); return nil })
        try router.start(port: 0)
        defer { router.stop() }
        for _ in 0..<3 { #expect(try get(router.port, host: "www.busy.localhost").status == "200") }
        #expect(eventually(5) { counts.value("ended") == 3 })
        #expect(counts.value("started") == 3 && counts.value("ensured") == 3)
        #expect(router.inFlight(port: backendPort) == 0)
    }

    @Test func aTricklingHeadIsClosedAndConnectionsAreBounded() throws {
        let table = Table()
        let router = Router { table.all }
        router.headSeconds = 1
        router.maxConnections = 2
        try router.start(port: 0)
        defer { router.stop() }
        func open() -> Int32 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(router.port).bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            return fd
        }
        // Two slow clients hold both places: a third is answered 503 at once.
        let slow = [open(), open()]
        defer { slow.forEach { close($0) } }
        for fd in slow { _ = "GET / HTTP/1.1\r\nHost: x".withCString { send(fd, $0, strlen($0), 0) } }
        Thread.sleep(forTimeInterval: 0.2)
        #expect(try get(router.port, host: "www.any.localhost").status == "503")
        // Their heads never end: closed after headSeconds, and their places freed.
        var byte: UInt8 = 0
        let started = Date()
        #expect(recv(slow[0], &byte, 1, 0) == 0)
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(eventually(5) { (try? get(router.port, host: "www.any.localhost").status) == "404" })
    }

    final class Box: @unchecked Sendable {
        private let lock = NSLock()
        private var flag = false
        func set() { lock.withLock { flag = true } }
        var isSet: Bool { lock.withLock { flag } }
    }

    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var counts: [String: Int] = [:]
        func add(_ key: String) { lock.withLock { counts[key, default: 0] += 1 } }
        func value(_ key: String) -> Int { lock.withLock { counts[key] ?? 0 } }
    }
}
