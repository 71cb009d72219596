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

    func testNothingNewIsNotDue() {
        var scan = TrickleScan()
        let bytes: [UInt8] = Array("GET".utf8)
        XCTAssertTrue(bytes.withUnsafeBytes { scan.worthScanning($0) })
        XCTAssertFalse(bytes.withUnsafeBytes { scan.worthScanning($0) })
        var empty = TrickleScan()
        XCTAssertFalse([UInt8]().withUnsafeBytes { empty.worthScanning($0) })
    }
}
