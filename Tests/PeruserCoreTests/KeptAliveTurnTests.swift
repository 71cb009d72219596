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
