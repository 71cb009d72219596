import XCTest
@testable import PeruserCore

final class ChildExitTests: XCTestCase {
    private let worker = ChildRole.worker(environment: 1)

    /// A worker of the current generation (3), unasked, dying uncleanly while the server runs:
    /// each test changes only what it is about.
    private func exit(role: ChildRole? = nil, generation: UInt32 = 3, retiring: Bool = false, draining: Bool = false,
                      expired: Bool = false, status: ChildStatus?, exitedCleanly: Bool = false,
                      serverStopping: Bool = false) -> ChildExit {
        ChildExit.classify(role: role ?? worker, generation: generation, retiring: retiring, draining: draining,
                           expired: expired, status: status, exitedCleanly: exitedCleanly,
                           serverStopping: serverStopping, currentGeneration: 3)
    }

    func testARecycledWorkerBesideOthersLeavesItsPoolsPagesForItsReplacement() {
        let recycled = exit(status: .ready, exitedCleanly: true)
        XCTAssertFalse(recycled.releasesPoolPages(otherWorkersLive: true),
                       "replaced under load: the replacement takes a page of the pool again")
        XCTAssertTrue(recycled.releasesPoolPages(otherWorkersLive: false), "the last one: nothing would give them back")
        XCTAssertFalse(exit(status: .active).releasesPoolPages(otherWorkersLive: true), "a crash beside others: the same")
    }

    func testAWorkerTheParentStoppedGivesBackItsPoolsFreePages() {
        for (retiring, draining, expired) in [(true, false, false), (false, true, false), (false, false, true)] {
            let e = exit(retiring: retiring, draining: draining, expired: expired, status: .ready, exitedCleanly: true)
            XCTAssertTrue(e.releasesPoolPages(otherWorkersLive: true),
                          "retiring \(retiring) draining \(draining) expired \(expired): an idle or surplus worker gone")
        }
        let older = exit(generation: 2, retiring: true, status: .ready, exitedCleanly: true)
        XCTAssertFalse(older.releasesPoolPages(otherWorkersLive: false), "an older generation's pages are not this table's")
    }

    func testAWorkerThatDiesBeforeItReportedReadyFailedToStart() {
        let e = exit(status: .starting)
        XCTAssertTrue(e.failedToStart, "its jail, cgroup or user is missing, say")
        XCTAssertFalse(e.countsAsClean)
        XCTAssertFalse(e.wasServing)
        XCTAssertTrue(e.isCurrentGeneration)
        XCTAssertFalse(e.wasAskedToStop)
    }

    func testAWorkerThatServedAndThenCrashedIsAnOrdinaryDeath() {
        for status in [ChildStatus.ready, .active] {
            let e = exit(status: status)
            XCTAssertFalse(e.failedToStart, "\(status)")
            XCTAssertTrue(e.wasServing, "\(status)")
            XCTAssertFalse(e.countsAsClean, "\(status): still unclean; RestartBackoff lets it restart at once")
        }
    }

    func testAChildAskedToStopIsNeitherAFailedStartNorUnclean() {
        for (retiring, draining, expired) in [(true, false, false), (false, true, false), (false, false, true)] {
            let e = exit(retiring: retiring, draining: draining, expired: expired, status: .starting)
            XCTAssertTrue(e.wasAskedToStop)
            XCTAssertFalse(e.failedToStart, "retiring \(retiring) draining \(draining) expired \(expired)")
            XCTAssertTrue(e.countsAsClean, "killed for ExpireTimeout, say: not the environment's fault")
        }
    }

    func testDeathsWhileTheServerStopsAreNotFailedStarts() {
        let e = exit(status: .starting, serverStopping: true)
        XCTAssertFalse(e.failedToStart)
        XCTAssertFalse(e.countsAsClean, "the backoff is told what happened, as before")
    }

    func testACleanExitIsNotAFailedStart() {
        let e = exit(status: .starting, exitedCleanly: true)
        XCTAssertFalse(e.failedToStart)
        XCTAssertTrue(e.countsAsClean)
    }

    func testMultiplexersNeverFlagAnEnvironment() {
        let e = exit(role: .multiplexer, status: .starting)
        XCTAssertFalse(e.failedToStart)
        XCTAssertFalse(e.countsAsClean, "a multiplexer dying at once is still backed off")
    }

    func testAnOlderGenerationsStatusIsNotThisTablesToGive() {
        for status in [ChildStatus.starting, .ready, .active] {
            let e = exit(generation: 2, status: status)
            XCTAssertFalse(e.isCurrentGeneration)
            XCTAssertFalse(e.failedToStart, "\(status)")
            XCTAssertFalse(e.wasServing, "\(status): the slot of the current table belongs to someone else")
        }
        XCTAssertFalse(ChildExit.classify(role: worker, generation: .max, retiring: false, draining: false,
                                          expired: false, status: .starting, exitedCleanly: false,
                                          serverStopping: false, currentGeneration: 0).isCurrentGeneration)
    }

