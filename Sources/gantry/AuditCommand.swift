import ArgumentParser
import Audit
import Foundation
import GitStore
import Reconciler
import SpecLoading
import StateStore

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "audit", abstract: "Read and verify the signed audit log.",
                                                    subcommands: [Log.self, Verify.self])

    struct Log: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Audit records, newest first.")
        @Option(help: "Configuration repository (default: the one `gantry run` watches).")
        var repo: String?
        @OptionGroup var state: StateOption
        @Option(help: "Only records of this environment.")
        var env: String?
        @Option(help: "Only records of this actor.")
        var actor: String?
        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            let paths = StatePaths(root: state.directory)
            let repository = try RepositoryLocation.open(try RepositoryLocation.resolve(repo, paths: paths), paths: paths)
            let (all, problems) = try AuditLog.records(in: repository)
            let records = all.reversed().filter { entry in
                (env == nil || entry.record.value("environment") == env) && (actor == nil || entry.record.value("actor") == actor)
            }
            if json {
                let rows: [PlainValue] = records.map { $0.record.plain(note: $0.commit.hex) }
                print(PlainValue.map([("records", .list(rows))]).json(indent: "  "))
            } else {
                for entry in records {
                    print("#\(entry.record.seq) \(entry.record.at) \(entry.record.event) \(entry.record.value("environment") ?? "")")
                    for field in entry.record.fields where field.key != "environment" { print("    \(field.key): \(field.value)") }
                }
                if records.isEmpty { print("no audit records yet") }
            }
            for problem in problems { FileHandle.standardError.write(Data("warning: \(problem)\n".utf8)) }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check every record's signature, seq and prev; exit 1 on any fault.")
        @Option(help: "Configuration repository (default: the one `gantry run` watches).")
        var repo: String?
        @OptionGroup var state: StateOption
        @Option(help: "An allowed_signers file whose `gantry` lines are the trusted keys (default: the state directory's key).")
        var allowedSigners: String?

        func run() throws {
            let paths = StatePaths(root: state.directory)
            let repository = try RepositoryLocation.open(try RepositoryLocation.resolve(repo, paths: paths), paths: paths)
            var keys: [SSHPublicKey] = []
            if let allowedSigners {
                let text = try String(contentsOfFile: allowedSigners, encoding: .utf8)
                for line in text.split(separator: "\n") where line.hasPrefix("gantry ") {
                    keys.append(try SSHPublicKey(authorizedKey: String(line.dropFirst("gantry ".count))))
                }
            } else if FileManager.default.fileExists(atPath: paths.key) {
                keys.append(try SigningKey.loadOrCreate(at: paths.key).publicKey)
            } else {
                throw Failure("no trusted key: pass --allowed-signers FILE or --state DIR of the Gantry that wrote the log")
            }
            // The state DB keeps the chain Gantry wrote: a notes ref that lost records is a fault.
            var kept: AuditJournalEntry?
            if FileManager.default.fileExists(atPath: paths.database) {
                kept = try StateJournal(try StateStore(path: paths.database)).journalHead()
            }
            let report = try AuditVerifier(trustedKeys: keys).verify(repository: repository, kept: kept)
            for fault in report.faults { print("FAULT \(fault)") }
            if report.isValid {
                print("ok: \(report.recordCount) records, signatures, seq and prev chain verified")
            } else {
                print("\(report.faults.count) fault\(report.faults.count == 1 ? "" : "s") in \(report.recordCount) records")
                throw ExitCode(1)
            }
        }
    }
}
