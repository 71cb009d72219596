import XCTest
@testable import PeruserCore

final class FreeSignalTests: XCTestCase {
    func testTheSignalIsExactlyFourBytesPRUF() {
        XCTAssertTrue(Array("PRUF".utf8).withUnsafeBytes { FreeSignal.matches($0) })
        withUnsafeBytes(of: FreeSignal.value.littleEndian) { XCTAssertTrue(FreeSignal.matches($0)) }
    }

    func testAnythingElseIsNotTheSignal() {
        for bytes in [Array("PRU".utf8), Array("PRUFX".utf8), Array("PRU5".utf8), Array("prUF".utf8), [], [0, 0, 0, 0]] {
            XCTAssertFalse(bytes.withUnsafeBytes { FreeSignal.matches($0) }, "\(bytes)")
        }
        // A hand-off header starts with "PRU5": never read as the signal, whatever follows.
        var header = [UInt8](repeating: 0, count: HandoffMessage.headerSize)
        let length = try? header.withUnsafeMutableBytes { out in
            try [UInt8]().withUnsafeBytes { try HandoffMessage.encode(hops: 0, consumed: $0, into: out) }
        }
        XCTAssertEqual(length, HandoffMessage.headerSize)
        XCTAssertFalse(header.withUnsafeBytes { FreeSignal.matches($0) })
        XCTAssertFalse(header.prefix(4).withUnsafeBytes { FreeSignal.matches(UnsafeRawBufferPointer($0)) })
    }

    func testAWorkerSpeaksOnlyWhileConnectionsWait() {
        XCTAssertFalse(FreeSignal.worthSending(waitingInMultiplexers: 0))
        XCTAssertTrue(FreeSignal.worthSending(waitingInMultiplexers: 1))
    }
}