    func testNoStatusToReadIsNeitherAFailedStartNorServing() {
        let e = exit(status: nil)
        XCTAssertFalse(e.failedToStart)
        XCTAssertFalse(e.wasServing)
        XCTAssertFalse(e.countsAsClean)
    }

    /// A worker writes any byte it likes into its status. The table reads one that is no status
    /// as `.active`; an absent status is nil. Neither makes a failed start of it.
    func testAHostileStatusByteIsReadSafely() {
        let slots = 4, environments = 2, pages = 4
        let size = ChildTableLayout.size(slots: slots, environments: environments, workerPages: pages)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        guard let table = ChildTable.format(memory, size: size, slots: slots, environments: environments,
                                            workerPages: pages, generation: 3) else { return XCTFail("format failed") }
        table.setSlot(2, pid: 10, type: .worker, environment: 1, generation: 3, status: .starting, now: 1, workerPage: 2)
        for byte: UInt8 in [4, 0x7F, 0x80, 0xFE, 0xFF] {
            memory.storeBytes(of: byte, toByteOffset: table.pageOffset(2) + ChildTableLayout.statusOffset, as: UInt8.self)
            let e = exit(status: table.slot(2)?.status)
            XCTAssertFalse(e.failedToStart, "byte \(byte)")
            XCTAssertTrue(e.wasServing, "byte \(byte): read as busy, the safe guess")
            XCTAssertFalse(exit(status: ChildStatus(rawValue: byte)).failedToStart, "byte \(byte)")
        }
        // The one lie that makes a failed start only flags the liar's own environment.
        memory.storeBytes(of: ChildStatus.starting.rawValue,
                          toByteOffset: table.pageOffset(2) + ChildTableLayout.statusOffset, as: UInt8.self)
        XCTAssertTrue(exit(status: table.slot(2)?.status).failedToStart)
    }

    /// Every combination of the inputs, against the rule written out in words.
    func testEveryCombination() {
        let roles: [ChildRole] = [.multiplexer, .worker(environment: 0), .worker(environment: 5)]
        let statuses: [ChildStatus?] = [nil, .standby, .starting, .ready, .active]
        let flags = [(false, false, false), (true, false, false), (false, true, false), (false, false, true),
                     (true, true, true)]
        var count = 0
        for role in roles {
            for generation: UInt32 in [3, 2, 4] {
                for (retiring, draining, expired) in flags {
                    for status in statuses {
                        for clean in [false, true] {
                            for stopping in [false, true] {
                                let e = exit(role: role, generation: generation, retiring: retiring,
                                             draining: draining, expired: expired, status: status,
                                             exitedCleanly: clean, serverStopping: stopping)
                                let label = "\(role) gen \(generation) flags \(retiring)\(draining)\(expired) "
                                    + "\(String(describing: status)) clean \(clean) stopping \(stopping)"
                                let current = generation == 3
                                let asked = retiring || draining || expired
                                let isWorker = role != .multiplexer
                                XCTAssertEqual(e.isCurrentGeneration, current, label)
                                XCTAssertEqual(e.wasAskedToStop, asked, label)
                                XCTAssertEqual(e.countsAsClean, clean || asked, label)
                                XCTAssertEqual(e.wasServing, current && (status == .ready || status == .active), label)
                                let failed = current && isWorker && !asked && !clean && !stopping && status == .starting
                                XCTAssertEqual(e.failedToStart, failed, label)
                                if e.failedToStart {
                                    XCTAssertFalse(e.countsAsClean, label)
                                    XCTAssertFalse(e.wasServing, label)
                                }
                                count += 1
                            }
                        }
                    }
                }
            }
        }
        XCTAssertEqual(count, 3 * 3 * 5 * 5 * 2 * 2)
    }

    /// What the parent does with it: a failed start holds the next start back; a worker that
    /// served restarts at once; a retired one too.
    func testTheBackoffFollowsTheClassification() {
        func backoff(after e: ChildExit) -> Int64? {
            var b = RestartBackoff()
            if e.isCurrentGeneration {
                b.childExited(role: worker, startedAt: 1000, now: 1500, cleanly: e.countsAsClean, wasServing: e.wasServing)
            }
            return b.until[worker]
        }
        XCTAssertEqual(backoff(after: exit(status: .starting)), 2000)
        XCTAssertNil(backoff(after: exit(status: .active)))
        XCTAssertNil(backoff(after: exit(retiring: true, status: .starting)))
        XCTAssertNil(backoff(after: exit(generation: 2, status: .starting)))
    }
}
