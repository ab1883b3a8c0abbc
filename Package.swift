// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Gantry",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "gantry", targets: ["gantry"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/modelcontextprotocol/swift-sdk", from: "0.12.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        // System-library shim for libgit2 (Debian libgit2-dev). No logic.
        .systemLibrary(name: "CLibgit2", pkgConfig: "libgit2", providers: [.apt(["libgit2-dev"])]),
        // System-library shim for libyaml (Debian libyaml-dev). No logic.
        .systemLibrary(name: "CYAML", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"])]),
        // The only importer of libgit2: refs, trees, diffs, ancestry, notes, signatures.
        .target(name: "GitStore", dependencies: ["CLibgit2"]),
        // Value types for settings, environments and templates. No I/O.
        .target(name: "SpecModel"),
        // YAML -> SpecModel with positions; templates, interpolation, validation, previews.
        .target(name: "SpecLoading", dependencies: ["CYAML", "SpecModel", "GitStore",
                                                    .product(name: "Crypto", package: "swift-crypto")]),
        // Audit records, SSHSIG signing/verification, notes writer with compare-and-swap.
        .target(name: "Audit", dependencies: ["GitStore", .product(name: "Crypto", package: "swift-crypto")]),
        // Google's RE2 behind a small C face (Debian libre2-dev): linear-time `matches()`. No logic.
        .target(name: "CRE2", path: "Sources/CRE2", linkerSettings: [.linkedLibrary("re2")]),
        // The Common Expression Language: parse and evaluate with cost limits. Knows nothing of Gantry.
        .target(name: "CEL", dependencies: ["CRE2"]),
        // Identity (commit signatures, allowed signers, actors) and, later, policies and approvals → verdicts.
        .target(name: "Governance", dependencies: ["GitStore", "SpecModel", "SpecLoading", "Audit", "CEL"]),
        // SQLite state (GRDB, WAL): environments, services, refs, events.
        .target(name: "StateStore", dependencies: [.product(name: "GRDB", package: "GRDB.swift"),
                                                   .product(name: "Crypto", package: "swift-crypto")]),
        // The reconcile loop, its steps and sweeps; the Driver protocol.
        .target(name: "Reconciler", dependencies: ["GitStore", "SpecModel", "SpecLoading", "Audit", "StateStore", "Governance", "CEL",
                                                   .product(name: "Logging", package: "swift-log")]),
        // The embedded default driver: supervised local processes.
        .target(name: "LocalDriver", dependencies: ["Reconciler", "SpecModel", "StateStore",
                                                    .product(name: "Logging", package: "swift-log")]),
        // Ingress: routes <route>.<environment>.<domain> by Host to services. Egress: the proxy
        // (SwiftNIO) with allow/deny lists, DLP, credential injection, DNS and the kill switch.
        .target(name: "Gateway", dependencies: ["CRE2", "SpecModel",
                                                .product(name: "Crypto", package: "swift-crypto"),
                                                .product(name: "NIOCore", package: "swift-nio"),
                                                .product(name: "NIOPosix", package: "swift-nio"),
                                                .product(name: "NIOSSL", package: "swift-nio-ssl")]),
        // The cluster driver: an environment as Kubernetes objects (typed, Codable), applied
        // server-side through a thin API client (async-http-client), pruned by an inventory in the state DB.
        .target(name: "KubernetesDriver", dependencies: ["SpecModel", "SpecLoading", "Reconciler", "StateStore",
                                                         .product(name: "Crypto", package: "swift-crypto"),
                                                         .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                                         .product(name: "NIOCore", package: "swift-nio"),
                                                         .product(name: "NIOHTTP1", package: "swift-nio"),
                                                         .product(name: "NIOSSL", package: "swift-nio-ssl"),
                                                         .product(name: "Logging", package: "swift-log")]),
        // The data plane: signed plans (apply, destroy, kill switches) the control plane issues for
        // `gantry agent`, the agent that judges and carries them out beside the workloads, and the
        // control plane's `agent` driver.
        .target(name: "DataPlane", dependencies: ["Reconciler", "StateStore", "Audit", "SpecModel", "GitStore",
                                                  .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                                  .product(name: "NIOSSL", package: "swift-nio-ssl"),
                                                  .product(name: "NIOCore", package: "swift-nio"),
                                                  .product(name: "NIOHTTP1", package: "swift-nio"),
                                                  .product(name: "Logging", package: "swift-log")]),
        // The agents' API over one service layer: HTTP/JSON (Hummingbird), MCP (stdio and streamable
        // HTTP), Prometheus metrics. Bearer tokens act as principals under the protected branch's governance.
        .target(name: "API", dependencies: ["GitStore", "SpecModel", "SpecLoading", "Audit", "StateStore", "Reconciler", "Governance",
                                            .product(name: "Hummingbird", package: "hummingbird"),
                                            .product(name: "MCP", package: "swift-sdk"),
                                            .product(name: "Prometheus", package: "swift-prometheus"),
                                            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                            .product(name: "NIOCore", package: "swift-nio"),
                                            .product(name: "HTTPTypes", package: "swift-http-types"),
                                            .product(name: "Logging", package: "swift-log")]),
        // The CLI and composition root.
        .executableTarget(name: "gantry", dependencies: [
            "GitStore", "SpecModel", "SpecLoading", "Audit", "StateStore", "Reconciler", "LocalDriver", "Governance", "CEL", "Gateway", "API", "KubernetesDriver", "DataPlane",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // `make bench`: figures against a git-CLI baseline measured in the same run.
        .executableTarget(name: "GantryBench", dependencies: [
            "GitStore", "SpecLoading", "Audit", "StateStore", "Reconciler", "LocalDriver", "TestSupport", "CEL", "Governance", "API", "Gateway", "SpecModel", "KubernetesDriver",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // `make fuzz` (docs/fuzzing.md): the fuzz targets' bodies, run by libFuzzer or replayed on files.
        .target(name: "FuzzTargets", dependencies: ["SpecLoading", "SpecModel", "CEL", "Audit", "Governance", "GitStore"]),
        .executableTarget(name: "GantryFuzz", dependencies: ["FuzzTargets"]),
        // Test repositories, and the fake driver the reconciler's own tests run against.
        .target(name: "TestSupport", dependencies: ["GitStore", "Reconciler"], path: "Tests/TestSupport"),
        // The reconcile loop's steps on their own, with the fake driver: detection, judging, apply
        // order, concurrency limits, teardown evidence, retries, resumption after a stop.
        .testTarget(name: "ReconcilerTests", dependencies: ["Reconciler", "StateStore", "Audit", "GitStore", "Governance", "TestSupport",
                                                          .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "GitStoreTests", dependencies: ["GitStore", "TestSupport"]),
        .testTarget(name: "SpecLoadingTests", dependencies: ["SpecLoading", "SpecModel", "GitStore", "TestSupport"]),
        .testTarget(name: "CELTests", dependencies: ["CEL", "TestSupport"]),
        .testTarget(name: "GovernanceTests", dependencies: ["Governance", "Audit", "GitStore", "SpecLoading", "SpecModel", "CEL", "TestSupport"]),
        .testTarget(name: "AuditTests", dependencies: ["Audit", "GitStore", "TestSupport"]),
        .testTarget(name: "StateStoreTests", dependencies: ["StateStore", "TestSupport", .product(name: "GRDB", package: "GRDB.swift")]),
        .testTarget(name: "LocalDriverTests", dependencies: ["LocalDriver", "Gateway", "Reconciler", "StateStore", "SpecModel", "SpecLoading", "Audit", "GitStore", "Governance", "TestSupport",
                                                           .product(name: "Logging", package: "swift-log")]),
        // The agents' API in-process over a real repository, state DB and curl: who may do what, bad input, rate limits.
        .testTarget(name: "APITests", dependencies: ["API", "StateStore", "GitStore", "Audit", "Governance", "Reconciler", "SpecLoading", "TestSupport",
                                                   .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "EndToEndTests", dependencies: ["TestSupport", "GitStore", "Audit"]),
        // The egress proxy in-process: real sockets, curl as the client, Python servers upstream.
        .testTarget(name: "GatewayTests", dependencies: ["Gateway", "SpecModel", "TestSupport"]),
        // Rendered manifests, validated by kubernetes-validate (PyPI) against a current Kubernetes.
        .testTarget(name: "KubernetesDriverTests", dependencies: ["KubernetesDriver", "SpecModel", "SpecLoading", "GitStore", "TestSupport",
                                                                  "Reconciler", "StateStore", "Audit", "Governance",
                                                                  .product(name: "Logging", package: "swift-log")]),
        // Plans judged by the agent (signature, sequence, age, paths) with real keys; the agent's rounds against a control plane.
        .testTarget(name: "DataPlaneTests", dependencies: ["DataPlane", "Reconciler", "StateStore", "Audit", "SpecModel", "GitStore", "TestSupport",
                                                         .product(name: "Logging", package: "swift-log")]),
        // Replays Fuzz/corpus/ and Fuzz/regressions/ through the fuzz targets.
        .testTarget(name: "FuzzRegressionTests", dependencies: ["FuzzTargets"]),
    ],
    cxxLanguageStandard: .cxx17
)
