import Foundation

/// Rules for names and paths in specs.
public enum Names {
    /// Why `name` is not a DNS-1123 label, or nil when it is one.
    public static func problem(withLabel name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        if name.count > 63 { return "is longer than 63 characters" }
        let allowed = name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }
        if !allowed || name.hasPrefix("-") || name.hasSuffix("-") {
            return "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"
        }
        return nil
    }

    /// Why a repository path is unsafe (absolute, escaping with `..`), or nil when it stays inside.
    public static func pathProblem(_ path: String) -> String? {
        if path.hasPrefix("/") { return "must be a path inside the repository, not an absolute path" }
        var depth = 0
        for component in path.split(separator: "/") {
            if component == ".." { depth -= 1 } else if component != "." { depth += 1 }
            if depth < 0 { return "escapes the repository; use a path inside it without '..'" }
        }
        if path.contains("\0") { return "contains a NUL character" }
        return nil
    }

    /// True when one of the `changed` repository paths is one of `watched` or lies under one;
    /// a watched "" (the repository root, as `source: .` normalises) is touched by any change.
    public static func touches(_ changed: some Collection<String>, _ watched: [String]) -> Bool {
        guard !changed.isEmpty else { return false }
        return watched.contains { path in
            path.isEmpty || changed.contains { $0 == path || $0.hasPrefix(path + "/") }
        }
    }

    /// `a/./b/../c/` → `a/c`; "" for the repository root.
    public static func normalize(path: String) -> String {
        var parts: [Substring] = []
        for component in path.split(separator: "/") {
            if component == "." { continue }
            if component == ".." { _ = parts.popLast() } else { parts.append(component) }
        }
        return parts.joined(separator: "/")
    }

    /// Kubernetes-style quantity (`256Mi`, `1Gi`, `500M`, `1024`) in bytes.
    public static func quantity(_ text: String) -> Int? {
        let suffixes: [(String, Int)] = [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40),
                                          ("K", 1000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000)]
        for (suffix, factor) in suffixes where text.hasSuffix(suffix) {
            // Infinite, NaN, negative or beyond 2^53 bytes is no quantity (and never a trap).
            // A positive amount under one byte (1e-400Ki) is no quantity either: it would read as 0.
            guard let number = Double(text.dropLast(suffix.count)), number.isFinite, number >= 0 else { return nil }
            let bytes = number * Double(factor)
            let mantissa = text.dropLast(suffix.count).prefix { $0 != "e" && $0 != "E" }
            let writtenAsZero = mantissa.allSatisfy { !$0.isNumber || $0 == "0" }
            guard bytes <= 9_007_199_254_740_992, number == 0 ? writtenAsZero : bytes >= 1 else { return nil }
            return Int(bytes)
        }
        return Int(text).flatMap { (0...9_007_199_254_740_992).contains($0) ? $0 : nil }
    }

    /// The branch slug of FORMATS.md: lowercase, runs outside [a-z0-9] become '-', trimmed.
    public static func slug(_ branch: String) -> String {
        var out = ""
        var pendingDash = false
        for scalar in branch.lowercased().unicodeScalars {
            if ("a"..."z").contains(scalar) || ("0"..."9").contains(scalar) {
                if pendingDash && !out.isEmpty { out += "-" }
                pendingDash = false
                out.unicodeScalars.append(scalar)
            } else {
                pendingDash = true
            }
        }
        return out
    }
}
