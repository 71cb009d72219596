import XCTest
@testable import PeruserCore

final class PlannerTests: XCTestCase {
    private func limits(_ edit: (inout ServerLimits) -> Void = { _ in }) -> ServerLimits {
        var l = ServerLimits()
        l.serverLimit = 32
        l.minMultiplexers = 1
        l.maxMultiplexers = 3
        l.workers = WorkerLimits(minProcessors: 0, maxProcessors: 4, minSpare: 1, maxSpare: 0)
        edit(&l)
        return l
    }

    private func policy(_ l: ServerLimits, envs: [WorkerLimits]? = nil, generation: UInt32 = 1) -> MaintenancePolicy {
        MaintenancePolicy(limits: l, environments: envs ?? [l.workers, l.workers], generation: generation)
    }

    private func mux(_ slot: Int, _ status: ChildStatus = .ready, since: Int64 = 0, generation: UInt32 = 1) -> ChildState {
        ChildState(slot: slot, pid: Int32(1000 + slot), role: .multiplexer, type: .multiplexer, generation: generation,
                   startedAt: 0, status: status, statusSince: since)
    }

    private func worker(_ slot: Int, env: Int, _ status: ChildStatus = .ready, since: Int64 = 0,
                        type: ChildType = .worker, generation: UInt32 = 1, retiring: Bool = false) -> ChildState {
        ChildState(slot: slot, pid: Int32(1000 + slot), role: .worker(environment: env), type: type,
                   generation: generation, startedAt: 0, retiring: retiring, status: status, statusSince: since)
    }

    private func spawns(_ plan: Plan) -> [ChildRole] {
        plan.actions.compactMap { if case .spawn(_, let role, _) = $0 { return role } else { return nil } }
    }

    func testColdStartSpawnsMinimumsOnlyAndLeavesIdleEnvironmentsEmpty() {
        let p = policy(limits { $0.minMultiplexers = 2 }, envs: [WorkerLimits(minProcessors: 2, maxProcessors: 4, minSpare: 1),
                                                                 WorkerLimits(minProcessors: 0, maxProcessors: 4, minSpare: 2)])
        let plan = p.plan(children: [], load: [], backoffUntil: [:], now: 0)
        XCTAssertEqual(spawns(plan), [.multiplexer, .multiplexer, .worker(environment: 0), .worker(environment: 0)])
        // The first worker of an environment is its PROCESSOR, in the environment's reserved slot.
        XCTAssertEqual(plan.actions[2], .spawn(slot: 0, role: .worker(environment: 0), type: .processor))
        XCTAssertEqual(plan.actions[3], .spawn(slot: 4, role: .worker(environment: 0), type: .worker))
        XCTAssertEqual(plan.actions[0], .spawn(slot: 2, role: .multiplexer, type: .multiplexer))
    }

    /// At MaxClients, a freed slot goes to a waiting connection, not to the spare of an
    /// environment earlier in the configuration: spares are planned after every environment's
    /// needs. (Before, env 0's spare took the slot, env 1's connection went on waiting, and the
    /// next plan made room again: a retire and a start per connection, hundreds a second with
    /// 300 tenants at the default limits.)
    func testAtMaxClientsAWaitingConnectionGetsTheSlotBeforeAnotherEnvironmentsSpare() {
        let spareful = WorkerLimits(minProcessors: 0, maxProcessors: 4, minSpare: 2)
        let p = policy(limits { $0.maxClients = 4 }, envs: [spareful, spareful])
        let children = [mux(2), worker(0, env: 0, since: 900, type: .processor), worker(1, env: 1, .active, type: .processor)]
        let load = [EnvironmentLoad(), EnvironmentLoad(queued: 1, demanded: true)]
        let plan = p.plan(children: children, load: load, backoffUntil: [:], now: 1000)
        XCTAssertEqual(spawns(plan), [.worker(environment: 1)])
        XCTAssertTrue(plan.capReached, "env 0's spare did not fit")
        // With room for three, the need comes first, then the spares in the environments' order.
        let ample = policy(limits { $0.maxClients = 6 }, envs: [spareful, spareful])
        XCTAssertEqual(spawns(ample.plan(children: children, load: load, backoffUntil: [:], now: 1000)),
                       [.worker(environment: 1), .worker(environment: 0), .worker(environment: 1)])
    }

