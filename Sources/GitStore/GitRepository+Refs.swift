import CLibgit2

extension GitRepository {
    /// One snapshot of every branch: short branch name (without `refs/heads/`) → tip commit.
    ///
    /// Throws when the listing fails; callers must treat a failure as "no information", never as
    /// "every branch was deleted".
    public func branches() throws -> [String: ObjectID] {
        try references(withPrefix: "refs/heads/")
    }

    /// Every reference whose full name starts with `prefix`, keyed by the name after the prefix.
    public func references(withPrefix prefix: String) throws -> [String: ObjectID] {
        try locked {
            var iterator: OpaquePointer?
            try check("list references", git_reference_iterator_glob_new(&iterator, handle, prefix + "*"))
            defer { git_reference_iterator_free(iterator) }
            var result: [String: ObjectID] = [:]
            while true {
                var reference: OpaquePointer?
                let status = git_reference_next(&reference, iterator)
                if status == GIT_ITEROVER.rawValue { break }
                try check("list references", status)
                defer { git_reference_free(reference) }
                let name = String(cString: git_reference_name(reference))
                guard name.hasPrefix(prefix) else { continue }
                let key = String(name.dropFirst(prefix.count))
                if let target = git_reference_target(reference) {
                    result[key] = ObjectID(target.pointee)
                    continue
                }
                // A symbolic branch ref: follow it.
                var resolved: OpaquePointer?
                defer { git_reference_free(resolved) }
                if git_reference_resolve(&resolved, reference) == 0, let target = git_reference_target(resolved) {
                    result[key] = ObjectID(target.pointee)
                }
            }
            return result
        }
    }

    /// The target of one direct reference, or nil when it does not exist.
    public func reference(_ name: String) throws -> ObjectID? {
        try locked {
            var oid = git_oid()
            let status = git_reference_name_to_id(&oid, handle, name)
            if status == GIT_ENOTFOUND.rawValue { return nil }
            try check("read reference \(name)", status)
            return ObjectID(oid)
        }
    }

    /// Points `name` at `target` only if it still points at `expected` (nil: must not exist yet).
    /// A lost race throws a `GitError` whose `isConflict` is true.
    public func updateReference(_ name: String, to target: ObjectID, expected: ObjectID?, message: String) throws {
        try locked {
            var reference: OpaquePointer?
            var newOid = target.oid
            if let expected {
                var oldOid = expected.oid
                try check("update \(name)", git_reference_create_matching(&reference, handle, name, &newOid, 1, &oldOid, message))
            } else {
                try check("create \(name)", git_reference_create(&reference, handle, name, &newOid, 0, message))
            }
            git_reference_free(reference)
        }
    }

    /// Deletes `name` only if it still points at `expected`; a ref that moved throws a `GitError`
    /// whose `isConflict` is true, one that is gone already is left so.
    public func deleteReference(_ name: String, expected: ObjectID) throws {
        try locked {
            var reference: OpaquePointer?
            let found = git_reference_lookup(&reference, handle, name)
            if found == GIT_ENOTFOUND.rawValue { return }
            try check("look up \(name)", found)
            defer { git_reference_free(reference) }
            guard let target = git_reference_target(reference), ObjectID(target.pointee) == expected else {
                throw GitError(operation: "delete \(name)", code: GIT_EMODIFIED.rawValue, message: "\(name) moved; it was not deleted")
            }
            try check("delete \(name)", git_reference_delete(reference))
        }
    }

    /// The best common ancestor of two commits, or nil when they share no history.
    public func mergeBase(_ a: ObjectID, _ b: ObjectID) throws -> ObjectID? {
        if a == b { return a }
        let pair = MergeBasePair(a, b)
        return try locked {
            if let known = mergeBases[pair] { return known }
            // A push usually adds one commit on top of a tip judged before: when a commit has a
            // single parent whose merge base with the other is known and is not that parent, the
            // commit is not in the other's history either (its parent would be), so their common
            // ancestors — and merge base — are the parent's. No history walk.
            for (child, other) in [(a, b), (b, a)] {
                guard let parent = singleParent(of: child), case let .some(known) = mergeBases[MergeBasePair(parent, other)],
                      known != parent else { continue }
                remember(pair, known)
                return known
            }
            var out = git_oid()
            var one = a.oid
            var two = b.oid
            let status = git_merge_base(&out, handle, &one, &two)
            let base: ObjectID?
            if status == GIT_ENOTFOUND.rawValue {
                base = nil
            } else {
                try check("merge-base \(a.short) \(b.short)", status)
                base = ObjectID(out)
            }
            remember(pair, base)
            return base
        }
    }

    /// (Under the lock.) At most 512 pairs are kept; beyond, they are forgotten all at once.
    private func remember(_ pair: MergeBasePair, _ base: ObjectID?) {
        if mergeBases.count >= 512 { mergeBases.removeAll(keepingCapacity: true) }
        mergeBases[pair] = base
    }

    /// (Under the lock.) The parent of a commit that has exactly one; nil otherwise or when unreadable.
    private func singleParent(of commit: ObjectID) -> ObjectID? {
        var object: OpaquePointer?
        var oid = commit.oid
        guard git_commit_lookup(&object, handle, &oid) == 0, let object else { return nil }
        defer { git_commit_free(object) }
        guard git_commit_parentcount(object) == 1, let parent = git_commit_parent_id(object, 0) else { return nil }
        return ObjectID(parent.pointee)
    }

    /// True when `commit` is `tip` or one of its ancestors ("reachable from tip"): then, and only
    /// then, it is the merge base of the two (libgit2's `git_graph_descendant_of` decides the same
    /// way), and the pair's merge base is often known already.
    public func isReachable(_ commit: ObjectID, from tip: ObjectID) throws -> Bool {
        if commit == tip { return true }
        return try mergeBase(commit, tip) == commit
    }
}

/// Two commits in either order (a merge base does not depend on it).
struct MergeBasePair: Hashable {
    let first: ObjectID
    let second: ObjectID
    init(_ a: ObjectID, _ b: ObjectID) {
        (first, second) = a.hex < b.hex ? (a, b) : (b, a)
    }
}
