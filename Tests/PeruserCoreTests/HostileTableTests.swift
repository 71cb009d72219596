import XCTest
@testable import PeruserCore

// A worker runs tenant code and may write any bytes into its own slot page and its
// environment's page. These tests fill exactly those pages with garbage (extremes, random
// values, random bytes) and check that the parent's and the multiplexers' readers never trap,
// and that what environment A's workers write changes nothing the parent plans for B.

/// SplitMix64: seeded and deterministic, so a failure replays from the seed it reports.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// 0..<n (n > 0).
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    /// lower...upper.
    mutating func within(_ lower: Int, _ upper: Int) -> Int { lower + below(upper - lower + 1) }

    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }

    mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next()) }

    mutating func pick<T>(_ values: [T]) -> T { values[below(values.count)] }

    /// Mostly the values that break naive arithmetic, else any bit pattern.
    mutating func hostileInt64() -> Int64 {
        chance(60) ? pick([.min, .max, 0, -1, 1, .min + 1, .max - 1, -1000]) : Int64(bitPattern: next())
    }

    mutating func hostileUInt64() -> UInt64 {
        chance(60) ? pick([0, .max, .max - 1, 1, UInt64(Int64.max), UInt64(Int64.max) + 1]) : next()
    }
}

/// One configuration and the children the parent knows of (its private records), with what
/// each child honestly reports.
private struct Scenario {
    struct Member {
        var slot: Int
        var role: ChildRole
        var type: ChildType
        var retiring: Bool
        var status: ChildStatus
        var since: Int64
    }

    var limits: ServerLimits
    var environments: [WorkerLimits]
    var members: [Member]
    var handedOff: [UInt64]
    var received: [UInt64]
    var served: [UInt64]
    var demanded: [Bool]
    var backoff: [ChildRole: Int64]
    var now: Int64
    /// The environment whose workers write garbage.
    var hostile: Int

    static let names = ["alpha", "beta"]
    var slotCount: Int { limits.serverLimit }

    /// `ample`: MaxClients and the slots fit every environment's MaxProcessors at once, so
    /// that no environment's spawns can crowd out another's.
    static func random(_ rng: inout SplitMix64, ample: Bool, hostile: Int) -> Scenario {
        var limits = ServerLimits()
        limits.serverLimit = 48
        limits.minMultiplexers = rng.within(0, 2)
        limits.maxMultiplexers = 3
        limits.multiplexerIdleTimeout = rng.pick([0, 1, 5, 60, Int.max])
        limits.expireTimeout = rng.pick([0, 1, 30, 1800, Int.max])
        limits.idleTimeout = rng.pick([0, 1, 10, 900, Int.max])
        limits.maxClients = ample ? 48 : rng.within(1, 48)
        let environments = names.indices.map { _ -> WorkerLimits in
            let maxProcessors = rng.within(1, 6)
            let minSpare = rng.within(0, maxProcessors)
            return WorkerLimits(minProcessors: rng.within(0, min(2, maxProcessors)), maxProcessors: maxProcessors,
                                minSpare: minSpare, maxSpare: rng.chance(50) ? 0 : rng.within(minSpare, maxProcessors))
        }
        let now: Int64 = rng.chance(90) ? Int64(rng.within(0, 100_000_000)) : rng.hostileInt64()

        var free = Array(0..<limits.serverLimit)
        // A free slot: `preferred` if it is (a PROCESSOR's reserved slot), else a general one.
        func take(_ preferred: Int? = nil) -> Int {
            if let preferred, let i = free.firstIndex(of: preferred) { return free.remove(at: i) }
            let general = free.indices.filter { free[$0] >= environments.count }
            return free.remove(at: general[rng.below(general.count)])
        }
        func honest(_ role: ChildRole, _ type: ChildType, slot: Int) -> Member {
            Member(slot: slot, role: role, type: type, retiring: rng.chance(10),
                   status: rng.pick([.starting, .ready, .ready, .active]),
                   since: Int64(rng.within(0, Int(min(max(0, now), 100_000_000)))))
        }
        var members: [Member] = []
        for _ in 0..<rng.within(0, limits.maxMultiplexers) {
            members.append(honest(.multiplexer, .multiplexer, slot: take()))
        }
        for (env, workerLimits) in environments.enumerated() {
            for n in 0..<rng.within(0, workerLimits.maxProcessors) {
                let processor = n == 0
                members.append(honest(.worker(environment: env), processor ? .processor : .worker,
                                      slot: take(processor ? env : nil)))
            }
        }
        var backoff: [ChildRole: Int64] = [:]
        for role in [ChildRole.multiplexer] + environments.indices.map({ ChildRole.worker(environment: $0) })
        where rng.chance(15) {
            backoff[role] = now &+ Int64(rng.within(-1000, 1000))
        }
        let handedOff = environments.indices.map { _ in UInt64(rng.within(0, 20)) }
        return Scenario(limits: limits, environments: environments, members: members, handedOff: handedOff,
                        received: handedOff.map { $0 - UInt64(rng.within(0, Int($0))) },
                        served: environments.indices.map { _ in UInt64(rng.within(0, 1000)) },
                        demanded: environments.indices.map { _ in rng.chance(30) }, backoff: backoff, now: now,
                        hostile: hostile)
    }

