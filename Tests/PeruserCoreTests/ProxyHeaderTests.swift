import XCTest
@testable import PeruserCore

final class ProxyHeaderTests: XCTestCase {
    private func scan(_ bytes: [UInt8]) -> ProxyHeaderScan { bytes.withUnsafeBytes { ProxyHeader.scan($0) } }
    private func scan(_ text: String) -> ProxyHeaderScan { scan(Array(text.utf8)) }

    func testVersionOneNamesTheClient() {
        let line = "PROXY TCP4 198.51.100.7 192.0.2.1 51234 443\r\n"
        XCTAssertEqual(scan(line + "GET / HTTP/1.1\r\n"),
                       .header(length: line.utf8.count, source: ClientAddress(parsing: "198.51.100.7")))
        let six = "PROXY TCP6 2001:db8::7 2001:db8::1 51234 80\r\n"
        XCTAssertEqual(scan(six), .header(length: six.utf8.count, source: ClientAddress(parsing: "2001:db8::7")))
        XCTAssertEqual(scan("PROXY UNKNOWN\r\n"), .header(length: 15, source: nil))
    }

    func testVersionOneEveryPrefixAsksForMore() {
        let line = Array("PROXY TCP4 198.51.100.7 192.0.2.1 51234 443\r\n".utf8)
        for n in 0..<line.count { XCTAssertEqual(scan(Array(line[0..<n])), .needMore, "\(n)") }
    }

    func testVersionOneGarbageIsMalformed() {
        for bad in ["PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "PROXY TCP4 ::1 ::1 1 2\r\n", "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                    "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                    "PROXY " + String(repeating: "x", count: 200)] {
            XCTAssertEqual(scan(bad), .malformed, bad)
        }
        XCTAssertEqual(scan("GET / HTTP/1.1\r\n"), .notProxy)
        XCTAssertEqual(scan([0x16, 0x03, 0x01]), .notProxy)
    }

    func testVersionTwo() {
        var v4 = ProxyHeader.v2Signature + [0x21, 0x11, 0x00, 0x0c]
        v4 += [198, 51, 100, 9, 192, 0, 2, 1, 0xc8, 0x00, 0x01, 0xbb]
        XCTAssertEqual(scan(v4 + [0x16, 0x03]), .header(length: 28, source: ClientAddress(parsing: "198.51.100.9")))
        for n in 0..<v4.count { XCTAssertEqual(scan(Array(v4[0..<n])), .needMore, "\(n)") }
        let local = ProxyHeader.v2Signature + [0x20, 0x00, 0x00, 0x00]
        XCTAssertEqual(scan(local), .header(length: 16, source: nil))
        var badVersion = v4
        badVersion[12] = 0x11
        XCTAssertEqual(scan(badVersion), .malformed)
        var short = ProxyHeader.v2Signature + [0x21, 0x11, 0x00, 0x04]
        short += [1, 2, 3, 4]
        XCTAssertEqual(scan(short), .malformed)
        var v6 = ProxyHeader.v2Signature + [0x21, 0x21, 0x00, 0x24]
        v6 += Array(ClientAddressBytes.of("2001:db8::9")) + [UInt8](repeating: 0, count: 16) + [0, 1, 0, 2]
        XCTAssertEqual(scan(v6), .header(length: 52, source: ClientAddress(parsing: "2001:db8::9")))
    }

    func testRandomInputNeverTraps() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            var bytes = [UInt8](repeating: 0, count: Int.random(in: 0..<140, using: &generator))
            for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255, using: &generator) }
            if Bool.random(using: &generator) { bytes = Array("PROXY ".utf8) + bytes }
            if Int.random(in: 0..<4, using: &generator) == 0 { bytes = ProxyHeader.v2Signature + bytes }
            _ = scan(bytes)
        }
    }
}

enum ClientAddressBytes {
    static func of(_ text: String) -> [UInt8] {
        guard let a = ClientAddress(parsing: text) else { return [] }
        return (0..<8).map { UInt8(truncatingIfNeeded: a.high >> (56 - 8 * UInt64($0))) }
            + (0..<8).map { UInt8(truncatingIfNeeded: a.low >> (56 - 8 * UInt64($0))) }
    }
}
