import Crypto
import Foundation
import GitStore
import SpecModel

/// One `environments/*.yaml` file as loaded at a commit: its spec, or why it is invalid.
public struct LoadedEnvironment: Sendable {
    public let file: String
    /// The spec with its template merged; nil when the file could not be decoded at all.
    public let spec: EnvironmentSpec?
    public let templateFile: String?
    public let diagnostics: [Diagnostic]

    public var isValid: Bool { spec != nil && diagnostics.isEmpty }
    /// The environment's name: `metadata.name` when it is a valid live name (a DNS-1123 label
    /// without `--`); otherwise `invalid-` and 16 hex digits of sha256 of the file path. A name
    /// that is not valid never becomes a record's key, a path or another environment's name.
    public var name: String {
        if let name = spec?.name, Names.problem(withLabel: name) == nil, !name.contains("--"), !name.hasPrefix("invalid-") { return name }
        return "invalid-" + SHA256.hash(data: Data(file.utf8)).prefix(8).map { String(format: "%02x", $0) }.joined()
    }
    /// Repository paths whose changes concern this environment (its file, template, sources, seeds,
    /// the scripts its jobs name).
    public var watchedPaths: [String] {
        [file] + (templateFile.map { [$0] } ?? []) + (spec?.services.compactMap(\.source) ?? []) + (spec?.databases.compactMap(\.seed) ?? [])
            + jobPaths
    }

    /// The repository paths job commands name (`sh infra/up.sh` → `infra/up.sh`): jobs run in a
    /// checkout of the whole repository, so the scripts they run are part of the environment.
    /// What those scripts read in turn is not followed.
    var jobPaths: [String] {
        (spec?.jobs ?? []).flatMap { ($0.onCreate ?? []) + ($0.onDestroy ?? []) }.compactMap { argument in
            guard !argument.hasPrefix("-"), argument.contains("/") || argument.contains("."), Names.pathProblem(argument) == nil else { return nil }
            let path = Names.normalize(path: argument)
            return path.isEmpty ? nil : path
        }
    }

    /// True when one of `changed` (repository paths of files) is a watched path or lies under one.
    public func isTouched(by changed: Set<String>) -> Bool {
        Names.touches(changed, watchedPaths)
    }
}

/// Reads the configuration repository at a commit: settings, templates and environments.
public struct ConfigLoader: Sendable {
    public let repository: GitRepository
    public var parser = YAMLParser()
    /// At most this many bytes of environment files are parsed at one commit (a file named by many
    /// paths counts each time): past it, the remaining files are invalid and say so.
    public var environmentBytesLimit = 32 << 20

    public init(repository: GitRepository) { self.repository = repository }

    public static let settingsFile = "gantry.yaml"
    public static let environmentsDirectory = "environments"
    public static let templatesDirectory = "templates"

    /// `gantry.yaml` at `commit`; defaults when the file is absent.
    public func settings(at commit: ObjectID) -> (settings: Settings, diagnostics: [Diagnostic]) {
        do {
            guard let data = try repository.readFile(Self.settingsFile, at: commit, limit: parser.maxBytes + 1) else {
                return (Settings(), [])
            }
            var diagnostics: [Diagnostic] = []
            let settings = SpecDecoder.settings(try parser.parse(data, file: Self.settingsFile), &diagnostics)
            return (settings, diagnostics)
        } catch {
            return (Settings(), [Self.diagnostic(error, file: Self.settingsFile)])
        }
    }

    /// At most this many environment files are judged at one commit: more is refused with the count.
    public static let maxEnvironments = 1_000

    /// The number of environment files at `commit`.
    public func environmentFileCount(at commit: ObjectID) throws -> Int {
        try (repository.listDirectory(Self.environmentsDirectory, at: commit) ?? [])
            .filter { $0.name.hasSuffix(".yaml") || $0.name.hasSuffix(".yml") }.count
    }

