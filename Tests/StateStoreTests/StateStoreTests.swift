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
            var record = EnvironmentRecord(name: "web", branch: "main", commit: "abc", envClass: "production", team: "payments")
            record.appliedCommit = "abc"
            try store.save(record)
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
        var record = EnvironmentRecord(name: "web--x", branch: "x", commit: "abc", envClass: "preview", team: nil)
        try store.save(record)
        record.destroyedAt = Date()
        try store.save(record)
        #expect(try store.environments().isEmpty)
        #expect(try store.environments(includeDestroyed: true).map(\.name) == ["web--x"])
    }

    /// The phase is derived from the conditions when a record is saved: whatever wrote the record,
    /// `status` shows the same phase for the same facts.
    @Test func thePhaseFollowsTheConditions() throws {
        let directory = TemporaryDirectory()
        let store = try StateStore(path: directory.path + "/gantry.db")
        func saved(_ conditions: [Condition], applied: String? = nil, destroyed: Bool = false) throws -> EnvironmentPhase? {
            var record = EnvironmentRecord(name: "e", branch: "b", commit: "c2", envClass: "preview", team: nil)
            record.conditions = conditions
            record.appliedCommit = applied
            record.destroyedAt = destroyed ? Date() : nil
            try store.save(record)
            return try store.environment("e")?.phase
        }
        #expect(try saved([]) == .pending)
        #expect(try saved([.applying]) == .pending)
        #expect(try saved([], applied: "c1") == .running)
        #expect(try saved([.applying], applied: "c1") == .running)
        // A denial leaves a running revision up (fail safe): it is Running, with the condition.
        #expect(try saved([.admissionDenied]) == .denied)
        #expect(try saved([.specInvalid]) == .denied)
        #expect(try saved([.secretMissing]) == .denied)
        #expect(try saved([.admissionDenied], applied: "c1") == .running)
        #expect(try saved([.approvalPending]) == .pendingApproval)
        #expect(try saved([.approvalPending], applied: "c1") == .pendingApproval)
        #expect(try saved([.applyFailed], applied: "c1") == .failed)
        #expect(try saved([.applyFailed, .applying]) == .failed)
        #expect(try saved([.destroying], applied: "c1") == .running)
        #expect(try saved([.destroying], applied: "c1", destroyed: true) == .destroyed)
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
            try writer.save(EnvironmentRecord(name: "e\(index)", branch: "b", commit: "c", envClass: "preview", team: nil))
            #expect(try reader.environments().count == index + 1)
        }
    }
}
