import Foundation
import Testing
import TestSupport

/// Each kind of hostile branch, pushed to a running Gantry: every one is denied with a position or
/// judged in time, the process keeps running, and a good branch pushed after them still converges.
@Suite(.serialized) struct HostileInputTests {
    func statusJSON(_ state: String) -> [[String: Any]] {
        guard let result = try? gantry("status", "--state", state, "--json"), result.status == 0,
              let object = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else { return [] }
        return object["environments"] as? [[String: Any]] ?? []
    }

    func conditions(_ state: String, _ name: String) -> [String]? {
        statusJSON(state).first { $0["name"] as? String == name }?["conditions"] as? [String]
    }

    func branch(_ repo: TestRepository, _ name: String, _ files: [String: String]) throws {
        try repo.checkout("main")
        try repo.checkout(name, create: true)
        for (path, content) in files { try repo.write(path, content) }
        try repo.commit("hostile: \(name)")
    }

    @Test func aRunningGantryDeniesEachHostileBranchAndKeepsServingTheOthers() throws {
        let repo = try TestRepository()
        // Governance that looks at what a branch controls: its file names, through a regex that
        // backtracks exponentially in a backtracking engine.
        try repo.write("policies/no-a-runs.yaml", """
            apiVersion: gantry/v1
            kind: Policy
            metadata: {name: no-a-runs}
            spec:
              match: "env != null"
              action: deny
              rules:
                - expr: "!change.files.exists(f, f.matches('^apps/hello/(a|aa)+$'))"
                  message: "no file named only of a runs"
            """)
        // And a rule that hands a value from the commit (a trailer) to a time function.
        try repo.write("policies/zone.yaml", """
            apiVersion: gantry/v1
            kind: Policy
            metadata: {name: zone}
            spec:
              match: "env != null"
              action: deny
              rules:
                - expr: "!('Tz' in commit.trailers) || now.getHours(commit.trailers['Tz']) >= 0"
                  message: "the Tz trailer must be a time zone"
            """)
        // And long, deep CEL with string work over what the branch controls, within the bounds:
        // judged for every branch, in time, never stalling the pass.
        let list = (0..<5_000).map(String.init).joined(separator: ", ")
        let deep = String(repeating: "(", count: 100) + "true" + String(repeating: ")", count: 100)
        try repo.write("policies/heavy.yaml", """
            apiVersion: gantry/v1
            kind: Policy
            metadata: {name: heavy}
            spec:
              match: "env != null"
              action: deny
              rules:
                - expr: "size([\(list)]) == 5000 && \(deep)"
                  message: "long and deep"
                - expr: "change.files.join(',').replace('a', 'bb').indexOf('no such name') == -1 && branch.name.matches('^[^\\\\x00]*$')"
                  message: "string work over the branch's own names"
            """)
        try repo.seedExample()
        let state = TemporaryDirectory()
        defer { killMarked(state: state.path) }
        let run = try GantryProcess(["run", "--repo", repo.path, "--state", state.path, "--interval", "0.5", "--stop-on-exit",
                                     "--no-router"], log: state.path + "/run.log")
        #expect(eventually(60) { conditions(state.path, "web") == [] })
        let web = try String(contentsOfFile: repo.path + "/environments/web.yaml", encoding: .utf8)
        let header = "apiVersion: gantry/v1\nkind: Environment\nmetadata: {name: web, team: payments, class: production}\n"

        try branch(repo, "numbers", ["environments/web.yaml": header + """
            spec:
              template: python-web
              lifecycle: {ttl: 99999999999999999999999999999999d}
              services:
                web:
                  resources: {memory: 1e400Mi, cpu: 1e400}
                  replicas: 99999999999999999999999
            """])
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + (1..<9).map { "\(Character(UnicodeScalar(97 + $0)!)): &\(Character(UnicodeScalar(97 + $0)!)) [" + Array(repeating: "*\(Character(UnicodeScalar(96 + $0)!))", count: 10).joined(separator: ", ") + "]" }.joined(separator: "\n")
        try branch(repo, "alias-bomb", ["environments/web.yaml": web + "\n" + bomb + "\n"])
        try branch(repo, "deep", ["environments/web.yaml": web + "\nx: " + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000) + "\n"])
        try branch(repo, "wide", ["environments/web.yaml": header + "spec:\n  template: python-web\n"
                                     + (0..<20_000).map { "  unknown\($0): \($0)" }.joined(separator: "\n") + "\n"])
        try branch(repo, "nul", ["environments/web.yaml": web + "\nname: \"\u{0}\"\n"])
        try branch(repo, "binary", [:])
        try repo.write("environments/web.yaml", Data([0x61, 0x3A, 0x20, 0xFF, 0xFE, 0x41]))
        try repo.commit("not UTF-8")
        // A time zone trailer whose offset overflows 64 bits (it used to trap the whole process).
        try branch(repo, "tz", [:])
        try repo.write("apps/hello/NOTE", "zone\n")
        try repo.commit("a far-away zone\n\nTz: +9223372036854775807:00")
        // A thousand file names that make a backtracking regex run for ages.
        var paths: [String: String] = [:]
        for index in 0..<1000 { paths["apps/hello/" + String(repeating: "a", count: 30 + index % 10) + "b"] = "" }
        try branch(repo, "paths", paths)
        // A signed commit that changes 100,001 files (one blob under many names), made with git's plumbing.
        let blob = try Shell.check(["git", "-C", repo.path, "hash-object", "-w", "--stdin"], input: "x\n")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let many = try Shell.check(["git", "-C", repo.path, "mktree"],
                                   input: (0...100_000).map { "100644 blob \(blob)\tf\($0)\n" }.joined())
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let mainTree = try repo.git("ls-tree", "main")
        let root = try Shell.check(["git", "-C", repo.path, "mktree"], input: mainTree + "\n040000 tree \(many)\tmany\n")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        try repo.git("update-ref", "refs/heads/many-files", try repo.git("commit-tree", "-S", "-p", "main", root, "-m", "hostile: 100,001 files"))
        // The approvals notes ref pointed at a tree, and an approvals note that is noise.
        let tree = try repo.git("rev-parse", "HEAD^{tree}")
        try repo.git("update-ref", "refs/notes/gantry-approvals", tree)
        // Last, a good branch: it must converge although all of the above came first.
        try branch(repo, "good", ["apps/hello/NOTE": "fine\n"])
        _ = try gantry("notify", "--state", state.path)

