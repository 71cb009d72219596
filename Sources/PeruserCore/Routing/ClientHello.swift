// The TLS ClientHello, read (peeked) by the multiplexer only for its server_name: the worker
// performs the whole handshake with mod_ssl. Every length in the input is the client's word;
// each is checked against what is actually there before it is used.

public enum ClientHello {
    public enum Scan: Equatable {
        /// The bytes do not start a TLS handshake record: treat the connection as plain HTTP.
        case notTLS
        /// A TLS handshake has begun; more bytes are needed to see the whole ClientHello.
        case needMore
        /// A complete ClientHello, with its SNI host name (lowercased, without a trailing dot),
        /// or nil when it carries none or an unusable one.
        case hello(serverName: String?)
        /// A TLS record that is no valid ClientHello (route it to the address's first vhost;
        /// mod_ssl will refuse the handshake).
        case malformed
    }

    static let handshakeRecord: UInt8 = 22
    /// The first byte of every TLS connection (a handshake record).
    public static let handshakeRecordByte: UInt8 = handshakeRecord
    static let clientHelloType: UInt8 = 1
    static let largestRecord = 16384 + 2048
    /// The largest ClientHello looked at; beyond it, the connection goes to the first vhost.
    public static let largestHello = 64 * 1024

    /// Looks at the first bytes a client sent on a connection.
    public static func scan(_ bytes: UnsafeRawBufferPointer) -> Scan {
        guard let first = bytes.first else { return .needMore }
        guard first == handshakeRecord else { return .notTLS }
        if bytes.count >= 2 && bytes[1] != 3 { return .notTLS }  // TLS and SSL 3 records have major version 3
        // Reassemble the handshake message from as many records as it spans.
        var message: [UInt8] = []
        var offset = 0
        while true {
            guard offset + 5 <= bytes.count else { return .needMore }
            guard bytes[offset] == handshakeRecord, bytes[offset + 1] == 3 else { return .malformed }
            let length = Int(bytes[offset + 3]) << 8 | Int(bytes[offset + 4])
            guard length > 0, length <= largestRecord else { return .malformed }
            guard offset + 5 + length <= bytes.count else { return .needMore }
            message.append(contentsOf: bytes[(offset + 5)..<(offset + 5 + length)])
            offset += 5 + length
            guard message.count >= 4 else { continue }
            guard message[0] == clientHelloType else { return .malformed }
            let bodyLength = Int(message[1]) << 16 | Int(message[2]) << 8 | Int(message[3])
            guard bodyLength <= largestHello else { return .malformed }
            if message.count >= 4 + bodyLength {
                return message.withUnsafeBytes { parseBody(UnsafeRawBufferPointer(rebasing: $0[4..<(4 + bodyLength)])) }
            }
        }
    }

    /// A bounds-checked reader over the ClientHello body.
    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        var remaining: Int { bytes.count - offset }

        mutating func skip(_ count: Int) -> Bool {
            guard count >= 0, count <= remaining else { return false }
            offset += count
            return true
        }

        mutating func u8() -> Int? {
            guard remaining >= 1 else { return nil }
            defer { offset += 1 }
            return Int(bytes[offset])
        }

        mutating func u16() -> Int? {
            guard remaining >= 2 else { return nil }
            defer { offset += 2 }
            return Int(bytes[offset]) << 8 | Int(bytes[offset + 1])
        }

        /// The next `count` bytes as a sub-reader.
        mutating func slice(_ count: Int) -> Reader? {
            guard count >= 0, count <= remaining else { return nil }
            defer { offset += count }
            return Reader(bytes: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)]))
        }
    }

    static func parseBody(_ body: UnsafeRawBufferPointer) -> Scan {
        var r = Reader(bytes: body)
        guard r.skip(2 + 32),                              // legacy_version, random
              let sessionLength = r.u8(), sessionLength <= 32, r.skip(sessionLength),
              let suitesLength = r.u16(), suitesLength >= 2, suitesLength % 2 == 0, r.skip(suitesLength),
              let compressionLength = r.u8(), compressionLength >= 1, r.skip(compressionLength)
        else { return .malformed }
        if r.remaining == 0 { return .hello(serverName: nil) }  // no extensions (SSL 3 / TLS 1.0 style)
        guard let extensionsLength = r.u16(), extensionsLength == r.remaining,
              var extensions = r.slice(extensionsLength) else { return .malformed }
        var serverName: String?
        var seenServerName = false
        while extensions.remaining > 0 {
            guard let type = extensions.u16(), let length = extensions.u16(),
                  var data = extensions.slice(length) else { return .malformed }
            guard type == 0 else { continue }                  // server_name
            guard !seenServerName else { return .malformed }   // at most once (RFC 8446 4.2)
            seenServerName = true
            if length == 0 { continue }                        // a server's empty echo; not from a client, harmless
            guard let listLength = data.u16(), listLength == data.remaining, listLength > 0 else { return .malformed }
            while data.remaining > 0 {
                guard let nameType = data.u8(), let nameLength = data.u16(),
                      let name = data.slice(nameLength) else { return .malformed }
                if nameType == 0 && serverName == nil { serverName = hostName(name.bytes) }
            }
        }
        return .hello(serverName: serverName)
    }

    /// A DNS host name as SNI carries it: letters, digits, '-', '_' and '.', at most 253
    /// characters once a trailing dot is dropped; lowercased. Anything else is no name.
    static func hostName(_ bytes: UnsafeRawBufferPointer) -> String? {
        var name = Array(bytes)
        if name.last == UInt8(ascii: ".") { name.removeLast() }
        guard !name.isEmpty, name.count <= 253, name.first != UInt8(ascii: ".") else { return nil }
        for (i, byte) in name.enumerated() {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): name[i] = byte + 32
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"):
                break
            case UInt8(ascii: "."):
                if i > 0 && name[i - 1] == UInt8(ascii: ".") { return nil }
            default:
                return nil
            }
        }
        return String(decoding: name, as: UTF8.self)
    }
}
