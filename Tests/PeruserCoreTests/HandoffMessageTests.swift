import XCTest
@testable import PeruserCore

final class HandoffMessageTests: XCTestCase {
    private func encode(hops: UInt16, _ consumed: [UInt8]) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: HandoffMessage.encodedSize(consumedCount: consumed.count))
        let written = try consumed.withUnsafeBytes { source in
            try out.withUnsafeMutableBytes { try HandoffMessage.encode(hops: hops, consumed: source, into: $0) }
        }
        XCTAssertEqual(written, out.count)
        return out
    }

    private func decode(_ bytes: [UInt8]) throws -> HandoffMessage {
        try bytes.withUnsafeBytes { try HandoffMessage.decode($0) }
    }

    func testRoundTrip() throws {
        let consumed = Array("GET / HTTP/1.1\r\nHost: b\r\n\r\n".utf8)
        XCTAssertEqual(try decode(try encode(hops: 3, consumed)), HandoffMessage(hops: 3, consumed: consumed))
        XCTAssertEqual(try decode(try encode(hops: 0, [])), HandoffMessage(hops: 0, consumed: []))
    }

    func testTicketTravelsWithTheMessage() throws {
        let consumed = Array("GET /".utf8)
        var out = [UInt8](repeating: 0, count: HandoffMessage.encodedSize(consumedCount: consumed.count))
        _ = try consumed.withUnsafeBytes { source in
            try out.withUnsafeMutableBytes {
                try HandoffMessage.encode(hops: 1, ticket: 0xfeed_face_dead_beef, consumed: source, into: $0)
            }
        }
        XCTAssertEqual(try decode(out), HandoffMessage(hops: 1, consumed: consumed, ticket: 0xfeed_face_dead_beef))
    }

    func testClientTravelsWithTheMessage() throws {
        let consumed = Array("GET /".utf8)
        let client = try XCTUnwrap(ClientAddress(parsing: "2001:db8::17"))
        var out = [UInt8](repeating: 0, count: HandoffMessage.encodedSize(consumedCount: consumed.count))
        _ = try consumed.withUnsafeBytes { source in
            try out.withUnsafeMutableBytes {
                try HandoffMessage.encode(hops: 0, ticket: 7, client: client, consumed: source, into: $0)
            }
        }
        XCTAssertEqual(try decode(out), HandoffMessage(hops: 0, consumed: consumed, ticket: 7, client: client))
    }

    func testLendNumberTravelsWithTheMessage() throws {
        let consumed = Array("GET /".utf8)
        var out = [UInt8](repeating: 0, count: HandoffMessage.encodedSize(consumedCount: consumed.count))
        _ = try consumed.withUnsafeBytes { source in
            try out.withUnsafeMutableBytes {
                try HandoffMessage.encode(hops: 1, ticket: 9, crossing: true, lend: 0x0123_4567_89ab_cdef,
                                          consumed: source, into: $0)
            }
        }
        XCTAssertEqual(try decode(out), HandoffMessage(hops: 1, consumed: consumed, ticket: 9, crossing: true,
                                                       lend: 0x0123_4567_89ab_cdef))
        XCTAssertEqual(try decode(try encode(hops: 0, [])).lend, 0, "not lent unless a number is given")
    }

    func testKeptAliveResponsesTravelWithTheMessage() throws {
        let consumed = Array("GET /".utf8)
        for keepalives: UInt32 in [1, 99, 0x0102_0304, .max] {
            var out = [UInt8](repeating: 0, count: HandoffMessage.encodedSize(consumedCount: consumed.count))
            _ = try consumed.withUnsafeBytes { source in
                try out.withUnsafeMutableBytes {
                    try HandoffMessage.encode(hops: 1, lend: 5, keepalives: keepalives, consumed: source, into: $0)
                }
            }
            let decoded = try decode(out)
            XCTAssertEqual(decoded, HandoffMessage(hops: 1, consumed: consumed, lend: 5, keepalives: keepalives))
            XCTAssertEqual(decoded.consumed, consumed, "the count does not run into the consumed bytes")
        }
        XCTAssertEqual(try decode(try encode(hops: 0, [])).keepalives, 0, "none unless a count is given")
    }

    func testRejectsShortMessages() {
        XCTAssertThrowsError(try decode([])) { XCTAssertEqual($0 as? HandoffMessage.DecodeError, .tooShort(0)) }
        XCTAssertThrowsError(try decode(Array("PRU3".utf8))) {
            XCTAssertEqual($0 as? HandoffMessage.DecodeError, .tooShort(4))
        }
    }

    func testRejectsBadMagicAndReservedBits() throws {
        var message = try encode(hops: 0, [1, 2, 3])
        XCTAssertEqual(Array(message[0..<4]), Array("PRU5".utf8), "the wire format's magic")
        for position in 0..<4 {
            var changed = message
            changed[position] ^= 0x20
            XCTAssertThrowsError(try decode(changed)) { XCTAssertEqual($0 as? HandoffMessage.DecodeError, .badMagic) }
        }
        message[0] = UInt8(ascii: "X")
        XCTAssertThrowsError(try decode(message)) { XCTAssertEqual($0 as? HandoffMessage.DecodeError, .badMagic) }
        message = try encode(hops: 0, [1, 2, 3])
        message[6] = 4  // a flag this version does not know
        XCTAssertThrowsError(try decode(message)) {
            XCTAssertEqual($0 as? HandoffMessage.DecodeError, .reservedNotZero)
        }
        message[6] = 1
        XCTAssertEqual(try decode(message).crossing, true)
        message[6] = 2
        XCTAssertEqual(try decode(message).closing, true)
        XCTAssertEqual(try decode(message).crossing, false)
        message = try encode(hops: 0, [1, 2, 3])
        message[7] = 1
        XCTAssertThrowsError(try decode(message)) {
            XCTAssertEqual($0 as? HandoffMessage.DecodeError, .reservedNotZero)
        }
    }

    func testRejectsLengthsThatDisagreeWithTheMessage() throws {
        var message = try encode(hops: 0, [1, 2, 3])
        message[8] = 200
        XCTAssertThrowsError(try decode(message)) {
            XCTAssertEqual($0 as? HandoffMessage.DecodeError, .lengthMismatch(declared: 200, actual: 3))
        }
        message = try encode(hops: 0, [1, 2, 3])
        message[11] = 0xff  // a length near 4 GiB must not be believed
        XCTAssertThrowsError(try decode(message))
        message = try encode(hops: 0, [1, 2, 3]) + [9]
        XCTAssertThrowsError(try decode(message))
    }

    func testRejectsOversizedMessages() {
        let huge = [UInt8](repeating: 0, count: HandoffMessage.largestMessage + 1)
        XCTAssertThrowsError(try decode(huge)) {
            XCTAssertEqual($0 as? HandoffMessage.DecodeError, .tooLong(HandoffMessage.largestMessage + 1))
        }
        let consumed = [UInt8](repeating: 0, count: HandoffMessage.largestConsumed + 1)
        XCTAssertThrowsError(try encode(hops: 0, consumed))
    }

    func testEncodeRefusesASmallBuffer() {
        var out = [UInt8](repeating: 0, count: 13)
        XCTAssertThrowsError(try [UInt8](repeating: 1, count: 2).withUnsafeBytes { source in
            try out.withUnsafeMutableBytes { try HandoffMessage.encode(hops: 0, consumed: source, into: $0) }
        }) { XCTAssertEqual($0 as? HandoffMessage.EncodeError, .bufferTooSmall(needed: HandoffMessage.headerSize + 2)) }
    }
}
