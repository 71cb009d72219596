// Who a connection's client is, for the per-client share of an environment's workers
// (MaxClientShare): the TCP peer, or behind a front proxy that mod_remoteip trusts, the address
// that proxy forwarded. Parsed from what clients send, so parsing never traps and a value it
// cannot read is no address at all.

/// An IPv4 or IPv6 address in 16 bytes (IPv4 as ::ffff:a.b.c.d). All zeros: no client to
/// count (a proxy's TLS connection, whose forwarded address is inside the encryption).
public struct ClientAddress: Hashable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public static let none = ClientAddress(high: 0, low: 0)

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public init(ipv4: UInt32) {
        high = 0
        low = 0xffff_0000_0000 | UInt64(ipv4)
    }

    /// From 16 bytes in network order.
    public init(bytes: [UInt8]) {
        var high: UInt64 = 0, low: UInt64 = 0
        for i in 0..<8 { high = high << 8 | UInt64(i < bytes.count ? bytes[i] : 0) }
        for i in 8..<16 { low = low << 8 | UInt64(i < bytes.count ? bytes[i] : 0) }
        self.init(high: high, low: low)
    }

    public var isNone: Bool { high == 0 && low == 0 }
    public var isIPv4: Bool { high == 0 && low >> 32 == 0xffff }

    /// The address as written in a header or a directive: dotted IPv4, or IPv6 (with `::`,
    /// an embedded IPv4 tail, and optional brackets). Nil for anything else, ports included.
    public init?(parsing text: Substring) {
        var s = text
        if s.first == "[" && s.last == "]" { s = s.dropFirst().dropLast() }
        if let v4 = Self.ipv4(s) {
            self.init(ipv4: v4)
            return
        }
        guard let bytes = Self.ipv6(s) else { return nil }
        self.init(bytes: bytes)
    }

    public init?(parsing text: String) { self.init(parsing: Substring(text)) }

    static func ipv4(_ s: Substring) -> UInt32? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let octet = UInt32(part), octet <= 255 else { return nil }
            value = value << 8 | octet
        }
        return value
    }

    static func ipv6(_ s: Substring) -> [UInt8]? {
        guard s.count >= 2, s.count <= 45, s.contains(":") else { return nil }
        let halves = s.components(separatedByDoubleColon: ())
        guard halves.count <= 2 else { return nil }
        func groups(_ part: Substring, allowTail: Bool) -> [UInt8]? {
            if part.isEmpty { return [] }
            var out: [UInt8] = []
            let fields = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, field) in fields.enumerated() {
                if allowTail && index == fields.count - 1 && field.contains(".") {
                    guard let v4 = ipv4(field) else { return nil }
                    out += [UInt8(v4 >> 24), UInt8(v4 >> 16 & 0xff), UInt8(v4 >> 8 & 0xff), UInt8(v4 & 0xff)]
                    continue
                }
                guard (1...4).contains(field.count), let value = UInt16(field, radix: 16) else { return nil }
                out += [UInt8(value >> 8), UInt8(value & 0xff)]
            }
            return out
        }
        if halves.count == 1 {
            guard let all = groups(halves[0], allowTail: true), all.count == 16 else { return nil }
            return all
        }
        guard let head = groups(halves[0], allowTail: false), let tail = groups(halves[1], allowTail: true),
              head.count + tail.count <= 14 else { return nil }
        return head + [UInt8](repeating: 0, count: 16 - head.count - tail.count) + tail
    }

    public var description: String {
        if isIPv4 {
            let v = UInt32(truncatingIfNeeded: low)
            return "\(v >> 24).\(v >> 16 & 0xff).\(v >> 8 & 0xff).\(v & 0xff)"
        }
        let words = (0..<8).map { i -> UInt16 in
            let source = i < 4 ? high : low
            return UInt16(truncatingIfNeeded: source >> (48 - 16 * UInt64(i % 4)))
        }
        return words.map { String($0, radix: 16) }.joined(separator: ":")
    }
}

extension Substring {
    /// Splits at "::" (IPv6's run of zero groups).
    fileprivate func components(separatedByDoubleColon: Void) -> [Substring] {
        var parts: [Substring] = []
        var start = startIndex, i = startIndex
        while i < endIndex {
            let next = index(after: i)
            if self[i] == ":" && next < endIndex && self[next] == ":" {
                parts.append(self[start..<i])
                start = index(after: next)
                i = start
                continue
            }
            i = next
        }
        parts.append(self[start..<endIndex])
        return parts
    }
}

/// An address or a network (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
public struct AddressRange: Equatable {
    public var network: ClientAddress
    /// Leading bits that must match, of 128.
    public var prefix: Int

