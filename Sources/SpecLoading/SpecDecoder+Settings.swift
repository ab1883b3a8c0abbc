import SpecModel

/// Typed decoding of the configuration documents. Every problem is collected, none stops the rest.
enum SpecDecoder {
    /// Checks `apiVersion` and `kind`; returns the reader for the rest of the document.
    static func header(_ node: YAMLNode, kind: String, _ diagnostics: inout [Diagnostic]) -> NodeReader? {
        guard var reader = NodeReader(node, path: "", diagnostics: &diagnostics) else { return nil }
        let apiVersion = reader.requiredString("apiVersion", &diagnostics)
        if let apiVersion, apiVersion != "gantry/v1" {
            diagnostics.append(Diagnostic(reader.value("apiVersion")!.mark, "apiVersion must be gantry/v1, found '\(apiVersion)'"))
        }
        let found = reader.requiredString("kind", &diagnostics)
        if let found, found != kind {
            diagnostics.append(Diagnostic(reader.value("kind")!.mark, "kind must be \(kind) in this file, found '\(found)'"))
        }
        return reader
    }

    static func settings(_ node: YAMLNode, _ diagnostics: inout [Diagnostic]) -> Settings {
        var settings = Settings()
        guard var reader = header(node, kind: "Settings", &diagnostics) else { return settings }
        if let branch = reader.string("protectedBranch", &diagnostics) { settings.protectedBranch = branch }
        settings.ignoreBranches = reader.stringList("ignoreBranches", &diagnostics) ?? []
        if let domain = reader.string("domain", &diagnostics) { settings.domain = domain }
        if let node = reader.value("signing"), var signing = NodeReader(node, path: "signing", diagnostics: &diagnostics) {
            settings.signing.required = signing.bool("required", &diagnostics) ?? false
            signing.finish(&diagnostics)
        }
        for (name, node) in reader.entries("approvals", &diagnostics) {
            guard var rule = NodeReader(node, path: "approvals.\(name)", diagnostics: &diagnostics) else { continue }
            var value = Settings.ApprovalRule()
            value.count = rule.int("count", &diagnostics) ?? 1
            value.role = rule.string("role", &diagnostics) ?? "approver"
            value.distinctFromAuthors = rule.bool("distinctFromAuthors", &diagnostics) ?? true
            rule.finish(&diagnostics)
            let known = EnvironmentClass.allCases.map(\.rawValue) + [Settings.governanceApprovals]
            if !known.contains(name) {
                diagnostics.append(Diagnostic(node.mark, "approvals.\(name): unknown class\(suggestion(name, known)); the keys are \(known.joined(separator: ", "))"))
            }
            if value.count < 1, let countNode = rule.value("count") {
                diagnostics.append(Diagnostic(countNode.mark, "approvals.\(name).count must be at least 1; remove the rule to need no approval"))
            }
            settings.approvals[name] = value
        }
        if let node = reader.value("previews"), var previews = NodeReader(node, path: "previews", diagnostics: &diagnostics) {
            settings.previews.ttl = previews.duration("ttl", &diagnostics)
            settings.previews.idleSleepAfter = previews.duration("idleSleepAfter", &diagnostics)
            settings.previews.maxPerTeam = previews.int("maxPerTeam", &diagnostics)
            settings.previews.maxPerAgent = previews.int("maxPerAgent", &diagnostics)
            for key in ["maxPerTeam", "maxPerAgent"] {
                if let node = previews.value(key), let count = node.scalarText.flatMap(Int.init), count < 0 {
                    diagnostics.append(Diagnostic(node.mark, "previews.\(key) must be a count of running previews, 0 or more (found \(count))"))
                }
            }
            previews.finish(&diagnostics)
        }
        if let node = reader.value("pricing"), var pricing = NodeReader(node, path: "pricing", diagnostics: &diagnostics) {
            for key in CostModel.pricingKeys {
                guard let value = pricing.number(key, &diagnostics) else { continue }
                if value < 0 || !value.isFinite {
                    diagnostics.append(Diagnostic(pricing.value(key)!.mark, "pricing.\(key) must be a price of 0 or more per hour, found \(value)"))
                } else {
                    settings.pricing[key] = value
                }
            }
            pricing.finish(&diagnostics)
        }
        if let node = reader.value("budgets"), var budgets = NodeReader(node, path: "budgets", diagnostics: &diagnostics) {
            settings.budgets.alertAt = budgets.number("alertAt", &diagnostics) ?? 0.8
            if !(settings.budgets.alertAt > 0 && settings.budgets.alertAt <= 1), let node = budgets.value("alertAt") {
                diagnostics.append(Diagnostic(node.mark, "budgets.alertAt must be a fraction above 0 and at most 1 (0.8 alerts at 80% of a budget)"))
                settings.budgets.alertAt = 0.8
            }
            settings.budgets.teams = limits(budgets.entries("teams", &diagnostics), path: "budgets.teams", &diagnostics)
            settings.budgets.agents = limits(budgets.entries("agents", &diagnostics), path: "budgets.agents", &diagnostics)
            budgets.finish(&diagnostics)
        }
        if let node = reader.value("egress"), var egress = NodeReader(node, path: "egress", diagnostics: &diagnostics) {
            if let mode = egress.string("default", &diagnostics) {
                if mode != "allow" && mode != "deny" {
                    diagnostics.append(Diagnostic(egress.value("default")!.mark, "egress.default must be allow or deny, found '\(mode)'"))
                }
                settings.egress.default = mode
            }
            settings.egress.allow = egress.stringList("allow", &diagnostics) ?? []
            settings.egress.deny = egress.stringList("deny", &diagnostics) ?? []
            checkHosts(settings.egress.allow, node: egress.value("allow"), path: "egress.allow", &diagnostics)
            checkHosts(settings.egress.deny, node: egress.value("deny"), path: "egress.deny", &diagnostics)
            egress.finish(&diagnostics)
        }
        settings.killSwitch = reader.bool("killSwitch", &diagnostics) ?? false
        for (target, node) in reader.entries("drivers", &diagnostics) {
            guard let driver = NodeReader.string(node, path: "drivers.\(target)", &diagnostics) else { continue }
            guard Settings.driverNames.contains(driver) else {
                diagnostics.append(Diagnostic(node.mark, "drivers.\(target): unknown driver '\(driver)'\(suggestion(driver, Settings.driverNames)); the drivers are \(Settings.driverNames.joined(separator: ", "))"))
                continue
            }
            settings.drivers[target] = driver
        }
        let classes = EnvironmentClass.allCases.map(\.rawValue)
        for (target, node) in reader.entries("clones", &diagnostics) {
            guard case .sequence(let items, _) = node else {
                diagnostics.append(Diagnostic(node.mark, "clones.\(target) must be a list of classes, found \(node.kindDescription)"))
                continue
            }
            let sources = items.enumerated().compactMap { NodeReader.string($1, path: "clones.\(target)[\($0)]", &diagnostics) }
            for name in [target] + sources where !classes.contains(name) {
                diagnostics.append(Diagnostic(node.mark, "clones.\(target): unknown class '\(name)'\(suggestion(name, classes)); classes are \(classes.joined(separator: ", "))"))
            }
            settings.clones[target] = sources
        }
        reader.finish(&diagnostics)
        return settings
    }

    private static func limits(_ entries: [(name: String, node: YAMLNode)], path: String,
                               _ diagnostics: inout [Diagnostic]) -> [String: Settings.BudgetLimit] {
        var result: [String: Settings.BudgetLimit] = [:]
        for (name, node) in entries {
            guard var reader = NodeReader(node, path: "\(path).\(name)", diagnostics: &diagnostics) else { continue }
            var limit = Settings.BudgetLimit()
            limit.monthly = reader.number("monthly", &diagnostics)
            limit.daily = reader.number("daily", &diagnostics)
            limit.hourly = reader.number("hourly", &diagnostics)
            for (key, amount) in [("monthly", limit.monthly), ("daily", limit.daily), ("hourly", limit.hourly)] {
                if let amount, amount < 0 || !amount.isFinite {
                    diagnostics.append(Diagnostic(reader.value(key)!.mark, "\(path).\(name).\(key) must be an amount of 0 or more, found \(amount)"))
                }
            }
            reader.finish(&diagnostics)
            result[name] = limit
        }
        return result
    }
}
