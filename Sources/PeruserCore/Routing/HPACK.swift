// HPACK (RFC 7541): decoding one header block, as much as routing needs.
//
// The multiplexer reads the first HEADERS block of a prior-knowledge h2c connection to find its
// :authority, as it reads a Host header. The first block of a connection starts with an empty
// dynamic table; entries it adds itself (incremental indexing) are kept for the rest of that
// block only, within the default table size. Every length and index comes from the client and is
// checked; a block that breaks a rule is refused, never trusted.

public enum HPACK {
    public enum Failure: Error, Equatable {
        /// The block ends inside a representation.
        case truncated
        /// An integer longer than any header here needs (over 2^28).
        case integerTooLarge
        /// Index 0, or one past the static and dynamic tables.
        case badIndex
        /// Invalid Huffman code: EOS inside, or padding longer than 7 bits or not all ones.
        case badHuffman
        /// A string longer than `longestString`.
        case stringTooLong
        /// A dynamic table size update past the limit, or after the first header.
        case badTableSizeUpdate
    }

    /// No name or value routing needs is longer (httpd refuses longer header fields anyway).
    public static let longestString = 8192
    /// SETTINGS_HEADER_TABLE_SIZE's default: the table a client may fill before it hears ours.
    public static let defaultTableSize = 4096

    /// Decodes `block`, handing each header to `visit` (name and value as bytes; names are lower
    /// case in HTTP/2) until it returns false. Throws on a block that breaks RFC 7541.
    public static func decode(_ block: UnsafeRawBufferPointer,
                              visit: (_ name: [UInt8], _ value: [UInt8]) -> Bool) throws(Failure) {
        var table = DynamicTable(limit: defaultTableSize)
        var at = 0
        var headers = 0
        while at < block.count {
            let first = block[at]
            if first & 0x80 != 0 {  // indexed header field
                let index = try integer(block, &at, prefix: 7)
                let (name, value) = try entry(index, table)
                headers += 1
                if !visit(name, value) { return }
            } else if first & 0xE0 == 0x20 {  // dynamic table size update, before any header
                let size = try integer(block, &at, prefix: 5)
                guard headers == 0, size <= defaultTableSize else { throw .badTableSizeUpdate }
                table.resize(size)
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
                let indexing = first & 0xC0 == 0x40
                let index = try integer(block, &at, prefix: indexing ? 6 : 4)
                let name = index == 0 ? try string(block, &at) : try entry(index, table).name
                let value = try string(block, &at)
                if indexing { table.add(name, value) }
                headers += 1
                if !visit(name, value) { return }
            }
        }
    }

    // MARK: Integers and strings (RFC 7541 5.1, 5.2)

    static func integer(_ block: UnsafeRawBufferPointer, _ at: inout Int, prefix: Int) throws(Failure) -> Int {
        guard at < block.count else { throw .truncated }
        let mask = (1 << prefix) - 1
        var value = Int(block[at]) & mask
        at += 1
        guard value == mask else { return value }
        var shift = 0
        while true {
            guard at < block.count else { throw .truncated }
            guard shift <= 21 else { throw .integerTooLarge }
            let byte = Int(block[at])
            at += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if byte & 0x80 == 0 { return value }
        }
    }

    static func string(_ block: UnsafeRawBufferPointer, _ at: inout Int) throws(Failure) -> [UInt8] {
        guard at < block.count else { throw .truncated }
        let huffman = block[at] & 0x80 != 0
        let length = try integer(block, &at, prefix: 7)
        guard length <= block.count - at else { throw .truncated }
        let raw = UnsafeRawBufferPointer(rebasing: block[at..<(at + length)])
        at += length
        if huffman {
            // Huffman codes are at least 5 bits: the decoded string is at most 8/5 as long.
            return try Huffman.decode(raw, limit: longestString)
        }
        guard length <= longestString else { throw .stringTooLong }
        return Array(raw)
    }

    // MARK: Tables (RFC 7541 2.3, Appendix A)

    static func entry(_ index: Int, _ table: DynamicTable) throws(Failure) -> (name: [UInt8], value: [UInt8]) {
        if index >= 1 && index <= staticNames.count {
            return (Array(staticNames[index - 1].utf8), Array(staticValues[index - 1].utf8))
        }
        guard let found = table.entry(index - staticNames.count - 1) else { throw .badIndex }
        return found
    }

    struct DynamicTable {
        private(set) var entries: [(name: [UInt8], value: [UInt8])] = []
        private(set) var size = 0
        private(set) var limit: Int

        init(limit: Int) { self.limit = limit }

        /// 0: the newest.
        func entry(_ index: Int) -> (name: [UInt8], value: [UInt8])? {
            index >= 0 && index < entries.count ? entries[index] : nil
        }