    /// Every environment file at `commit`, in file-name order, each valid or with its problems.
    /// Throws (a `Diagnostic`) for more than `maxEnvironments` files.
    public func environments(at commit: ObjectID) throws -> [LoadedEnvironment] {
        let entries = try repository.listDirectory(Self.environmentsDirectory, at: commit) ?? []
        let count = entries.filter { $0.name.hasSuffix(".yaml") || $0.name.hasSuffix(".yml") }.count
        guard count <= Self.maxEnvironments else { throw Self.tooManyEnvironments(count) }
        var templates: [String: (node: YAMLNode?, diagnostics: [Diagnostic])] = [:]
        var loaded: [LoadedEnvironment] = []
        var filesByName: [String: [String]] = [:]
        var budget = environmentBytesLimit
        for entry in entries where entry.kind == .file || entry.kind == .executable {
            guard entry.name.hasSuffix(".yaml") || entry.name.hasSuffix(".yml") else { continue }
            let file = "\(Self.environmentsDirectory)/\(entry.name)"
            let environment = load(file: file, at: commit, templates: &templates, budget: &budget)
            if let name = environment.spec?.name, !name.isEmpty { filesByName[name, default: []].append(file) }
            loaded.append(environment)
        }
        // A name claimed by several files is invalid in every one of them: no file takes over
        // another's environment by sorting first.
        return loaded.map { environment in
            guard let name = environment.spec?.name, let files = filesByName[name], files.count > 1 else { return environment }
            let others = files.filter { $0 != environment.file }.joined(separator: ", ")
            return LoadedEnvironment(file: environment.file, spec: environment.spec, templateFile: environment.templateFile,
                diagnostics: environment.diagnostics + [Diagnostic(file: environment.file, "environment name '\(name)' is also used by \(others); names must be unique (rename or remove one)")])
        }
    }

    /// All problems at `commit`: settings, every template and every environment.
    public func validate(at commit: ObjectID) throws -> [Diagnostic] {
        var diagnostics = settings(at: commit).diagnostics
        for environment in try environments(at: commit) { diagnostics += environment.diagnostics }
        for entry in try repository.listDirectory(Self.templatesDirectory, at: commit) ?? [] where entry.name.hasSuffix(".yaml") {
            let file = "\(Self.templatesDirectory)/\(entry.name)"
            do {
                guard let data = try repository.readFile(file, at: commit, limit: parser.maxBytes + 1) else { continue }
                var templateDiagnostics: [Diagnostic] = []
                _ = SpecDecoder.environment(try parser.parse(data, file: file), kind: "Template", &templateDiagnostics)
                diagnostics += templateDiagnostics
            } catch {
                diagnostics.append(Self.diagnostic(error, file: file))
            }
        }
        var seen = Set<Diagnostic>()
        return diagnostics.filter { seen.insert($0).inserted }
    }

    func load(file: String, at commit: ObjectID, templates: inout [String: (node: YAMLNode?, diagnostics: [Diagnostic])],
              budget: inout Int) -> LoadedEnvironment {
        var diagnostics: [Diagnostic] = []
        let node: YAMLNode
        do {
            guard let data = try repository.readFile(file, at: commit, limit: parser.maxBytes + 1) else {
                return LoadedEnvironment(file: file, spec: nil, templateFile: nil, diagnostics: [Diagnostic(file: file, "file not found")])
            }
            budget -= data.count
            guard budget >= 0 else {
                return LoadedEnvironment(file: file, spec: nil, templateFile: nil, diagnostics: [Diagnostic(file: file,
                    "not read: the environment files at this commit hold more than \(environmentBytesLimit) bytes together; shrink or remove some")])
            }
            node = try parser.parse(data, file: file)
        } catch {
            return LoadedEnvironment(file: file, spec: nil, templateFile: nil, diagnostics: [Self.diagnostic(error, file: file)])
        }
        var merged = node
        var templateFile: String?
        if let templateNode = References.find(node, ["spec", "template"]), let templateName = templateNode.scalarText {
            if let problem = Names.problem(withLabel: templateName) {
                diagnostics.append(Diagnostic(templateNode.mark, "spec.template '\(templateName)' \(problem)"))
            } else {
                let path = "\(Self.templatesDirectory)/\(templateName).yaml"
                templateFile = path
                if templates[templateName] == nil { templates[templateName] = loadTemplate(path, at: commit) }
                let template = templates[templateName]!
                diagnostics += template.diagnostics
                if let templateSpec = template.node.flatMap({ References.find($0, ["spec"]) }) {
                    merged = Merge.replacing(in: node, path: ["spec"]) { Merge.deep(base: templateSpec, over: $0) }
                } else if template.diagnostics.isEmpty {
                    let known = (try? repository.listDirectory(Self.templatesDirectory, at: commit))??
                        .compactMap { $0.name.split(separator: ".").first.map(String.init) } ?? []
                    diagnostics.append(Diagnostic(templateNode.mark, "spec.template '\(templateName)': \(path) does not exist\(SpecDecoder.suggestion(templateName, known))"))
                }
            }
        }
        let spec = SpecDecoder.environment(merged, &diagnostics)
        let serviceNodes = References.index(References.find(merged, ["spec", "services"]))
        for service in spec?.services ?? [] {
            guard let source = service.source else { continue }
            let exists = (try? repository.listDirectory(source, at: commit)) != nil
            if !exists {
                let mark = References.find(serviceNodes[service.name], ["source"])?.mark ?? node.mark
                diagnostics.append(Diagnostic(mark, "spec.services.\(service.name).source '\(source)' is not a directory at \(commit.short); create it or fix the path"))
            }
        }
        let databaseNodes = References.index(References.find(merged, ["spec", "databases"]))
        for database in spec?.databases ?? [] {
            guard let seed = database.seed else { continue }
            let mark = References.find(databaseNodes[database.name], ["seed"])?.mark ?? node.mark
            if let problem = seedProblem(seed, at: commit) {
                diagnostics.append(Diagnostic(mark, "spec.databases.\(database.name).seed '\(seed)' \(problem)"))
            }
        }
        return LoadedEnvironment(file: file, spec: spec, templateFile: templateFile, diagnostics: Diagnostic.capped(diagnostics))
    }

