// Reading just enough of an HTTP/1.x request head to route it.
//
// The multiplexer peeks at the bytes a client sent and needs only the request target and the
// Host header; Apache's own vhost code (called from the C shim) does the matching. The scanner
// never trusts lengths from the input and never allocates more than the two strings it returns.

/// What the multiplexer learned about a request from the bytes seen so far.
public struct RouteHint: Equatable {
    /// The request target of the request line (`/path`, or `http://host/path` in absolute form).
    public var target: String?
    /// The value of the first `Host` header, trimmed of optional whitespace.
    public var host: String?
    /// The values of the forwarded-client header asked for (mod_remoteip's RemoteIPHeader),
    /// several lines joined with ", " as httpd merges them; nil when there was none.
    public var forwarded: String?
    /// The client a PROXY protocol header named (`.none`: LOCAL or UNKNOWN); nil: no header.
    public var proxied: ClientAddress?

    public init(target: String? = nil, host: String? = nil, forwarded: String? = nil, proxied: ClientAddress? = nil) {
        self.target = target
        self.host = host
        self.forwarded = forwarded
        self.proxied = proxied
    }
}

public enum HeadScan: Equatable {
    /// The head is not complete yet; `hint` holds what was found so far.
    case needMore(RouteHint)
    /// The head ends after `length` bytes (including the blank line).
    case complete(RouteHint, length: Int)
    /// Not an HTTP/1.x request line; Apache in the default vhost answers it with a 4xx.
    case malformed
}

public enum RequestHead {
    /// Apache skips this many empty lines before a request line (core's DEFAULT_LIMIT_BLANK_LINES).
    static let blankLinesAllowed = 10
    /// A header value longer than this is not kept (Apache will reject it anyway).
    static let longestKeptValue = 8192

    /// Whether `bytes` end with an empty line (CRLF CRLF or LF LF, as the end of a head does).
    public static func endsWithBlankLine(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let n = bytes.count
        guard n >= 2, bytes[n - 1] == UInt8(ascii: "\n") else { return false }
        if bytes[n - 2] == UInt8(ascii: "\n") { return true }
        return n >= 3 && bytes[n - 2] == UInt8(ascii: "\r") && bytes[n - 3] == UInt8(ascii: "\n")
    }

    /// `forwardedHeader`: a header (lower case) whose values to collect into `hint.forwarded`.
    public static func scan(_ bytes: UnsafeRawBufferPointer, forwardedHeader: String? = nil) -> HeadScan {
        var lines = LineReader(bytes)
        var hint = RouteHint()

        // Request line, after optional blank lines.
        var requestLine: Slice<UnsafeRawBufferPointer>?
        var blanks = 0
        while requestLine == nil {
            guard let line = lines.next() else {
                return looksLikeRequestStart(lines.rest) ? .needMore(hint) : .malformed
            }
            if line.isEmpty {
                blanks += 1
                if blanks > blankLinesAllowed { return .malformed }
                continue
            }
            requestLine = line
        }
        guard let line = requestLine, let target = requestTarget(of: line) else { return .malformed }
        hint.target = target.value
        if target.isHTTP09 {
            // HTTP/0.9 has no headers: the request line is the whole head.
            return .complete(hint, length: lines.offset)
        }

        // Header lines up to the blank line.
        while let header = lines.next() {
            if header.isEmpty { return .complete(hint, length: lines.offset) }
            if hint.host == nil, let value = value(of: "host", in: header) { hint.host = value }
            if let name = forwardedHeader, let value = value(of: name, in: header),
               (hint.forwarded?.utf8.count ?? 0) < longestKeptValue {
                hint.forwarded = hint.forwarded.map { $0 + ", " + value } ?? value
            }
        }
        return .needMore(hint)
    }

    /// Whether bytes that hold no complete line yet may still become a request line.
    static func looksLikeRequestStart(_ rest: Slice<UnsafeRawBufferPointer>) -> Bool {
        for byte in rest.prefix(32) {
            if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\r") { return true }
            if !isTokenChar(byte) { return false }
        }
        return true
    }

    struct Target {
        var value: String
        var isHTTP09: Bool
    }

    /// `METHOD SP target SP HTTP/x.y`, or `GET SP target` (HTTP/0.9).
    static func requestTarget(of line: Slice<UnsafeRawBufferPointer>) -> Target? {
        // The space-separated words (runs of spaces count as one), without an array: this runs
        // for every request a multiplexer routes.
        let none = line[line.startIndex..<line.startIndex]
        var words = (first: none, second: none, third: none)
        var count = 0
        var index = line.startIndex
        while index < line.endIndex {
            guard line[index] != UInt8(ascii: " ") else {
                index += 1
                continue
            }
            var end = index
            while end < line.endIndex && line[end] != UInt8(ascii: " ") { end += 1 }
            switch count {
            case 0: words.first = line[index..<end]
            case 1: words.second = line[index..<end]
            case 2: words.third = line[index..<end]
            default: return nil  // a fourth word
            }
            count += 1
            index = end
        }
        guard count == 2 || count == 3 else { return nil }
        guard words.first.allSatisfy(isTokenChar) else { return nil }
        guard words.second.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { return nil }
        let target = String(decoding: words.second, as: UTF8.self)
        if count == 2 { return Target(value: target, isHTTP09: true) }
        guard words.third.starts(with: "HTTP/".utf8) else { return nil }
        return Target(value: target, isHTTP09: false)
    }

    /// The value of header `name` (lower case) in `line`, or nil when the line is another header.
    static func value(of name: String, in line: Slice<UnsafeRawBufferPointer>) -> String? {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        let field = line[line.startIndex..<colon]
        guard field.count == name.utf8.count else { return nil }
        // Byte by byte, not zip: this runs for every header line of every request routed.
        var index = field.startIndex
        for expected in name.utf8 {
            guard lowercased(field[index]) == expected else { return nil }
            index += 1
        }
        var value = line[(colon + 1)...]
        while let first = value.first, first == UInt8(ascii: " ") || first == UInt8(ascii: "\t") {
            value = value.dropFirst()
        }
        while let last = value.last, last == UInt8(ascii: " ") || last == UInt8(ascii: "\t") {
            value = value.dropLast()
        }
        guard value.count <= longestKeptValue, value.allSatisfy({ $0 >= 0x20 && $0 != 0x7f }) else {
            return nil
        }
        return String(decoding: value, as: UTF8.self)
    }

    static func lowercased(_ byte: UInt8) -> UInt8 {
        (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) ? byte + 32 : byte
    }

    /// RFC 9110 tchar.
    static func isTokenChar(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"),
             UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }
}

/// Splits bytes into lines ending in LF (an optional CR before it is dropped).
struct LineReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var rest: Slice<UnsafeRawBufferPointer> { bytes[offset...] }

    mutating func next() -> Slice<UnsafeRawBufferPointer>? {
        guard let lf = bytes[offset...].firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        var end = lf
        if end > offset && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        let line = bytes[offset..<end]
        offset = lf + 1
        return line
    }
}
