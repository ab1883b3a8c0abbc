import Foundation
import Testing
import TestSupport
@testable import GitStore

@Suite struct GitRepositoryTests {
    @Test func snapshotReadsAndDiffs() throws {
        let repo = try TestRepository()
        try repo.write("a/b.txt", "one")
        let first = try repo.commit("first")
        try repo.checkout("feature/x", create: true)
        try repo.write("a/b.txt", "two")
        try repo.write("c.txt", "new")
        let second = try repo.commit("second")
        let git = try repo.open()

        let branches = try git.branches()
        #expect(branches == ["main": ObjectID(hex: first)!, "feature/x": ObjectID(hex: second)!])
        #expect(try git.readFile("a/b.txt", at: ObjectID(hex: second)!) == Data("two".utf8))
        #expect(try git.readFile("missing.txt", at: ObjectID(hex: second)!) == nil)
        #expect(try git.changedPaths(from: ObjectID(hex: first)!, to: ObjectID(hex: second)!) == ["a/b.txt", "c.txt"])
        #expect(try git.mergeBase(ObjectID(hex: first)!, ObjectID(hex: second)!) == ObjectID(hex: first)!)
        #expect(try git.isReachable(ObjectID(hex: first)!, from: ObjectID(hex: second)!))
        #expect(try !git.isReachable(ObjectID(hex: second)!, from: ObjectID(hex: first)!))
        #expect(try git.listDirectory("a", at: ObjectID(hex: second)!)?.map(\.name) == ["b.txt"])
    }

    /// Merge bases are remembered per pair of commits: asked again, in either order, or as "is
    /// this one reachable from that one", the answers are git's.
    @Test func reachabilityAndMergeBasesAgreeWithGitWhicheverWayTheyAreAsked() throws {
        let repo = try TestRepository()
        try repo.write("f", "1")
        let root = try repo.commit("root")
        try repo.write("f", "2")
        let main = try repo.commit("main")
        try repo.checkout("side", create: true)
        try repo.git("reset", "-q", "--hard", root)
        try repo.write("g", "side")
        let side = try repo.commit("side")
        try repo.git("checkout", "-q", "--orphan", "lonely")
        try repo.write("h", "alone")
        let lonely = try repo.commit("unrelated history")
        let git = try repo.open()
        let (r, m, s, l) = (ObjectID(hex: root)!, ObjectID(hex: main)!, ObjectID(hex: side)!, ObjectID(hex: lonely)!)
        for _ in 0..<2 {
            #expect(try git.mergeBase(m, s) == r && git.mergeBase(s, m) == r)
            #expect(try git.mergeBase(m, l) == nil && git.mergeBase(l, m) == nil)
            #expect(try git.isReachable(r, from: m) && git.isReachable(r, from: s) && git.isReachable(m, from: m))
            #expect(try !git.isReachable(m, from: s) && !git.isReachable(s, from: m) && !git.isReachable(m, from: r))
            #expect(try !git.isReachable(l, from: m) && !git.isReachable(m, from: l))
        }
        #expect(try repo.git("merge-base", main, side) == root)
    }

