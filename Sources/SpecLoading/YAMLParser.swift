import CYAML
import Foundation

/// Parses one YAML document into a `YAMLNode` tree with positions, defending against hostile input:
/// size, nesting depth and alias expansion are bounded, duplicate keys and non-UTF-8 are errors.
public struct YAMLParser: Sendable {
    public var maxBytes = 1 << 20
    public var maxDepth = 64
    public var maxNodes = 50_000

    public init() {}

    public func parse(_ data: Data, file: String) throws -> YAMLNode {
        let start = SourceMark(file: file, line: 1, column: 1)
        guard data.count <= maxBytes else {
            throw Diagnostic(start, "file is \(data.count) bytes; configuration files are limited to \(maxBytes) bytes — split it or move data out of the spec")
        }
        guard let text = String(validatingUTF8: data) else {
            let offset = Self.firstInvalidUTF8Offset(data)
            throw Diagnostic(Self.mark(ofByte: offset, in: data, file: file), "file is not valid UTF-8 (byte \(offset)); save it as UTF-8")
        }
        if text.unicodeScalars.contains("\0") {
            throw Diagnostic(start, "file contains a NUL byte; configuration files must be text")
        }
        var builder = Builder(file: file, limits: self)
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { throw Diagnostic(start, "could not start the YAML parser") }
        defer { yaml_parser_delete(&parser) }
        return try data.withUnsafeBytes { raw -> YAMLNode in
            yaml_parser_set_input_string(&parser, raw.bindMemory(to: UInt8.self).baseAddress, raw.count)
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else {
                    let problem = parser.problem.map { String(cString: $0) } ?? "syntax error"
                    let context = parser.context.map { " " + String(cString: $0) } ?? ""
                    let mark = parser.problem_mark
                    throw Diagnostic(SourceMark(file: file, line: Int(mark.line) + 1, column: Int(mark.column) + 1),
                                     "YAML syntax error: \(problem)\(context)")
                }
                defer { yaml_event_delete(&event) }
                if event.type == YAML_STREAM_END_EVENT { break }
                try builder.handle(&event)
            }
            guard let root = builder.documents.first else {
                throw Diagnostic(start, "file is empty; expected a YAML mapping with apiVersion and kind")
            }
            if builder.documents.count > 1 {
                throw Diagnostic(builder.documents[1].mark, "file holds \(builder.documents.count) YAML documents; put one document in each file")
            }
            return root
        }
    }

    /// Byte offset of the first byte that does not start or continue a valid UTF-8 sequence.
    static func firstInvalidUTF8Offset(_ data: Data) -> Int {
        let bytes = [UInt8](data)
        var index = 0
        while index < bytes.count {
            let lead = bytes[index]
            let length: Int
            switch lead {
            case 0x00...0x7F: length = 1
            case 0xC2...0xDF: length = 2
            case 0xE0...0xEF: length = 3
            case 0xF0...0xF4: length = 4
            default: return index
            }
            guard index + length <= bytes.count else { return index }
            for next in bytes[(index + 1)..<(index + length)] where next & 0xC0 != 0x80 { return index }
            index += length
        }
        return bytes.count
    }

    static func mark(ofByte offset: Int, in data: Data, file: String) -> SourceMark {
        var line = 1, column = 1
        for byte in data.prefix(offset) {
            if byte == UInt8(ascii: "\n") { line += 1; column = 1 } else { column += 1 }
        }
        return SourceMark(file: file, line: line, column: column)
    }
}

extension String {
    init?(validatingUTF8 data: Data) {
        guard let value = String(bytes: data, encoding: .utf8) else { return nil }
        self = value
    }
}

/// Turns the event stream into nodes. Each open collection is a frame appended to in place, with
/// a set of its keys, so building a document is linear in its size.
private struct Builder {
    final class Frame {
        let isMapping: Bool
        let anchor: String?
        let mark: SourceMark
        var items: [YAMLNode] = []
        var pairs: [(key: YAMLNode, value: YAMLNode)] = []
        var pendingKey: YAMLNode?
        var keys: [String: Int] = [:]
        /// Expanded size, for alias accounting.
        var size = 1

        init(isMapping: Bool, anchor: String?, mark: SourceMark) {
            self.isMapping = isMapping
            self.anchor = anchor
            self.mark = mark
        }
    }

    let file: String
    let limits: YAMLParser
    var stack: [Frame] = []
    var anchors: [String: (node: YAMLNode, size: Int)] = [:]
    var documents: [YAMLNode] = []
    var nodeCount = 0
    /// Whether an alias was expanded (then a node count past the limit is likely an alias bomb).
    var aliasesUsed = false

    init(file: String, limits: YAMLParser) {
        self.file = file
        self.limits = limits
    }