    var policy: MaintenancePolicy {
        MaintenancePolicy(limits: limits, environments: environments, generation: 1)
    }

    func isWorker(of env: Int, slot: Int) -> Bool {
        members.contains { $0.slot == slot && $0.role == .worker(environment: env) }
    }

    /// Workers of `env` the plan counts against MaxProcessors.
    func liveWorkers(of env: Int) -> Int {
        members.filter { $0.role == .worker(environment: env) && !$0.retiring }.count
    }
}

/// A formatted table in memory of its own, filled as the parent and the honest children would.
private final class TableMemory {
    let memory: UnsafeMutableRawPointer
    let size: Int
    let table: ChildTable

    init(_ s: Scenario) {
        size = ChildTableLayout.size(slots: s.slotCount, environments: s.environments.count)
        memory = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        table = ChildTable.format(memory, size: size, slots: s.slotCount, environments: s.environments.count,
                                  generation: 1) ?? ChildTable(base: memory, slotCount: 0, environmentCount: 0)
        for m in s.members {
            let env: Int
            if case .worker(let e) = m.role { env = e } else { env = -1 }
            table.setSlot(m.slot, pid: Int32(1000 + m.slot), type: m.type, environment: env, generation: 1,
                          status: m.status, now: m.since)
        }
        for e in s.environments.indices {
            table.setEnvironmentName(e, Scenario.names[e])
            table.environmentField(e, ChildTableLayout.handedOffOffset)?.storeBytes(of: s.handedOff[e], as: UInt64.self)
            table.environmentPageField(e, ChildTableLayout.receivedOffset)?.storeBytes(of: s.received[e], as: UInt64.self)
            table.environmentPageField(e, ChildTableLayout.servedOffset)?.storeBytes(of: s.served[e], as: UInt64.self)
        }
    }

    deinit { memory.deallocate() }

    /// What every worker of `env` may write: its own slot page and its environment's page, whole.
    func scribble(environment env: Int, of s: Scenario, _ rng: inout SplitMix64) {
        for m in s.members where m.role == .worker(environment: env) {
            guard let page = table.slotField(m.slot, 0) else { continue }
            fill(page, &rng)
            page.storeBytes(of: rng.chance(50) ? UInt8(rng.within(0, 3)) : rng.byte(),
                            toByteOffset: ChildTableLayout.statusOffset, as: UInt8.self)
            page.storeBytes(of: rng.hostileInt64(), toByteOffset: ChildTableLayout.statusSinceOffset, as: Int64.self)
            page.storeBytes(of: rng.hostileUInt64(), toByteOffset: ChildTableLayout.connectionsOffset, as: UInt64.self)
            page.storeBytes(of: rng.hostileUInt64(), toByteOffset: ChildTableLayout.requestsOffset, as: UInt64.self)
            page.storeBytes(of: UInt32(truncatingIfNeeded: rng.hostileUInt64()),
                            toByteOffset: ChildTableLayout.holdingOffset, as: UInt32.self)
            // Text fields without a terminating NUL, mostly bytes that are no ASCII.
            for (offset, capacity) in [(ChildTableLayout.requestOffset, ChildTableLayout.requestCapacity),
                                       (ChildTableLayout.vhostOffset, ChildTableLayout.vhostCapacity)] {
                for i in 0..<capacity {
                    page.storeBytes(of: rng.chance(80) ? UInt8(rng.within(0x80, 0xff)) : UInt8(rng.within(1, 0x7f)),
                                    toByteOffset: offset + i, as: UInt8.self)
                }
            }
        }
        guard let page = table.environmentPageField(env, 0) else { return }
        fill(page, &rng)
        page.storeBytes(of: rng.hostileUInt64(), toByteOffset: ChildTableLayout.receivedOffset, as: UInt64.self)
        page.storeBytes(of: rng.hostileUInt64(), toByteOffset: ChildTableLayout.servedOffset, as: UInt64.self)
    }

