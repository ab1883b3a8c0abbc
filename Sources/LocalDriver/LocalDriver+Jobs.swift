import Foundation
import GitStore
import Reconciler
import SpecModel
#if canImport(Glibc)
import Glibc
#endif

/// `jobs.*.onCreate` runs once when an environment is created, `onDestroy` when it is destroyed,
/// each in a checkout of the repository at the environment's commit, output to `logs/job-NAME.log`.
extension LocalDriver {
    /// What `onDestroy` needs after the spec is gone: kept beside the environment as JSON.
    struct JobPlan: Codable {
        let commit: String
        let jobs: [Job]
    }

    func environmentDirectory(_ name: String) -> URL { root.appendingPathComponent(name) }

    /// Runs the onCreate jobs the first time an environment is applied; a failure fails the apply.
    func runCreateJobs(_ environment: PlannedEnvironment, progress: (String) -> Void) throws -> [String] {
        let directory = environmentDirectory(environment.name)
        try prepareEnvironmentDirectory(environment.name)
        let plan = JobPlan(commit: environment.commit.hex, jobs: environment.spec.jobs)
        let planFile = directory.appendingPathComponent("jobs.json")
        try JSONEncoder().encode(plan).write(to: planFile)
        _ = chmod(planFile.path, 0o600)
        let marker = directory.appendingPathComponent(".created")
        guard !FileManager.default.fileExists(atPath: marker.path) else { return [] }
        var changes: [String] = []
        for job in environment.spec.jobs {
            guard let command = job.onCreate, !command.isEmpty else { continue }
            progress("running job \(job.name) (onCreate)")
            try runJob(job.name, phase: "onCreate", command: command, environment: environment.name, source: environment.source)
            changes.append("job \(job.name): onCreate ran")
        }
        FileManager.default.createFile(atPath: marker.path, contents: Data())
        return changes
    }

    /// Runs the onDestroy jobs recorded at apply time; returns what failed (teardown goes on).
    func runDestroyJobs(_ name: String, sources: (any SourceStore)?, progress: (String) -> Void) -> [String] {
        let file = environmentDirectory(name).appendingPathComponent("jobs.json")
        guard let data = FileManager.default.contents(atPath: file.path),
              let plan = try? JSONDecoder().decode(JobPlan.self, from: data), let commit = ObjectID(hex: plan.commit) else { return [] }
        var problems: [String] = []
        for job in plan.jobs {
            guard let command = job.onDestroy, !command.isEmpty else { continue }
            guard let sources else {
                problems.append("job \(job.name) (onDestroy) not run: no repository to check it out from")
                continue
            }
            progress("running job \(job.name) (onDestroy)")
            do {
                try runJob(job.name, phase: "onDestroy", command: command, environment: name, source: sources.snapshot(at: commit))
            } catch {
                problems.append("job \(job.name) (onDestroy) failed: \(error)")
            }
        }
        return problems
    }

    func runJob(_ name: String, phase: String, command: [String], environment: String, source: any SourceSnapshot) throws {
        let commit = source.commit
        let directory = environmentDirectory(environment)
        let checkout = directory.appendingPathComponent("job-\(name)-\(commit.short)")
        try? FileManager.default.removeItem(at: checkout)
        try source.materialize("", into: checkout)
        defer { try? FileManager.default.removeItem(at: checkout) }
        let user = try user(of: environment)
        try handOver(checkout, to: user)
        let log = directory.appendingPathComponent("logs/job-\(name).log")
        try FileManager.default.createDirectory(at: log.deletingLastPathComponent(), withIntermediateDirectories: true)
        var variables: [String: String] = [:]
        let inherited = ProcessInfo.processInfo.environment
        for key in ["PATH", "HOME", "LANG", "TMPDIR", "USER"] { variables[key] = inherited[key] }
        variables["PATH"] = variables["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        if user != nil {
            variables["HOME"] = checkout.path
            variables["USER"] = nil
            variables["PATH"] = Self.searchablePath(variables["PATH"] ?? "")
        }
        variables["GANTRY_ENVIRONMENT"] = environment
        variables["GANTRY_JOB"] = name
        variables["GANTRY_JOB_PHASE"] = phase
        variables[Self.markVariable] = "\(instance):\(environment):job-\(name)"
        let joins = try cgroups.prepare(environment, unit: "job-\(name)", memory: nil, cpu: nil, keepFrozen: isKilled(environment))
        defer { cgroups.kill(environment, unit: "job-\(name)", remove: true) }
        let network = try network(of: environment, user: user)
        let pid = try ProcessControl.spawn(ControlGroups.joining(joins, Networks.entering(network, Self.asUser(user, command))), directory: checkout.path,
                                           environment: variables, logPath: log.path)
        let deadline = Date().addingTimeInterval(options.jobTimeout)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline {
                ProcessControl.stopGroup(pid, grace: options.stopGrace)
                throw ProcessControl.SpawnError(description: "job \(name) (\(phase)) did not finish within \(Int(options.jobTimeout))s")
            }
            usleep(20_000)
        }
        if status != 0 {
            throw ProcessControl.SpawnError(description: "job \(name) (\(phase)) \(ProcessControl.describe(status)); \(outputPointer(environment, "job-\(name).log"))")
        }
    }
}