    /// At most this many bytes of SQL seed a database.
    public static let maxSeedBytes = 1 << 20

    /// Why `seed` cannot seed a database at `commit` (it is applied from exactly there), or nil.
    func seedProblem(_ seed: String, at commit: ObjectID) -> String? {
        switch try? repository.entryKind(at: seed, in: commit) {
        case .file?, .executable?:
            do {
                _ = try repository.readFile(seed, at: commit, limit: Self.maxSeedBytes)
                return nil
            } catch {
                return "is larger than \(Self.maxSeedBytes) bytes; seed with a smaller SQL file (or load the rest in an onCreate job)"
            }
        case .symlink?: return "is a symbolic link; seeds are read from the repository, not through links: commit the SQL file itself"
        case .directory?, .submodule?: return "is not a file at \(commit.short); name an SQL file"
        case nil: return "does not exist at \(commit.short); add the SQL file or fix the path"
        }
    }

    func loadTemplate(_ path: String, at commit: ObjectID) -> (node: YAMLNode?, diagnostics: [Diagnostic]) {
        do {
            guard let data = try repository.readFile(path, at: commit, limit: parser.maxBytes + 1) else { return (nil, []) }
            let node = try parser.parse(data, file: path)
            var diagnostics: [Diagnostic] = []
            _ = SpecDecoder.environment(node, kind: "Template", &diagnostics)
            if References.find(node, ["spec", "template"]) != nil {
                diagnostics.append(Diagnostic(node.mark, "a template cannot use another template"))
            }
            return (node, diagnostics)
        } catch {
            return (nil, [Self.diagnostic(error, file: path)])
        }
    }

    static func tooManyEnvironments(_ count: Int) -> Diagnostic {
        Diagnostic(file: environmentsDirectory, "environments/ holds \(count) environment files, more than the \(maxEnvironments) Gantry judges at one commit; none is judged (split them across repositories, or remove some)")
    }

    public static func diagnostic(_ error: Error, file: String) -> Diagnostic {
        if let diagnostic = error as? Diagnostic { return diagnostic }
        if let git = error as? GitError, git.isTooLarge {
            return Diagnostic(file: file, "file is larger than 1 MiB; configuration files are limited to 1 MiB")
        }
        return Diagnostic(file: file, "cannot read: \(error)")
    }
}

/// Deep merge of YAML trees: mappings merge key by key, anything else is replaced by the overlay.
enum Merge {
    static func deep(base: YAMLNode, over overlay: YAMLNode) -> YAMLNode {
        guard case .mapping(let basePairs, _) = base, case .mapping(let overPairs, let mark) = overlay else { return overlay }
        var result = basePairs
        var positions: [String: Int] = [:]
        for (index, pair) in basePairs.enumerated() where positions[pair.key.scalarText ?? ""] == nil {
            positions[pair.key.scalarText ?? ""] = index
        }
        for pair in overPairs {
            let key = pair.key.scalarText ?? ""
            if let index = positions[key] {
                result[index] = (result[index].key, deep(base: result[index].value, over: pair.value))
            } else {
                positions[key] = result.count
                result.append(pair)
            }
        }
        return .mapping(result, mark)
    }

    /// `node` with the value at `path` replaced by `transform(value)` (inserted as `transform(empty)` if absent).
    static func replacing(in node: YAMLNode, path: [String], _ transform: (YAMLNode) -> YAMLNode) -> YAMLNode {
        guard let key = path.first, case .mapping(var pairs, let mark) = node else { return transform(node) }
        if let index = pairs.firstIndex(where: { $0.key.scalarText == key }) {
            pairs[index] = (pairs[index].key, replacing(in: pairs[index].value, path: Array(path.dropFirst()), transform))
        } else {
            pairs.append((.scalar(key, plain: true, mark), transform(.mapping([], mark))))
        }
        return .mapping(pairs, mark)
    }
}
