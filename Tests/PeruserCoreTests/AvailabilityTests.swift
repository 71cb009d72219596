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
        q.add(1, environment: 0, deadline: 300)
        q.add(2, environment: 1, deadline: 100)
        q.add(3, environment: 0, deadline: 200)
        q.add(4, environment: 0, deadline: 200)
        XCTAssertEqual(q.count(for: 0), 3)
        XCTAssertEqual(q.take(2, for: 0), [3, 4])
        XCTAssertEqual(q.take(5, for: 0), [1])
        XCTAssertEqual(q.take(0, for: 1), [])
        XCTAssertEqual(q.environments, [1])
    }

    func testExpiredRemovesOnlyPastDeadlines() {
        var q = WaitQueue<Int32>()
        q.add(1, environment: 0, deadline: 100)
        q.add(2, environment: 1, deadline: 150)
        q.add(3, environment: 0, deadline: 400)
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
