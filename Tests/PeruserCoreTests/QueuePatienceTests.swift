import XCTest
@testable import PeruserCore

final class QueuePatienceTests: XCTestCase {
    func testAnEnvironmentWithNoWorkerGetsOneAtOnce() {
        var p = QueuePatience()
        XCTAssertEqual(p.load(environment: 0, queued: 1, demanded: true, hasWorkers: false, now: 0),
                       EnvironmentLoad(queued: 1, demanded: true))
        XCTAssertFalse(p.watching)
    }

    func testAQueueTakenWithinPatienceStartsNothing() {
        var p = QueuePatience(patience: 10)
        XCTAssertEqual(p.load(environment: 1, queued: 1, demanded: true, hasWorkers: true, now: 100),
                       EnvironmentLoad())
        XCTAssertTrue(p.watching)
        // Seen empty 5 ms later: nothing watched; a demand that found the queue empty asks for nothing.
        XCTAssertEqual(p.load(environment: 1, queued: 0, demanded: true, hasWorkers: true, now: 105),
                       EnvironmentLoad())
        XCTAssertFalse(p.watching)
        // A queue again at the next look: watched anew, from now.
        XCTAssertEqual(p.load(environment: 1, queued: 1, demanded: false, hasWorkers: true, now: 112),
                       EnvironmentLoad())
        XCTAssertEqual(p.load(environment: 1, queued: 1, demanded: false, hasWorkers: true, now: 118),
                       EnvironmentLoad(), "6 ms since it was first seen")
    }

    func testALookLongAfterTheLastOneSaysNothingOfTheTimeBetween() {
        var p = QueuePatience(patience: 10)
        _ = p.load(environment: 1, queued: 1, demanded: false, hasWorkers: true, now: 100)
        XCTAssertEqual(p.load(environment: 1, queued: 1, demanded: false, hasWorkers: true, now: 121),
                       EnvironmentLoad(), "21 ms without a look: the queue may have emptied between")
        XCTAssertEqual(p.load(environment: 1, queued: 1, demanded: false, hasWorkers: true, now: 131),
                       EnvironmentLoad(queued: 1, demanded: true))
    }

    /// One busy tenant on `Connection: close`: its few workers each take a connection within a
    /// millisecond, so the connections seen first are always gone by the next look, but the
    /// multiplexers keep the queue filled. It is never empty: the environment grows.
    func testAQueueThatMovesButNeverEmptiesAsksForWorkers() {
        var p = QueuePatience(patience: 10)
        XCTAssertEqual(p.load(environment: 4, queued: 6, demanded: true, hasWorkers: true, now: 0), EnvironmentLoad())
        XCTAssertEqual(p.load(environment: 4, queued: 5, demanded: true, hasWorkers: true, now: 9), EnvironmentLoad())
        XCTAssertEqual(p.load(environment: 4, queued: 6, demanded: true, hasWorkers: true, now: 19),
                       EnvironmentLoad(queued: 6, demanded: true))
        XCTAssertEqual(p.load(environment: 4, queued: 4, demanded: false, hasWorkers: true, now: 29),
                       EnvironmentLoad(queued: 4, demanded: true), "and goes on asking while it lasts")
    }

    func testAQueueStillThereAfterPatienceAsksForAWorker() {
        var p = QueuePatience(patience: 10)
        _ = p.load(environment: 2, queued: 2, demanded: true, hasWorkers: true, now: 0)
        XCTAssertEqual(p.load(environment: 2, queued: 2, demanded: false, hasWorkers: true, now: 5),
                       EnvironmentLoad(), "not yet")
        XCTAssertEqual(p.load(environment: 2, queued: 3, demanded: false, hasWorkers: true, now: 10),
                       EnvironmentLoad(queued: 3, demanded: true))
        p.keep(2)
        XCTAssertFalse(p.watching)
    }

