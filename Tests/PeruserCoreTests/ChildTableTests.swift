import XCTest
@testable import PeruserCore

final class ChildTableTests: XCTestCase {
    private func withTable(slots: Int = 4, environments: Int = 2, workerPages: Int = 0,
                           _ body: (ChildTable, UnsafeMutableRawPointer, Int) -> Void) {
        let size = ChildTableLayout.size(slots: slots, environments: environments, workerPages: workerPages)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        guard let table = ChildTable.format(memory, size: size, slots: slots, environments: environments,
                                            workerPages: workerPages, generation: 7)
        else { return XCTFail("format failed") }
        body(table, memory, size)
    }

    /// A worker's page is in its environment's pool, named by its identity: a slot that
    /// passes from one tenant's worker to another's gets a page of the new tenant's pool, so
    /// whatever still maps the old page (a process the old worker left behind) writes only
    /// into the old tenant's pool.
    func testWorkerPagesComeFromTheirEnvironmentsPool() {
        let slots = 4, environments = 2, pages = 6  // pool of env 0: pages 0-2, env 1: 3-5
        let size = ChildTableLayout.size(slots: slots, environments: environments, workerPages: pages)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        guard let table = ChildTable.format(memory, size: size, slots: slots, environments: environments,
                                            workerPages: pages, generation: 1) else { return XCTFail("format failed") }
        table.setSlot(2, pid: 10, type: .worker, environment: 0, generation: 1, status: .ready, now: 1, workerPage: 1)
        let alicePage = table.pageOffset(2)
        XCTAssertEqual(alicePage, ChildTableLayout.workerPageOffset(slots: slots, environments: environments, index: 1))
        // The slot goes to bob's worker; alice's leftover writes her old page.
        table.setSlot(2, pid: 11, type: .worker, environment: 1, generation: 1, status: .ready, now: 2, workerPage: 4)
        XCTAssertNotEqual(table.pageOffset(2), alicePage)
        memory.storeBytes(of: ChildStatus.active.rawValue, toByteOffset: alicePage + ChildTableLayout.statusOffset,
                          as: UInt8.self)
        memory.storeBytes(of: Int64.min, toByteOffset: alicePage + ChildTableLayout.statusSinceOffset, as: Int64.self)
        XCTAssertEqual(table.slot(2)?.status, .ready, "bob's worker's status is not alice's to write")
        XCTAssertEqual(table.slot(2)?.statusSince, 2)
        // A page index beyond the pool (the identity is parent-written, but readers still check).
        table.setSlot(3, pid: 12, type: .worker, environment: 1, generation: 1, status: .ready, now: 3, workerPage: 99)
        XCTAssertEqual(table.pageOffset(3), ChildTableLayout.slotPageOffset(slots: slots, environments: environments, slot: 3))
        // Multiplexers keep their slot pages.
        table.setSlot(0, pid: 13, type: .multiplexer, environment: -1, generation: 1, status: .ready, now: 4)
        XCTAssertEqual(table.pageOffset(0), ChildTableLayout.slotPageOffset(slots: slots, environments: environments, slot: 0))
    }

    /// A reader keeps the roster until the parent starts or reaps a child: then the version
    /// differs, and the capacity it computes from its roster equals a full scan's.
    func testTheRosterFollowsTheParentsIdentities() {
        withTable(slots: 8, environments: 3) { table, _, _ in
            let empty = table.roster()
            XCTAssertEqual(empty.occupied, 0)
            table.setSlot(0, pid: 10, type: .processor, environment: 0, generation: 7, status: .ready, now: 1)
            table.setSlot(3, pid: 11, type: .multiplexer, environment: -1, generation: 7, status: .ready, now: 1)
            table.setSlot(5, pid: 12, type: .worker, environment: 0, generation: 7, status: .active, now: 1)
            table.setSlot(6, pid: 13, type: .worker, environment: 2, generation: 7, status: .ready, now: 1)
            table.setSlot(7, pid: 14, type: .worker, environment: 99, generation: 7, status: .ready, now: 1)
            XCTAssertNotEqual(table.rosterVersion, empty.version)
            let roster = table.roster()
            XCTAssertEqual(roster.version, table.rosterVersion)
            XCTAssertEqual(roster.slots, [[0, 5], [], [6]])
            XCTAssertEqual(roster.occupied, 5)
            XCTAssertEqual(roster.slots(of: 99), [])
            let limits = WorkerLimits(maxProcessors: 4)
            XCTAssertEqual(table.capacity(of: 0, limits: limits, maxClients: 5, roster: roster),
                           EnvironmentCapacity(workers: 2, idle: 1, queued: 0, maxProcessors: 4, serverFull: true))
            // A worker reaped: the version moves on, and the old roster is known stale.
            table.setSlot(5, pid: 0, type: .unknown, environment: 0, generation: 7, status: .standby, now: 2)
            XCTAssertNotEqual(table.rosterVersion, roster.version)
            XCTAssertEqual(table.roster().slots[0], [0])
            // A stale roster naming a slot that now holds another environment's child counts nothing wrong.
            table.setSlot(5, pid: 15, type: .worker, environment: 2, generation: 7, status: .ready, now: 3)
            XCTAssertEqual(table.capacity(of: 0, limits: limits, maxClients: 9, roster: roster).workers, 1)
        }
    }