    /// A busy tenant at MaxProcessors keeps a queue; between full passes the parent asks
    /// `saturated` whether a pass could start anything for it. Workers asked to exit (now or in
    /// this plan) do not count; the plan's own starts do.
    func testSaturatedNamesOnlyEnvironmentsAtMaxProcessorsAfterThePlan() {
        let two = WorkerLimits(minProcessors: 0, maxProcessors: 2, minSpare: 0)
        let p = policy(limits(), envs: [two, two, two, two])
        let children = [mux(4),
                        worker(0, env: 0, .active, type: .processor), worker(5, env: 0, .active),
                        worker(1, env: 1, .active, type: .processor), worker(6, env: 1, retiring: true),
                        worker(2, env: 2, .active, type: .processor),
                        worker(3, env: 3, .active, type: .processor), worker(7, env: 3, .ready),
                        worker(8, env: 3, .active, generation: 0)]
        var plan = Plan()
        XCTAssertEqual(p.saturated(children: children, after: plan), [0, 3])
        plan.actions = [.spawn(slot: 9, role: .worker(environment: 2), type: .worker), .retire(slot: 7, reason: .idleTimeout)]
        XCTAssertEqual(p.saturated(children: children, after: plan), [0, 2])
        // The planner's own pass agrees: with a queue, env 0 gets nothing, env 1 gets its worker back.
        let load = [EnvironmentLoad(queued: 3, demanded: true), EnvironmentLoad(queued: 1, demanded: true),
                    EnvironmentLoad(), EnvironmentLoad()]
        XCTAssertEqual(spawns(p.plan(children: children, load: load, backoffUntil: [:], now: 0)), [.worker(environment: 1)])
    }

    /// Two requests at the same moment leave a tenant short of spares for a millisecond; a pass
    /// that saw it started a spare kept for IdleTimeout, and with 300 tenants at the defaults
    /// those moments added up to MaxProcessors each. With patience, spares start only once the
    /// shortage has lasted pass after pass; a waiting connection's worker starts at once.
    func testSparesStartOnlyOnceTheShortageHasLastedButNeedsAtOnce() {
        var p = policy(limits(), envs: [WorkerLimits(minProcessors: 0, maxProcessors: 6, minSpare: 2)])
        p.sparePatienceMilliseconds = 1000
        let busy = [mux(4), worker(0, env: 0, .active, type: .processor), worker(5, env: 0, .active), worker(6, env: 0)]
        let first = p.plan(children: busy, load: [EnvironmentLoad()], backoffUntil: [:], now: 10_000)
        XCTAssertEqual(spawns(first), [], "a moment's shortage starts nothing")
        XCTAssertEqual(first.shortOfSpares, [0])
        let later = p.plan(children: busy, load: [EnvironmentLoad()], backoffUntil: [:], now: 10_600,
                           spareShortSince: [0: 10_000])
        XCTAssertEqual(spawns(later), [])
        let lasting = p.plan(children: busy, load: [EnvironmentLoad()], backoffUntil: [:], now: 11_000,
                             spareShortSince: [0: 10_000])
        XCTAssertEqual(spawns(lasting), [.worker(environment: 0)], "short for 1 s: the missing spare")
        // Not short: nothing to remember.
        let rested = [mux(4), worker(0, env: 0, type: .processor), worker(5, env: 0), worker(6, env: 0, .active)]
        XCTAssertEqual(p.plan(children: rested, load: [EnvironmentLoad()], backoffUntil: [:], now: 11_000,
                              spareShortSince: [0: 10_000]).shortOfSpares, [])
        // Two connections wait, one idle worker: the second one's worker starts now, the spares
        // after the patience.
        let waiting = p.plan(children: busy, load: [EnvironmentLoad(queued: 2, demanded: true)], backoffUntil: [:],
                             now: 10_000)
        XCTAssertEqual(spawns(waiting), [.worker(environment: 0)])
        XCTAssertEqual(waiting.shortOfSpares, [0])
        // Without patience (the planner's default), as before: the spare at once.
        p.sparePatienceMilliseconds = 0
        XCTAssertEqual(spawns(p.plan(children: busy, load: [EnvironmentLoad()], backoffUntil: [:], now: 10_000)),
                       [.worker(environment: 0)])
    }