    public init?(parsing text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = ClientAddress(parsing: parts[0]) else { return nil }
        var bits = 128
        if parts.count == 2 {
            guard let given = Int(parts[1]), given >= 0 else { return nil }
            let most = address.isIPv4 ? 32 : 128
            guard given <= most else { return nil }
            bits = address.isIPv4 ? 96 + given : given
        }
        network = address
        prefix = bits
    }

    public func contains(_ address: ClientAddress) -> Bool {
        func masked(_ value: UInt64, bits: Int) -> UInt64 {
            bits <= 0 ? 0 : (bits >= 64 ? value : value & ~(UInt64.max >> UInt64(bits)))
        }
        return masked(address.high, bits: prefix) == masked(network.high, bits: prefix)
            && masked(address.low, bits: prefix - 64) == masked(network.low, bits: prefix - 64)
    }
}

/// Which peers mod_remoteip takes a forwarded address from, as the configuration says: with
/// RemoteIPHeader and no proxy list, every peer (mod_remoteip's own rule); else those listed
/// with RemoteIPTrustedProxy or RemoteIPInternalProxy (or in their list files).
public struct ProxyTrust: Equatable {
    /// The header (lower case), or nil: no RemoteIPHeader, the peer is the client.
    public var header: String?
    public var proxies: [AddressRange]
    /// RemoteIPProxyProtocol is on somewhere: a PROXY header may precede a connection's bytes.
    public var proxyProtocol: Bool

    public init(header: String? = nil, proxies: [AddressRange] = [], proxyProtocol: Bool = false) {
        self.header = header?.lowercased()
        self.proxies = proxies
        self.proxyProtocol = proxyProtocol
    }

    public func trusts(_ address: ClientAddress) -> Bool {
        guard header != nil else { return false }
        return proxies.isEmpty || proxies.contains { $0.contains(address) }
    }

    /// The client a connection counts against. `forwarded`: the header's values as the head
    /// gave them (several lines joined with ", "), nil when the head is not readable here (TLS).
    /// As mod_remoteip does: from the right, every address a trusted proxy gave is taken
    /// until one is not itself a trusted proxy. A trusted proxy's connection whose header
    /// cannot be read counts against no one: the limit never applies to the proxy itself.
    public func client(peer: ClientAddress, forwarded: String?, readable: Bool) -> ClientAddress {
        guard trusts(peer) else { return peer }
        guard readable else { return .none }
        guard let forwarded else { return peer }
        var current = peer
        for item in forwarded.split(separator: ",").reversed() {
            guard trusts(current) else { break }
            let trimmed = item.drop(while: { $0 == " " || $0 == "\t" })
            var word = trimmed
            while let last = word.last, last == " " || last == "\t" { word = word.dropLast() }
            guard let next = ClientAddress(parsing: word) else { break }
            current = next
        }
        return current
    }
}

/// How many of an environment's workers one client may hold (MaxClientShare percent of its
/// MaxProcessors, rounded up, at least one); nil: no limit.
public enum ClientShare {
    public static func limit(maxProcessors: Int, percent: Int) -> Int? {
        guard percent < 100 else { return nil }
        let (product, overflow) = max(1, maxProcessors).multipliedReportingOverflow(by: max(1, percent))
        guard !overflow else { return max(1, maxProcessors / 100 * percent) }
        return max(1, product / 100 + (product % 100 > 0 ? 1 : 0))
    }

    /// How many of an environment's workers a client holds: the workers whose pages name it,
    /// and its hand-offs still in the environment's channel. Those are `reserved` by the
    /// multiplexers that sent them and released only when that multiplexer next looks, so a
    /// hand-off a worker took counts twice until then; but no more of them can be in flight
    /// than the channel holds (`queued`). Without that bound, a client at its share waited for
    /// whichever multiplexer had sent its last connection to run a turn, while another
    /// multiplexer held its next one and the worker that served it sat free.
    ///
    /// Never too few: a multiplexer counts a hand-off in the queue before it reserves for it, and
    /// a worker names the client and shows itself busy before it counts the connection taken;
    /// so a reader that reads `queued` before `serving` finds each connection in one count or
    /// the other, and two multiplexers reserving the last of a share at once see each other's.
    /// Counts a tenant's workers write (`serving`, the taken count behind `queued`) can skew only
    /// their own environment's shares; clamped, never trapping.
    public static func holds(serving: Int, reserved: Int, queued: Int) -> Int {
        // (Routing's files build alone for the fuzzers: no helpers from elsewhere.)
        let (sum, overflow) = max(0, serving).addingReportingOverflow(min(max(0, reserved), max(0, queued)))
        return overflow ? .max : sum
    }
}
