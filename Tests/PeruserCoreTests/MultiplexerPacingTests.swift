import XCTest
@testable import PeruserCore

final class MultiplexerPacingTests: XCTestCase {
    func testAMultiplexerStartsNormalAndTurnsBatchAfterASecondWithoutKeptAliveConnections() {
        var pacing = MultiplexerPacing()
        XCTAssertEqual(pacing.policy, .normal)
        XCTAssertNil(pacing.afterTurn(holdsKeptAlive: false, now: 5_000))
        XCTAssertNil(pacing.afterTurn(holdsKeptAlive: false, now: 5_999))
        XCTAssertEqual(pacing.afterTurn(holdsKeptAlive: false, now: 6_000), .batch)
        XCTAssertEqual(pacing.policy, .batch)
        // Asked once: later turns keep it.
        XCTAssertNil(pacing.afterTurn(holdsKeptAlive: false, now: 9_000))
    }

    func testAKeptAliveConnectionMakesItNormalAtOnce() {
        var pacing = MultiplexerPacing()
        _ = pacing.afterTurn(holdsKeptAlive: false, now: 0)
        XCTAssertEqual(pacing.afterTurn(holdsKeptAlive: false, now: 1_000), .batch)
        XCTAssertEqual(pacing.afterTurn(holdsKeptAlive: true, now: 1_001), .normal)
        XCTAssertNil(pacing.afterTurn(holdsKeptAlive: true, now: 1_002))
        XCTAssertEqual(pacing.policy, .normal)
    }

    func testTheQuietSecondStartsAgainAfterEveryKeptAliveConnection() {
        var pacing = MultiplexerPacing()
        _ = pacing.afterTurn(holdsKeptAlive: false, now: 0)
        _ = pacing.afterTurn(holdsKeptAlive: true, now: 900)
        XCTAssertNil(pacing.afterTurn(holdsKeptAlive: false, now: 950))
        XCTAssertNil(pacing.afterTurn(holdsKeptAlive: false, now: 1_900))
        XCTAssertEqual(pacing.afterTurn(holdsKeptAlive: false, now: 1_950), .batch)
    }

    func testAClockThatGoesBackDoesNotTurnItBatch() {
        var pacing = MultiplexerPacing()
        _ = pacing.afterTurn(holdsKeptAlive: false, now: 10_000)
        XCTAssertNil(pacing.afterTurn(holdsKeptAlive: false, now: 3_000))
        XCTAssertEqual(pacing.policy, .normal)
    }
}
