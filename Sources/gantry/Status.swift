import ArgumentParser
import Foundation
import KubernetesDriver
import LocalDriver
import Reconciler
import SpecLoading
import SpecModel
import StateStore

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Environments with phase, branch, commit, class, services and their URLs.")
    @OptionGroup var state: StateOption
    @Flag(help: "Print JSON.")
    var json = false
    @Flag(help: "Include destroyed environments (history).")
    var all = false
    @Option(help: "Show one environment with its recent history (applies, restarts, denials).")
    var env: String?

    func run() throws {
        let paths = StatePaths(root: state.directory)
        guard FileManager.default.fileExists(atPath: paths.database) else {
            throw Failure("no state at \(paths.root.path); start Gantry with `gantry run --repo PATH --state \(paths.root.path)`")
        }
        let store = try StateStore(path: paths.database)
        let summaries = try EnvironmentSummary.read(store, observer: LocalObserver(state: store), routerPort: paths.routerPort,
                                                    includeDestroyed: all, only: env)
        if let env, summaries.isEmpty { throw Failure("no environment named '\(env)' in \(paths.root.path)") }
        let trust = try store.trust()
        // What the last `gantry run` could enforce (per-environment users need root).
        let isolation: String? = try store.meta("isolation")
        // The data plane's last health report (`gantry agent`), when there is one.
        let dataPlane = try store.dataPlaneHealth()
        let heard = dataPlane.map { "data plane: last heard from \(Int(Date().timeIntervalSince($0.receivedAt).rounded())) s ago" }
        if json {
            let health = dataPlane.map { health -> PlainValue in
                let report = (try? YAMLParser().parse(Data(health.body.utf8), file: "health").plainValue) ?? .null
                return .map([("lastHeard", .string(ISO8601DateFormatter().string(from: health.receivedAt))), ("health", report)])
            }
            print(PlainValue.map([("environments", .list(summaries.map(\.plain)))] + (trust.map { [("governance", GovernanceSummary.value($0))] } ?? [])
                                 + (isolation.map { [("isolation", .string($0))] } ?? [])
                                 + (health.map { [("dataPlane", $0)] } ?? [])).json(indent: "  "))
            return
        }
        if env == nil, let heard { print(heard) }
        if env == nil, let trust {
            for line in GovernanceSummary.lines(trust) { print(Printable.line(line)) }
        }
        if env == nil, let isolation { print(Printable.line("isolation: \(isolation)")) }
        if env == nil, trust != nil || isolation != nil { print("") }
        if summaries.isEmpty {
            print("no environments yet")
            return
        }
        for summary in summaries {
            let environment = summary.record
            let conditions = summary.conditions.isEmpty ? "" : "  [\(summary.conditions.map(\.rawValue).joined(separator: ", "))]"
            // (The last commit judged; when it is not the one running — denied, waiting — both.)
            let running = environment.appliedCommit.flatMap { $0 == environment.commit ? nil : "  (running \($0.prefix(7)))" } ?? ""
            print(Printable.line("\(environment.name)  \(summary.phase.rawValue)  \(environment.envClass)  \(environment.branch)@\(environment.commit.prefix(7))\(running)\(conditions)"))
            for service in summary.services {
                print("  service \(service.name): \(service.phase)  \(service.url)\(service.replicas > 1 ? "  (\(service.replicas) replicas)" : "")\(service.restarts > 0 ? "  (\(service.restarts) restarts)" : "")")
            }
            for route in summary.routes {
                print("  route \(route.name): \(route.url ?? "(no router: `gantry run` is not running one — started with --no-router, or the router could not listen: see its log)")")
            }
            if let message = environment.message { print("  " + Printable.line(message)) }
            for step in summary.nextSteps { print(Printable.line("  next: \(step)")) }
            if env != nil {
                // What the environment's processes printed last, read now (never stored), secrets masked.
                let output = LocalDriver.recentOutput(stateDirectory: paths.root, environment: environment.name)
                if !output.isEmpty {
                    let redactor = (try? SecretStore(state: store, keyPath: paths.secretsKey))
                        .map { Redactor(store: $0) }
                    for (file, lines) in output {
                        print("  last lines of logs/\(file):")
                        guard let redactor else { print("    (not shown: the secret store cannot be opened to mask secrets)"); continue }
                        for line in lines { print(Printable.line("    " + redactor.redact(line))) }
                    }
                }
                print("  history (newest first):")
                for event in try store.events(of: environment.name, limit: 20) {
                    print(Printable.line("    \(ISO8601DateFormatter().string(from: event.at))  \(event.kind): \(event.message)"))
                }
            }
        }
    }
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check specs; errors as path:line:col: message; exit 1 on any.")
    @Option(help: "Configuration repository path.")
    var repo = "."
    @Option(help: "Branch, tag or commit to check.")
    var ref = "HEAD"

    func run() throws {
        let repository = try GitRepositoryOpener.open(repo)
        guard let commit = try repository.resolveCommit(ref) else { throw Failure("\(ref) does not name a commit in \(repo)") }
        let diagnostics = try ConfigLoader(repository: repository).validate(at: commit)
        for diagnostic in diagnostics { print(diagnostic) }
        if !diagnostics.isEmpty {
            let count = Diagnostic.problemCount(diagnostics)
            FileHandle.standardError.write(Data("\(count) problem\(count == 1 ? "" : "s") at \(commit.short)\n".utf8))
            throw ExitCode(1)
        }
        print("ok: \(commit.short) is valid")
    }
}

