import SpecModel

extension SpecDecoder {
    /// Decodes an Environment (or, with `kind: "Template"`, a Template) whose `spec` already has its
    /// template merged in. Names and references are validated here; repository-wide checks
    /// (unique names, existing sources) are the loader's.
    static func environment(_ node: YAMLNode, kind: String = "Environment", _ diagnostics: inout [Diagnostic]) -> EnvironmentSpec? {
        guard var reader = header(node, kind: kind, &diagnostics) else { return nil }
        var name = "", team: String?, envClass = EnvironmentClass.development
        if let metaNode = reader.value("metadata"), var meta = NodeReader(metaNode, path: "metadata", diagnostics: &diagnostics) {
            if let value = meta.requiredString("name", &diagnostics) {
                name = value
                if let problem = Names.problem(withLabel: value) {
                    diagnostics.append(Diagnostic(meta.value("name")!.mark, "metadata.name '\(value)' \(problem)"))
                } else if value.contains("--") && kind == "Environment" {
                    diagnostics.append(Diagnostic(meta.value("name")!.mark, "metadata.name '\(value)' must not contain '--', which Gantry reserves for preview names"))
                } else if value.hasPrefix("invalid-") && kind == "Environment" {
                    diagnostics.append(Diagnostic(meta.value("name")!.mark, "metadata.name '\(value)' must not start with 'invalid-', which Gantry reserves for environments whose name is not valid"))
                }
            }
            if kind == "Environment" {
                team = meta.string("team", &diagnostics)
                if let text = meta.requiredString("class", &diagnostics) {
                    let allowed = EnvironmentClass.allCases.filter { $0 != .preview }.map(\.rawValue)
                    if let value = EnvironmentClass(rawValue: text), value != .preview {
                        envClass = value
                    } else {
                        let extra = text == "preview" ? " (previews get class preview from their branch)" : ""
                        diagnostics.append(Diagnostic(meta.value("class")!.mark,
                            "metadata.class '\(text)' is unknown\(extra); use one of \(allowed.joined(separator: ", "))"))
                    }
                }
            }
            meta.finish(&diagnostics)
        } else if reader.value("metadata") == nil {
            diagnostics.append(Diagnostic(node.mark, "metadata is required (with name\(kind == "Environment" ? " and class" : ""))"))
        }
        var spec = EnvironmentSpec(name: name, team: team, class: envClass)
        if let specNode = reader.value("spec"), var specReader = NodeReader(specNode, path: "spec", diagnostics: &diagnostics) {
            decodeSpec(&specReader, into: &spec, &diagnostics)
            specReader.finish(&diagnostics)
        }
        reader.finish(&diagnostics)
        if kind == "Environment" {
            References.check(spec: spec, node: node, &diagnostics)
            checkInjections(spec, at: node.mark, &diagnostics)
        }
        return spec
    }

