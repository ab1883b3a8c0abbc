import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small HTTP/1.1 client for the running Gantry's own API on this host (`gantry exec`,
/// `gantry mcp`, the benchmark): one request, the answer read line by line as it streams
/// (chunked or not).
public enum LoopbackHTTP {
    public struct Failure: Error, CustomStringConvertible { public let description: String }

    /// Sends the request and hands each line of the body to `line`; returns the status code.
    public static func stream(base: String, method: String, path: String, token: String, body: Data, line: (String) -> Void) throws -> Int {
        guard let url = URL(string: base), let host = url.host, let port = url.port, url.scheme == "http" else {
            throw Failure(description: "the API address \(base) is not http://HOST:PORT")
        }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &found) == 0, let info = found else {
            throw Failure(description: "cannot resolve \(host)")
        }
        defer { freeaddrinfo(found) }
        let socket = Glibc.socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
        guard socket >= 0 else { throw Failure(description: "cannot open a socket: \(String(cString: strerror(errno)))") }
        defer { close(socket) }
        guard connect(socket, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            throw Failure(description: "cannot reach the API at \(base): \(String(cString: strerror(errno))) (is `gantry run` running?)")
        }
        var request = "\(method) \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nAuthorization: Bearer \(token)\r\n"
        request += "Content-Type: application/json\r\nAccept: application/x-ndjson, application/json\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        var payload = Data(request.utf8)
        payload.append(body)
        try payload.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = send(socket, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                guard written > 0 else { throw Failure(description: "the API closed the connection while the request was sent") }
                offset += written
            }
        }
        var reader = Reader(socket: socket)
        let statusLine = try reader.line()
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw Failure(description: "the API answered '\(statusLine)'") }
        var chunked = false
        while true {
            let header = try reader.line()
            if header.isEmpty { break }
            if header.lowercased().hasPrefix("transfer-encoding:"), header.lowercased().contains("chunked") { chunked = true }
        }
        var pending = Data()
        func emit(_ data: Data) {
            pending.append(data)
            while let newline = pending.firstIndex(of: 0x0a) {
                line(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                pending = Data(pending[pending.index(after: newline)...])
            }
        }
        if chunked {
            while true {
                let size = Int(try reader.line().split(separator: ";").first.map(String.init) ?? "", radix: 16) ?? 0
                if size == 0 { break }
                emit(try reader.bytes(size))
                _ = try reader.line()
            }
        } else {
            while let data = try reader.some() { emit(data) }
        }
        if !pending.isEmpty { line(String(decoding: pending, as: UTF8.self)) }
        return status
    }

    /// One request; the whole body.
    public static func request(base: String, method: String = "GET", path: String, token: String, body: Data = Data()) throws -> (status: Int, body: String) {
        var lines: [String] = []
        let status = try stream(base: base, method: method, path: path, token: token, body: body) { lines.append($0) }
        return (status, lines.joined(separator: "\n"))
    }

    struct Reader {
        let socket: Int32
        var buffer = Data()
        var closed = false

        mutating func fill() throws {
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            let count = recv(socket, &chunk, chunk.count, 0)
            if count < 0 && errno == EINTR { return }
            guard count > 0 else { closed = true; return }
            buffer.append(contentsOf: chunk[0..<count])
        }

        mutating func line() throws -> String {
            while true {
                if let index = buffer.firstIndex(of: 0x0a) {
                    let text = String(decoding: buffer[buffer.startIndex..<index], as: UTF8.self)
                    buffer = Data(buffer[buffer.index(after: index)...])
                    return text.hasSuffix("\r") ? String(text.dropLast()) : text
                }
                if closed { throw Failure(description: "the API closed the connection mid-answer") }
                try fill()
            }
        }

        mutating func bytes(_ count: Int) throws -> Data {
            while buffer.count < count {
                if closed { throw Failure(description: "the API closed the connection mid-answer") }
                try fill()
            }
            let data = Data(buffer.prefix(count))
            buffer = Data(buffer.dropFirst(count))
            return data
        }

        mutating func some() throws -> Data? {
            if buffer.isEmpty && !closed { try fill() }
            guard !buffer.isEmpty else { return nil }
            defer { buffer = Data() }
            return buffer
        }
    }
}
