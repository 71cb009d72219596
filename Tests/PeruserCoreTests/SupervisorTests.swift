import XCTest
@testable import PeruserCore

final class SupervisorTests: XCTestCase {
    private let identity = Identity(user: "u", uid: 1000, group: "g", gid: 1000)

    func testQuotaUsesEnvironmentValueElseGlobalAndAtLeastOne() {
        let envs = [Environment(name: "a", identity: identity, minProcessors: 3),
                    Environment(name: "b", identity: identity),
                    Environment(name: "c", identity: identity, minProcessors: 0)]
        XCTAssertEqual(ChildQuota(multiplexers: 2, environments: envs, globalMinProcessors: 2),
                       ChildQuota(multiplexers: 2, workers: [3, 2, 1]))
        XCTAssertEqual(ChildQuota(multiplexers: 0, environments: envs, globalMinProcessors: 0).workers, [3, 1, 1])
        XCTAssertEqual(ChildQuota(multiplexers: 0, environments: [], globalMinProcessors: 0).multiplexers, 1)
    }

    func testSpawnsMultiplexersFirstThenEachEnvironmentInFreeSlots() {
        var sup = Supervisor(quota: ChildQuota(multiplexers: 2, workers: [1, 2]), slotCount: 8)
        var started: [SpawnOrder] = []
        var pid: Int32 = 100
        while let order = sup.nextSpawn(now: 0) {
            sup.started(order, pid: pid, now: 0)
            started.append(order)
            pid += 1
        }
        XCTAssertEqual(started.map(\.role), [.multiplexer, .multiplexer, .worker(environment: 0),
                                             .worker(environment: 1), .worker(environment: 1)])
        XCTAssertEqual(started.map(\.slot), [0, 1, 2, 3, 4])
        XCTAssertEqual(sup.livePids, [100, 101, 102, 103, 104])
        XCTAssertEqual(sup.slotsInUse, 5)
    }

    func testExitFreesTheSlotAndTheRoleIsReplaced() {
        var sup = Supervisor(quota: ChildQuota(multiplexers: 1, workers: [1]), slotCount: 4)
        sup.started(SpawnOrder(slot: 0, role: .multiplexer), pid: 10, now: 0)
        sup.started(SpawnOrder(slot: 1, role: .worker(environment: 0)), pid: 11, now: 0)
        XCTAssertNil(sup.nextSpawn(now: 10_000))
        let exit = sup.exited(pid: 11, now: 10_000)
        XCTAssertEqual(exit?.slot, 1)
        XCTAssertEqual(exit?.child.role, .worker(environment: 0))
        XCTAssertEqual(sup.nextSpawn(now: 10_000), SpawnOrder(slot: 1, role: .worker(environment: 0)))
    }

    func testUnknownPidsAreNotOurs() {
        var sup = Supervisor(quota: ChildQuota(multiplexers: 1, workers: []), slotCount: 2)
        sup.started(SpawnOrder(slot: 0, role: .multiplexer), pid: 10, now: 0)
        XCTAssertNil(sup.exited(pid: 99, now: 5))
        XCTAssertEqual(sup.livePids, [10])
    }

    func testQuickDeathsBackOffExponentiallyPerRole() {
        var sup = Supervisor(quota: ChildQuota(multiplexers: 0, workers: [1, 1]), slotCount: 4)
        sup.started(SpawnOrder(slot: 0, role: .worker(environment: 0)), pid: 1, now: 0)
        sup.started(SpawnOrder(slot: 1, role: .worker(environment: 1)), pid: 2, now: 0)
        _ = sup.exited(pid: 1, now: 100)  // died at once: back off 0.5 s
        XCTAssertNil(sup.nextSpawn(now: 599))
        XCTAssertEqual(sup.nextSpawn(now: 600), SpawnOrder(slot: 0, role: .worker(environment: 0)))
        sup.started(SpawnOrder(slot: 0, role: .worker(environment: 0)), pid: 3, now: 600)
        _ = sup.exited(pid: 3, now: 700)  // second quick death: 1 s
        XCTAssertNil(sup.nextSpawn(now: 1699))
        XCTAssertNotNil(sup.nextSpawn(now: 1700))
        // A child that lived long resets the count.
        sup.started(SpawnOrder(slot: 0, role: .worker(environment: 0)), pid: 4, now: 1700)
        _ = sup.exited(pid: 4, now: 60_000)
        XCTAssertNotNil(sup.nextSpawn(now: 60_000))
        XCTAssertEqual(Supervisor.backoff(afterFailures: 1), 500)
        XCTAssertEqual(Supervisor.backoff(afterFailures: 40), 60_000)
    }

    func testNoSpawnWithoutAFreeSlot() {
        var sup = Supervisor(quota: ChildQuota(multiplexers: 3, workers: []), slotCount: 1)
        sup.started(SpawnOrder(slot: 0, role: .multiplexer), pid: 1, now: 0)
        XCTAssertNil(sup.nextSpawn(now: 0))
    }
}