        #expect(eventually(120) { conditions(state.path, "web--good") == [] }, "\(statusJSON(state.path))")
        #expect(run.process.isRunning, "gantry run must survive every hostile branch")
        // A file that cannot be decoded has no name of its own: its record is `invalid-<hash>--<branch>`.
        for name in ["numbers", "alias-bomb", "deep", "wide", "nul", "binary"] {
            #expect(eventually(30) {
                statusJSON(state.path).contains { ($0["name"] as? String)?.hasSuffix("--\(name)") == true
                    && ($0["conditions"] as? [String])?.contains("SpecInvalid") == true }
            }, "\(name): \(statusJSON(state.path).map { "\($0["name"] ?? ""): \($0["conditions"] ?? "")" })")
        }
        // The file names were judged, in time, and admitted: none is made only of a runs.
        #expect(eventually(30) { conditions(state.path, "web--paths") == [] })
        // Every denial names the file, line and column (denials are written in batches: read the
        // log until the last branch's is there).
        func denials() -> [String] {
            guard let log = try? gantry("audit", "log", "--state", state.path, "--json").stdout,
                  let records = (try? JSONSerialization.jsonObject(with: Data(log.utf8)) as? [String: Any])?["records"] as? [[String: Any]] else { return [] }
            return records.filter { $0["event"] as? String == "denied" }.map { "\($0)" }
        }
        let expected = [("numbers", "environments/web.yaml:9:27: spec.services.web.resources.memory"), ("alias-bomb", "alias bomb"), ("deep", "nesting deeper"),
                        ("wide", "unknown field"), ("nul", "NUL"), ("binary", "not valid UTF-8"), ("tz", "invalid time zone")]
        var found: [String] = []
        _ = eventually(30) { found = denials(); return expected.allSatisfy { what in found.contains { $0.contains(what.1) } } }
        for (name, what) in expected {
            #expect(found.contains { ($0.contains("web--\(name)") || $0.contains(name)) && $0.contains(what) },
                    "\(name): no denial mentioning \(what): \(found.filter { $0.contains(name) })")
        }
        let denials = found
        #expect(denials.contains { $0.contains("changes 100001 files") && $0.contains("more than the 100000") },
                "many-files: no denial with the count")
        // (A pass may be writing records: verify settles once it is done.)
        var verified: Shell.Result?
        #expect(eventually(30) { verified = try? gantry("audit", "verify", "--state", state.path); return verified?.status == 0 },
                "\(verified?.stdout ?? "")\(verified?.stderr ?? "")")
        // A note of 17 MiB forged over the audit records of main's commit: never read, and the
        // records it hid are published again.
        let padding = state.path + "/padding"
        try Data(repeating: 0x78, count: 17 << 20).write(to: URL(fileURLWithPath: padding))
        try repo.git("notes", "--ref", "gantry", "add", "-f", "-F", padding, "main")
        _ = try gantry("notify", "--state", state.path)
        #expect(eventually(60) { (try? gantry("audit", "verify", "--state", state.path).status) == 0 })
        #expect(try repo.git("notes", "--ref", "gantry", "show", "main").contains("event: admitted"))
        #expect(run.process.isRunning)
        // The audit notes ref itself pointed at a tree: verify reports it, never crashes.
        let notesTip = try repo.git("rev-parse", "refs/notes/gantry")
        try repo.git("update-ref", "refs/notes/gantry", tree)
        let verify = try gantry("audit", "verify", "--repo", repo.path, "--state", state.path)
        #expect(verify.status == 1 && verify.stdout.contains("which is not a commit"), "\(verify.stdout)\(verify.stderr)")
        try repo.git("update-ref", "refs/notes/gantry", notesTip)
        #expect(run.process.isRunning)
        run.terminate()
    }
}
