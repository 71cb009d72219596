import XCTest
@testable import PeruserCore

final class PendingStartsTests: XCTestCase {
    private func start(_ environment: Int, page: Int, at time: Int64, type: ChildType = .worker) -> PendingStart {
        PendingStart(environment: environment, type: type, page: page, askedAt: time)
    }

    func testAnAnswerTakesOnlyTheStartItsEnvironmentWasAskedForInThatSlot() {
        var pending = PendingStarts()
        pending.asked(slot: 5, start(1, page: 3, at: 100))
        // Another environment's image cannot claim the slot, nor an image a slot never asked of it.
        XCTAssertEqual(pending.answer(slot: 5, environment: 2), .unasked)
        XCTAssertEqual(pending.answer(slot: 6, environment: 1), .unasked)
        XCTAssertEqual(pending.answer(slot: 5, environment: 1), .answers(start(1, page: 3, at: 100)))
        // A second answer for the same slot is not a second start.
        XCTAssertEqual(pending.answer(slot: 5, environment: 1), .unasked)
        XCTAssertTrue(pending.isEmpty)
    }

    func testAStartIsOverdueOnceAtItsDeadlineAndKeepsItsSlotAndPage() {
        var pending = PendingStarts()
        pending.asked(slot: 7, start(0, page: 2, at: 1_000))
        pending.asked(slot: 4, start(0, page: 1, at: 1_500))
        XCTAssertTrue(pending.becameOverdue(now: 1_999).isEmpty)
        let first = pending.becameOverdue(now: 2_000)
        XCTAssertEqual(first.map(\.slot), [7])
        XCTAssertEqual(pending.becameOverdue(now: 2_400).map(\.slot), [], "reported once")
        XCTAssertEqual(pending.becameOverdue(now: 9_000).map(\.slot), [4])
        // Both still hold their slots and pages until the image answers.
        XCTAssertEqual(Set(pending.bySlot.keys), [4, 7])
        XCTAssertEqual(pending.pages(of: 0), [1, 2])
        guard case .answers(let late) = pending.answer(slot: 7, environment: 0) else { return XCTFail("no answer") }
        XCTAssertTrue(late.overdue)
    }

    func testTheEnvironmentsAreKeptApart() {
        var pending = PendingStarts()
        pending.asked(slot: 3, start(0, page: 0, at: 0))
        pending.asked(slot: 9, start(1, page: 4, at: 0))
        pending.asked(slot: 10, start(1, page: 5, at: 0))
        pending.markStale(environment: 1)
        XCTAssertEqual(pending.bySlot[3]?.stale, false)
        XCTAssertEqual(pending.bySlot[9]?.stale, true)
        XCTAssertEqual(pending.pages(of: 0), [0])
        XCTAssertEqual(pending.drop(environment: 1), [9, 10])
        XCTAssertTrue(pending.hasStarts(of: 0))
        XCTAssertFalse(pending.hasStarts(of: 1))
        XCTAssertEqual(pending.dropAll(), [3])
        XCTAssertTrue(pending.isEmpty)
    }

    /// The planner counts a pending start as a starting worker: it plans no second start into
    /// its slot, and none for the environment while that one is on its way.
    func testThePlannerCountsAPendingStartAsAStartingWorker() {
        var limits = ServerLimits()
        limits.serverLimit = 16
        limits.minMultiplexers = 1
        limits.maxMultiplexers = 1
        let environment = WorkerLimits(minProcessors: 1, maxProcessors: 4, minSpare: 0, maxSpare: 0)
        let policy = MaintenancePolicy(limits: limits, environments: [environment, environment], generation: 3)
        let multiplexer = ChildState(slot: 2, pid: 500, role: .multiplexer, type: .multiplexer, generation: 3,
                                     startedAt: 0, status: .ready, statusSince: 0)
        let none = policy.plan(children: [multiplexer], load: [], backoffUntil: [:], now: 10)
        XCTAssertEqual(none.actions, [.spawn(slot: 0, role: .worker(environment: 0), type: .processor),
                                      .spawn(slot: 1, role: .worker(environment: 1), type: .processor)])
        var pending = PendingStarts()
        pending.asked(slot: 0, start(0, page: 0, at: 10, type: .processor))
        let children = [multiplexer] + pending.children(generation: 3)
        XCTAssertEqual(children.last?.status, .starting)
        XCTAssertEqual(children.last?.pid, 0)
        XCTAssertEqual(policy.plan(children: children, load: [], backoffUntil: [:], now: 20).actions,
                       [.spawn(slot: 1, role: .worker(environment: 1), type: .processor)])
    }

    func testAnExitReapedBeforeItsAnswerIsClaimedOnceAndNotKeptForever() {
        var exits = UnclaimedExits<Int>()
        exits.remember(pid: 4242, status: 9, now: 1_000)
        XCTAssertNil(exits.claim(pid: 4243, now: 1_001))
        XCTAssertEqual(exits.claim(pid: 4242, now: 1_002), 9)
        XCTAssertNil(exits.claim(pid: 4242, now: 1_003), "claimed once")
        exits.remember(pid: 77, status: 0, now: 2_000)
        XCTAssertNil(exits.claim(pid: 77, now: 2_000 + UnclaimedExits<Int>.keptMilliseconds), "forgotten")
        for pid in 0..<Int32(200) { exits.remember(pid: 10_000 + pid, status: Int(pid), now: 3_000) }
        XCTAssertEqual(exits.count, UnclaimedExits<Int>.capacity)
        XCTAssertEqual(exits.claim(pid: 10_199, now: 3_001), 199, "the newest are kept")
        XCTAssertNil(exits.claim(pid: 10_000, now: 3_001))
    }
}
