import Foundation
import Reconciler
import SpecModel
#if canImport(Glibc)
import Glibc
#endif

/// `gantry exec` and the API's exec: a command in an environment's context. It runs as the
/// environment's user, in a control group of its own under the environment's (with the service's
/// limits), in the environment's network, with the service's variables and secrets, in the
/// service's working directory; marked as the environment's, so a teardown stops it too.
extension LocalDriver: EnvironmentExecutor {
    public func exec(_ request: ExecRequest, output: @escaping @Sendable (ExecStream, Data) -> Bool) throws -> ExecResult {
        let name = request.environment
        guard Self.isSafeName(name), let environment = try state.environment(name), environment.phase != .destroyed else {
            throw ExecRefusal(.notFound, "no environment named '\(name)'")
        }
        guard !request.command.isEmpty, !request.command[0].isEmpty else { throw ExecRefusal(.invalid, "the command is empty; give the program and its arguments") }
        guard !environment.conditions.contains(.destroying) else {
            throw ExecRefusal(.notRunning, "\(name) is being torn down")
        }
        if let why = killSwitches?.reason(for: name, team: environment.team) {
            throw ExecRefusal(.notRunning, "\(name) is frozen by the \(why): nothing runs in it until a human with a role lifts the switch")
        }
        guard let spec = environment.appliedSpec else {
            throw ExecRefusal(.notRunning, "\(name) has no applied revision yet (\(environment.phase.rawValue)); wait until it is Running")
        }
        guard let serviceName = request.service ?? spec.services.first?.name else {
            throw ExecRefusal(.invalid, "\(name) has no service to run the command beside")
        }
        let records = try state.services(of: name)
        guard let service = spec.service(named: serviceName) else {
            throw ExecRefusal(.notFound, "\(name) has no service '\(serviceName)' (services: \(spec.services.map(\.name).joined(separator: ", ")))")
        }
        guard let record = records.first(where: { $0.name == serviceName }), let workdir = record.workdir,
              FileManager.default.fileExists(atPath: workdir) else {
            throw ExecRefusal(.notRunning, "service \(serviceName) of \(name) has no working directory yet; wait until the environment is Running")
        }
        let ports = Dictionary(records.map { ($0.name, $0.port) }, uniquingKeysWith: { first, _ in first })
        let resolved = try resolve(service, spec: spec, domain: environment.domain ?? "localhost", ports: ports)
        let user = try user(of: name)
        let unit = "exec-" + (0..<4).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let variables = processVariables(record, resolved: ResolvedService(command: request.command, environment: resolved.environment),
                                         user: user, unit: unit)
        let joins = try cgroups.prepare(name, unit: unit, memory: service.resources.memory, cpu: service.resources.cpu, keepFrozen: isKilled(name))
        defer { cgroups.kill(name, unit: unit, remove: true) }
        let network = try network(of: name, user: user)
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
        guard pipe(&outPipe) == 0 else { throw ProcessControl.SpawnError(description: "cannot create a pipe: \(String(cString: strerror(errno)))") }
        guard pipe(&errPipe) == 0 else {
            outPipe.forEach { close($0) }
            throw ProcessControl.SpawnError(description: "cannot create a pipe: \(String(cString: strerror(errno)))")
        }
        for end in outPipe + errPipe { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        var readEnds = [outPipe[0], errPipe[0]]
        defer { readEnds.filter { $0 >= 0 }.forEach { close($0) } }
        let pid: pid_t
        do {
            pid = try ProcessControl.spawn(ControlGroups.joining(joins, Networks.entering(network, Self.asUser(user, request.command))),
                                           directory: workdir, environment: variables,
                                           output: .descriptors(output: outPipe[1], error: errPipe[1]))
        } catch {
            close(outPipe[1]); close(errPipe[1])
            throw error
        }
        close(outPipe[1]); close(errPipe[1])
        let deadline = Date().addingTimeInterval(request.timeout)
        var status: Int32 = 0
        var exited = false, timedOut = false, cancelled = false
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        // A command that prints nothing still learns, once a second, whether anyone waits for it.
        var probed = Date()
        // Until both pipes close, or the command has ended and what it left in the pipes is read
        // (a background child holding them open does not keep the answer waiting).
        while readEnds.contains(where: { $0 >= 0 }) {
            if !exited, waitpid(pid, &status, WNOHANG) == pid { exited = true }
            if Date() >= deadline || cancelled {
                timedOut = !cancelled
                break
            }
            var fds = readEnds.enumerated().filter { $0.element >= 0 }.map { pollfd(fd: $0.element, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&fds, nfds_t(fds.count), exited ? 0 : 50)
            if ready < 0 && errno != EINTR { break }
            if ready == 0 && exited { break }
            if ready == 0, Date().timeIntervalSince(probed) >= 1 {
                probed = Date()
                if !output(.stdout, Data()) { cancelled = true }
            }
            for entry in fds where entry.revents != 0 {
                guard let index = readEnds.firstIndex(of: entry.fd) else { continue }
                let count = read(entry.fd, &buffer, buffer.count)
                if count > 0 {
                    if !output(index == 0 ? .stdout : .stderr, Data(buffer[0..<count])) { cancelled = true }
                } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                    close(entry.fd)
                    readEnds[index] = -1
                }
            }
        }
        // Its output closed, the command may still run: it has until the deadline to end.
        while !exited && !timedOut && !cancelled {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid || (reaped == -1 && errno == ECHILD) { exited = true } else if Date() >= deadline { timedOut = true } else {
                usleep(10_000)
                if Date().timeIntervalSince(probed) >= 1 {
                    probed = Date()
                    if !output(.stdout, Data()) { cancelled = true }
                }
            }
        }
        // The command's group goes; whatever else it left in its control group goes with the defer above.
        if (timedOut || cancelled) && !exited { ProcessControl.stopGroup(pid, grace: min(options.stopGrace, 2)) }
        let signal = status & 0x7f
        let code: Int32 = timedOut ? 124 : cancelled ? 130 : signal == 0 ? (status >> 8) & 0xff : 128 + signal
        var result = ExecResult(exitCode: code, timedOut: timedOut, service: serviceName)
        result.cancelled = cancelled
        return result
    }
}
