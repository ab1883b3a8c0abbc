import Foundation
import GRDB
import Testing
import TestSupport
@testable import StateStore

@Suite struct StateStoreTests {
    @Test func databaseIsInWALModeAndSurvivesReopening() throws {
        let directory = TemporaryDirectory()
        let path = directory.path + "/gantry.db"
        do {
            let store = try StateStore(path: path)
            try store.save(EnvironmentRecord(name: "web", branch: "main", commit: "abc", envClass: "production", team: "payments", phase: .running))
            var service = ServiceRecord(environment: "web", name: "api", port: 41000)
            service.pid = 1234
            try store.save(service)
            try store.setProcessed(branch: "main", commit: "abc")
            let mode = try store.pool.read { try String.fetchOne($0, sql: "PRAGMA journal_mode") }
            #expect(mode == "wal")
        }
        let reopened = try StateStore(path: path)
        #expect(try reopened.environment("web")?.phase == .running)
        #expect(try reopened.services(of: "web").first?.pid == 1234)
        #expect(try reopened.processedRefs() == ["main": "abc"])
        #expect(try reopened.allocatedPorts() == [41000])
    }

    @Test func destroyedEnvironmentsStayAsHistory() throws {
        let directory = TemporaryDirectory()
        let store = try StateStore(path: directory.path + "/gantry.db")
        var record = EnvironmentRecord(name: "web--x", branch: "x", commit: "abc", envClass: "preview", team: nil, phase: .running)
        try store.save(record)
        record.phase = .destroyed
        try store.save(record)
        #expect(try store.environments().isEmpty)
        #expect(try store.environments(includeDestroyed: true).map(\.name) == ["web--x"])
    }

    @Test func aPortBelongsToOneServiceOnly() throws {
        let directory = TemporaryDirectory()
        let store = try StateStore(path: directory.path + "/gantry.db")
        try store.save(ServiceRecord(environment: "a", name: "web", port: 41001))
        #expect(throws: (any Error).self) { try store.save(ServiceRecord(environment: "b", name: "web", port: 41001)) }
    }

    @Test func readersSeeCommittedStateWhileAnotherConnectionWrites() throws {
        let directory = TemporaryDirectory()
        let writer = try StateStore(path: directory.path + "/gantry.db")
        let reader = try StateStore(path: directory.path + "/gantry.db")
        for index in 0..<50 {
            try writer.save(EnvironmentRecord(name: "e\(index)", branch: "b", commit: "c", envClass: "preview", team: nil, phase: .running))
            #expect(try reader.environments().count == index + 1)
        }
    }
}
