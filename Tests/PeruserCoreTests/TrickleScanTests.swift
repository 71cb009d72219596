import XCTest
@testable import PeruserCore

final class TrickleScanTests: XCTestCase {
    /// Feeds `bytes` `step` bytes at a time; returns how many scans were due and at which sizes.
    private func trickle(_ bytes: [UInt8], step: Int = 1) -> [Int] {
        var scan = TrickleScan()
        var due: [Int] = []
        var end = 0
        while end < bytes.count {
            end = min(end + step, bytes.count)
            if Array(bytes[0..<end]).withUnsafeBytes({ scan.worthScanning($0) }) { due.append(end) }
        }
        return due
    }

    func testAHeadSentOneByteAtATimeIsScannedAFewTimesNotOncePerByte() {
        let head = Array(("GET / HTTP/1.1\r\nHost: a.test\r\n" + String(repeating: "X-Pad: 0123456789abcdef\r\n", count: 300)
                          + "\r\n").utf8)
        let due = trickle(head)
        XCTAssertEqual(due.last, head.count, "the byte that completes the head is always scanned")
        XCTAssertLessThan(due.count, 64 + 2 + 20, "scans: \(due.count) for \(head.count) bytes")
        XCTAssertTrue(due.contains(head.firstIndex(of: UInt8(ascii: "\n"))! + 1), "the request line's end is scanned")
    }

    func testBareLineFeedsEndTheHeadToo() {
        let head = Array(("GET / HTTP/1.1\nHost: a\n" + String(repeating: "A: b\n", count: 100) + "\n").utf8)
        XCTAssertEqual(trickle(head).last, head.count)
    }

    func testTotalWorkIsLinear() {
        // Every scan costs at most the buffer; the sum over a 64 KiB trickle stays a small
        // multiple of its length (quadratic would be about 2^31).
        let head = Array(("GET / HTTP/1.1\r\n" + String(repeating: "X: y\r\n", count: 10_000)).utf8)
        let work = trickle(head).reduce(0, +)
        XCTAssertLessThan(work, 8 * head.count)
    }

    func testAClientHelloIsScannedWhenItsRecordCompletes() {
        var record: [UInt8] = [0x16, 0x03, 0x01, 0x02, 0x00]  // a 512-byte handshake record
        record += [UInt8](repeating: 0x42, count: 512)
        let due = trickle(record)
        XCTAssertEqual(due.last, record.count)
        XCTAssertLessThan(due.count, 64 + 12)
    }

    func testTinyTlsRecordsDoNotForceAScanEach() {
        var records: [UInt8] = []
        for _ in 0..<2000 { records += [0x16, 0x03, 0x01, 0x00, 0x01, 0x00] }
        XCTAssertLessThan(trickle(records).count, 64 + 20)
    }

    private func h2Frame(_ type: UInt8, flags: UInt8, _ payload: [UInt8]) -> [UInt8] {
        [0, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF), type, flags, 0, 0, 0, 1] + payload
    }

    func testAnH2cRequestIsScannedWhenItsHeaderBlockEnds() {
        let settings = h2Frame(0x4, flags: 0, [UInt8](repeating: 0, count: 12))
        let headers = h2Frame(0x1, flags: 0x5, [UInt8](repeating: 0x82, count: 200))
        let bytes = H2Preface.preface + settings + headers
        // Sent as two writes (preface and SETTINGS, then HEADERS): the second is scanned.
        XCTAssertEqual(trickle(bytes, step: H2Preface.preface.count + settings.count).last, bytes.count)
        // One byte at a time: the end of the block is scanned, and not every byte.
        let due = trickle(bytes)
        XCTAssertEqual(due.last, bytes.count)
        XCTAssertLessThan(due.count, 64 + 12)
    }

    func testManySmallContinuationsDoNotForceAScanEach() {
        var bytes = H2Preface.preface + h2Frame(0x4, flags: 0, []) + h2Frame(0x1, flags: 0, [0x82])
        for _ in 0..<3000 { bytes += h2Frame(0x9, flags: 0, [0x82]) }
        XCTAssertLessThan(trickle(bytes).count, 64 + 20)
    }

    func testNothingNewIsNotDue() {
        var scan = TrickleScan()
        let bytes: [UInt8] = Array("GET".utf8)
        XCTAssertTrue(bytes.withUnsafeBytes { scan.worthScanning($0) })
        XCTAssertFalse(bytes.withUnsafeBytes { scan.worthScanning($0) })
        var empty = TrickleScan()
        XCTAssertFalse([UInt8]().withUnsafeBytes { empty.worthScanning($0) })
    }
}