    private func fill(_ page: UnsafeMutableRawPointer, _ rng: inout SplitMix64) {
        for i in stride(from: 0, to: ChildTableLayout.pageSize, by: 8) {
            page.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self)
        }
    }

    /// The planner's inputs, read as the parent reads them: who from its own records, status
    /// and load from the shared table.
    func plan(_ s: Scenario) -> Plan {
        let children = s.members.map { m -> ChildState in
            let shared = table.slot(m.slot)
            return ChildState(slot: m.slot, pid: Int32(1000 + m.slot), role: m.role, type: m.type, generation: 1,
                              startedAt: 0, retiring: m.retiring, status: shared?.status ?? .starting,
                              statusSince: shared?.statusSince ?? 0)
        }
        let load = s.environments.indices.map { EnvironmentLoad(queued: table.queued($0), demanded: s.demanded[$0]) }
        return s.policy.plan(children: children, load: load, backoffUntil: s.backoff, now: s.now)
    }

    /// The status page's snapshot, built as the module builds it.
    func snapshot(_ s: Scenario) -> StatusSnapshot {
        let slots = (0..<table.slotCount).compactMap { index -> StatusSnapshot.Slot? in
            guard let slot = table.slot(index) else { return nil }
            let env = (slot.type == .processor || slot.type == .worker) && s.environments.indices.contains(slot.environment)
                ? slot.environment : nil
            return StatusSnapshot.Slot(id: index, pid: slot.pid, status: slot.status, scoreboardState: index % 12,
                                       type: slot.type, environment: env)
        }
        let envs = s.environments.indices.map { e -> StatusSnapshot.Environment in
            let c = table.environment(e)
            return StatusSnapshot.Environment(
                name: Scenario.names[e], user: "u\(e)", group: "g\(e)", maxProcessors: s.environments[e].maxProcessors,
                connections: c?.totalHandedOff ?? 0, requests: c?.totalServed ?? 0, dropped: c?.totalDropped ?? 0,
                availability: Int(c?.availability ?? 100), waiting: Int(c?.waiting ?? 0))
        }
        return StatusSnapshot(slots: slots, environments: envs, maxMultiplexers: s.limits.maxMultiplexers)
    }
}

final class HostileTableTests: XCTestCase {
    private let iterations = 2000

    private func concerns(_ action: Action, environment env: Int, in s: Scenario) -> Bool {
        switch action {
        case .spawn(_, let role, _): return role == .worker(environment: env)
        case .retire(let slot, _), .expire(let slot): return s.isWorker(of: env, slot: slot)
        }
    }

    /// A spawn's slot depends on which slots earlier spawns took (and spares are planned after
    /// every environment's needs, so A's needs come before B's spares); compared without it.
    private func withoutSpawnSlot(_ action: Action) -> Action {
        if case .spawn(_, let role, let type) = action { return .spawn(slot: -1, role: role, type: type) }
        return action
    }

    /// What holds for any plan, whatever the table said.
    private func checkWithinLimits(_ plan: Plan, _ s: Scenario, seed: UInt64) {
        var spawned: [ChildRole: Int] = [:]
        var spawnSlots = Set<Int>()
        let occupied = Set(s.members.map(\.slot))
        for action in plan.actions {
            switch action {
            case .spawn(let slot, let role, _):
                spawned[role, default: 0] += 1
                XCTAssertTrue((0..<s.limits.serverLimit).contains(slot) && !occupied.contains(slot)
                              && spawnSlots.insert(slot).inserted, "spawn into slot \(slot), seed \(seed)")
            case .retire(let slot, let reason):
                let role = s.members.first { $0.slot == slot }?.role
                XCTAssertEqual(role == .multiplexer, reason == .multiplexerIdle, "retire \(slot), seed \(seed)")
                XCTAssertNotNil(role, "retire of no child, seed \(seed)")
            case .expire(let slot):
                guard case .worker? = s.members.first(where: { $0.slot == slot })?.role else {
                    return XCTFail("expire of slot \(slot), not a worker, seed \(seed)")
                }
            }
        }
        for (env, workerLimits) in s.environments.enumerated() {
            XCTAssertLessThanOrEqual(s.liveWorkers(of: env) + spawned[.worker(environment: env), default: 0],
                                     workerLimits.maxProcessors,
                                     "environment \(env) past MaxProcessors, seed \(seed)")
        }
    }