    func testAtMaxClientsConnectionsHeldByMultiplexersWaitAlready() {
        var p = QueuePatience(patience: 10)
        XCTAssertEqual(p.load(environment: 0, queued: 0, demanded: false, hasWorkers: true,
                              now: 0, waitingInMultiplexers: 4, atMaxClients: true), EnvironmentLoad(queued: 4, demanded: true))
    }

    /// One busy tenant: its multiplexers hold most of its waiting connections and pass one to
    /// the channel as a worker comes free, so the channel is empty at most looks.
    func testBelowMaxClientsConnectionsHeldByMultiplexersAreQueuedWithPatience() {
        var p = QueuePatience(patience: 10)
        XCTAssertEqual(p.load(environment: 0, queued: 0, demanded: true, hasWorkers: true, now: 0,
                              waitingInMultiplexers: 20), EnvironmentLoad(), "first seen")
        XCTAssertEqual(p.load(environment: 0, queued: 1, demanded: false, hasWorkers: true, now: 8,
                              waitingInMultiplexers: 19), EnvironmentLoad())
        XCTAssertEqual(p.load(environment: 0, queued: 0, demanded: false, hasWorkers: true, now: 16,
                              waitingInMultiplexers: 21), EnvironmentLoad(queued: 21, demanded: true))
        XCTAssertEqual(p.load(environment: 0, queued: 0, demanded: false, hasWorkers: true, now: 20,
                              waitingInMultiplexers: 0), EnvironmentLoad(), "all taken")
        XCTAssertFalse(p.watching)
        XCTAssertEqual(p.load(environment: 5, queued: 0, demanded: true, hasWorkers: false, now: 0,
                              waitingInMultiplexers: 3), EnvironmentLoad(queued: 3, demanded: true),
                       "an environment with no worker: at once")
    }

    func testCountsThatLieNeverTrap() {
        var p = QueuePatience(patience: 10)
        for (queued, waiting) in [(Int.max, Int.max), (Int.min, Int.max), (-1, -1), (Int.max, -5)] {
            for atMax in [false, true] {
                for hasWorkers in [false, true] {
                    let load = p.load(environment: 7, queued: queued, demanded: true, hasWorkers: hasWorkers, now: 50,
                                      waitingInMultiplexers: waiting, atMaxClients: atMax)
                    XCTAssertGreaterThanOrEqual(load.queued, 0)
                }
            }
        }
    }

    func testCountersThatLieNeverTrap() {
        var p = QueuePatience(patience: 10)
        XCTAssertEqual(p.load(environment: 3, queued: Int.max, demanded: false, hasWorkers: true, now: .min), EnvironmentLoad())
        _ = p.load(environment: 3, queued: 1, demanded: false, hasWorkers: true, now: .max)
    }

    /// The parent looks at the queues alone every 10 ms and runs a full pass only when one asks;
    /// that pass asks again at the same instant and must hear the same.
    func testAskedTwiceAtOneInstantItAnswersTheSame() {
        var p = QueuePatience(patience: 10)
        for (now, queued) in [(0, 2), (4, 2), (10, 3), (12, 0), (13, 1), (30, 2), (31, 2), (41, 1)] as [(Int64, Int)] {
            let first = p.load(environment: 0, queued: queued, demanded: false, hasWorkers: true, now: now)
            let second = p.load(environment: 0, queued: queued, demanded: false, hasWorkers: true, now: now)
            XCTAssertEqual(first, second, "at \(now)")
        }
    }

    func testLooksFromThePastDoNotTrapOrRestartTheWatch() {
        var p = QueuePatience(patience: 10)
        _ = p.load(environment: 0, queued: 1, demanded: false, hasWorkers: true, now: 100)
        _ = p.load(environment: 0, queued: 1, demanded: false, hasWorkers: true, now: 50)
        XCTAssertEqual(p.load(environment: 0, queued: 1, demanded: false, hasWorkers: true, now: 110),
                       EnvironmentLoad(queued: 1, demanded: true))
        _ = p.load(environment: 0, queued: 1, demanded: false, hasWorkers: true, now: .min)
        _ = p.load(environment: 0, queued: 1, demanded: false, hasWorkers: true, now: .max)
    }
}
