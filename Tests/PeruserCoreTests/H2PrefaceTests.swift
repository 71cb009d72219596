import XCTest
@testable import PeruserCore

private func hex(_ text: String) -> [UInt8] {
    let digits = Array(text.filter { !$0.isWhitespace })
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
}

private func frame(_ type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, _ payload: [UInt8] = []) -> [UInt8] {
    let n = payload.count
    return [UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF), type, flags,
            UInt8(stream >> 24 & 0x7F), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)]
        + payload
}

private func decoded(_ block: [UInt8]) throws -> [(String, String)] {
    var out: [(String, String)] = []
    try block.withUnsafeBytes { raw in
        try HPACK.decode(raw) { name, value in
            out.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
            return true
        }
    }
    return out
}

private func scan(_ bytes: [UInt8]) -> H2Preface.Scan {
    bytes.withUnsafeBytes { H2Preface.scan($0) }
}

/// RFC 7541 C.4.1: the first request of the RFC's examples, Huffman-coded.
private let exampleHuffman = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")
private let settings = frame(0x4, [0, 3, 0, 0, 0, 100, 0, 4, 0, 0x60, 0, 0])

final class HPACKTests: XCTestCase {
    func testTheRFCsExamplesPlainAndHuffman() throws {
        let expected = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]
        for block in [hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"), exampleHuffman] {
            let headers = try decoded(block)
            XCTAssertEqual(headers.map(\.0), expected.map(\.0))
            XCTAssertEqual(headers.map(\.1), expected.map(\.1))
        }
    }

    func testAnEntryAddedInTheBlockIsFoundByIndexLaterInIt() throws {
        // C.3.1 adds :authority www.example.com (incremental indexing); 0xbe is index 62.
        let headers = try decoded(hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d be"))
        XCTAssertEqual(headers.last?.0, ":authority")
        XCTAssertEqual(headers.last?.1, "www.example.com")
    }

    func testBlocksFromAnotherEncoder() throws {
        // Python hpack 4.x: Huffman with a port and a literal user-agent; never-indexed :authority;
        // a host header instead of :authority.
        let huffman = try decoded(hex("8286448b60d5485f2bd73d7fe79803418b1d06215749509b8f01e07f7a8725b650c3abbcf7"))
        XCTAssertEqual(huffman.first { $0.0 == ":authority" }?.1, "alice.test:8080")
        XCTAssertEqual(huffman.first { $0.0 == ":path" }?.1, "/index.php?x=1")
        XCTAssertEqual(huffman.first { $0.0 == "user-agent" }?.1, "curl/7.88")
        XCTAssertEqual(try decoded(hex("82841108626f622e74657374")).last?.1, "bob.test")
        XCTAssertEqual(try decoded(hex("8284668720ec3d0ba4a84f")).last?.0, "host")
        XCTAssertEqual(try decoded(hex("8284668720ec3d0ba4a84f")).last?.1, "carol.test")
    }

    func testEveryHuffmanSymbolRoundTrips() throws {
        // Encode all 256 octets with the table, decode them back.
        var bits: [Bool] = []
        for symbol in 0..<256 {
            let code = Huffman.codes[symbol], length = Int(Huffman.lengths[symbol])
            for bit in stride(from: length - 1, through: 0, by: -1) { bits.append((code >> UInt32(bit)) & 1 == 1) }
        }
        while bits.count % 8 != 0 { bits.append(true) }  // EOS prefix padding
        let bytes = stride(from: 0, to: bits.count, by: 8).map { start in
            bits[start..<start + 8].reduce(UInt8(0)) { $0 << 1 | ($1 ? 1 : 0) }
        }
        let out = try bytes.withUnsafeBytes { try Huffman.decode($0, limit: 1000) }
        XCTAssertEqual(out, (0..<256).map(UInt8.init))
    }

    func testRulesBrokenAreRefused() {
        func fails(_ block: [UInt8], _ failure: HPACK.Failure, line: UInt = #line) {
            XCTAssertThrowsError(try block.withUnsafeBytes { raw in try HPACK.decode(raw) { _, _ in true } }, line: line) {
                XCTAssertEqual($0 as? HPACK.Failure, failure, line: line)
            }
        }
        fails([0x80], .badIndex)                           // index 0
        fails([0xBE], .badIndex)                           // 62: the dynamic table is empty
        fails([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], .integerTooLarge)
        fails([0x41, 0x85, 0xF1], .truncated)              // a 5-byte string with 1 byte
        fails([0x41, 0x81, 0xFF], .badHuffman)             // 8 bits of padding
        fails([0x41, 0x81, 0x00], .badHuffman)             // padding not all ones ('0' then 000)
        fails([0x41, 0x84, 0xFF, 0xFF, 0xFF, 0xFF], .badHuffman)  // EOS inside the string
        fails([0x82, 0x20], .badTableSizeUpdate)           // after a header
        fails([0x3F, 0xE2, 0x1F], .badTableSizeUpdate)     // 4097: past 4096
        fails([0x01, 0x7F, 0x82, 0x3F] + [UInt8](repeating: 0x61, count: 8193), .stringTooLong)  // 8193 bytes
    }

    func testRandomBlocksNeverTrap() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<3000 {
            let block = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = try? block.withUnsafeBytes { raw in try HPACK.decode(raw) { _, _ in true } }
        }
    }
}

final class H2PrefaceTests: XCTestCase {
    let headers = frame(0x1, flags: 0x5, stream: 1, exampleHuffman)  // END_STREAM | END_HEADERS

