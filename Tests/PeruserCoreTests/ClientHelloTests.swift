import XCTest
@testable import PeruserCore

final class ClientHelloTests: XCTestCase {
    private func bytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            out.append(UInt8(hex[index..<next], radix: 16) ?? 0)
            index = next
        }
        return out
    }

    private func scan(_ input: [UInt8]) -> ClientHello.Scan {
        input.withUnsafeBytes { ClientHello.scan($0) }
    }

    /// The handshake message of a single-record hello, re-framed into records of `size` bytes.
    private func reframe(_ hello: [UInt8], recordSize size: Int) -> [UInt8] {
        let message = Array(hello[5...])
        var out: [UInt8] = []
        var offset = 0
        while offset < message.count {
            let chunk = message[offset..<min(offset + size, message.count)]
            out += [22, 3, 1, UInt8(chunk.count >> 8), UInt8(chunk.count & 0xff)] + chunk
            offset += size
        }
        return out
    }

    /// A minimal TLS 1.2 ClientHello with the given extensions block.
    private func hello(extensions: [UInt8]?) -> [UInt8] {
        var body: [UInt8] = [3, 3] + [UInt8](repeating: 7, count: 32) + [0] + [0, 2, 0x13, 0x01] + [1, 0]
        if let extensions { body += [UInt8(extensions.count >> 8), UInt8(extensions.count & 0xff)] + extensions }
        let message: [UInt8] = [1, 0, UInt8(body.count >> 8), UInt8(body.count & 0xff)] + body
        return [22, 3, 1, UInt8(message.count >> 8), UInt8(message.count & 0xff)] + message
    }

    private func sni(_ names: [(UInt8, [UInt8])]) -> [UInt8] {
        var list: [UInt8] = []
        for (type, name) in names { list += [type, UInt8(name.count >> 8), UInt8(name.count & 0xff)] + name }
        let data: [UInt8] = [UInt8(list.count >> 8), UInt8(list.count & 0xff)] + list
        return [0, 0, UInt8(data.count >> 8), UInt8(data.count & 0xff)] + data
    }

    func testRealClientHellosFromCurlAndOpenSSL() {
        XCTAssertGreaterThanOrEqual(ClientHelloSamples.all.count, 8)
        for sample in ClientHelloSamples.all {
            XCTAssertEqual(scan(bytes(sample.hex)), .hello(serverName: sample.serverName), sample.name)
        }
    }

    func testEveryTruncationAsksForMore() {
        for sample in ClientHelloSamples.all {
            let full = bytes(sample.hex)
            for length in 0..<full.count {
                XCTAssertEqual(scan(Array(full[0..<length])), .needMore, "\(sample.name) cut at \(length)")
            }
        }
    }

    func testAHelloSpanningSeveralRecordsIsReassembled() {
        for sample in ClientHelloSamples.all {
            let full = bytes(sample.hex)
            for size in [1, 7, 100] {
                let split = reframe(full, recordSize: size)
                XCTAssertEqual(scan(split), .hello(serverName: sample.serverName), "\(sample.name) in \(size)-byte records")
                XCTAssertEqual(scan(Array(split.dropLast())), .needMore)
            }
        }
    }

    func testBytesAfterTheHelloAreIgnored() {
        let full = bytes(ClientHelloSamples.all[0].hex)
        XCTAssertEqual(scan(full + [23, 3, 3, 0, 1, 0]), .hello(serverName: ClientHelloSamples.all[0].serverName))
    }

    func testPlainHTTPAndOtherProtocolsAreNotTLS() {
        XCTAssertEqual(scan(Array("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n".utf8)), .notTLS)
        XCTAssertEqual(scan([22, 2, 0]), .notTLS)       // SSL 2-style or garbage with a 0x16 first byte
        XCTAssertEqual(scan([]), .needMore)
        XCTAssertEqual(scan([22]), .needMore)
    }

    func testOversizedAndInconsistentLengthsAreMalformed() {
        XCTAssertEqual(scan([22, 3, 1, 0xff, 0xff]), .malformed)              // record longer than TLS allows
        XCTAssertEqual(scan([22, 3, 1, 0, 0]), .malformed)                    // empty record
        XCTAssertEqual(scan([22, 3, 1, 0, 4, 2, 0, 0, 0]), .malformed)        // a ServerHello
        XCTAssertEqual(scan([22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]), .malformed) // 16 MiB hello
        var wrongExtensions = hello(extensions: sni([(0, Array("a.test".utf8))]))
        wrongExtensions[wrongExtensions.count - 10] &+= 1   // server_name_list length off by one
        XCTAssertEqual(scan(wrongExtensions), .malformed)
        // The extensions block claims more than the hello holds.
        var long = hello(extensions: [])
        long[long.count - 1] = 9
        XCTAssertEqual(scan(long), .malformed)
        // A handshake record followed by an alert record before the hello is complete.
        let first = Array(reframe(hello(extensions: sni([(0, Array("a.test".utf8))])), recordSize: 10)[0..<15])
        XCTAssertEqual(scan(first + [21, 3, 1, 0, 2, 2, 40]), .malformed)
    }

    func testServerNameRules() {
        XCTAssertEqual(scan(hello(extensions: nil)), .hello(serverName: nil))     // no extensions at all
        XCTAssertEqual(scan(hello(extensions: [])), .hello(serverName: nil))
        XCTAssertEqual(scan(hello(extensions: sni([(0, Array("WWW.A.Test.".utf8))]))), .hello(serverName: "www.a.test"))
        XCTAssertEqual(scan(hello(extensions: sni([(0, Array("a..test".utf8))]))), .hello(serverName: nil))
        XCTAssertEqual(scan(hello(extensions: sni([(0, Array("a.test/x".utf8))]))), .hello(serverName: nil))
        XCTAssertEqual(scan(hello(extensions: sni([(0, [0x61, 0, 0x62])]))), .hello(serverName: nil))
        XCTAssertEqual(scan(hello(extensions: sni([(0, Array(repeating: UInt8(ascii: "a"), count: 254))]))),
                       .hello(serverName: nil))
        // Unknown name types are skipped; the first host_name counts.
        XCTAssertEqual(scan(hello(extensions: sni([(7, Array("x".utf8)), (0, Array("b.test".utf8)), (0, Array("c.test".utf8))]))),
                       .hello(serverName: "b.test"))
        // Two server_name extensions: not a valid hello.
        let one = sni([(0, Array("a.test".utf8))])
        XCTAssertEqual(scan(hello(extensions: one + one)), .malformed)
        // Another extension before it.
        XCTAssertEqual(scan(hello(extensions: [0, 23, 0, 0] + one)), .hello(serverName: "a.test"))
    }

    /// A cheap in-process fuzz (the libFuzzer run is fuzz/clienthello.sh): mutated real hellos
    /// and random bytes never trap, and a reported name is always a clean host name.
    func testMutationsNeverTrap() {
        var rng = SystemRandomNumberGenerator()
        let seeds = ClientHelloSamples.all.map { bytes($0.hex) }
        for round in 0..<20_000 {
            var input = seeds[round % seeds.count]
            if round % 10 == 0 {
                input = (0..<Int.random(in: 0...600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if !input.isEmpty && round % 20 == 0 { input[0] = 22 }
            } else {
                for _ in 0..<Int.random(in: 1...8, using: &rng) {
                    input[Int.random(in: 0..<input.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                if round % 3 == 0 { input = Array(input.prefix(Int.random(in: 0...input.count, using: &rng))) }
            }
            if case .hello(let name?) = scan(input) {
                XCTAssertTrue(name.utf8.allSatisfy { $0 < 0x80 && $0 != UInt8(ascii: "/") && !(65...90).contains($0) }, name)
            }
        }
    }
}