        mutating func add(_ name: [UInt8], _ value: [UInt8]) {
            let cost = name.count + value.count + 32
            guard cost <= limit else {  // larger than the table: it empties (RFC 7541 4.4)
                entries.removeAll()
                size = 0
                return
            }
            while size + cost > limit, let last = entries.popLast() { size -= last.name.count + last.value.count + 32 }
            entries.insert((name, value), at: 0)
            size += cost
        }

        mutating func resize(_ newLimit: Int) {
            limit = newLimit
            while size > limit, let last = entries.popLast() { size -= last.name.count + last.value.count + 32 }
        }
    }

    /// The static table (Appendix A), indexes 1...61: names, and values where there are.
    static let staticNames: [String] = [
        ":authority", ":method", ":method", ":path",
        ":path", ":scheme", ":scheme", ":status",
        ":status", ":status", ":status", ":status",
        ":status", ":status", "accept-charset", "accept-encoding",
        "accept-language", "accept-ranges", "accept", "access-control-allow-origin",
        "age", "allow", "authorization", "cache-control",
        "content-disposition", "content-encoding", "content-language", "content-length",
        "content-location", "content-range", "content-type", "cookie",
        "date", "etag", "expect", "expires",
        "from", "host", "if-match", "if-modified-since",
        "if-none-match", "if-range", "if-unmodified-since", "last-modified",
        "link", "location", "max-forwards", "proxy-authenticate",
        "proxy-authorization", "range", "referer", "refresh",
        "retry-after", "server", "set-cookie", "strict-transport-security",
        "transfer-encoding", "user-agent", "vary", "via",
        "www-authenticate",
    ]
    static let staticValues: [String] = [
        "", "GET", "POST", "/", "/index.html", "http", "https", "200",
        "204", "206", "304", "400", "404", "500", "", "gzip, deflate",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "",
    ]
}

/// The Huffman code of RFC 7541 Appendix B, decoded bit by bit through a tree built once.
enum Huffman {
    /// The code of each symbol, 0...255 and EOS (256), and its length in bits.
    static let codes: [UInt32] = [
        0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
        0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
        0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
        0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
        0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
        0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
        0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
        0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
        0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
        0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
        0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
        0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
        0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
        0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
        0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
        0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
        0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
        0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
        0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
        0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
        0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
        0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
        0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
        0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
        0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
        0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
        0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
        0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
        0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
        0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
        0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
        0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
        0x3fffffff,
    ]
    static let lengths: [UInt8] = [
        13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28,
        28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11,
        10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8,
        15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
        7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5,
        6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7,
        7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23,
        23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
        22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21,
        23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25,
        26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26,
        28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
        26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
    ]

    /// The tree: node `n`'s children are at 2n (bit 0) and 2n+1 (bit 1); a child >= 0 is a node,
    /// -1 is no code, and -(symbol + 2) a leaf.
    static let tree: [Int32] = {
        var nodes: [Int32] = [-1, -1]
        for (symbol, code) in codes.enumerated() {
            let length = Int(lengths[symbol])
            var node = 0
            for bit in stride(from: length - 1, through: 0, by: -1) {
                let slot = 2 * node + Int((code >> UInt32(bit)) & 1)
                if bit == 0 {
                    nodes[slot] = -Int32(symbol) - 2
                } else {
                    if nodes[slot] < 0 {
                        nodes[slot] = Int32(nodes.count / 2)
                        nodes += [-1, -1]
                    }
                    node = Int(nodes[slot])
                }
            }
        }
        return nodes
    }()

    static func decode(_ bytes: UnsafeRawBufferPointer, limit: Int) throws(HPACK.Failure) -> [UInt8] {
        var out: [UInt8] = []
        var node = 0
        var depth = 0          // bits read since the last symbol
        var allOnes = true     // and whether they were all 1 (the only valid padding)
        let tree = Self.tree
        for byte in bytes {
            for bit in stride(from: 7, through: 0, by: -1) {
                let one = (byte >> UInt8(bit)) & 1
                let next = tree[2 * node + Int(one)]
                depth += 1
                allOnes = allOnes && one == 1
                if next >= 0 {
                    node = Int(next)
                    continue
                }
                guard next <= -2 else { throw .badHuffman }
                let symbol = -Int(next) - 2
                guard symbol < 256 else { throw .badHuffman }  // EOS inside a string
                guard out.count < limit else { throw .stringTooLong }
                out.append(UInt8(symbol))
                node = 0
                depth = 0
                allOnes = true
            }
        }
        guard depth <= 7 && allOnes else { throw .badHuffman }
        return out
    }
}