    func testAQuietEnvironmentGoesBackToMinProcessorsAfterIdleTimeout() {
        let p = policy(limits { $0.idleTimeout = 10; $0.workers.minSpare = 2 })
        let idle = [worker(0, env: 0, since: 0, type: .processor), worker(4, env: 0, since: 1000), worker(5, env: 0, since: 2000)]
        // While one has been idle less than IdleTimeout, the environment keeps MinSpareProcessors.
        XCTAssertEqual(p.plan(children: [mux(2)] + idle, load: [], backoffUntil: [:], now: 11_000).actions,
                       [.retire(slot: 0, reason: .idleTimeout)])
        // Once every worker has been idle that long, all go (MinProcessors 0), longest idle first.
        XCTAssertEqual(p.plan(children: [mux(2)] + idle, load: [], backoffUntil: [:], now: 12_000).actions,
                       [.retire(slot: 0, reason: .idleTimeout), .retire(slot: 4, reason: .idleTimeout),
                        .retire(slot: 5, reason: .idleTimeout)])
        // A busy worker keeps the environment in use: its spares stay.
        let busy = idle + [worker(6, env: 0, .active, since: 0)]
        XCTAssertEqual(p.plan(children: [mux(2)] + busy, load: [], backoffUntil: [:], now: 60_000).actions
                        .filter { if case .retire = $0 { return true } else { return false } }.count, 1)
        // MinProcessors stays, and no spare is started for a dormant environment.
        let kept = policy(limits { $0.idleTimeout = 10; $0.workers.minSpare = 2 },
                          envs: [WorkerLimits(minProcessors: 1, maxProcessors: 4, minSpare: 2)])
        XCTAssertEqual(kept.plan(children: [mux(2)] + idle, load: [], backoffUntil: [:], now: 12_000).actions,
                       [.retire(slot: 0, reason: .idleTimeout), .retire(slot: 4, reason: .idleTimeout)])
        XCTAssertEqual(kept.plan(children: [mux(2), worker(5, env: 0, since: 2000)], load: [], backoffUntil: [:],
                                 now: 12_000).actions, [])
        // A queued connection keeps it in use: an idle worker takes it, the other two stay spare.
        XCTAssertEqual(p.plan(children: [mux(2)] + idle, load: [EnvironmentLoad(queued: 1, demanded: true)],
                              backoffUntil: [:], now: 12_000).actions, [])
    }

    func testAtMaxClientsIdleSparesOfQuietTenantsMakeRoomForAWaitingOne() {
        // MaxClients 8: a multiplexer, env 0 busy with one worker and three connections waiting;
        // env 1 and env 2 hold idle workers (env 2 at its MinProcessors 1).
        let l = limits { $0.maxClients = 8; $0.serverLimit = 16; $0.workers.minSpare = 0; $0.workers.maxProcessors = 6 }
        let envs = [l.workers, l.workers, WorkerLimits(minProcessors: 1, maxProcessors: 6, minSpare: 0), l.workers]
        let p = policy(l, envs: envs)
        let children = [mux(4), worker(0, env: 0, .active, type: .processor),
                        worker(1, env: 1, since: 100, type: .processor), worker(5, env: 1, since: 50),
                        worker(6, env: 1, since: 10),
                        worker(2, env: 2, since: 0, type: .processor),
                        worker(3, env: 3, since: 20, type: .processor), worker(7, env: 3, .active, since: 0)]
        let load = [EnvironmentLoad(queued: 3, demanded: true), EnvironmentLoad(), EnvironmentLoad(), EnvironmentLoad()]
        let plan = p.plan(children: children, load: load, backoffUntil: [:], now: 1000)
        // Three wait: env 1's two spares, longest idle first; env 1's last idle worker (idle
        // less than 2 s) and env 2's (its minimum) stay; env 3's only idle one is its warm one.
        XCTAssertEqual(plan.actions, [.retire(slot: 6, reason: .makeRoom), .retire(slot: 5, reason: .makeRoom)])
        XCTAssertTrue(plan.capReached)
        // Long idle, env 1's last worker and env 3's go too.
        let later = p.plan(children: children, load: load, backoffUntil: [:], now: 10_000)
        XCTAssertEqual(later.actions.filter { if case .retire(_, .makeRoom) = $0 { return true } else { return false } },
                       [.retire(slot: 6, reason: .makeRoom), .retire(slot: 5, reason: .makeRoom),
                        .retire(slot: 3, reason: .makeRoom)])
        // Two children already leaving (asked before): one more makes room, not three.
        let leaving = children.map { $0.slot == 5 || $0.slot == 6 ? worker($0.slot, env: 1, since: 0, retiring: true) : $0 }
        XCTAssertEqual(p.plan(children: leaving, load: load, backoffUntil: [:], now: 10_000).actions
                        .filter { if case .retire(_, .makeRoom) = $0 { return true } else { return false } },
                       [.retire(slot: 3, reason: .makeRoom)])
        // Nobody waits: nobody makes room.
        XCTAssertFalse(p.plan(children: children, load: [], backoffUntil: [:], now: 1000).actions.contains {
            if case .retire(_, .makeRoom) = $0 { return true } else { return false }
        })
    }