    /// A generation's table says whether the parent ended it; a new one starts not ended, and
    /// the mark sits in the header, outside every page a child may write.
    func testTheParentMarksItsGenerationEnded() {
        withTable(slots: 4, environments: 2) { table, _, _ in
            XCTAssertFalse(table.generationEnded)
            table.setSlot(1, pid: 10, type: .worker, environment: 1, generation: 3, status: .active, now: 1)
            XCTAssertFalse(table.generationEnded)
            table.markGenerationEnded()
            XCTAssertTrue(table.generationEnded)
            XCTAssertLessThan(ChildTableLayout.generationEndedOffset + 4, ChildTableLayout.headerSize)
            XCTAssertEqual(table.roster().slots, [[], [1]])
        }
    }

    func testSlotsRoundTrip() {
        withTable(workerPages: 4) { table, memory, _ in
            XCTAssertEqual(memory.load(as: UInt32.self), ChildTableLayout.magic)
            XCTAssertEqual(memory.load(fromByteOffset: ChildTableLayout.versionOffset, as: UInt32.self), 5)
            table.setSlot(1, pid: 42, type: .processor, environment: 1, generation: 7, status: .starting, now: 5,
                          workerPage: 2)
            table.setStatus(1, .active, now: 9)
            "GET /x HTTP/1.1".withCString { request in
                "a.test".withCString { table.setRequest(1, request: request, vhost: $0) }
            }
            let s = table.slot(1)
            XCTAssertEqual(s?.pid, 42)
            XCTAssertEqual(s?.type, .processor)
            XCTAssertEqual(s?.status, .active)
            XCTAssertEqual(s?.statusSince, 9)
            XCTAssertEqual(s?.environment, 1)
            XCTAssertEqual(s?.request, "GET /x HTTP/1.1")
            XCTAssertEqual(s?.vhost, "a.test")
            XCTAssertEqual(table.status(of: 1)?.status, .active)
            XCTAssertEqual(table.status(of: 1)?.since, 9)
            XCTAssertEqual(table.status(of: 0)?.status, .standby)
            XCTAssertNil(table.status(of: 4))
            XCTAssertNil(table.slot(4))
            XCTAssertNil(table.slot(-1))
        }
    }

    func testEnvironmentCountersAndNames() {
        withTable { table, _, _ in
            table.setEnvironmentName(1, String(repeating: "n", count: 200))
            XCTAssertEqual(table.environment(1)?.name.count, ChildTableLayout.nameCapacity - 1)
            if let f = table.environmentField(1, ChildTableLayout.handedOffOffset) { f.storeBytes(of: UInt64(5), as: UInt64.self) }
            if let f = table.environmentPageField(1, ChildTableLayout.receivedOffset) { f.storeBytes(of: UInt64(3), as: UInt64.self) }
            XCTAssertEqual(table.environment(1)?.queued, 2)
            XCTAssertNil(table.environment(2))
            XCTAssertNil(table.environmentField(2, 0))
        }
    }

