import XCTest
@testable import PeruserCore

final class AvailabilityTests: XCTestCase {
    func testStartsAtFullAvailabilityAndFullWait() {
        let a = Availability(waitSeconds: 5, levels: 10)
        XCTAssertEqual(a.percent, 100)
        XCTAssertEqual(a.waitBudgetMilliseconds, 5000)
    }

    func testEachDropLowersOneLevelDownToZero() {
        var a = Availability(waitSeconds: 2, levels: 10)
        a.dropped()
        XCTAssertEqual(a.percent, 90)
        XCTAssertEqual(a.waitBudgetMilliseconds, 1800)
        for _ in 0..<20 { a.dropped() }
        XCTAssertEqual(a.percent, 0)
        XCTAssertEqual(a.waitBudgetMilliseconds, 0, "at 0% a saturated environment's connection is dropped at once")
    }

    func testAPassedConnectionResetsToFull() {
        var a = Availability(waitSeconds: 5, levels: 4)
        a.dropped()
        a.dropped()
        XCTAssertEqual(a.percent, 50)
        a.passed()
        XCTAssertEqual(a.percent, 100)
    }

    func testLevelsAndZeroSeconds() {
        var one = Availability(waitSeconds: 5, levels: 1)
        one.dropped()
        XCTAssertEqual(one.percent, 0)
        var many = Availability(waitSeconds: 5, levels: 300)
        many.dropped()
        XCTAssertEqual(many.percent, 100, "100/300 rounds to no step")
        XCTAssertEqual(Availability(waitSeconds: 0, levels: 10).waitBudgetMilliseconds, 0)
        XCTAssertEqual(Availability(waitSeconds: -3, levels: 0).levels, 1)
    }
}

final class WaitQueueTests: XCTestCase {
    func testTakesEarliestDeadlineFirstPerEnvironment() {
        var q = WaitQueue<Int32>()
        q.add(1, environment: 0, deadline: 300, since: 0)
        q.add(2, environment: 1, deadline: 100, since: 0)
        q.add(3, environment: 0, deadline: 200, since: 0)
        q.add(4, environment: 0, deadline: 200, since: 0)
        XCTAssertEqual(q.count(for: 0), 3)
        XCTAssertEqual(q.take(2, for: 0), [3, 4])
        XCTAssertEqual(q.take(5, for: 0), [1])
        XCTAssertEqual(q.take(0, for: 1), [])
        XCTAssertEqual(q.environments, [1])
    }

    func testTakesTheLowestRankFirstThenTheEarliestDeadline() {
        var q = WaitQueue<Int32>()
        // Odd items are a heavy client's (rank 5), even ones light clients' (rank 1).
        for (item, deadline) in [(1, 100), (2, 200), (3, 300), (4, 400), (5, 500), (6, 600)] {
            q.add(Int32(item), environment: 0, deadline: Int64(deadline), since: 0)
        }
        q.add(7, environment: 1, deadline: 50, since: 0)
        XCTAssertEqual(q.take(2, for: 0) { $0 % 2 == 1 ? 5 : 1 }, [2, 4])
        // The heavy client may take one more worker: the rank counts what was taken.
        var heavyTaken = 0
        let taken = q.take(5, for: 0) { item -> Int? in
            item % 2 == 0 ? 1 : (heavyTaken < 1 ? 5 : nil)
        }
        XCTAssertEqual(taken, [6, 1, 3, 5])  // this rank did not count: all three heavy ones came
        heavyTaken = 1
        XCTAssertEqual(q.count(for: 0), 0)
        for item: Int32 in [1, 3, 5] { q.add(item, environment: 0, deadline: 100 * Int64(item), since: 0) }
        XCTAssertEqual(q.take(5, for: 0) { _ in heavyTaken < 1 ? 5 : nil }, [])
        XCTAssertTrue(q.contains(for: 0) { $0 == 5 })
        XCTAssertFalse(q.contains(for: 2) { _ in true })
        XCTAssertEqual(q.count(for: 1), 1)
    }