    private static func decodeSpec(_ reader: inout NodeReader, into spec: inout EnvironmentSpec, _ diagnostics: inout [Diagnostic]) {
        spec.template = reader.string("template", &diagnostics)
        for (name, node) in reader.entries("services", &diagnostics) {
            checkLabel(name, at: node, what: "service", &diagnostics)
            guard var service = NodeReader(node, path: "spec.services.\(name)", diagnostics: &diagnostics) else { continue }
            var value = Service(name: name)
            if let source = service.string("source", &diagnostics) {
                if let problem = Names.pathProblem(source) {
                    diagnostics.append(Diagnostic(service.value("source")!.mark, "spec.services.\(name).source '\(source)' \(problem)"))
                } else {
                    value.source = Names.normalize(path: source)
                }
            }
            if let command = service.stringList("command", &diagnostics) {
                value.command = command
                if command.isEmpty {
                    diagnostics.append(Diagnostic(service.value("command")!.mark, "spec.services.\(name).command must not be empty"))
                }
            }
            value.image = service.string("image", &diagnostics)
            // (An image runs its own entrypoint on the kubernetes driver; the local driver needs a command.)
            if service.value("command") == nil, value.image == nil {
                diagnostics.append(Diagnostic(node.mark, "spec.services.\(name).command is required: the program and its arguments, e.g. [\"python3\", \"server.py\"] (or an image, on the kubernetes driver)"))
            }
            if let replicas = service.int("replicas", &diagnostics) {
                if replicas < 0 || replicas > 100 {
                    diagnostics.append(Diagnostic(service.value("replicas")!.mark, "spec.services.\(name).replicas must be between 0 and 100"))
                }
                value.replicas = replicas
            }
            if let healthNode = service.value("health"), var health = NodeReader(healthNode, path: "spec.services.\(name).health", diagnostics: &diagnostics) {
                let path = health.string("http", &diagnostics)
                if let path, !path.hasPrefix("/") {
                    diagnostics.append(Diagnostic(health.value("http")!.mark, "spec.services.\(name).health.http must be a path starting with '/', found '\(path)'"))
                }
                value.health = Health(http: path, timeout: health.duration("timeout", &diagnostics) ?? 5)
                health.finish(&diagnostics)
            }
            if let resourcesNode = service.value("resources"), var resources = NodeReader(resourcesNode, path: "spec.services.\(name).resources", diagnostics: &diagnostics) {
                value.resources.cpu = resources.number("cpu", &diagnostics)
                if let cpu = value.resources.cpu, !(cpu >= 0.01 && cpu <= 1024), let node = resources.value("cpu") {
                    diagnostics.append(Diagnostic(node.mark, "spec.services.\(name).resources.cpu must be a number of cores from 0.01 to 1024 (0.5 is half a core), found \(NodeReader.show(node))"))
                    value.resources.cpu = nil
                }
                if let memory = resources.value("memory") {
                    if let text = memory.scalarText, let bytes = Names.quantity(text) {
                        value.resources.memory = bytes
                    } else {
                        diagnostics.append(Diagnostic(memory.mark, "spec.services.\(name).resources.memory must be a quantity like 256Mi or 1Gi"))
                    }
                }
                resources.finish(&diagnostics)
            }
            for (variable, valueNode) in service.entries("env", &diagnostics) {
                if variable.isEmpty || !variable.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) || variable.first!.isNumber {
                    diagnostics.append(Diagnostic(valueNode.mark, "spec.services.\(name).env: '\(variable)' is not a valid variable name (letters, digits, _)"))
                }
                if let text = NodeReader.string(valueNode, path: "spec.services.\(name).env.\(variable)", &diagnostics) {
                    value.env.append(EnvVar(name: variable, value: text))
                }
            }
            if let node = service.value("egress") {
                let (hosts, inject) = egressList(node, path: "spec.services.\(name).egress", &diagnostics)
                value.egress = hosts
                value.egressInject = inject.isEmpty ? nil : inject
            }
            if let node = service.value("autoscale") { value.autoscale = decodeAutoscale(node, service: name, replicas: value.replicas, &diagnostics) }
            service.finish(&diagnostics)
            spec.services.append(value)
        }
        for (name, node) in reader.entries("databases", &diagnostics) {
            checkLabel(name, at: node, what: "database", &diagnostics)
            guard var database = NodeReader(node, path: "spec.databases.\(name)", diagnostics: &diagnostics) else { continue }
            let engine = database.requiredString("engine", &diagnostics) ?? "postgres"
            if !["postgres", "sqlite"].contains(engine) {
                diagnostics.append(Diagnostic(database.value("engine")!.mark, "spec.databases.\(name).engine '\(engine)' is unknown; use postgres or sqlite"))
            }
            var value = Database(name: name, engine: engine)
            value.seed = database.string("seed", &diagnostics)
            if let seed = value.seed, let problem = Names.pathProblem(seed) {
                diagnostics.append(Diagnostic(database.value("seed")!.mark, "spec.databases.\(name).seed '\(seed)' \(problem)"))
            }
            value.cloneFrom = database.string("cloneFrom", &diagnostics)
            if let source = value.cloneFrom {
                if let problem = Names.problem(withLabel: source) {
                    diagnostics.append(Diagnostic(database.value("cloneFrom")!.mark, "spec.databases.\(name).cloneFrom '\(source)' \(problem); name a live environment"))
                } else if source.contains("--") {
                    diagnostics.append(Diagnostic(database.value("cloneFrom")!.mark, "spec.databases.\(name).cloneFrom '\(source)' names a preview; only live environments (on the protected branch) can be cloned"))
                }
            }
            database.finish(&diagnostics)
            spec.databases.append(value)
        }
        for (name, node) in reader.entries("caches", &diagnostics) {
            checkLabel(name, at: node, what: "cache", &diagnostics)
            guard var cache = NodeReader(node, path: "spec.caches.\(name)", diagnostics: &diagnostics) else { continue }
            let engine = cache.requiredString("engine", &diagnostics) ?? "redis"
            if engine != "redis" {
                diagnostics.append(Diagnostic(cache.value("engine")!.mark, "spec.caches.\(name).engine '\(engine)' is unknown; use redis"))
            }
            cache.finish(&diagnostics)
            spec.caches.append(Cache(name: name, engine: engine))
        }
        spec.secrets = reader.stringList("secrets", &diagnostics) ?? []
        if let node = reader.value("egress") {
            let (hosts, inject) = egressList(node, path: "spec.egress", &diagnostics)
            spec.egress = hosts
            spec.egressInject = inject.isEmpty ? nil : inject
        }
        if let routesNode = reader.value("routes") {
            let serviceList = spec.services.map(\.name)
            let serviceNames = Set(serviceList)
            if case .sequence(let items, _) = routesNode {
                for (index, item) in items.enumerated() {
                    guard var route = NodeReader(item, path: "spec.routes[\(index)]", diagnostics: &diagnostics) else { continue }
                    let name = route.requiredString("name", &diagnostics) ?? ""
                    let service = route.requiredString("service", &diagnostics) ?? ""
                    if !name.isEmpty { checkLabel(name, at: route.value("name")!, what: "route", &diagnostics) }
                    if !service.isEmpty && !serviceNames.contains(service) {
                        diagnostics.append(Diagnostic(route.value("service")!.mark, "spec.routes[\(index)].service '\(service)' is not a service of this environment\(suggestion(service, serviceList))"))
                    }
                    route.finish(&diagnostics)
                    spec.routes.append(Route(name: name, service: service))
                }
            } else {
                diagnostics.append(Diagnostic(routesNode.mark, "spec.routes must be a list of {name, service}"))
            }
        }
        for (name, node) in reader.entries("jobs", &diagnostics) {
            checkLabel(name, at: node, what: "job", &diagnostics)
            guard var job = NodeReader(node, path: "spec.jobs.\(name)", diagnostics: &diagnostics) else { continue }
            var value = Job(name: name)
            value.onCreate = job.stringList("onCreate", &diagnostics)
            value.onDestroy = job.stringList("onDestroy", &diagnostics)
            job.finish(&diagnostics)
            spec.jobs.append(value)
        }
        if let node = reader.value("lifecycle"), var lifecycle = NodeReader(node, path: "spec.lifecycle", diagnostics: &diagnostics) {
            spec.lifecycle.idleSleepAfter = lifecycle.duration("idleSleepAfter", &diagnostics)
            spec.lifecycle.ttl = lifecycle.duration("ttl", &diagnostics)
            lifecycle.finish(&diagnostics)
        }
        if let node = reader.value("budget"), var budget = NodeReader(node, path: "spec.budget", diagnostics: &diagnostics) {
            var value = Budget()
            value.hourly = budget.number("hourly", &diagnostics)
            if let hourly = value.hourly, hourly < 0 || !hourly.isFinite {
                diagnostics.append(Diagnostic(budget.value("hourly")!.mark, "spec.budget.hourly must be an amount of 0 or more per hour, found \(hourly)"))
            }
            budget.finish(&diagnostics)
            spec.budget = value
        }
    }

    /// `autoscale: {min, max, targetConcurrency}`: 0 ≤ min ≤ max ≤ 100, max ≥ 1, a positive target.
    private static func decodeAutoscale(_ node: YAMLNode, service name: String, replicas: Int, _ diagnostics: inout [Diagnostic]) -> Autoscale? {
        let path = "spec.services.\(name).autoscale"
        guard var reader = NodeReader(node, path: path, diagnostics: &diagnostics) else { return nil }
        var value = Autoscale()
        let minimum = reader.int("min", &diagnostics)
        let maximum = reader.int("max", &diagnostics)
        value.min = minimum ?? 1
        value.max = maximum ?? Swift.max(value.min, replicas, 1)
        if let target = reader.number("targetConcurrency", &diagnostics) {
            if target >= 0.1 && target <= 10_000 { value.targetConcurrency = target } else {
                diagnostics.append(Diagnostic(reader.value("targetConcurrency")!.mark, "\(path).targetConcurrency must be a number of requests per replica from 0.1 to 10000, found \(target)"))
            }
        }
        var valid = true
        if value.min < 0 || value.min > 100 {
            diagnostics.append(Diagnostic(reader.value("min")!.mark, "\(path).min must be between 0 and 100 (0 lets the service sleep while idle)"))
            valid = false
        }
        if value.max < 1 || value.max > 100 {
            diagnostics.append(Diagnostic((reader.value("max") ?? node).mark, "\(path).max must be between 1 and 100"))
            valid = false
        }
        if valid && value.min > value.max {
            diagnostics.append(Diagnostic((reader.value("max") ?? node).mark, "\(path).max (\(value.max)) must be at least min (\(value.min))"))
            valid = false
        }
        reader.finish(&diagnostics)
        return valid ? value : nil
    }

    static func checkLabel(_ name: String, at node: YAMLNode, what: String, _ diagnostics: inout [Diagnostic]) {
        if let problem = Names.problem(withLabel: name) {
            diagnostics.append(Diagnostic(node.mark, "\(what) name '\(name)' \(problem)"))
        }
    }

    static func suggestion(_ word: String, _ candidates: [String]) -> String {
        if let best = Suggest.closest(to: word, in: candidates) { return "; did you mean '\(best)'?" }
        let shown = candidates.prefix(10).joined(separator: ", ")
        return candidates.isEmpty ? "" : "; known: \(shown)\(candidates.count > 10 ? ", … (\(candidates.count) in all)" : "")"
    }
}