    /// Pushes one commit at a time on a branch: each merge base is derived from the previous
    /// one (no history walk), and still agrees with `git merge-base` — also once main has taken
    /// the branch in (fast-forward), and when a branch merges main in, and for unrelated histories.
    @Test func mergeBasesOfSuccessivePushesAgreeWithGit() throws {
        let repo = try TestRepository()
        try repo.write("f", "0")
        var main = try repo.commit("root")
        try repo.checkout("work", create: true)
        let git = try repo.open()
        func agrees(_ a: String, _ b: String) throws -> Bool {
            let ours = try git.mergeBase(ObjectID(hex: a)!, ObjectID(hex: b)!)?.hex
            let theirs = try? repo.git("merge-base", a, b)
            return ours == theirs
        }
        var tips: [String] = []
        for index in 1...6 {
            try repo.write("f", "\(index)")
            let tip = try repo.commit("push \(index)")
            tips.append(tip)
            #expect(try agrees(tip, main) && agrees(main, tip), "push \(index)")
            #expect(try !git.isReachable(ObjectID(hex: tip)!, from: ObjectID(hex: main)!))
        }
        // Main takes the branch in up to its third push; the branch goes on.
        try repo.checkout("main")
        try repo.git("merge", "-q", "--ff-only", tips[2])
        main = tips[2]
        try repo.checkout("work")
        #expect(try git.isReachable(ObjectID(hex: tips[2])!, from: ObjectID(hex: main)!))
        for tip in tips { #expect(try agrees(tip, main), "\(tip)") }
        try repo.write("f", "7")
        let next = try repo.commit("push 7")
        #expect(try agrees(next, main) && git.mergeBase(ObjectID(hex: next)!, ObjectID(hex: main)!)?.hex == main)
        // Main moves on; the branch merges it in (two parents), then pushes once more.
        try repo.checkout("main")
        try repo.write("m", "main")
        main = try repo.commit("main moves")
        try repo.checkout("work")
        #expect(try agrees(next, main))
        try repo.git("merge", "-q", "--no-edit", "main")
        let merged = try repo.git("rev-parse", "HEAD")
        #expect(try agrees(merged, main) && git.isReachable(ObjectID(hex: main)!, from: ObjectID(hex: merged)!))
        try repo.write("f", "8")
        let after = try repo.commit("push 8")
        #expect(try agrees(after, main))
    }

    @Test func oversizedBlobIsRefused() throws {
        let repo = try TestRepository()
        try repo.write("big", String(repeating: "x", count: 4096))
        let sha = try repo.commit("big")
        #expect(throws: GitError.self) { try repo.open().readFile("big", at: ObjectID(hex: sha)!, limit: 1024) }
    }

    @Test func aFileOfZerosThatPacksSmallIsRefusedByItsDeclaredSize() throws {
        let repo = try TestRepository()
        try repo.write("zeros", Data(count: 64 << 20))
        let sha = try repo.commit("64 MiB of zeros")
        try repo.git("repack", "-adq")
        try repo.git("prune-packed")
        let git = try repo.open()
        #expect {
            try git.readFile("zeros", at: ObjectID(hex: sha)!, limit: 1 << 20)
        } throws: { "\($0)".contains("file is \(64 << 20) bytes, over the limit of \(1 << 20) bytes") }
        // The whole checkout of an environment's code is bounded the same way.
        let checkout = TemporaryDirectory()
        #expect {
            try git.materialize("", at: ObjectID(hex: sha)!, into: URL(fileURLWithPath: checkout.path), limit: 32 << 20)
        } throws: { "\($0)".contains("more than \(32 << 20) bytes together") }
        try git.materialize("", at: ObjectID(hex: sha)!, into: URL(fileURLWithPath: checkout.path), limit: 65 << 20)
        #expect(try FileManager.default.attributesOfItem(atPath: checkout.path + "/zeros")[.size] as? Int == 64 << 20)
    }

    @Test func notesAreFoundInFannedOutTreesAndOversizedNotesAreNotRead() throws {
        let repo = try TestRepository()
        let first = try repo.commit("first")
        let second = try repo.commit("second")
        // A notes tree fanned out as git writes large ones: <2 hex>/<38 hex> for the first commit,
        // flat for the second.
        let small = try Shell.check(["git", "-C", repo.path, "hash-object", "-w", "--stdin"], input: "fanned out\n")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let big = try Shell.check(["git", "-C", repo.path, "hash-object", "-w", "--stdin"], input: String(repeating: "n", count: 4096))
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let subtree = try Shell.check(["git", "-C", repo.path, "mktree"], input: "100644 blob \(small)\t\(first.dropFirst(2))\n")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let root = try Shell.check(["git", "-C", repo.path, "mktree"],
                                   input: "040000 tree \(subtree)\t\(first.prefix(2))\n100644 blob \(big)\t\(second)\n")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let notesCommit = try repo.git("commit-tree", root, "-m", "notes")
        try repo.git("update-ref", "refs/notes/fan", notesCommit)
        // git itself reads the fanned-out note: the outside judge of the layout.
        #expect(try repo.git("notes", "--ref", "fan", "show", first) == "fanned out")
        let git = try repo.open()
        #expect(try git.note(on: ObjectID(hex: first)!, notesRef: "refs/notes/fan") == "fanned out\n")
        #expect(try git.note(on: ObjectID(hex: second)!, notesRef: "refs/notes/fan")?.count == 4096)
        #expect(try git.note(on: ObjectID(hex: try repo.git("rev-parse", "HEAD^{tree}"))!, notesRef: "refs/notes/fan") == nil)
        #expect {
            try git.note(on: ObjectID(hex: second)!, notesRef: "refs/notes/fan", limit: 1024)
        } throws: { "\($0)".contains("4096 bytes, over the limit of 1024 bytes") }
        let all = try git.allNotes(notesRef: "refs/notes/fan", limit: 1024)
        #expect(all.count == 2)
        #expect(all.first { $0.target.hex == first }?.text == "fanned out\n")
        #expect(all.contains { $0.target.hex == second && $0.text == nil })
    }

    @Test func aCommitChangingMoreFilesThanTheLimitIsRefusedWithTheCount() throws {
        let repo = try TestRepository()
        let first = try repo.commit("empty")
        for index in 0..<5 { try repo.write("f\(index)", "\(index)") }
        let second = try repo.commit("five files")
        let git = try repo.open()
        #expect(try git.changedPaths(from: ObjectID(hex: first)!, to: ObjectID(hex: second)!, limit: 5).count == 5)
        #expect {
            try git.changedPaths(from: ObjectID(hex: first)!, to: ObjectID(hex: second)!, limit: 4)
        } throws: { "\($0)".contains("changes 5 files since \(first.prefix(7)), more than the 4") }
    }

    @Test func extractsTheSignatureGitMade() throws {
        let repo = try TestRepository()
        let sha = try repo.commit("signed")
        let signature = try #require(try repo.open().signature(of: ObjectID(hex: sha)!))
        #expect(signature.signature.hasPrefix("-----BEGIN SSH SIGNATURE-----"))
        #expect(String(decoding: signature.signedData, as: UTF8.self).contains("signed"))

        let unsigned = try TestRepository(signing: false)
        let plain = try unsigned.commit("plain")
        #expect(try unsigned.open().signature(of: ObjectID(hex: plain)!) == nil)
    }

    @Test func notesCompareAndSwapRefusesAMovedRef() throws {
        let repo = try TestRepository()
        let sha = ObjectID(hex: try repo.commit("target"))!
        let git = try repo.open()
        let first = try git.commitNotes([sha: "one"], notesRef: "refs/notes/test", expectedTip: nil, message: "m",
                                        authorName: "t", authorEmail: "t@x", sign: nil)
        #expect(try git.note(on: sha, notesRef: "refs/notes/test") == "one")
        // A writer that still believes the ref is absent loses the race.
        #expect { try git.commitNotes([sha: "lost"], notesRef: "refs/notes/test", expectedTip: nil, message: "m",
                                      authorName: "t", authorEmail: "t@x", sign: nil) } throws: { ($0 as? GitError)?.isConflict == true }
        _ = try git.commitNotes([sha: "two"], notesRef: "refs/notes/test", expectedTip: first, message: "m",
                                authorName: "t", authorEmail: "t@x", sign: nil)
        #expect(try repo.git("notes", "--ref=test", "show", sha.hex) == "two")
    }

    @Test func materializeWritesFilesWithModes() throws {
        let repo = try TestRepository()
        try repo.write("app/run.sh", "#!/bin/sh\necho hi\n")
        try repo.write("app/lib/x.txt", "x")
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: repo.path + "/app/run.sh")
        let sha = try repo.commit("app")
        let target = TemporaryDirectory()
        try repo.open().materialize("app", at: ObjectID(hex: sha)!, into: target.url.appendingPathComponent("w"))
        #expect(FileManager.default.isExecutableFile(atPath: target.path + "/w/run.sh"))
        #expect(try String(contentsOfFile: target.path + "/w/lib/x.txt", encoding: .utf8) == "x")
    }

    @Test func mirrorsAFileURLAndPrunesDeletedBranches() throws {
        let repo = try TestRepository()
        try repo.commit("one")
        try repo.checkout("feature", create: true)
        let feature = try repo.commit("two")
        let state = TemporaryDirectory()
        let mirror = try GitRepository.mirror(url: "file://\(repo.path)", at: state.path + "/mirror.git")
        #expect(try mirror.branches()["feature"]?.hex == feature)
        try repo.checkout("main")
        try repo.git("branch", "-D", "feature")
        try mirror.fetch(url: "file://\(repo.path)")
        #expect(try mirror.branches().keys.sorted() == ["main"])
    }

    @Test func libgit2ErrorsNameTheOperation() throws {
        do {
            _ = try GitRepository.open(path: "/nonexistent/repo")
            Issue.record("expected a failure")
        } catch let error as GitError {
            #expect(error.description.contains("open /nonexistent/repo"))
        }
    }
}