    func testTakeFirstTakesTheEarliestEligibleOfOneEnvironment() {
        var q = WaitQueue<Int32>()
        q.add(1, environment: 0, deadline: 100, since: 0)
        q.add(2, environment: 1, deadline: 150, since: 0)
        q.add(3, environment: 0, deadline: 200, since: 0)
        q.add(4, environment: 0, deadline: 300, since: 0)
        XCTAssertEqual(q.takeFirst(for: 0) { $0 != 1 }, 3, "1 is not eligible, 2 is another environment's")
        XCTAssertEqual(q.takeFirst(for: 0) { _ in true }, 1)
        XCTAssertNil(q.takeFirst(for: 0) { $0 == 3 }, "taken already")
        XCTAssertNil(q.takeFirst(for: 2) { _ in true })
        XCTAssertEqual(q.entries.map(\.item), [2, 4])
    }

    func testExpiredRemovesOnlyPastDeadlines() {
        var q = WaitQueue<Int32>()
        q.add(1, environment: 0, deadline: 100, since: 0)
        q.add(2, environment: 1, deadline: 150, since: 0)
        q.add(3, environment: 0, deadline: 400, since: 0)
        XCTAssertEqual(q.expired(at: 150).map(\.item), [1, 2])
        XCTAssertEqual(q.count, 1)
        XCTAssertEqual(q.expired(at: 399).map(\.item), [])
        q.remove(3)
        XCTAssertTrue(q.isEmpty)
    }
}

final class EnvironmentCapacityTests: XCTestCase {
    func testFreeIdleWorkersTakeConnections() {
        XCTAssertTrue(EnvironmentCapacity(workers: 2, idle: 1, queued: 0, maxProcessors: 2, serverFull: true).canTake)
        XCTAssertEqual(EnvironmentCapacity(workers: 2, idle: 1, queued: 1, maxProcessors: 2, serverFull: false).freeWorkers, 0)
    }

    func testAtMaxProcessorsOrServerLimitTheEnvironmentIsSaturated() {
        XCTAssertFalse(EnvironmentCapacity(workers: 1, idle: 0, queued: 0, maxProcessors: 1, serverFull: false).canTake)
        XCTAssertFalse(EnvironmentCapacity(workers: 1, idle: 0, queued: 0, maxProcessors: 5, serverFull: true).canTake)
        XCTAssertTrue(EnvironmentCapacity(workers: 1, idle: 0, queued: 0, maxProcessors: 5, serverFull: false).canTake)
        XCTAssertFalse(EnvironmentCapacity(workers: 2, idle: 0, queued: 3, maxProcessors: 5, serverFull: false).canTake,
                       "queued connections already claim the workers still to start")
    }

    func testConnectionsQueuedForIdleWorkersClaimNoWorkerStillToStart() {
        // Eight workers, two idle, two connections in the channel for them: two more may start.
        XCTAssertTrue(EnvironmentCapacity(workers: 8, idle: 2, queued: 2, maxProcessors: 10, serverFull: false).canTake)
        XCTAssertTrue(EnvironmentCapacity(workers: 8, idle: 2, queued: 3, maxProcessors: 10, serverFull: false).canTake)
        XCTAssertFalse(EnvironmentCapacity(workers: 8, idle: 2, queued: 4, maxProcessors: 10, serverFull: false).canTake)
        XCTAssertEqual(EnvironmentCapacity(workers: 8, idle: 2, queued: 2, maxProcessors: 10, serverFull: false).roomForWaiting, 1)
        XCTAssertEqual(EnvironmentCapacity(workers: 8, idle: 2, queued: 4, maxProcessors: 10, serverFull: false).roomForWaiting, 0)
        XCTAssertEqual(EnvironmentCapacity(workers: 1, idle: 3, queued: .max, maxProcessors: 2, serverFull: false).queuedBeyondIdle,
                       .max - 3)
    }

    func testAnEnvironmentWithoutWorkersCanAlwaysStartItsProcessor() {
        XCTAssertTrue(EnvironmentCapacity(workers: 0, idle: 0, queued: 0, maxProcessors: 1, serverFull: true).canTake)
    }

    func testAnEnvironmentWhoseWorkersFailToStartQueuesNothing() {
        // Its connections wait in the multiplexer (and get 503 when the wait runs out) rather
        // than in a channel no worker may ever read.
        XCTAssertFalse(EnvironmentCapacity(workers: 0, idle: 0, queued: 0, maxProcessors: 5, serverFull: false,
                                           startFailing: true).canTake)
        // A worker that is alive again takes precedence over the flag.
        XCTAssertTrue(EnvironmentCapacity(workers: 1, idle: 1, queued: 0, maxProcessors: 5, serverFull: false,
                                          startFailing: true).canTake)
    }
}
