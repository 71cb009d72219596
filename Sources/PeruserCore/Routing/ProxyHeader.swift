// The PROXY protocol header (HAProxy's, versions 1 and 2) a front proxy sends before the
// client's bytes when mod_remoteip's RemoteIPProxyProtocol is on. The multiplexer reads past it
// to route (the worker's mod_remoteip consumes it), and takes the client from it. It comes from
// whoever connects, so nothing in it is trusted beyond its own bounds.

public enum ProxyHeaderScan: Equatable {
    /// The bytes do not start with a PROXY header.
    case notProxy
    /// They start like one and it is not complete yet.
    case needMore
    /// A PROXY header of `length` bytes; `source` is the client it names (nil: LOCAL, UNKNOWN,
    /// or an address family other than IPv4/IPv6).
    case header(length: Int, source: ClientAddress?)
    /// A header that is not one (mod_remoteip refuses the connection).
    case malformed
}

public enum ProxyHeader {
    static let v2Signature: [UInt8] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]
    /// Version 1's longest line, CRLF included (the protocol's own bound).
    static let v1Longest = 107

    public static func scan(_ bytes: UnsafeRawBufferPointer) -> ProxyHeaderScan {
        if bytes.isEmpty { return .needMore }
        let v1 = Array("PROXY ".utf8)
        if startsLike(bytes, v1) {
            return bytes.count < v1.count ? .needMore : scanV1(bytes)
        }
        if startsLike(bytes, v2Signature) {
            return bytes.count < v2Signature.count ? .needMore : scanV2(bytes)
        }
        return .notProxy
    }

    /// Whether the bytes so far are a prefix of `signature` or start with all of it.
    private static func startsLike(_ bytes: UnsafeRawBufferPointer, _ signature: [UInt8]) -> Bool {
        let n = min(bytes.count, signature.count)
        for i in 0..<n where bytes[i] != signature[i] { return false }
        return true
    }

    static func scanV1(_ bytes: UnsafeRawBufferPointer) -> ProxyHeaderScan {
        let limit = min(bytes.count, v1Longest)
        var end: Int?
        for i in 1..<limit where bytes[i - 1] == 0x0d && bytes[i] == 0x0a {
            end = i + 1
            break
        }
        guard let length = end else { return bytes.count >= v1Longest ? .malformed : .needMore }
        guard let line = String(validating: bytes[0..<(length - 2)], as: UTF8.self) else { return .malformed }
        let words = line.split(separator: " ", omittingEmptySubsequences: false)
        guard words.count >= 2, words[0] == "PROXY" else { return .malformed }
        switch words[1] {
        case "UNKNOWN":
            return .header(length: length, source: nil)
        case "TCP4", "TCP6":
            guard words.count == 6, let source = ClientAddress(parsing: words[2]),
                  ClientAddress(parsing: words[3]) != nil, source.isIPv4 == (words[1] == "TCP4"),
                  port(words[4]) && port(words[5]) else { return .malformed }
            return .header(length: length, source: source)
        default:
            return .malformed
        }
    }

    private static func port(_ word: Substring) -> Bool {
        (1...5).contains(word.count) && word.allSatisfy { $0.isASCII && $0.isNumber } && (Int(word) ?? 70000) <= 65535
    }

    static func scanV2(_ bytes: UnsafeRawBufferPointer) -> ProxyHeaderScan {
        guard bytes.count >= 16 else { return .needMore }
        let versionCommand = bytes[12], family = bytes[13]
        let length = 16 + (Int(bytes[14]) << 8 | Int(bytes[15]))
        guard versionCommand >> 4 == 2, versionCommand & 0x0f <= 1 else { return .malformed }
        guard bytes.count >= length else { return .needMore }
        if versionCommand & 0x0f == 0 { return .header(length: length, source: nil) }  // LOCAL
        switch family {
        case 0x11, 0x12:  // TCP or UDP over IPv4
            guard length >= 16 + 12 else { return .malformed }
            let v4 = UInt32(bytes[16]) << 24 | UInt32(bytes[17]) << 16 | UInt32(bytes[18]) << 8 | UInt32(bytes[19])
            return .header(length: length, source: ClientAddress(ipv4: v4))
        case 0x21, 0x22:  // over IPv6
            guard length >= 16 + 36 else { return .malformed }
            return .header(length: length, source: ClientAddress(bytes: Array(bytes[16..<32])))
        default:
            return .header(length: length, source: nil)
        }
    }
}