    func testNotThePreface() {
        XCTAssertEqual(scan(Array("GET / HTTP/1.1\r\n".utf8)), .notHTTP2)
        XCTAssertEqual(scan(Array("PRI * HTTP/1.1\r\n\r\n".utf8)), .notHTTP2)
        XCTAssertEqual(scan(Array("P".utf8)), .needMore(awaitingHeaders: false))
    }

    func testTheFirstRequestIsRoutedByItsAuthority() {
        XCTAssertEqual(scan(H2Preface.preface + settings + headers),
                       .request(RouteHint(target: "/", host: "www.example.com")))
        // WINDOW_UPDATE and PRIORITY between SETTINGS and HEADERS, as browsers send them.
        let more = frame(0x8, [0, 0x0F, 0, 1]) + frame(0x2, stream: 3, [0, 0, 0, 0, 200])
        XCTAssertEqual(scan(H2Preface.preface + settings + more + headers),
                       .request(RouteHint(target: "/", host: "www.example.com")))
    }

    func testEveryPrefixWaitsAndSaysWhenOnlyHeadersAreMissing() {
        let whole = H2Preface.preface + settings + headers
        for length in 0..<whole.count {
            guard case .needMore(let awaiting) = scan(Array(whole[0..<length])) else {
                return XCTFail("at \(length): \(scan(Array(whole[0..<length])))")
            }
            XCTAssertEqual(awaiting, length == H2Preface.preface.count + settings.count, "at \(length)")
        }
    }

    func testContinuationPaddingAndPriority() {
        let block = exampleHuffman
        let split = frame(0x1, flags: 0x1, stream: 1, Array(block[0..<4])) + frame(0x9, flags: 0x4, stream: 1, Array(block[4...]))
        XCTAssertEqual(scan(H2Preface.preface + settings + split), .request(RouteHint(target: "/", host: "www.example.com")))
        // PADDED (3 bytes) and PRIORITY (5 bytes).
        let padded = frame(0x1, flags: 0x4 | 0x8 | 0x20, stream: 1, [3, 0, 0, 0, 0, 16] + block + [0, 0, 0])
        XCTAssertEqual(scan(H2Preface.preface + settings + padded), .request(RouteHint(target: "/", host: "www.example.com")))
        // Padding longer than the frame.
        XCTAssertEqual(scan(H2Preface.preface + settings + frame(0x1, flags: 0xC, stream: 1, [200, 0x82])), .malformed)
    }

    func testHostWhenThereIsNoAuthority() {
        let block = hex("8284668720ec3d0ba4a84f")
        XCTAssertEqual(scan(H2Preface.preface + settings + frame(0x1, flags: 0x4, stream: 1, block)),
                       .request(RouteHint(target: "/", host: "carol.test")))
        // Neither: routed without a host (the address's first vhost).
        XCTAssertEqual(scan(H2Preface.preface + settings + frame(0x1, flags: 0x4, stream: 1, [0x82, 0x84])),
                       .request(RouteHint(target: "/")))
    }

    func testBrokenPrefacesGoToTheFirstVhost() {
        let p = H2Preface.preface
        XCTAssertEqual(scan(p + headers), .malformed, "HEADERS before SETTINGS")
        XCTAssertEqual(scan(p + frame(0x4, stream: 1)), .malformed, "SETTINGS on a stream")
        XCTAssertEqual(scan(p + settings + frame(0x1, flags: 0x4, stream: 2, exampleHuffman)), .malformed, "even stream")
        XCTAssertEqual(scan(p + settings + frame(0x0, stream: 1, [1])), .malformed, "DATA first")
        XCTAssertEqual(scan(p + [0, 0x40, 1, 4, 0, 0, 0, 0, 0]), .malformed, "a frame over 16 KiB")
        XCTAssertEqual(scan(p + settings + frame(0x1, flags: 0, stream: 1, [0x82]) + frame(0x6, [UInt8](repeating: 0, count: 8))),
                       .malformed, "a header block interrupted")
        XCTAssertEqual(scan(p + settings + frame(0x1, flags: 0x4, stream: 1, [0x80])), .malformed, "bad HPACK")
        let flood = (0..<20).flatMap { _ in frame(0x6, [UInt8](repeating: 0, count: 8)) }
        XCTAssertEqual(scan(p + settings + flood + headers), .malformed, "a flood of PINGs")
        // A block over 64 KiB in CONTINUATIONs.
        var long = p + settings + frame(0x1, flags: 0, stream: 1, [0x82])
        for _ in 0..<5 { long += frame(0x9, stream: 1, [UInt8](repeating: 0x82, count: 16_000)) }
        XCTAssertEqual(scan(long), .malformed)
    }

    func testRandomFramesAfterThePrefaceNeverTrap() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<3000 {
            var bytes = H2Preface.preface + settings
            for _ in 0..<Int.random(in: 0...4, using: &rng) {
                let payload = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                bytes += frame(UInt8.random(in: 0...10, using: &rng), flags: UInt8.random(in: 0...255, using: &rng),
                               stream: UInt32.random(in: 0...5, using: &rng), payload)
            }
            if Bool.random(using: &rng) { bytes.removeLast(Int.random(in: 0...min(10, bytes.count), using: &rng)) }
            _ = scan(bytes)
            _ = scan((0..<Int.random(in: 0...80, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
        }
    }
}
