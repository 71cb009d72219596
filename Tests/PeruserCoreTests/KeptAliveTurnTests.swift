import PeruserCore
import XCTest

final class KeptAliveTurnTests: XCTestCase {
    func testNobodyWaitingKeepsTheConnectionHoweverLongItHeldTheWorker() {
        XCTAssertFalse(KeptAliveTurn.isOver(takenAt: 0, now: 3_600_000, waitingInMultiplexers: 0))
    }

    func testAWaitingConnectionEndsTheTurnOnlyOnceItIsUsedUp() {
        let turn = KeptAliveTurn.milliseconds
        XCTAssertFalse(KeptAliveTurn.isOver(takenAt: 1000, now: 1000, waitingInMultiplexers: 5))
        XCTAssertFalse(KeptAliveTurn.isOver(takenAt: 1000, now: 1000 + turn - 1, waitingInMultiplexers: 5))
        XCTAssertTrue(KeptAliveTurn.isOver(takenAt: 1000, now: 1000 + turn, waitingInMultiplexers: 1))
    }

    func testAClockThatWentBackOrAnAbsurdStartNeverTraps() {
        XCTAssertFalse(KeptAliveTurn.isOver(takenAt: 2000, now: 1000, waitingInMultiplexers: 1))
        XCTAssertTrue(KeptAliveTurn.isOver(takenAt: .min, now: .max, waitingInMultiplexers: 1))
        XCTAssertFalse(KeptAliveTurn.isOver(takenAt: .max, now: .min, waitingInMultiplexers: 1))
    }
}

final class HTTP2SessionTurnTests: XCTestCase {
    private let turn = KeptAliveTurn.milliseconds

    func testAConnectionThatDoesNotSpeakHTTP2IsNeverToldTheServerStops() {
        XCTAssertFalse(KeptAliveTurn.sessionEnds(streams: -1, takenAt: 0, now: 10_000, waitingInMultiplexers: 9))
    }

    func testAnIdleSessionEndsAtOnceWhileOthersWait() {
        XCTAssertTrue(KeptAliveTurn.sessionEnds(streams: 0, takenAt: 1000, now: 1000, waitingInMultiplexers: 1))
        XCTAssertFalse(KeptAliveTurn.sessionEnds(streams: 0, takenAt: 1000, now: 100_000, waitingInMultiplexers: 0))
    }

    func testABusySessionEndsOnlyOnceItHadItsTurnWhileOthersWait() {
        XCTAssertFalse(KeptAliveTurn.sessionEnds(streams: 3, takenAt: 1000, now: 1000 + turn - 1, waitingInMultiplexers: 1))
        XCTAssertTrue(KeptAliveTurn.sessionEnds(streams: 3, takenAt: 1000, now: 1000 + turn, waitingInMultiplexers: 1))
        XCTAssertFalse(KeptAliveTurn.sessionEnds(streams: 3, takenAt: 1000, now: 100_000, waitingInMultiplexers: 0))
        XCTAssertFalse(KeptAliveTurn.sessionEnds(streams: 3, takenAt: nil, now: 100_000, waitingInMultiplexers: 1),
                       "no connection taken: nothing to end")
    }
}
