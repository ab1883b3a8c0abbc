import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.0 GET (to loopback, or an environment's own address), for health checks: no
/// dependencies, bounded by a timeout.
public enum HTTPProbe {
    public enum Result: Equatable, Sendable {
        case status(Int)
        case failed(String)

        var isHealthy: Bool {
            if case .status(let code) = self { return (200..<400).contains(code) }
            return false
        }

        var summary: String {
            switch self {
            case .status(let code): "HTTP \(code)"
            case .failed(let reason): reason
            }
        }
    }

    /// True when something accepts TCP connections on host:port.
    static func canConnect(host: String = "127.0.0.1", port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        // (connect(2) honours the send timeout: an address nobody answers does not hang the check.)
        var time = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        var address = socketAddress(host, port)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    static func socketAddress(_ host: String, _ port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr(host)
        return address
    }

    public static func get(host: String = "127.0.0.1", port: Int, path: String, timeout: Double) -> Result {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return .failed("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var time = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        var address = socketAddress(host, port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return .failed("connection to \(host):\(port) failed: \(String(cString: strerror(errno)))") }
        let request = "GET \(path) HTTP/1.0\r\nHost: \(host):\(port)\r\nUser-Agent: gantry-health\r\n\r\n"
        guard request.withCString({ send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }) > 0 else {
            return .failed("could not send the request: \(String(cString: strerror(errno)))")
        }
        var buffer = [UInt8](repeating: 0, count: 64)
        var received = 0
        while received < 12 {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + received, 64 - received, 0) }
            if count <= 0 { break }
            received += count
        }
        let line = String(decoding: buffer.prefix(received), as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]) else {
            return .failed(received == 0 ? "no response within \(timeout)s" : "not an HTTP response")
        }
        return .status(code)
    }
}