    func testDemandStartsTheFirstWorkerOfAnEmptyEnvironment() {
        let p = policy(limits { $0.workers.minSpare = 0 })
        let plan = p.plan(children: [mux(2)], load: [EnvironmentLoad(), EnvironmentLoad(queued: 0, demanded: true)],
                          backoffUntil: [:], now: 0)
        XCTAssertEqual(plan.actions, [.spawn(slot: 1, role: .worker(environment: 1), type: .processor)])
    }

    func testSecondConcurrentRequestStartsASecondWorker() {
        let p = policy(limits { $0.workers.minSpare = 0 })
        let busy = worker(1, env: 1, .active, type: .processor)
        let plan = p.plan(children: [mux(2), busy], load: [EnvironmentLoad(), EnvironmentLoad(queued: 1, demanded: true)],
                          backoffUntil: [:], now: 0)
        XCTAssertEqual(spawns(plan), [.worker(environment: 1)])
    }

    func testSpareWorkersAreKeptWithinMaxProcessors() {
        let p = policy(limits { $0.workers = WorkerLimits(minProcessors: 0, maxProcessors: 3, minSpare: 2) })
        let children = [mux(2), worker(0, env: 0, .active, type: .processor)]
        XCTAssertEqual(spawns(p.plan(children: children, load: [], backoffUntil: [:], now: 0)),
                       [.worker(environment: 0), .worker(environment: 0)])
        let full = children + [worker(3, env: 0, .active), worker(4, env: 0, .active)]
        XCTAssertEqual(spawns(p.plan(children: full, load: [], backoffUntil: [:], now: 0)), [])
    }

    func testStartingWorkersCountAsComingIdle() {
        let p = policy(limits { $0.workers.minSpare = 2 })
        let children = [mux(2), worker(0, env: 0, .active, type: .processor), worker(3, env: 0, .starting),
                        worker(4, env: 0, .ready)]
        XCTAssertEqual(spawns(p.plan(children: children, load: [], backoffUntil: [:], now: 0)), [])
    }

    func testIdleTimeoutRetiresLongestIdleRespectingMinimums() {
        let p = policy(limits {
            $0.idleTimeout = 10
            $0.workers = WorkerLimits(minProcessors: 1, maxProcessors: 5, minSpare: 1)
        }, envs: [WorkerLimits(minProcessors: 1, maxProcessors: 5, minSpare: 1)])
        let children = [mux(2), worker(0, env: 0, since: 0, type: .processor), worker(3, env: 0, since: 5_000),
                        worker(4, env: 0, since: 50_000)]
        let plan = p.plan(children: children, load: [], backoffUntil: [:], now: 30_000)
        // Slots 0 and 3 are idle past 10 s; slot 4 stays as the one spare, and so MinProcessors 1 holds.
        XCTAssertEqual(plan.actions, [.retire(slot: 0, reason: .idleTimeout), .retire(slot: 3, reason: .idleTimeout)])
    }

