import XCTest
@testable import PeruserCore

final class LingeringCloseTests: XCTestCase {
    func testNothingWaitingMeansTheWorkerWaitsItselfAndLooksAgainSoon() {
        let state = LingeringClose(now: 1_000)
        XCTAssertEqual(state.next(now: 1_000, queued: 0, waitingInMultiplexers: 0, channelReadable: false),
                       .wait(milliseconds: Int32(LingeringClose.lookMilliseconds)))
    }

    func testAConnectionWaitingAnywhereForTheEnvironmentPassesTheClose() {
        let state = LingeringClose(now: 0)
        XCTAssertEqual(state.next(now: 3, queued: 1, waitingInMultiplexers: 0, channelReadable: false), .pass)
        XCTAssertEqual(state.next(now: 3, queued: 0, waitingInMultiplexers: 2, channelReadable: false), .pass)
        XCTAssertEqual(state.next(now: 3, queued: 0, waitingInMultiplexers: 0, channelReadable: true), .pass)
    }

    func testARefusedPassIsNotRetriedTheWorkerFinishesTheWait() {
        var state = LingeringClose(now: 0)
        state.passFailed()
        XCTAssertEqual(state.next(now: 5, queued: 4, waitingInMultiplexers: 4, channelReadable: true),
                       .wait(milliseconds: Int32(LingeringClose.lookMilliseconds)))
    }

    func testHttpdsBoundsTwoSecondsQuietThirtyInAll() {
        var state = LingeringClose(now: 0)
        XCTAssertEqual(state.next(now: 1_995, queued: 0, waitingInMultiplexers: 0, channelReadable: false),
                       .wait(milliseconds: 5))
        XCTAssertEqual(state.next(now: 2_000, queued: 0, waitingInMultiplexers: 0, channelReadable: false), .finish)
        // A client that keeps sending is read until 30 s.
        var now: Int64 = 0
        while now + 1_500 < LingeringClose.mostMilliseconds {
            now += 1_500
            state.read(now: now)
            XCTAssertNotEqual(state.next(now: now, queued: 0, waitingInMultiplexers: 0, channelReadable: false), .finish)
        }
        XCTAssertEqual(state.next(now: 30_000, queued: 0, waitingInMultiplexers: 0, channelReadable: false), .finish)
    }

    func testAClockThatGoesBackOrLyingCountsNeverTrap() {
        let state = LingeringClose(now: .max)
        XCTAssertEqual(state.next(now: .min, queued: .min, waitingInMultiplexers: .min, channelReadable: false),
                       .wait(milliseconds: Int32(LingeringClose.lookMilliseconds)))
        XCTAssertEqual(LingeringClose(now: .min).next(now: .max, queued: .max, waitingInMultiplexers: .max,
                                                      channelReadable: false), .finish)
    }
}

final class IdleSessionYieldTests: XCTestCase {
    func testConnectionsHeldByTheMultiplexersEndAnIdleSessionAtOnce() {
        var y = IdleSessionYield()
        XCTAssertTrue(y.look(idle: true, handedOff: 5, received: 5, waitingInMultiplexers: 1))
        XCTAssertTrue(IdleSessionYield.saturated(idle: true, waitingInMultiplexers: 3))
        XCTAssertFalse(IdleSessionYield.saturated(idle: false, waitingInMultiplexers: 3))
        XCTAssertFalse(y.look(idle: false, handedOff: 5, received: 5, waitingInMultiplexers: 9),
                       "a session with a stream running keeps going")
    }

    func testAQueueEndsAnIdleSessionOnlyIfTheSameConnectionsStillWaitALookLater() {
        var y = IdleSessionYield()
        XCTAssertFalse(y.look(idle: true, handedOff: 10, received: 10, waitingInMultiplexers: 0))
        // One queued: seen first.
        XCTAssertFalse(y.look(idle: true, handedOff: 11, received: 10, waitingInMultiplexers: 0))
        // Taken by an idle worker meanwhile, another one queued: watched anew.
        XCTAssertFalse(y.look(idle: true, handedOff: 12, received: 11, waitingInMultiplexers: 0))
        // Still there a look later: the session ends.
        XCTAssertTrue(y.look(idle: true, handedOff: 12, received: 11, waitingInMultiplexers: 0))
    }

    func testLyingCountsNeverTrap() {
        var y = IdleSessionYield()
        _ = y.look(idle: true, handedOff: .max, received: 0, waitingInMultiplexers: .min)
        _ = y.look(idle: true, handedOff: 0, received: .max, waitingInMultiplexers: .max)
        XCTAssertFalse(IdleSessionYield.saturated(idle: true, waitingInMultiplexers: .min))
    }
}