    func mark(_ m: yaml_mark_t) -> SourceMark {
        SourceMark(file: file, line: Int(m.line) + 1, column: Int(m.column) + 1)
    }

    static func string(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        pointer.map { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
    }

    mutating func count(_ added: Int, at position: SourceMark) throws {
        nodeCount += added
        if nodeCount > limits.maxNodes {
            throw Diagnostic(position, aliasesUsed
                ? "document expands to more than \(limits.maxNodes) nodes (an alias bomb?); remove the repeated aliases"
                : "document has more than \(limits.maxNodes) nodes; split it into several files")
        }
    }

    mutating func handle(_ event: inout yaml_event_t) throws {
        let position = mark(event.start_mark)
        switch event.type {
        case YAML_SCALAR_EVENT:
            let scalar = event.data.scalar
            let text = String(decoding: UnsafeBufferPointer(start: scalar.value, count: scalar.length), as: UTF8.self)
            // The file has no NUL byte, but an escape ("\0", "\x00", "\u0000") makes one: it would
            // vanish or cut the value wherever the string meets C (a command, an environment).
            if text.utf8.contains(0) {
                throw Diagnostic(position, "a NUL character (an escape such as \\0) is not allowed in a value; remove it")
            }
            try count(1, at: position)
            let node = YAMLNode.scalar(text, plain: scalar.style == YAML_PLAIN_SCALAR_STYLE, position)
            if let anchor = Self.string(scalar.anchor) { anchors[anchor] = (node, 1) }
            try add(node, size: 1)
        case YAML_ALIAS_EVENT:
            let name = Self.string(event.data.alias.anchor) ?? ""
            guard let target = anchors[name] else {
                throw Diagnostic(position, "alias *\(name) refers to no anchor defined before it")
            }
            aliasesUsed = true
            try count(target.size, at: position)
            try add(target.node, size: target.size)
        case YAML_SEQUENCE_START_EVENT:
            try open(Frame(isMapping: false, anchor: Self.string(event.data.sequence_start.anchor), mark: position), at: position)
        case YAML_MAPPING_START_EVENT:
            try open(Frame(isMapping: true, anchor: Self.string(event.data.mapping_start.anchor), mark: position), at: position)
        case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
            let frame = stack.removeLast()
            let node: YAMLNode = frame.isMapping ? .mapping(try Self.mergeKeys(frame.pairs), frame.mark) : .sequence(frame.items, frame.mark)
            if let anchor = frame.anchor { anchors[anchor] = (node, frame.size) }
            try add(node, size: frame.size)
        case YAML_DOCUMENT_START_EVENT:
            anchors = [:]
        default:
            break
        }
    }

    mutating func open(_ frame: Frame, at position: SourceMark) throws {
        if stack.count >= limits.maxDepth {
            throw Diagnostic(position, "nesting deeper than \(limits.maxDepth) levels; flatten the document")
        }
        try count(1, at: position)
        stack.append(frame)
    }

    mutating func add(_ node: YAMLNode, size: Int) throws {
        guard let top = stack.last else {
            documents.append(node)
            return
        }
        top.size += size
        guard top.isMapping else {
            top.items.append(node)
            return
        }
        guard let key = top.pendingKey else {
            top.pendingKey = node
            return
        }
        top.pendingKey = nil
        guard case .scalar(let keyText, _, _) = key else {
            throw Diagnostic(key.mark, "mapping keys must be scalars, found \(key.kindDescription)")
        }
        if keyText != "<<" {
            if let earlier = top.keys[keyText] {
                throw Diagnostic(key.mark, "duplicate key '\(keyText)' (first at line \(earlier)); keep one")
            }
            top.keys[keyText] = key.mark.line
        }
        top.pairs.append((key, node))
    }

    /// Resolves `<<` merge keys: entries of the merged mappings not already present are added.
    static func mergeKeys(_ pairs: [(key: YAMLNode, value: YAMLNode)]) throws -> [(key: YAMLNode, value: YAMLNode)] {
        guard pairs.contains(where: { $0.key.scalarText == "<<" }) else { return pairs }
        var result = pairs.filter { $0.key.scalarText != "<<" }
        var present = Set(result.compactMap(\.key.scalarText))
        for pair in pairs where pair.key.scalarText == "<<" {
            let sources: [YAMLNode]
            switch pair.value {
            case .mapping: sources = [pair.value]
            case .sequence(let items, _): sources = items
            default: throw Diagnostic(pair.value.mark, "a merge key '<<' takes a mapping or a list of mappings")
            }
            for source in sources {
                guard case .mapping(let merged, _) = source else {
                    throw Diagnostic(source.mark, "a merge key '<<' takes a mapping or a list of mappings")
                }
                for entry in merged where present.insert(entry.key.scalarText ?? "").inserted {
                    result.append(entry)
                }
            }
        }
        return result
    }
}