import GitStore

enum GitRepositoryOpener {
    static func open(_ path: String) throws -> GitRepository {
        do { return try GitRepository.open(path: path) } catch {
            throw Failure("cannot open the repository at \(path): \(error)")
        }
    }
}

struct Render: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The effective spec after template, preview isolation and interpolation (secret values masked).")
    @Option(help: "Configuration repository path.")
    var repo = "."
    @Option(help: "Branch to render from (a preview when it is not the protected branch).")
    var ref: String
    @Option(help: "Environment name (as in metadata.name, or the preview name).")
    var env: String
    @Option(help: "The protected branch.")
    var branch = "main"
    @Option(help: "json: the effective spec; kubernetes: the manifests the cluster driver would apply (multi-document YAML, secret values omitted).")
    var format = "json"
    @Flag(help: "With --format kubernetes: PostgreSQL as a CloudNativePG Cluster (the cluster has its CRD).")
    var cloudnativePg = false
    @OptionGroup var state: StateOption

    func validate() throws {
        guard ["json", "kubernetes"].contains(format) else { throw ValidationError("--format must be json or kubernetes") }
    }

    func run() throws {
        let repository = try GitRepositoryOpener.open(repo)
        let loader = ConfigLoader(repository: repository)
        let (found, commit, branchName) = try EnvironmentAtRef.find(env, ref: ref, protectedBranch: branch, in: repository)
        var spec = found.spec!
        if format == "kubernetes" {
            var options = KubernetesRenderer.Options()
            options.cloudNativePG = cloudnativePg
            let renderer = KubernetesRenderer(options: options)
            let domain = loader.settings(at: try repository.resolveCommit(branch) ?? commit).settings.domain
            do {
                print("# \(found.name) from \(branchName)@\(commit.short): Kubernetes manifests (secret values are filled in on the data plane)")
                print(try renderer.yaml(try renderer.render(spec, commit: commit.hex, domain: domain)), terminator: "")
            } catch let error as KubernetesRenderer.RenderError {
                throw Failure("\(found.loaded.file): \(error)")
            }
            return
        }
        var ports: [String: Int] = [:]
        let paths = StatePaths(root: state.directory)
        if FileManager.default.fileExists(atPath: paths.database), let store = try? StateStore(path: paths.database) {
            for service in (try? store.services(of: spec.name)) ?? [] { ports[service.name] = service.port }
        }
        let domain = loader.settings(at: try repository.resolveCommit(branch) ?? commit).settings.domain
        let resolve = Interpolation.resolver(spec: spec, domain: domain, ports: ports) { reference in
            let parts = reference.split(separator: ".").map(String.init)
            switch parts.first {
            case "secrets": return "********"
            case "services": return "<\(parts[2]) of \(parts[1]), assigned at apply>"
            default: return "<\(reference), provided by the driver>"
            }
        }
        for index in spec.services.indices {
            let resolved = try Interpolation.resolve(spec.services[index], resolve)
            spec.services[index].command = resolved.command
            spec.services[index].env = resolved.env
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        print("# \(found.name) from \(branchName)@\(commit.short)\(found.isPreview ? " (preview of \(found.loaded.name), file \(found.loaded.file))" : "")")
        print(String(decoding: try encoder.encode(spec), as: UTF8.self))
    }
}
