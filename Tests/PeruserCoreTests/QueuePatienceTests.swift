import XCTest
@testable import PeruserCore

final class QueuePatienceTests: XCTestCase {
    func testAnEnvironmentWithNoWorkerGetsOneAtOnce() {
        var p = QueuePatience()
        XCTAssertEqual(p.load(environment: 0, queued: 1, demanded: true, handedOff: 1, received: 0, hasWorkers: false, now: 0),
                       EnvironmentLoad(queued: 1, demanded: true))
        XCTAssertFalse(p.watching)
    }

    func testAQueueTakenWithinPatienceStartsNothing() {
        var p = QueuePatience(patience: 10)
        // Seen: 5 handed off, 4 taken.
        XCTAssertEqual(p.load(environment: 1, queued: 1, demanded: true, handedOff: 5, received: 4, hasWorkers: true, now: 100),
                       EnvironmentLoad())
        XCTAssertTrue(p.watching)
        // 20 ms later a new connection waits, but the one seen first was taken: watched anew.
        XCTAssertEqual(p.load(environment: 1, queued: 1, demanded: false, handedOff: 9, received: 8, hasWorkers: true, now: 120),
                       EnvironmentLoad())
        // Nothing queued: nothing watched, a demand that found the queue empty asks for nothing.
        XCTAssertEqual(p.load(environment: 1, queued: 0, demanded: true, handedOff: 9, received: 9, hasWorkers: true, now: 125),
                       EnvironmentLoad())
        XCTAssertFalse(p.watching)
    }

    func testAQueueStillThereAfterPatienceAsksForAWorker() {
        var p = QueuePatience(patience: 10)
        _ = p.load(environment: 2, queued: 2, demanded: true, handedOff: 7, received: 5, hasWorkers: true, now: 0)
        XCTAssertEqual(p.load(environment: 2, queued: 2, demanded: false, handedOff: 7, received: 5, hasWorkers: true, now: 5),
                       EnvironmentLoad(), "not yet")
        XCTAssertEqual(p.load(environment: 2, queued: 3, demanded: false, handedOff: 8, received: 6, hasWorkers: true, now: 10),
                       EnvironmentLoad(queued: 3, demanded: true))
        p.keep(2)
        XCTAssertFalse(p.watching)
    }

    func testConnectionsHeldByMultiplexersWaitAlready() {
        var p = QueuePatience(patience: 10)
        XCTAssertEqual(p.load(environment: 0, queued: 0, demanded: false, handedOff: 3, received: 3, hasWorkers: true,
                              now: 0, waitingInMultiplexers: 4), EnvironmentLoad(queued: 4, demanded: true))
    }

    func testCountersThatLieNeverTrap() {
        var p = QueuePatience(patience: 10)
        XCTAssertEqual(p.load(environment: 3, queued: Int.max, demanded: false, handedOff: .max, received: 0,
                              hasWorkers: true, now: .min), EnvironmentLoad())
        _ = p.load(environment: 3, queued: 1, demanded: false, handedOff: 0, received: .max, hasWorkers: true, now: .max)
    }

    /// The parent looks at the queues alone every 10 ms and runs a full pass only when one asks;
    /// that pass asks again at the same instant and must hear the same.
    func testAskedTwiceAtOneInstantItAnswersTheSame() {
        var p = QueuePatience(patience: 10)
        for (now, handedOff, received) in [(0, 3, 1), (4, 3, 1), (10, 5, 2), (12, 5, 5), (13, 6, 5), (30, 7, 5)] as [(Int64, UInt64, UInt64)] {
            let queued = Int(handedOff - received)
            let first = p.load(environment: 0, queued: queued, demanded: false, handedOff: handedOff, received: received,
                               hasWorkers: true, now: now)
            let second = p.load(environment: 0, queued: queued, demanded: false, handedOff: handedOff, received: received,
                                hasWorkers: true, now: now)
            XCTAssertEqual(first, second, "at \(now)")
        }
    }
}
