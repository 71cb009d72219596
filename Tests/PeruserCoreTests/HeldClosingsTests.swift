import XCTest
@testable import PeruserCore

final class HeldClosingsTests: XCTestCase {
    private func closing(_ fd: Int32, at now: Int64) -> HeldClosings.Closing {
        HeldClosings.Closing(fd: fd, ticket: UInt64(fd), client: .none, now: now)
    }

    func testAWorkerKeepingNothingSleepsUntilTheNextConnection() {
        XCTAssertNil(HeldClosings().sleep(now: 0))
    }

    func testAKeptClosingIsLookedAtAgainWithinTheLookInterval() {
        var held = HeldClosings()
        XCTAssertTrue(held.keep(closing(7, at: 1_000)))
        XCTAssertEqual(held.sleep(now: 1_000), Int32(HeldClosings.lookMilliseconds))
        XCTAssertEqual(held.closings.map(\.fd), [7])
        XCTAssertTrue(held.releaseExpired(now: 1_500).isEmpty, "a quiet client has 2 s")
    }

    func testHttpdsBoundsTwoSecondsQuietThirtyInAll() {
        var held = HeldClosings()
        XCTAssertTrue(held.keep(closing(3, at: 0)))
        XCTAssertEqual(held.sleep(now: 1_900), 100, "no sleep past the quiet bound")
        XCTAssertEqual(held.releaseExpired(now: 2_000).map(\.fd), [3])
        XCTAssertTrue(held.isEmpty)

        XCTAssertTrue(held.keep(closing(4, at: 0)))
        var now: Int64 = 0
        while now + 1_500 < LingeringClose.mostMilliseconds {
            now += 1_500
            held.read(4, now: now)
            XCTAssertTrue(held.releaseExpired(now: now).isEmpty, "a client that keeps sending is read")
        }
        XCTAssertEqual(held.sleep(now: 29_900), 100)
        XCTAssertEqual(held.releaseExpired(now: 30_000).map(\.fd), [4], "but not past 30 s")
    }

    func testOnlyTheExpiredGoAndTheRestStayInOrder() {
        var held = HeldClosings()
        for fd in Int32(10)..<13 { XCTAssertTrue(held.keep(closing(fd, at: Int64(fd) * 100))) }
        XCTAssertEqual(held.releaseExpired(now: 3_150).map(\.fd), [10, 11])
        XCTAssertEqual(held.closings.map(\.fd), [12])
        XCTAssertEqual(held.release(12)?.fd, 12)
        XCTAssertNil(held.release(12))
        XCTAssertTrue(held.isEmpty)
    }

    func testAWorkerKeepsAtMostItsCapacityAndNoDescriptorTwice() {
        var held = HeldClosings()
        for fd in 0..<Int32(HeldClosings.capacity) { XCTAssertTrue(held.keep(closing(fd, at: 0))) }
        XCTAssertTrue(held.isFull)
        XCTAssertFalse(held.keep(closing(999, at: 0)), "past capacity the old wait takes it")
        XCTAssertTrue(held.release(0) != nil)
        XCTAssertFalse(held.keep(closing(1, at: 0)), "a descriptor is kept once")
        XCTAssertTrue(held.keep(closing(999, at: 0)))
    }

    func testAClockThatGoesBackNeverTraps() {
        var held = HeldClosings()
        XCTAssertTrue(held.keep(closing(1, at: .max)))
        XCTAssertEqual(held.sleep(now: .min), Int32(HeldClosings.lookMilliseconds))
        XCTAssertTrue(held.releaseExpired(now: .min).isEmpty)
        XCTAssertTrue(held.keep(closing(2, at: .min)))
        XCTAssertEqual(held.sleep(now: .max), 0)
        XCTAssertEqual(held.releaseExpired(now: .max).map(\.fd), [2])
    }
}
