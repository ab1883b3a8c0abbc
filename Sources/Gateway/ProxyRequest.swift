import Foundation
import SpecModel

/// A request to the egress proxy, read from its head: `CONNECT host:port` (a tunnel) or a plain
/// HTTP request in absolute form (`GET http://host:port/path HTTP/1.1`).
struct ProxyRequest: Sendable {
    enum Kind: Sendable { case connect, plain }

    let kind: Kind
    let method: String
    /// Normalized (`HostName.normalize`).
    let host: String
    let port: Int
    /// Origin form, for the upstream request line.
    let path: String
    let version: String
    let headers: [(name: String, value: String)]
    /// The body's length, when `Content-Length` gives it.
    let contentLength: Int
    let chunked: Bool

    /// Whatever the proxy answers instead of forwarding.
    struct Refusal: Error, Sendable {
        let status: Int
        let title: String
        let detail: String
    }

    /// The head's bytes up to the blank line (excluded).
    static func parse(head: [UInt8]) -> Result<ProxyRequest, Refusal> {
        func bad(_ detail: String) -> Result<ProxyRequest, Refusal> { .failure(Refusal(status: 400, title: "Bad Request", detail: detail)) }
        guard let text = String(bytes: head, encoding: .isoLatin1) else { return bad("the request head is not text") }
        // A lone CR or LF, or a NUL, would read as a line break (or the end) to some upstream: refused.
        if head.contains(0) || text.replacingOccurrences(of: "\r\n", with: "").contains(where: { $0 == "\r" || $0 == "\n" }) {
            return bad("the request head holds a bare CR, LF or NUL")
        }
        var lines = text.components(separatedBy: "\r\n")
        let requestLine = lines.removeFirst().split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard requestLine.count == 3, requestLine[2].hasPrefix("HTTP/1.") else { return bad("the request line is not 'METHOD TARGET HTTP/1.x'") }
        var headers: [(String, String)] = []
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":"), line.first != " ", line.first != "\t" else {
                return bad("a header line is malformed (or folded): '\(line.prefix(80))'")
            }
            let name = String(line[..<colon])
            guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_".contains($0)) }) else {
                return bad("a header name is malformed: '\(name.prefix(80))'")
            }
            headers.append((name, line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        let method = requestLine[0], target = requestLine[1]
        func value(_ name: String) -> [String] { headers.filter { $0.0.lowercased() == name }.map(\.1) }
        if method == "CONNECT" {
            guard let (host, port) = authority(target, defaultPort: 443) else {
                return bad("CONNECT needs host:port, found '\(target.prefix(200))'")
            }
            return .success(ProxyRequest(kind: .connect, method: method, host: host, port: port, path: "", version: requestLine[2],
                                         headers: headers, contentLength: 0, chunked: false))
        }
        let lower = target.lowercased()
        if lower.hasPrefix("https://") {
            return bad("an https:// URL must go through CONNECT (clients do this when HTTPS_PROXY is set)")
        }
        guard lower.hasPrefix("http://") else {
            return bad("this is Gantry's egress proxy: send absolute URLs (http://host/path) or CONNECT, as clients do with HTTP_PROXY set")
        }
        let rest = target.dropFirst("http://".count)
        let end = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        var authorityText = String(rest[..<end])
        // Credentials in the URL are not forwarded (DLP has seen them in the head).
        if let at = authorityText.lastIndex(of: "@") { authorityText = String(authorityText[authorityText.index(after: at)...]) }
        guard let (host, port) = authority(authorityText, defaultPort: 80) else { return bad("the URL's host '\(authorityText.prefix(200))' is not a host name or address") }
        var path = String(rest[end...])
        if let hash = path.firstIndex(of: "#") { path = String(path[..<hash]) }
        if path.isEmpty || path.hasPrefix("?") { path = "/" + path }
        let lengths = value("content-length"), encodings = value("transfer-encoding")
        if !lengths.isEmpty && !encodings.isEmpty { return bad("both Content-Length and Transfer-Encoding: the request is ambiguous") }
        if Set(lengths).count > 1 { return bad("several different Content-Length headers") }
        var length = 0
        if let text = lengths.first {
            guard let parsed = Int(text), parsed >= 0 else { return bad("Content-Length '\(text.prefix(40))' is not a number") }
            length = parsed
        }
        var chunked = false
        if !encodings.isEmpty {
            guard encodings.count == 1, encodings[0].lowercased() == "chunked" else { return bad("only Transfer-Encoding: chunked is accepted") }
            chunked = true
        }
        return .success(ProxyRequest(kind: .plain, method: method, host: host, port: port, path: path, version: requestLine[2],
                                     headers: headers, contentLength: length, chunked: chunked))
    }

    /// `host:port`, `[v6]:port` or a host alone; nil when the host is no host name or address.
    static func authority(_ text: String, defaultPort: Int) -> (String, Int)? {
        var host = text, port = defaultPort
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = String(text[text.index(after: text.startIndex)..<close])
            let after = text[text.index(after: close)...]
            if after.hasPrefix(":") {
                guard let parsed = Int(after.dropFirst()) else { return nil }
                port = parsed
            } else if !after.isEmpty { return nil }
        } else if let colon = text.lastIndex(of: ":"), text.filter({ $0 == ":" }).count == 1 {
            host = String(text[..<colon])
            guard let parsed = Int(text[text.index(after: colon)...]) else { return nil }
            port = parsed
        }
        guard (1...65535).contains(port), let normalized = HostName.normalize(host) else { return nil }
        return (normalized, port)
    }

    /// The request as sent upstream: origin form, `Host` from the URL (a different `Host` header
    /// could reach another site behind the same address), hop-by-hop and proxy headers dropped,
    /// `injected` headers replacing the request's own, one request per connection, and a body
    /// of known length.
    func upstreamHead(bodyLength: Int, injected: [(name: String, value: String)]) -> [UInt8] {
        let dropped: Set<String> = ["host", "connection", "proxy-connection", "keep-alive", "proxy-authorization", "te", "trailer",
                                    "transfer-encoding", "content-length", "upgrade"]
        let replaced = Set(injected.map { $0.name.lowercased() })
        var head = "\(method) \(path) HTTP/1.1\r\nHost: \(port == 80 ? hostForURL : "\(hostForURL):\(port)")\r\n"
        for (name, value) in headers where !dropped.contains(name.lowercased()) && !replaced.contains(name.lowercased()) {
            head += "\(name): \(value)\r\n"
        }
        for (name, value) in injected { head += "\(name): \(value)\r\n" }
        if bodyLength > 0 || contentLength > 0 || chunked { head += "Content-Length: \(bodyLength)\r\n" }
        head += "Connection: close\r\n\r\n"
        return Array(head.utf8)
    }

    var hostForURL: String { host.contains(":") ? "[\(host)]" : host }

    /// A chunked body decoded: `.incomplete` until its last chunk and trailers arrived.
    enum Chunked: Equatable {
        case incomplete
        case done(body: [UInt8], used: Int)
        case invalid(String)
    }

    static func dechunk(_ bytes: [UInt8], limit: Int) -> Chunked {
        var decoder = ChunkedDecoder(limit: limit)
        return decoder.feed(bytes)
    }

    /// Decodes a growing buffer chunk by chunk, never reading a byte twice (a body trickled in
    /// one-byte chunks costs no more than one sent whole).
    struct ChunkedDecoder {
        let limit: Int
        private var index = 0
        private var body: [UInt8] = []
        /// The current chunk's bytes still to come (nil: a size line is next).
        private var remaining: Int?
        private var inTrailers = false

        init(limit: Int) { self.limit = limit }

        /// The next line from `index` (without CRLF), or nil until it is complete. A line longer
        /// than 4 KiB is an error.
        /// Chunks a body may have: a client sending a megabyte one byte at a time is refused.
        static let maxChunks = 4096
        private var chunks = 0

        /// The end of the line that starts at `index` (the CR of its CRLF), or nil until it is
        /// complete; `tooLong` past 4 KiB.
        private func lineEnd(_ bytes: [UInt8]) -> (end: Int?, tooLong: Bool) {
            var end = index
            while end + 1 < bytes.count {
                if bytes[end] == 0x0d && bytes[end + 1] == 0x0a { return (end, false) }
                end += 1
            }
            return (nil, bytes.count - index > 4096)
        }

        mutating func feed(_ bytes: [UInt8]) -> Chunked {
            while true {
                if inTrailers {
                    let (found, tooLong) = lineEnd(bytes)
                    guard let end = found else { return tooLong ? .invalid("a trailer line is over 4 KiB") : .incomplete }
                    let empty = end == index
                    index = end + 2
                    if empty { return .done(body: body, used: index) }
                    continue
                }
                if let left = remaining {
                    guard bytes.count >= index + left + 2 else { return .incomplete }
                    body += bytes[index..<index + left]
                    guard bytes[index + left] == 0x0d, bytes[index + left + 1] == 0x0a else { return .invalid("a chunk does not end with CRLF") }
                    index += left + 2
                    remaining = nil
                    continue
                }
                let (found, tooLong) = lineEnd(bytes)
                guard let end = found else { return tooLong ? .invalid("a chunk size line is over 4 KiB") : .incomplete }
                // Hexadecimal digits, then optional spaces and an extension after ';'.
                var size = 0, digits = 0, at = index
                while at < end, let digit = HexDigit.value(bytes[at]) {
                    size = size * 16 + Int(digit)
                    digits += 1
                    at += 1
                    guard digits <= 8 else { return .invalid("a chunk size is too large") }
                }
                while at < end, bytes[at] == 0x20 || bytes[at] == 0x09 { at += 1 }
                guard digits > 0, at == end || bytes[at] == 0x3b else { return .invalid("a chunk size is not hexadecimal") }
                index = end + 2
                if size == 0 { inTrailers = true; continue }
                chunks += 1
                guard chunks <= Self.maxChunks else { return .invalid("the body has more than \(Self.maxChunks) chunks") }
                guard body.count + size <= limit else { return .invalid("the body is larger than \(limit) bytes") }
                remaining = size
            }
        }

    }
}