    func testGarbageNeverTrapsAndReadsSanitized() {
        withTable(slots: 8, environments: 3) { table, memory, size in
            var rng = SystemRandomNumberGenerator()
            for _ in 0..<50 {
                for i in 0..<size { memory.storeBytes(of: UInt8.random(in: 0...255, using: &rng), toByteOffset: i, as: UInt8.self) }
                for i in 0..<8 {
                    guard let s = table.slot(i) else { return XCTFail("slot \(i)") }
                    XCTAssertTrue(s.request.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7f })
                    XCTAssertTrue(s.vhost.utf8.count < ChildTableLayout.vhostCapacity)
                    // The parent's short read says what the full one says.
                    XCTAssertEqual(table.status(of: i)?.status, s.status)
                    XCTAssertEqual(table.status(of: i)?.since, s.statusSince)
                }
                for e in 0..<3 {
                    guard let c = table.environment(e) else { return XCTFail("env \(e)") }
                    XCTAssertTrue(c.queued >= 0 && c.queued <= 1 << 20)
                    XCTAssertTrue(c.availability <= 100)
                    XCTAssertTrue(c.name.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7f })
                }
            }
            // A status byte that is no status reads as ACTIVE (busy): the conservative guess.
            memory.storeBytes(of: ChildType.worker.rawValue,
                              toByteOffset: ChildTableLayout.identityOffset(0) + ChildTableLayout.typeOffset, as: UInt8.self)
            memory.storeBytes(of: UInt8(200), toByteOffset: ChildTableLayout.slotPageOffset(slots: 8, environments: 3, slot: 0)
                              + ChildTableLayout.statusOffset, as: UInt8.self)
            XCTAssertEqual(table.slot(0)?.status, .active)
            memory.storeBytes(of: UInt8(99), toByteOffset: ChildTableLayout.identityOffset(0) + ChildTableLayout.typeOffset,
                              as: UInt8.self)
            XCTAssertEqual(table.slot(0)?.type, .unknown)
            XCTAssertEqual(table.slot(0)?.status, .standby, "a slot the parent did not fill is free, whatever its page says")
        }
    }

    func testWhatAWorkerWritesLivesInPagesOfItsOwn() {
        for (slots, environments) in [(1, 1), (4, 2), (256, 3), (20000, 500)] {
            let page = ChildTableLayout.pageSize
            let pagesStart = ChildTableLayout.slotPageOffset(slots: slots, environments: environments, slot: 0)
            // Everything the parent and the multiplexers write lies below the first page a worker may write.
            XCTAssertLessThanOrEqual(ChildTableLayout.environmentOffset(slots: slots, environment: environments), pagesStart)
            XCTAssertEqual(pagesStart % page, 0)
            var offsets = Set<Int>()
            for slot in [0, slots / 2, slots - 1] {
                offsets.insert(ChildTableLayout.slotPageOffset(slots: slots, environments: environments, slot: slot))
            }
            for env in [0, environments - 1] {
                offsets.insert(ChildTableLayout.environmentPageOffset(slots: slots, environments: environments, environment: env))
            }
            for offset in offsets {
                XCTAssertEqual(offset % page, 0)
                XCTAssertLessThanOrEqual(offset + page, ChildTableLayout.size(slots: slots, environments: environments))
            }
            XCTAssertEqual(ChildTableLayout.environmentPageOffset(slots: slots, environments: environments, environment: 0),
                           ChildTableLayout.slotPageOffset(slots: slots, environments: environments, slot: slots - 1) + page)
        }
        // Every field of a slot's page and an environment's page fits in one page.
        XCTAssertLessThanOrEqual(ChildTableLayout.vhostOffset + ChildTableLayout.vhostCapacity, ChildTableLayout.pageSize)
        XCTAssertLessThanOrEqual(ChildTableLayout.servedOffset + 8, ChildTableLayout.pageSize)
    }

    /// What tells about a client or a request (request line, vhost, client, ticket) is on the
    /// worker's detail page, not on its page: status and counters are readable by every
    /// worker, the details only where the view keeps them.
    func testDetailsLiveOnTheDetailPageNotOnTheWorkerPage() {
        let slots = 4, environments = 2, pages = 6
        withTable(slots: slots, environments: environments, workerPages: pages) { table, memory, size in
            XCTAssertEqual(size, ChildTableLayout.size(slots: slots, environments: environments) + 2 * pages * 4096)
            table.setSlot(2, pid: 10, type: .worker, environment: 1, generation: 1, status: .ready, now: 1, workerPage: 4)
            let page = table.pageOffset(2)
            let detail = ChildTableLayout.detailPageOffset(slots: slots, environments: environments, workerPages: pages,
                                                           index: 4)
            XCTAssertEqual(table.detailPage(ofPage: page), detail)
            XCTAssertEqual(table.detailOffset(2), detail)
            XCTAssertEqual(detail % 4096, 0)
            XCTAssertLessThanOrEqual(detail + 4096, size)
            "GET /secret HTTP/1.1".withCString { request in
                "b.test".withCString { table.setRequest(page: page, request: request, vhost: $0) }
            }
            let client = ClientAddress(ipv4: 0x7f00_0003)
            table.setClient(page: page, client, ticket: 0xfeed)
            table.setStatus(page: page, .active, now: 2)
            // Nothing but status and counters on the worker page.
            for i in 64..<4096 { XCTAssertEqual(memory.load(fromByteOffset: page + i, as: UInt8.self), 0, "byte \(i)") }
            let s = table.slot(2)
            XCTAssertEqual(s?.request, "GET /secret HTTP/1.1")
            XCTAssertEqual(s?.vhost, "b.test")
            XCTAssertEqual(s?.client, client)
            XCTAssertTrue(table.showsTaken(0xfeed, environment: 1, roster: table.roster()))
            XCTAssertFalse(table.showsTaken(0xfeee, environment: 1, roster: table.roster()))
            XCTAssertFalse(table.showsTaken(0xfeed, environment: 0, roster: table.roster()))
            XCTAssertEqual(table.workersServing(client, environment: 1, roster: table.roster()), 1)
            // A view where the detail page reads zeros (another environment's worker's): the
            // status stays, the details are gone.
            memory.advanced(by: detail).initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
            XCTAssertEqual(table.slot(2)?.request, "")
            XCTAssertEqual(table.slot(2)?.vhost, "")
            XCTAssertEqual(table.slot(2)?.client, ClientAddress.none)
            XCTAssertEqual(table.slot(2)?.status, .active)
            // Multiplexers and free slots have no detail page.
            table.setSlot(0, pid: 13, type: .multiplexer, environment: -1, generation: 1, status: .ready, now: 4)
            XCTAssertNil(table.detailOffset(0))
            XCTAssertNil(table.detailOffset(3))
            XCTAssertNil(table.detailPage(ofPage: page + 8))
            XCTAssertNil(table.detailPage(ofPage: detail))
        }
    }

    /// A hand-off is in flight until a worker shows its ticket: still shown after the worker
    /// took seven more connections, gone after eight; and only for the worker's environment.
    func testATakenTicketShowsForTheWorkersLastEightConnections() {
        withTable(slots: 4, environments: 2, workerPages: 6) { table, _, _ in
            table.setSlot(2, pid: 10, type: .worker, environment: 1, generation: 1, status: .ready, now: 1, workerPage: 4)
            let page = table.pageOffset(2)
            let roster = table.roster()
            let client = ClientAddress(ipv4: 0x7f00_0001)
            func take(_ ticket: UInt64) {
                table.setClient(page: page, client, ticket: ticket)
                table.field(page: page, ChildTableLayout.connectionsOffset).storeBytes(
                    of: table.field(page: page, ChildTableLayout.connectionsOffset).load(as: UInt64.self) + 1,
                    as: UInt64.self)
            }
            XCTAssertFalse(table.showsTaken(0xa1, environment: 1, roster: roster))
            take(0xa1)
            for n in 0..<7 { take(0xb0 + UInt64(n)) }
            XCTAssertTrue(table.showsTaken(0xa1, environment: 1, roster: roster))
            XCTAssertTrue(table.showsTaken(0xb6, environment: 1, roster: roster))
            XCTAssertFalse(table.showsTaken(0xa1, environment: 0, roster: roster))
            take(0xc0)
            XCTAssertFalse(table.showsTaken(0xa1, environment: 1, roster: roster))
            XCTAssertTrue(table.showsTaken(0xb0, environment: 1, roster: roster))
            // A worker that is starting shows nothing yet.
            table.setStatus(page: page, .starting, now: 2)
            XCTAssertFalse(table.showsTaken(0xc0, environment: 1, roster: roster))
        }
        XCTAssertEqual(ChildTableLayout.recentTicketsOffset % 64, 0)
        XCTAssertLessThanOrEqual(ChildTableLayout.recentTicketsOffset, ChildTableLayout.pageSize - 64)
        XCTAssertGreaterThanOrEqual(ChildTableLayout.recentTicketsOffset, ChildTableLayout.lendOffset + 8)
    }

    /// An environment's pool runs to the next one's start, the last to the end of the pages;
    /// garbage starts are clamped, and an environment with no start has an empty pool.
    func testAnEnvironmentsPoolRunsToTheNextOnesStart() {
        XCTAssertEqual(ChildTableLayout.workerPool(poolStarts: [0, 3, 3, 5], workerPages: 8, environment: 0), 0..<3)
        XCTAssertEqual(ChildTableLayout.workerPool(poolStarts: [0, 3, 3, 5], workerPages: 8, environment: 1), 3..<3)
        XCTAssertEqual(ChildTableLayout.workerPool(poolStarts: [0, 3, 3, 5], workerPages: 8, environment: 3), 5..<8)
        XCTAssertEqual(ChildTableLayout.workerPool(poolStarts: [0, 3, 3, 5], workerPages: 8, environment: 4), 8..<8)
        XCTAssertEqual(ChildTableLayout.workerPool(poolStarts: [-4, 99], workerPages: 8, environment: 0), 0..<8)
        XCTAssertEqual(ChildTableLayout.workerPool(poolStarts: [6, 2], workerPages: 8, environment: 0), 6..<6)
    }

    /// Which byte ranges a worker of environment E sees as zeros: the detail pages of every
    /// other environment's pool (one or two ranges around its own), none with the full view.
    func testHiddenDetailRangesAreEveryOtherEnvironmentsDetailPages() {
        let slots = 5, environments = 3, pages = 9  // pools: env 0: 0-1, env 1: 2-6, env 2: 7-8
        let starts = [0, 2, 7]
        func detail(_ i: Int) -> Int {
            ChildTableLayout.detailPageOffset(slots: slots, environments: environments, workerPages: pages, index: i)
        }
        func hidden(_ e: Int, full: Bool = false, starts: [Int] = starts) -> [Range<Int>] {
            ChildTableLayout.hiddenDetailRanges(slots: slots, environments: environments, workerPages: pages,
                                                poolStarts: starts, environment: e, fullView: full)
        }
        XCTAssertEqual(hidden(0), [detail(2)..<detail(9)])
        XCTAssertEqual(hidden(1), [detail(0)..<detail(2), detail(7)..<detail(9)])
        XCTAssertEqual(hidden(2), [detail(0)..<detail(7)])
        for e in 0..<3 { XCTAssertEqual(hidden(e, full: true), []) }
        // No pool (an unknown environment): every detail page hidden.
        XCTAssertEqual(hidden(5), [detail(0)..<detail(9)])
        XCTAssertEqual(hidden(-1), [detail(0)..<detail(9)])
        // An empty pool in the middle: one range.
        XCTAssertEqual(hidden(1, starts: [0, 4, 4]), [detail(0)..<detail(9)])
        // The last detail page ends the table; every range is page-aligned; worker pages, the
        // environment pages and the records are never in a hidden range.
        XCTAssertEqual(detail(9), ChildTableLayout.size(slots: slots, environments: environments, workerPages: pages))
        let firstDetail = detail(0)
        XCTAssertEqual(firstDetail, ChildTableLayout.workerPageOffset(slots: slots, environments: environments, index: pages))
        for e in -1..<4 {
            for range in hidden(e) {
                XCTAssertEqual(range.lowerBound % 4096, 0)
                XCTAssertEqual(range.upperBound % 4096, 0)
                XCTAssertGreaterThanOrEqual(range.lowerBound, firstDetail)
            }
        }
        // Every environment keeps its own detail pages visible.
        for e in 0..<3 {
            let own = detail(starts[e])..<detail(e + 1 < 3 ? starts[e + 1] : pages)
            XCTAssertTrue(hidden(e).allSatisfy { !$0.overlaps(own) })
        }
        XCTAssertEqual(ChildTableLayout.hiddenDetailRanges(slots: slots, environments: environments, workerPages: 0,
                                                           poolStarts: [], environment: 0, fullView: false), [])
    }

    /// The pages given back when a pool's workers are gone: each free worker page and its detail
    /// page, consecutive ones in one range; nothing outside the worker pages, duplicates and
    /// indices out of range ignored.
    func testFreeWorkerPagesAreGivenBackAsRangesOfWorkerAndDetailPages() {
        let slots = 5, environments = 3, pages = 9
        func page(_ i: Int) -> Int {
            ChildTableLayout.workerPageOffset(slots: slots, environments: environments, index: i)
        }
        func detail(_ i: Int) -> Int {
            ChildTableLayout.detailPageOffset(slots: slots, environments: environments, workerPages: pages, index: i)
        }
        func ranges(_ indices: [Int]) -> [Range<Int>] {
            ChildTableLayout.workerPageRanges(indices, slots: slots, environments: environments, workerPages: pages)
        }
        XCTAssertEqual(ranges([2, 3, 4, 6]), [page(2)..<page(5), page(6)..<page(7),
                                               detail(2)..<detail(5), detail(6)..<detail(7)])
        XCTAssertEqual(ranges([6, 4, 3, 2, 3]), ranges([2, 3, 4, 6]))
        XCTAssertEqual(ranges([8]), [page(8)..<page(9), detail(8)..<detail(9)])
        XCTAssertEqual(detail(9), ChildTableLayout.size(slots: slots, environments: environments, workerPages: pages))
        XCTAssertEqual(ranges([-1, 9, 100]), [])
        XCTAssertEqual(ranges([]), [])
        // The environment pages and the slots' pages stay.
        let firstWorkerPage = page(0)
        XCTAssertTrue(ranges(Array(0..<9)).allSatisfy { $0.lowerBound >= firstWorkerPage && $0.lowerBound % 4096 == 0 })
    }

    /// A free slot's page is not written when the parent frees the slot: it is never read, and
    /// a write would allocate it.
    func testFreeingASlotLeavesItsPageUntouched() {
        withTable(slots: 6, environments: 2, workerPages: 6) { table, memory, _ in
            let o = table.pageOffset(slot: 4, type: .unknown, workerPage: 0)
            table.setSlot(4, pid: 0, type: .unknown, environment: 0, generation: 7, status: .standby, now: 9)
            XCTAssertEqual(memory.load(fromByteOffset: o + ChildTableLayout.statusSinceOffset, as: Int64.self), 0)
            XCTAssertEqual(table.status(of: 4)?.status, .standby)
        }
    }

    /// A worker sleeps in recvmsg only when no other worker of its environment is ready: it
    /// looks at its pool's pages, not at its own, and not at another environment's pool.
    func testAnotherReadyWorkerIsLookedForInTheEnvironmentsPoolOnly() {
        withTable(slots: 6, environments: 2, workerPages: 6) { table, memory, _ in  // pools 0-2, 3-5
            table.setSlot(0, pid: 10, type: .worker, environment: 0, generation: 7, status: .ready, now: 1, workerPage: 0)
            let own = table.pageOffset(0)
            XCTAssertFalse(table.anotherWorkerReady(among: 0..<3, except: own), "itself")
            table.setSlot(1, pid: 11, type: .worker, environment: 1, generation: 7, status: .ready, now: 1, workerPage: 3)
            XCTAssertFalse(table.anotherWorkerReady(among: 0..<3, except: own), "another environment's")
            table.setSlot(2, pid: 12, type: .worker, environment: 0, generation: 7, status: .active, now: 1, workerPage: 2)
            XCTAssertFalse(table.anotherWorkerReady(among: 0..<3, except: own), "a busy one")
            table.setStatus(2, .ready, now: 2)
            XCTAssertTrue(table.anotherWorkerReady(among: 0..<3, except: own))
            // A range past the pages (garbage in a configuration) reads nothing past them.
            XCTAssertTrue(table.anotherWorkerReady(among: 2..<99, except: own))
            XCTAssertFalse(table.anotherWorkerReady(among: 6..<99, except: own))
        }
    }

    func testWorkerCountersGoToTheEnvironmentsPage() {
        withTable { table, memory, _ in
            table.environmentField(1, ChildTableLayout.handedOffOffset)?.storeBytes(of: UInt64(3), as: UInt64.self)
            table.environmentPageField(1, ChildTableLayout.servedOffset)?.storeBytes(of: UInt64(9), as: UInt64.self)
            XCTAssertEqual(table.environment(1)?.served, 9)
            XCTAssertEqual(memory.load(fromByteOffset: ChildTableLayout.environmentPageOffset(slots: 4, environments: 2, environment: 1)
                                       + ChildTableLayout.servedOffset, as: UInt64.self), 9)
            XCTAssertEqual(table.environment(0)?.served, 0)
        }
    }

    /// Reading a memfd's page gives it memory: the page of an environment nothing was handed
    /// to in this table is not read (its workers count only what they took).
    func testTheParentDoesNotReadThePageOfAnEnvironmentNeverHandedTo() {
        withTable { table, _, _ in
            table.environmentPageField(0, ChildTableLayout.receivedOffset)?.storeBytes(of: UInt64(5), as: UInt64.self)
            table.environmentPageField(0, ChildTableLayout.servedOffset)?.storeBytes(of: UInt64(5), as: UInt64.self)
            XCTAssertEqual(table.flow(0).received, 0)
            XCTAssertEqual(table.environment(0)?.served, 0)
            table.environmentField(0, ChildTableLayout.handedOffOffset)?.storeBytes(of: UInt64(7), as: UInt64.self)
            XCTAssertEqual(table.flow(0).received, 5)
            XCTAssertEqual(table.queued(0), 2)
            XCTAssertEqual(table.environment(0)?.served, 5)
        }
    }

    private func lend(_ count: UInt64, cell: Int) -> UInt64 {
        guard let number = ChildTable.lendNumber(count: count, cell: cell) else {
            XCTFail("count \(count) and cell \(cell) make no lend number")
            return 0
        }
        return number
    }

    /// A lent connection is back when the cell its number names, in its environment's page,
    /// holds that number; it is being served while a live worker of that environment shows it as
    /// its current connection (active); anything else is unknown. Only its own environment's
    /// page counts, and what a worker gave back stays there after it exits.
    func testLentConnectionsAreFoundOnlyInTheirEnvironmentsCells() {
        let slots = 4, environments = 2, pages = 4  // pool of env 0: pages 0-1, env 1: 2-3
        withTable(slots: slots, environments: environments, workerPages: pages) { table, _, _ in
            table.setSlot(1, pid: 10, type: .worker, environment: 0, generation: 7, status: .ready, now: 1, workerPage: 0)
            table.setSlot(2, pid: 11, type: .worker, environment: 1, generation: 7, status: .ready, now: 1, workerPage: 2)
            let page0 = table.pageOffset(1)
            let five = lend(5, cell: 0), six = lend(6, cell: 1), seven = lend(7, cell: 2), eight = lend(8, cell: 3)
            XCTAssertEqual(table.lendState(five, environment: 0, roster: table.roster()), .unknown)
            table.setLend(page: page0, five)
            XCTAssertEqual(table.lendState(five, environment: 0, roster: table.roster()), .unknown,
                           "a ready worker is not serving it")
            table.setStatus(page: page0, .active, now: 2)
            XCTAssertEqual(table.lendState(five, environment: 0, roster: table.roster()), .serving)
            table.giveBackLent(environment: 0, lend: five, how: .answered)
            XCTAssertEqual(table.lendState(five, environment: 0, roster: table.roster()), .returned(.answered, keepalives: 0))
            // Environment 1's number 6 is in environment 1's page; environment 0's number 6 is not it.
            table.giveBackLent(environment: 1, lend: six, how: .ended)
            XCTAssertEqual(table.lendState(six, environment: 0, roster: table.roster()), .unknown)
            XCTAssertEqual(table.lendState(six, environment: 1, roster: table.roster()), .returned(.ended, keepalives: 0))
            table.giveBackLent(environment: 0, lend: seven, how: .sentBack)
            XCTAssertEqual(table.lendState(seven, environment: 0, roster: table.roster()), .returned(.sentBack, keepalives: 0))
            // The worker exits: what it served is not read any more, what it gave back still is.
            table.setLend(page: page0, eight)
            table.setSlot(1, pid: 0, type: .unknown, environment: 0, generation: 7, status: .standby, now: 3)
            XCTAssertEqual(table.lendState(eight, environment: 0, roster: table.roster()), .unknown)
            XCTAssertEqual(table.lendState(five, environment: 0, roster: table.roster()), .returned(.answered, keepalives: 0))
            XCTAssertEqual(table.lendState(seven, environment: 0, roster: table.roster()), .returned(.sentBack, keepalives: 0))
            // Number 0 is never lent.
            XCTAssertEqual(table.lendState(0, environment: 0, roster: table.roster()), .unknown)
        }
    }

    /// A cell holds its entry until a later lend with the same cell is given back: however many
    /// connections the environment's workers give back in other cells meanwhile, it is found
    /// (a ring of a worker's last 256 give-backs lost it after 256). Each entry carries its
    /// connection's kept-alive answers so far.
    func testACellKeepsItsEntryHoweverManyOthersAreGivenBack() {
        withTable(slots: 4, environments: 1, workerPages: 2) { table, _, _ in
            table.setSlot(1, pid: 10, type: .worker, environment: 0, generation: 7, status: .active, now: 1, workerPage: 0)
            let kept = lend(1, cell: 0)
            table.giveBackLent(environment: 0, lend: kept, how: .answered, keepalives: 41)
            let others = ChildTableLayout.lendCellCount - 1
            for count in UInt64(2)...100_000 {
                table.giveBackLent(environment: 0, lend: lend(count, cell: 1 + Int(count) % others), how: .answered,
                                   keepalives: 7)
            }
            XCTAssertEqual(table.lendState(kept, environment: 0, roster: table.roster()), .returned(.answered, keepalives: 41))
            XCTAssertEqual(table.lendState(lend(99_999, cell: 1 + 99_999 % others), environment: 0, roster: table.roster()),
                           .returned(.answered, keepalives: 7))
            // The same cell taken again for another connection: the new entry replaces the old.
            let next = lend(100_001, cell: 0)
            table.giveBackLent(environment: 0, lend: next, how: .sentBack, keepalives: .max)
            XCTAssertEqual(table.lendState(next, environment: 0, roster: table.roster()), .returned(.sentBack, keepalives: .max))
            XCTAssertEqual(table.lendState(kept, environment: 0, roster: table.roster()), .unknown)
        }
    }

    /// Lend numbers: the count below lendCellShift, the cell above; none for a count or cell that
    /// does not fit. What a worker wrote in a cell is read as it is, never trusted beyond its own
    /// environment, and never traps.
    func testLendNumbersAndGarbageInCells() {
        XCTAssertNil(ChildTable.lendNumber(count: 0, cell: 0))
        XCTAssertNil(ChildTable.lendNumber(count: 1 << ChildTableLayout.lendCellShift, cell: 0))
        XCTAssertNil(ChildTable.lendNumber(count: 1, cell: ChildTableLayout.lendCellCount))
        XCTAssertNil(ChildTable.lendNumber(count: 1, cell: -1))
        let number = lend((1 << ChildTableLayout.lendCellShift) - 1, cell: ChildTableLayout.lendCellCount - 1)
        XCTAssertEqual(ChildTable.lendCell(of: number), ChildTableLayout.lendCellCount - 1)
        XCTAssertEqual(ChildTable.lendCount(of: number), (1 << ChildTableLayout.lendCellShift) - 1)
        XCTAssertEqual(number & ChildTableLayout.lendMask, number, "the kind bits stay free")
        XCTAssertGreaterThanOrEqual(ChildTableLayout.lendCellsOffset, ChildTableLayout.shedOffset + 8)
        XCTAssertLessThanOrEqual(ChildTableLayout.lendCellsOffset + ChildTableLayout.lendCellCount * ChildTableLayout.lendCellSize,
                                 ChildTableLayout.pageSize, "the cells fit in the environment's page")
        withTable(slots: 4, environments: 2, workerPages: 4) { table, memory, _ in
            table.setSlot(1, pid: 10, type: .worker, environment: 0, generation: 7, status: .active, now: 1, workerPage: 0)
            // A number naming a cell past the page reads as unknown, and is not written.
            let beyond = UInt64(ChildTableLayout.lendCellCount) << ChildTableLayout.lendCellShift | 3
            table.giveBackLent(environment: 0, lend: beyond, how: .answered)
            XCTAssertEqual(table.lendState(beyond, environment: 0, roster: table.roster()), .unknown)
            XCTAssertEqual(table.lendState(ChildTableLayout.lendMask, environment: 0, roster: table.roster()), .unknown)
            XCTAssertEqual(table.lendState(lend(3, cell: 0), environment: 5, roster: table.roster()), .unknown)
            // Kind bits in the number given back are dropped; both bits (no writer here writes
            // them) read as an end.
            table.giveBackLent(environment: 0, lend: 0xc000_0000_0000_0040, how: .ended)
            XCTAssertEqual(table.lendState(0x40, environment: 0, roster: table.roster()), .returned(.ended, keepalives: 0))
            guard let cell = table.environmentPageField(0, ChildTableLayout.lendCellsOffset) else { return XCTFail("no page") }
            cell.storeBytes(of: UInt64(0xc000_0000_0000_0041), as: UInt64.self)
            XCTAssertEqual(table.lendState(0x41, environment: 0, roster: table.roster()), .returned(.ended, keepalives: 0))
            // All ones name a cell past the page: nothing matches it.
            cell.storeBytes(of: UInt64.max, as: UInt64.self)
            XCTAssertEqual(table.lendState(ChildTableLayout.lendMask, environment: 0, roster: table.roster()), .unknown)
            XCTAssertEqual(table.lendState(0x41, environment: 0, roster: table.roster()), .unknown)
            // Environment 0's garbage says nothing about environment 1's connections.
            XCTAssertEqual(table.lendState(0x40, environment: 1, roster: table.roster()), .unknown)
            _ = memory
        }
    }

    func testFormatRefusesASmallBuffer() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 16)
        defer { memory.deallocate() }
        XCTAssertNil(ChildTable.format(memory, size: 64, slots: 4, environments: 1, generation: 0))
    }
}