    func testPlanNeverTrapsAndStaysWithinLimitsWhateverAWorkerWrites() {
        for iteration in 0..<iterations {
            let seed = UInt64(iteration) &* 0x1000_0001 &+ 17
            var rng = SplitMix64(seed: seed)
            let s = Scenario.random(&rng, ample: rng.chance(50), hostile: rng.below(2))
            let memory = TableMemory(s)
            memory.scribble(environment: s.hostile, of: s, &rng)
            let plan = memory.plan(s)
            checkWithinLimits(plan, s, seed: seed)
        }
    }

    /// The isolation property: garbage in A's pages changes only actions about A's workers.
    func testAnEnvironmentsGarbageLeavesTheOthersPlanAlone() {
        var changedForA = 0
        for iteration in 0..<iterations {
            let seed = UInt64(iteration) &* 0x2000_0003 &+ 5
            var rng = SplitMix64(seed: seed)
            let s = Scenario.random(&rng, ample: true, hostile: rng.below(2))
            let a = s.hostile, b = 1 - s.hostile
            let clean = TableMemory(s)
            let dirty = TableMemory(s)
            dirty.scribble(environment: a, of: s, &rng)
            let cleanPlan = clean.plan(s), dirtyPlan = dirty.plan(s)
            checkWithinLimits(dirtyPlan, s, seed: seed)

            let expected = cleanPlan.actions.filter { !concerns($0, environment: a, in: s) }.map(withoutSpawnSlot)
            let actual = dirtyPlan.actions.filter { !concerns($0, environment: a, in: s) }.map(withoutSpawnSlot)
            XCTAssertEqual(actual, expected, "B's plan changed, seed \(seed)")
            if cleanPlan.actions.filter({ concerns($0, environment: a, in: s) })
                != dirtyPlan.actions.filter({ concerns($0, environment: a, in: s) }) {
                changedForA += 1
            }
            for action in dirtyPlan.actions where concerns(action, environment: a, in: s) {
                if case .spawn = action { continue }
                XCTAssertFalse(s.isWorker(of: b, slot: slotOf(action)), "A's garbage touched B, seed \(seed)")
            }
            XCTAssertEqual(dirty.table.capacity(of: b, limits: s.environments[b], maxClients: s.limits.maxClients),
                           clean.table.capacity(of: b, limits: s.environments[b], maxClients: s.limits.maxClients),
                           "a multiplexer's view of B changed, seed \(seed)")
            XCTAssertEqual(dirty.table.queued(b), clean.table.queued(b))
            XCTAssertEqual(dirty.table.environment(b), clean.table.environment(b))
            for m in s.members where m.role != .worker(environment: a) {
                XCTAssertEqual(dirty.table.slot(m.slot), clean.table.slot(m.slot), "slot \(m.slot), seed \(seed)")
            }
        }
        // Not vacuous: the garbage does move A's own plan, often.
        XCTAssertGreaterThan(changedForA, iterations / 10)
    }

    private func slotOf(_ action: Action) -> Int {
        switch action {
        case .spawn(let slot, _, _), .retire(let slot, _), .expire(let slot): return slot
        }
    }

