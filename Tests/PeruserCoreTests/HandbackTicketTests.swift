import XCTest
@testable import PeruserCore

final class HandbackTicketTests: XCTestCase {
    /// Key 00 01 .. 0f, the reference key of the SipHash paper.
    private let referenceKey = HandbackKey(k0: 0x0706_0504_0302_0100, k1: 0x0f0e_0d0c_0b0a_0908)

    private func hash(_ bytes: [UInt8]) -> UInt64 {
        bytes.withUnsafeBytes { SipHash24.hash(key: referenceKey, bytes: $0) }
    }

    func testSipHashReferenceVectors() {
        XCTAssertEqual(hash([]), 0x726f_db47_dd0e_0e31)
        XCTAssertEqual(hash(Array(0..<15)), 0xa129_ca61_49be_45e5)
    }

    func testTwoWordFormIsTheHashOfSixteenBytes() {
        let first: UInt64 = 0x1122_3344_5566_7788, second: UInt64 = 0x99aa_bbcc_ddee_ff00
        var bytes: [UInt8] = []
        for word in [first, second] { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: word >> (8 * UInt64(i)))) } }
        XCTAssertEqual(SipHash24.hash(key: referenceKey, words: first, second), hash(bytes))
    }

    func testFourWordFormIsTheHashOfThirtyTwoBytes() {
        let words: [UInt64] = [0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00, 7, 0xffff_0000_7f00_0001]
        var bytes: [UInt8] = []
        for word in words { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: word >> (8 * UInt64(i)))) } }
        XCTAssertEqual(SipHash24.hash(key: referenceKey, words: words[0], words[1], words[2], words[3]), hash(bytes))
    }

    func testTicketIsBoundToTheClient() {
        let key = HandbackKey(k0: 42, k1: 4242)
        let client = ClientAddress(parsing: "198.51.100.7")!
        let ticket = key.ticket(cookie: 1000, generation: 3, environment: 7, client: client)
        XCTAssertTrue(key.accepts(ticket, cookie: 1000, generation: 3, environment: 7, client: client))
        XCTAssertFalse(key.accepts(ticket, cookie: 1000, generation: 3, environment: 7))
        XCTAssertFalse(key.accepts(ticket, cookie: 1000, generation: 3, environment: 7,
                                   client: ClientAddress(parsing: "198.51.100.8")!))
    }

    func testTicketIsBoundToSocketGenerationAndEnvironment() {
        let key = HandbackKey(k0: 42, k1: 4242)
        let ticket = key.ticket(cookie: 1000, generation: 3, environment: 7)
        XCTAssertTrue(key.accepts(ticket, cookie: 1000, generation: 3, environment: 7))
        XCTAssertFalse(key.accepts(ticket, cookie: 1001, generation: 3, environment: 7))
        XCTAssertFalse(key.accepts(ticket, cookie: 1000, generation: 4, environment: 7))
        XCTAssertFalse(key.accepts(ticket, cookie: 1000, generation: 3, environment: 6))
        XCTAssertFalse(HandbackKey(k0: 43, k1: 4242).accepts(ticket, cookie: 1000, generation: 3, environment: 7))
    }

    func testKeyFromBytes() {
        let bytes: [UInt8] = Array(0..<16)
        XCTAssertEqual(bytes.withUnsafeBytes { HandbackKey($0) }, referenceKey)
        XCTAssertNil([UInt8](repeating: 0, count: 15).withUnsafeBytes { HandbackKey($0) })
    }
}

final class LogLimiterTests: XCTestCase {
    func testOneLinePerIntervalAndKeyWithACountOfWhatWasLeftOut() {
        var limiter = LogLimiter(intervalMilliseconds: 1000)
        XCTAssertEqual(limiter.admit(1, now: 0), 0)
        XCTAssertNil(limiter.admit(1, now: 10))
        XCTAssertNil(limiter.admit(1, now: 999))
        XCTAssertEqual(limiter.admit(2, now: 500), 0, "another kind is not held back")
        XCTAssertEqual(limiter.admit(1, now: 1000), 2)
        XCTAssertEqual(limiter.admit(1, now: 2500), 0)
        XCTAssertEqual(LogLimiter.note(0), "")
        XCTAssertEqual(LogLimiter.note(3), " (3 similar lines left out)")
    }

    func testAClockThatGoesBackDoesNotSilenceForever() {
        var limiter = LogLimiter(intervalMilliseconds: 1000)
        XCTAssertEqual(limiter.admit(1, now: 5000), 0)
        XCTAssertEqual(limiter.admit(1, now: 0), 0)
    }
}
