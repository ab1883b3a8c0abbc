import ArgumentParser
import Audit
import Foundation
import GitStore
import SpecLoading

struct EnvCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "env", abstract: "Environment helpers for agents.",
                                                    subcommands: [Clone.self])

    struct Clone: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a branch commit that adds a copy of an environment under a new name (a full copy in one call).")
        @Argument(help: "The environment to copy (metadata.name).")
        var source: String
        @Option(name: .customLong("as"), help: "The new environment's name (a DNS-1123 label without '--').")
        var name: String
        @Option(help: "Configuration repository path.")
        var repo = "."
        @Option(help: "The revision to copy from.")
        var from = "main"
        @Option(help: "The branch to create or move (default: clone/NAME).")
        var branch: String?
        @Option(help: "An SSH private key (unencrypted ed25519) to sign the commit with, as signing.required needs.")
        var key: String?
        @Option(help: "Commit author e-mail.")
        var email = "gantry@localhost"

        func validate() throws {
            if let problem = Names.problem(withLabel: name) { throw ValidationError("--as '\(name)' \(problem)") }
            if name.contains("--") { throw ValidationError("--as '\(name)' must not contain '--', which previews use") }
        }

        func run() throws {
            let repository = try GitRepositoryOpener.open(repo)
            guard let base = try repository.resolveCommit(from) else { throw Failure("\(from) does not name a commit in \(repo)") }
            let loader = ConfigLoader(repository: repository)
            let environments = try loader.environments(at: base)
            guard let original = environments.first(where: { $0.name == source }) else {
                throw Failure("\(from) has no environment '\(source)'; it has: \(environments.map(\.name).joined(separator: ", "))")
            }
            if environments.contains(where: { $0.name == name }) { throw Failure("\(from) already has an environment named '\(name)'") }
            guard let data = try repository.readFile(original.file, at: base) else { throw Failure("cannot read \(original.file)") }
            let copy = try renamed(String(decoding: data, as: UTF8.self), file: original.file)
            let path = "\(ConfigLoader.environmentsDirectory)/\(name).yaml"
            let signingKey = try key.map { try SigningKey(openSSH: try String(contentsOfFile: $0, encoding: .utf8)) }
            let commit = try repository.commit(adding: Data(copy.utf8), at: path, parent: base,
                                               message: "Clone environment \(source) as \(name)\n\nCloned-From: \(source)\n",
                                               authorName: email, authorEmail: email,
                                               sign: signingKey.map { key in { try SSHSignature.sign($0, namespace: "git", key: key) } })
            let target = branch ?? "clone/\(name)"
            try repository.updateReference("refs/heads/\(target)", to: commit,
                                           expected: try repository.reference("refs/heads/\(target)"), message: "gantry env clone")
            print("created \(path) on branch \(target) at \(commit.short)\(signingKey == nil ? " (unsigned: pass --key to sign it)" : "")")
            print("its preview will be \(Previews.name(environment: name, branch: target)); merge the branch to make \(name) live")
        }

        /// The source file with `metadata.name` replaced in place, so comments and layout survive.
        func renamed(_ text: String, file: String) throws -> String {
            let node = try YAMLParser().parse(Data(text.utf8), file: file)
            guard case .mapping(let pairs, _) = node,
                  case .mapping(let meta, _)? = pairs.first(where: { $0.key.scalarText == "metadata" })?.value,
                  let nameNode = meta.first(where: { $0.key.scalarText == "name" })?.value, nameNode.scalarText == source else {
                throw Failure("\(file): cannot find metadata.name to rename")
            }
            var lines = text.components(separatedBy: "\n")
            var line = Array(lines[nameNode.mark.line - 1])
            var start = nameNode.mark.column - 1
            if start < line.count, line[start] == "\"" || line[start] == "'" { start += 1 }
            guard start + source.count <= line.count, String(line[start..<(start + source.count)]) == source else {
                throw Failure("\(file): metadata.name is not written plainly; edit the copy by hand")
            }
            line.replaceSubrange(start..<(start + source.count), with: Array(name))
            lines[nameNode.mark.line - 1] = String(line)
            return lines.joined(separator: "\n")
        }
    }
}
