// The first bytes of a prior-knowledge h2c connection (RFC 9113 3.4): the client's connection
// preface, its SETTINGS, and the HEADERS (with any CONTINUATION) of its first request, read
// only to route the connection by that request's :authority, as a Host header is. The
// multiplexer peeks; it never answers in HTTP/2 and never consumes for itself: the worker's
// mod_http2 reads the same bytes. Every length is the client's and is checked.

public enum H2Preface {
    public static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// SETTINGS_MAX_FRAME_SIZE's initial value: no client frame may be larger before it hears
    /// the server's SETTINGS.
    public static let largestFrame = 16_384
    /// Frames before the first HEADERS (SETTINGS, WINDOW_UPDATE, PRIORITY, unknown types):
    /// more is a flood, not a client.
    public static let mostFramesBeforeHeaders = 16
    /// The header block, over all its frames.
    public static let largestHeaderBlock = 65_536

    public enum Scan: Equatable {
        /// Not the HTTP/2 connection preface.
        case notHTTP2
        /// The preface so far; `awaitingHeaders`: everything up to a frame boundary is read and
        /// no HEADERS came yet (a client may wait for the server's SETTINGS before its first
        /// request; the multiplexer then does not wait long).
        case needMore(awaitingHeaders: Bool)
        /// The first request's :authority (else its `host`) and :path, as far as present.
        case request(RouteHint)
        /// The preface, then something that breaks HTTP/2's rules (or the limits above): the
        /// address's first vhost gets it, and its mod_http2 answers.
        case malformed
    }

    static let settingsType: UInt8 = 0x4, headersType: UInt8 = 0x1, continuationType: UInt8 = 0x9
    static let dataType: UInt8 = 0x0, rstStreamType: UInt8 = 0x3, pushPromiseType: UInt8 = 0x5, goAwayType: UInt8 = 0x7
    static let endHeaders: UInt8 = 0x4, padded: UInt8 = 0x8, priority: UInt8 = 0x20

    public static func scan(_ bytes: UnsafeRawBufferPointer) -> Scan {
        let prefaceLength = min(bytes.count, preface.count)
        for index in 0..<prefaceLength where bytes[index] != preface[index] { return .notHTTP2 }
        guard bytes.count >= preface.count else { return .needMore(awaitingHeaders: false) }
        var at = preface.count
        var frames = 0
        var block: [UInt8] = []
        var headersStream: UInt32 = 0   // nonzero while a header block continues
        while true {
            guard bytes.count - at >= 9 else {
                return .needMore(awaitingHeaders: headersStream == 0 && at == bytes.count && frames > 0)
            }
            let length = Int(bytes[at]) << 16 | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2])
            let type = bytes[at + 3], flags = bytes[at + 4]
            let stream = (UInt32(bytes[at + 5]) << 24 | UInt32(bytes[at + 6]) << 16
                          | UInt32(bytes[at + 7]) << 8 | UInt32(bytes[at + 8])) & 0x7FFF_FFFF
            guard length <= largestFrame else { return .malformed }
            guard bytes.count - at - 9 >= length else { return .needMore(awaitingHeaders: false) }
            let payload = UnsafeRawBufferPointer(rebasing: bytes[(at + 9)..<(at + 9 + length)])
            at += 9 + length
            frames += 1
            // The preface's first frame is SETTINGS (RFC 9113 3.4); a header block is not
            // interrupted (6.10).
            if frames == 1 && (type != settingsType || stream != 0) { return .malformed }
            if headersStream != 0 {
                guard type == continuationType, stream == headersStream else { return .malformed }
                block.append(contentsOf: payload)
            } else if type == headersType {
                guard stream & 1 == 1, let fragment = headerFragment(payload, flags: flags) else { return .malformed }
                block.append(contentsOf: fragment)
                headersStream = stream
            } else if [dataType, rstStreamType, pushPromiseType, continuationType, goAwayType].contains(type) {
                return .malformed  // not before a client's first request
            } else if frames > mostFramesBeforeHeaders {
                return .malformed
            } else {
                continue  // SETTINGS, PRIORITY, WINDOW_UPDATE, PING, unknown types (ignored: 5.5)
            }
            guard block.count <= largestHeaderBlock else { return .malformed }
            if flags & endHeaders != 0 { return request(block) }
        }
    }

    /// A HEADERS payload without its padding and priority fields, or nil if they do not fit.
    static func headerFragment(_ payload: UnsafeRawBufferPointer, flags: UInt8) -> UnsafeRawBufferPointer? {
        var start = 0, end = payload.count
        if flags & padded != 0 {
            guard end >= 1 else { return nil }
            let padding = Int(payload[0])
            start = 1
            guard end - start >= padding else { return nil }
            end -= padding
        }
        if flags & priority != 0 {
            guard end - start >= 5 else { return nil }
            start += 5
        }
        return UnsafeRawBufferPointer(rebasing: payload[start..<end])
    }

    static let authority = Array(":authority".utf8), path = Array(":path".utf8), hostHeader = Array("host".utf8)

    static func request(_ block: [UInt8]) -> Scan {
        var hint = RouteHint()
        var host: String?
        let decoded = block.withUnsafeBytes { raw -> Bool in
            do {
                try HPACK.decode(raw) { name, value in
                    switch name {
                    case authority: if hint.host == nil { hint.host = text(value) }
                    case path: if hint.target == nil { hint.target = text(value) }
                    case hostHeader: if host == nil { host = text(value) }
                    default: break
                    }
                    return true
                }
                return true
            } catch {
                return false
            }
        }
        guard decoded else { return .malformed }
        if hint.host == nil { hint.host = host }
        return .request(hint)
    }

    /// A header value as routing takes it: visible ASCII only, else nothing (Apache refuses it).
    static func text(_ value: [UInt8]) -> String? {
        guard !value.isEmpty, value.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
        return String(decoding: value, as: UTF8.self)
    }
}