final class LimitsTests: XCTestCase {
    private func expect(_ error: LimitError, _ body: () throws -> Void) {
        XCTAssertThrowsError(try body()) { XCTAssertEqual($0 as? LimitError, error) }
    }

    func testDefaultsAreTheSpecs() throws {
        let l = ServerLimits()
        XCTAssertEqual([l.serverLimit, l.maxClients, l.workers.minProcessors, l.workers.maxProcessors, l.workers.minSpare,
                        l.workers.maxSpare, l.minMultiplexers, l.maxMultiplexers, l.multiplexerIdleTimeout,
                        l.expireTimeout, l.idleTimeout, l.processorWaitSeconds, l.processorWaitLevels],
                       [256, 256, 0, 10, 2, 0, 3, 10, 0, 1800, 900, 5, 10])
        try validate(l, environments: [l.workers])
    }

    func testMaxClientsFollowsServerLimitUnlessGiven() {
        var l = ServerLimits()
        l.serverLimit = 50
        XCTAssertEqual(l.maxClients, 50)
        l.maxClients = 60
        expect(.maxClientsAboveServerLimit(maxClients: 60, serverLimit: 50)) { try validate(l, environments: []) }
    }

    func testMinAboveMax() {
        expect(.minAboveMax(minDirective: "MinProcessors", min: 5, maxDirective: "MaxProcessors", max: 4, scope: "x")) {
            try validate(WorkerLimits(minProcessors: 5, maxProcessors: 4), scope: "x")
        }
        expect(.minAboveMax(minDirective: "MinSpareProcessors", min: 3, maxDirective: "MaxSpareProcessors", max: 2, scope: "x")) {
            try validate(WorkerLimits(minProcessors: 0, maxProcessors: 9, minSpare: 3, maxSpare: 2), scope: "x")
        }
        XCTAssertNoThrow(try validate(WorkerLimits(minProcessors: 0, maxProcessors: 9, minSpare: 3, maxSpare: 0), scope: "x"))
        var l = ServerLimits()
        l.minMultiplexers = 11
        expect(.minAboveMax(minDirective: "MinMultiplexers", min: 11, maxDirective: "MaxMultiplexers", max: 10, scope: "(global)")) {
            try validate(l, environments: [])
        }
    }

    func testReservedSlotsAndMinimumsMustFit() {
        var l = ServerLimits()
        l.serverLimit = 4
        expect(.reservedSlotsExceedServerLimit(environments: 2, multiplexers: 3, serverLimit: 4)) {
            try validate(l, environments: [WorkerLimits(), WorkerLimits()])
        }
        l.serverLimit = 10
        expect(.minimumsExceedMaxClients(total: 11, maxClients: 10)) {
            try validate(l, environments: [WorkerLimits(minProcessors: 8)])
        }
    }

    func testOverridesApplyPerEnvironment() {
        let global = WorkerLimits(minProcessors: 1, maxProcessors: 10, minSpare: 2, maxSpare: 0)
        XCTAssertEqual(WorkerLimitOverrides(maxProcessors: 3, maxSpare: 1).applied(to: global),
                       WorkerLimits(minProcessors: 1, maxProcessors: 3, minSpare: 2, maxSpare: 1))
    }
}