    func testIdleTimeoutKeepsMinProcessorsAndMinSpare() {
        let envLimits = WorkerLimits(minProcessors: 2, maxProcessors: 5, minSpare: 1)
        let p = policy(limits { $0.idleTimeout = 10 }, envs: [envLimits])
        let children = [mux(2), worker(0, env: 0, type: .processor), worker(3, env: 0), worker(4, env: 0)]
        let retired = p.plan(children: children, load: [], backoffUntil: [:], now: 60_000).actions
        XCTAssertEqual(retired.count, 1, "3 idle workers, MinProcessors 2: one may go")
        XCTAssertEqual(p.plan(children: Array(children.prefix(3)), load: [], backoffUntil: [:], now: 60_000).actions, [])
        let noTimeout = policy(limits { $0.idleTimeout = 0 }, envs: [envLimits])
        XCTAssertEqual(noTimeout.plan(children: children, load: [], backoffUntil: [:], now: 10_000_000).actions, [])
    }

    func testMaxSpareRetiresTheExcessAtOnce() {
        let envLimits = WorkerLimits(minProcessors: 0, maxProcessors: 8, minSpare: 1, maxSpare: 2)
        let p = policy(limits { $0.idleTimeout = 0 }, envs: [envLimits])
        let children = [mux(2)] + (3..<8).map { worker($0, env: 0, since: Int64($0)) }
        let plan = p.plan(children: children, load: [], backoffUntil: [:], now: 100)
        XCTAssertEqual(plan.actions, [.retire(slot: 3, reason: .tooManySpare), .retire(slot: 4, reason: .tooManySpare),
                                      .retire(slot: 5, reason: .tooManySpare)])
    }

    func testExpireTimeoutKillsOnlyWorkersTooLongOnOneRequest() {
        let p = policy(limits { $0.expireTimeout = 30 })
        let children = [mux(2), worker(0, env: 0, .active, since: 0, type: .processor), worker(3, env: 0, .active, since: 50_000),
                        worker(4, env: 0, .ready, since: 0)]
        let plan = p.plan(children: children, load: [], backoffUntil: [:], now: 60_000)
        XCTAssertEqual(plan.actions.filter { if case .expire = $0 { return true } else { return false } }, [.expire(slot: 0)])
        let disabled = policy(limits { $0.expireTimeout = 0 })
        XCTAssertFalse(disabled.plan(children: children, load: [], backoffUntil: [:], now: 60_000_000).actions
                        .contains { if case .expire = $0 { return true } else { return false } })
    }

    func testMultiplexersAddOneWhenAllBusyAndRetireIdleExtras() {
        let p = policy(limits { $0.minMultiplexers = 1; $0.maxMultiplexers = 2; $0.multiplexerIdleTimeout = 5 }, envs: [])
        XCTAssertEqual(spawns(p.plan(children: [mux(0, .active)], load: [], backoffUntil: [:], now: 0)), [.multiplexer])
        XCTAssertEqual(spawns(p.plan(children: [mux(0, .active), mux(1, .active)], load: [], backoffUntil: [:], now: 0)), [])
        let idle = p.plan(children: [mux(0, .active), mux(1, .ready, since: 0)], load: [], backoffUntil: [:], now: 10_000)
        XCTAssertEqual(idle.actions, [.retire(slot: 1, reason: .multiplexerIdle)])
        XCTAssertEqual(p.plan(children: [mux(0, .ready, since: 0)], load: [], backoffUntil: [:], now: 99_000).actions, [])
    }

    func testMaxClientsCapsAllButAnEnvironmentsProcessor() {
        let p = policy(limits { $0.maxClients = 2; $0.workers.minSpare = 0 })
        let children = [mux(2), worker(0, env: 0, .active, type: .processor)]
        let plan = p.plan(children: children, load: [EnvironmentLoad(queued: 3, demanded: true),
                                                     EnvironmentLoad(queued: 1, demanded: true)],
                          backoffUntil: [:], now: 0)
        // env 0 wants more but the cap is reached; env 1 still gets its PROCESSOR in its reserved slot.
        XCTAssertEqual(plan.actions, [.spawn(slot: 1, role: .worker(environment: 1), type: .processor)])
        XCTAssertTrue(plan.capReached)
    }