    func testTableReadersNeverTrapAndSanitize() {
        for iteration in 0..<iterations {
            let seed = UInt64(iteration) &* 0x3000_0005 &+ 11
            var rng = SplitMix64(seed: seed)
            let s = Scenario.random(&rng, ample: rng.chance(50), hostile: rng.below(2))
            let memory = TableMemory(s)
            memory.scribble(environment: s.hostile, of: s, &rng)
            if iteration % 10 == 0 {
                // Now and then the whole table, as if every writer lied at once.
                for i in 0..<memory.size { memory.memory.storeBytes(of: rng.byte(), toByteOffset: i, as: UInt8.self) }
            }
            let table = memory.table
            for index in -1...table.slotCount {
                _ = table.brief(index)
                guard let slot = table.slot(index) else {
                    XCTAssertFalse((0..<table.slotCount).contains(index))
                    continue
                }
                XCTAssertGreaterThanOrEqual(slot.statusSince, 0)
                XCTAssertTrue(slot.request.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7f })
                XCTAssertTrue(slot.vhost.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7f })
                XCTAssertLessThan(slot.request.utf8.count, ChildTableLayout.requestCapacity)
                XCTAssertLessThan(slot.vhost.utf8.count, ChildTableLayout.vhostCapacity)
            }
            for env in -1...table.environmentCount {
                let limits = env >= 0 && env < s.environments.count ? s.environments[env] : WorkerLimits()
                let capacity = table.capacity(of: env, limits: limits, maxClients: s.limits.maxClients)
                _ = capacity.canTake
                XCTAssertGreaterThanOrEqual(capacity.freeWorkers, 0)
                XCTAssertTrue((0...(1 << 20)).contains(table.queued(env)))
                guard let c = table.environment(env) else { continue }
                XCTAssertTrue((0...(1 << 20)).contains(c.queued))
                XCTAssertLessThanOrEqual(c.availability, 100)
                XCTAssertGreaterThanOrEqual(c.totalServed, max(c.served, c.carriedServed), "a total wrapped")
                XCTAssertGreaterThanOrEqual(c.totalHandedOff, max(c.handedOff, c.carriedHandedOff))
                XCTAssertGreaterThanOrEqual(c.totalDropped, max(c.dropped, c.carriedDropped))
            }
        }
    }

    func testStatusPagesNeverTrapAndStayBounded() {
        for iteration in 0..<iterations {
            let seed = UInt64(iteration) &* 0x4000_0007 &+ 3
            var rng = SplitMix64(seed: seed)
            let s = Scenario.random(&rng, ample: rng.chance(50), hostile: rng.below(2))
            let memory = TableMemory(s)
            memory.scribble(environment: s.hostile, of: s, &rng)
            var snapshot = memory.snapshot(s)
            if rng.chance(30) {
                // A snapshot built by other code: the renderers clamp on their own.
                for e in snapshot.environments.indices {
                    snapshot.environments[e].connections = rng.hostileUInt64()
                    snapshot.environments[e].requests = rng.hostileUInt64()
                    snapshot.environments[e].dropped = rng.hostileUInt64()
                    snapshot.environments[e].availability = Int(truncatingIfNeeded: rng.hostileInt64())
                    snapshot.environments[e].waiting = Int(truncatingIfNeeded: rng.hostileInt64())
                    snapshot.environments[e].maxProcessors = rng.pick([Int.max, Int.min, 0, -1, 5])
                }
            }
            let rows = snapshot.slots.count + snapshot.environments.count + 4
            for page in [StatusPage.childTable(snapshot), StatusPage.statistics(snapshot), StatusPage.auto(snapshot)] {
                XCTAssertLessThan(page.utf8.count, rows * 400, "seed \(seed)")
            }
            for line in StatusPage.auto(snapshot).split(separator: "\n") {
                for field in line.split(separator: " ") where field.hasPrefix("availability=") {
                    XCTAssertTrue((0...100).contains(Int(field.dropFirst("availability=".count)) ?? -1), "\(line)")
                }
                for field in line.split(separator: " ") where field.hasPrefix("waiting=") {
                    XCTAssertGreaterThanOrEqual(Int(field.dropFirst("waiting=".count)) ?? -1, 0, "\(line)")
                }
            }
        }
    }

    /// The crash this file exists for: ACTIVE since Int64.min made `now - statusSince` trap.
    func testActiveSinceExtremeTimestampsDoesNotCrashThePlanner() {
        var limits = ServerLimits()
        limits.serverLimit = 8
        limits.minMultiplexers = 1
        limits.maxMultiplexers = 2
        limits.multiplexerIdleTimeout = 5
        limits.expireTimeout = 30
        limits.idleTimeout = 10
        let envLimits = WorkerLimits(minProcessors: 0, maxProcessors: 4, minSpare: 0)
        let policy = MaintenancePolicy(limits: limits, environments: [envLimits], generation: 1)
        let now: Int64 = 60_000

        for since in [Int64.min, .min + 1, -1, .max, .max - 1] {
            for status in [ChildStatus.active, .ready] {
                // Straight into the planner, past the table's clamping.
                let children = [
                    ChildState(slot: 1, pid: 11, role: .multiplexer, type: .multiplexer, generation: 1, startedAt: 0,
                               status: .active, statusSince: 0),
                    ChildState(slot: 2, pid: 12, role: .multiplexer, type: .multiplexer, generation: 1, startedAt: 0,
                               status: status, statusSince: since),
                    ChildState(slot: 0, pid: 10, role: .worker(environment: 0), type: .processor, generation: 1,
                               startedAt: 0, status: status, statusSince: since),
                ]
                let actions = policy.plan(children: children, load: [], backoffUntil: [:], now: now).actions
                // A time in the past, however far, is long ago; one in the future has not started.
                let past = since < now
                XCTAssertEqual(actions.contains(.expire(slot: 0)), past && status == .active, "since \(since)")
                XCTAssertEqual(actions.contains(.retire(slot: 0, reason: .idleTimeout)), past && status == .ready)
                XCTAssertEqual(actions.contains(.retire(slot: 2, reason: .multiplexerIdle)), past && status == .ready)
            }
        }

        // And through the table, as a worker would write it.
        let size = ChildTableLayout.size(slots: 8, environments: 1)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        guard let table = ChildTable.format(memory, size: size, slots: 8, environments: 1, generation: 1) else {
            return XCTFail("format failed")
        }
        table.setSlot(0, pid: 10, type: .processor, environment: 0, generation: 1, status: .starting, now: 0)
        for since in [Int64.min, .max] {
            table.slotField(0, ChildTableLayout.statusOffset)?.storeBytes(of: ChildStatus.active.rawValue, as: UInt8.self)
            table.slotField(0, ChildTableLayout.statusSinceOffset)?.storeBytes(of: since, as: Int64.self)
            guard let shared = table.slot(0) else { return XCTFail("slot 0") }
            let child = ChildState(slot: 0, pid: 10, role: .worker(environment: 0), type: .processor, generation: 1,
                                   startedAt: 0, status: shared.status, statusSince: shared.statusSince)
            let plan = policy.plan(children: [child], load: [EnvironmentLoad(queued: table.queued(0))],
                                   backoffUntil: [:], now: now)
            XCTAssertEqual(plan.actions.contains(.expire(slot: 0)), since == .min, "since \(since)")
        }
    }

    func testSaturatingHelpers() {
        XCTAssertEqual(elapsedMilliseconds(since: 0, now: 5), 5)
        XCTAssertEqual(elapsedMilliseconds(since: 5, now: 0), 0)
        XCTAssertEqual(elapsedMilliseconds(since: .min, now: .max), .max)
        XCTAssertEqual(elapsedMilliseconds(since: .min, now: 0), .max)
        XCTAssertEqual(elapsedMilliseconds(since: .min, now: -1), .max)
        XCTAssertEqual(elapsedMilliseconds(since: -1, now: .max), .max)
        XCTAssertEqual(elapsedMilliseconds(since: .max, now: .min), 0)
        XCTAssertEqual(milliseconds(seconds: 30), 30_000)
        XCTAssertEqual(milliseconds(seconds: .max), .max)
        XCTAssertEqual(milliseconds(seconds: .min), .min)
        XCTAssertEqual(UInt64.max.saturatingAdding(1), .max)
        XCTAssertEqual(UInt64(2).saturatingAdding(3), 5)
        XCTAssertEqual(UInt32.max.saturatingAdding(1), .max)
        XCTAssertEqual(UInt32(99).saturatingAdding(1), 100)
        XCTAssertEqual(Int.max.saturatingAdding(1), .max)
        XCTAssertEqual(Int.min.saturatingAdding(-1), .min)
        XCTAssertEqual(Int.min.saturatingSubtracting(1), .min)
        XCTAssertEqual(Int.max.saturatingSubtracting(-1), .max)
        XCTAssertEqual(EnvironmentCounters(handedOff: 0, received: 0, served: .max, dropped: 0, availability: 0,
                                           waiting: 0, name: "", carriedServed: 7).totalServed, .max)
        XCTAssertEqual(EnvironmentCapacity(workers: 1, idle: 1, queued: .min, maxProcessors: 2, serverFull: false)
                        .freeWorkers, .max)
        XCTAssertFalse(EnvironmentCapacity(workers: 1, idle: 0, queued: .max, maxProcessors: 2, serverFull: false).canTake)
    }
}
