import ArgumentParser
import Audit
import Foundation

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set up a demo configuration repo from example-repo and run against it.")
    @OptionGroup var state: StateOption
    @Option(help: "The example repository to copy (default: ./example-repo, else the one beside the sources).")
    var example: String?
    @Flag(help: "Set up and run one pass, then exit (for scripts and tests).")
    var once = false

    func run() throws {
        let paths = StatePaths(root: state.directory)
        let demo = paths.root.appendingPathComponent("demo-repo")
        let manager = FileManager.default
        try manager.createDirectory(at: paths.root, withIntermediateDirectories: true)
        if !manager.fileExists(atPath: demo.appendingPathComponent(".git").path) {
            let source = try exampleDirectory()
            let keyPath = paths.root.appendingPathComponent("demo-keys/alice").path
            if !manager.fileExists(atPath: keyPath) {
                try manager.createDirectory(atPath: (keyPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try shell(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@example.com", "-f", keyPath])
            }
            try? manager.removeItem(at: demo)
            try manager.copyItem(at: source, to: demo)
            let alice = try String(contentsOfFile: keyPath + ".pub", encoding: .utf8).split(separator: " ").prefix(2).joined(separator: " ")
            let gantry = try SigningKey.loadOrCreate(at: paths.key).publicKey.authorizedKey
            let signers = "alice@example.com \(alice)\ngantry \(gantry)\n"
            try manager.createDirectory(at: demo.appendingPathComponent("identities"), withIntermediateDirectories: true)
            try Data(signers.utf8).write(to: demo.appendingPathComponent("identities/allowed_signers"))
            let git = ["git", "-C", demo.path]
            try shell(git + ["init", "-q", "-b", "main"])
            for (key, value) in [("user.name", "Alice"), ("user.email", "alice@example.com"), ("gpg.format", "ssh"),
                                 ("user.signingkey", keyPath), ("commit.gpgsign", "true"),
                                 ("gpg.ssh.allowedSignersFile", demo.appendingPathComponent("identities/allowed_signers").path)] {
                try shell(git + ["config", key, value])
            }
            try shell(git + ["add", "-A"])
            try shell(git + ["commit", "-q", "-m", "Initial configuration from example-repo\n\nTask: DEMO-1"])
            // The demo anchors its own repository, as an operator would: alice, a human approver, trusts this commit.
            let anchor = try TrustCommand.SetAnchor.parse(["main", "--key", keyPath, "--repo", demo.path, "--state", paths.root.path])
            try anchor.run()
        }
        FileHandle.standardOutput.write(Data("""
        Demo configuration repository: \(demo.path)
        Try, in another terminal:
          cd \(demo.path)
          git checkout -b agents/claude/greeting
          sed -i 's/hello from/howdy from/' templates/python-web.yaml
          git commit -am 'Change the greeting' --trailer 'Task: DEMO-2'   # signed with the demo key
          gantry notify --state \(paths.root.path)  # or wait a second
          gantry status --state \(paths.root.path)
          git log --notes=gantry -1
          git checkout main && git branch -D agents/claude/greeting   # the preview is destroyed

        """.utf8))
        // The demo cleans up after itself: Ctrl-C stops its services too.
        var arguments = ["--repo", demo.path, "--state", paths.root.path, "--stop-on-exit"]
        arguments.append(once ? "--once" : "--announce-routes")
        let command = try Run.parse(arguments)
        try command.run()
    }

    func exampleDirectory() throws -> URL {
        let candidates: [String?] = [example, "example-repo",
                          URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../example-repo").path]
        for case let candidate? in candidates where FileManager.default.fileExists(atPath: candidate + "/gantry.yaml") {
            return URL(fileURLWithPath: candidate).standardizedFileURL
        }
        throw Failure("cannot find example-repo/ (looked in \(candidates.compactMap { $0 }.joined(separator: ", "))); pass --example DIR")
    }

    func shell(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure("\(arguments.joined(separator: " ")) failed with status \(process.terminationStatus)")
        }
    }
}