    func testNoSlotMeansNoSpawn() {
        var l = limits()
        l.serverLimit = 3
        l.minMultiplexers = 2
        let p = policy(l, envs: [l.workers])
        let plan = p.plan(children: [mux(1), mux(2)], load: [EnvironmentLoad(queued: 2, demanded: true)],
                          backoffUntil: [:], now: 0)
        XCTAssertEqual(plan.actions, [.spawn(slot: 0, role: .worker(environment: 0), type: .processor)])
        let taken = p.plan(children: [mux(1), mux(2), worker(0, env: 0, .active, type: .processor)],
                           load: [EnvironmentLoad(queued: 2, demanded: true)], backoffUntil: [:], now: 0)
        XCTAssertEqual(taken.actions, [])
        XCTAssertTrue(taken.capReached)
    }

    func testOldGenerationAndRetiringChildrenDoNotCount() {
        let p = policy(limits { $0.workers.minProcessors = 1; $0.workers.minSpare = 0 }, envs: [WorkerLimits(minProcessors: 1, maxProcessors: 2, minSpare: 0)], generation: 2)
        let children = [mux(1, generation: 1), worker(0, env: 0, type: .processor, generation: 1), mux(2, generation: 2)]
        // The old processor still holds slot 0: the new one goes to a general slot.
        XCTAssertEqual(p.plan(children: children, load: [], backoffUntil: [:], now: 0).actions,
                       [.spawn(slot: 3, role: .worker(environment: 0), type: .processor)])
        let retiring = [mux(2, generation: 2), worker(0, env: 0, type: .processor, generation: 2, retiring: true)]
        XCTAssertEqual(spawns(p.plan(children: retiring, load: [], backoffUntil: [:], now: 0)), [.worker(environment: 0)])
    }

    func testBackoffHoldsARoleBack() {
        let p = policy(limits { $0.workers.minProcessors = 1 }, envs: [WorkerLimits(minProcessors: 1, maxProcessors: 2, minSpare: 0)])
        let held = p.plan(children: [mux(1)], load: [], backoffUntil: [.worker(environment: 0): 500], now: 100)
        XCTAssertEqual(held.actions, [])
        XCTAssertEqual(spawns(p.plan(children: [mux(1)], load: [], backoffUntil: [.worker(environment: 0): 500], now: 500)),
                       [.worker(environment: 0)])
    }

    func testGarbageLoadFromSharedMemoryStaysWithinLimits() {
        let p = policy(limits { $0.workers = WorkerLimits(minProcessors: 0, maxProcessors: 3, minSpare: 1) })
        let plan = p.plan(children: [mux(2)], load: [EnvironmentLoad(queued: Int.max, demanded: true),
                                                     EnvironmentLoad(queued: Int.min, demanded: false)],
                          backoffUntil: [:], now: 0)
        XCTAssertEqual(spawns(plan), Array(repeating: .worker(environment: 0), count: 3))
    }
}

final class RestartBackoffTests: XCTestCase {
    func testQuickDeathsBackOffExponentiallyAndCleanExitsReset() {
        var b = RestartBackoff()
        let role = ChildRole.worker(environment: 0)
        b.childExited(role: role, startedAt: 0, now: 100, cleanly: false)
        XCTAssertEqual(b.until[role], 600)
        b.childExited(role: role, startedAt: 600, now: 700, cleanly: false)
        XCTAssertEqual(b.until[role], 1700)
        b.childExited(role: role, startedAt: 1700, now: 1800, cleanly: true)
        XCTAssertNil(b.until[role])
        b.childExited(role: role, startedAt: 0, now: 100_000, cleanly: false)
        XCTAssertNil(b.until[role], "a child that lived long did not fail to start")
        XCTAssertEqual(RestartBackoff.delay(afterFailures: 40), 60_000)
    }

    func testAChildThatServedAndCrashedAtOnceIsRestartedWithoutDelay() {
        // mod_perl crashes children after some responses: a worker that was ready and dies
        // within 2 s of its start did start; holding its environment back for up to a minute
        // left connections waiting (Apache's test suite, dir.t and negotiation.t).
        var b = RestartBackoff()
        let role = ChildRole.worker(environment: 0)
        for start in stride(from: Int64(0), to: 5000, by: 500) {
            b.childExited(role: role, startedAt: start, now: start + 300, cleanly: false, wasServing: true)
            XCTAssertNil(b.until[role])
        }
        b.childExited(role: role, startedAt: 6000, now: 6100, cleanly: false, wasServing: false)
        XCTAssertEqual(b.until[role], 6600, "one that never served still backs off")
    }
}
