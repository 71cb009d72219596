import XCTest
@testable import PeruserCore

final class DrainPlanTests: XCTestCase {
    private func mux(_ slot: Int, generation: UInt32 = 1, retiring: Bool = false) -> DrainCandidate {
        DrainCandidate(slot: slot, isMultiplexer: true, generation: generation, retiring: retiring)
    }

    private func worker(_ slot: Int, generation: UInt32 = 1, draining: Bool = false, expired: Bool = false,
                        signalledAt: Int64 = 0) -> DrainCandidate {
        DrainCandidate(slot: slot, isMultiplexer: false, generation: generation, draining: draining, expired: expired,
                       signalledAt: signalledAt)
    }

    /// What the parent records as it sends each signal.
    private func applying(_ actions: [DrainAction], to children: [DrainCandidate], now: Int64) -> [DrainCandidate] {
        children.map { child in
            var c = child
            for action in actions {
                switch action {
                case .retire(let slot) where slot == c.slot:
                    c.retiring = true
                    c.signalledAt = now
                case .drain(let slot) where slot == c.slot:
                    c.draining = true
                    c.signalledAt = now
                case .kill(let slot) where slot == c.slot:
                    c.signalledAt = now
                default:
                    break
                }
            }
            return c
        }
    }

    func testOldMultiplexersRetireBeforeAnyWorkerDrains() {
        let children = [worker(0), mux(1), worker(2), mux(3)]
        XCTAssertEqual(DrainPlan.plan(children: children, generation: 2, everyone: false, now: 10),
                       [.retire(slot: 1), .retire(slot: 3)])
    }

    func testWorkersDrainOnlyOnceEveryOldMultiplexerIsGone() {
        var children = [worker(0), mux(1, retiring: true), worker(2), mux(3, retiring: true)]
        XCTAssertEqual(DrainPlan.plan(children: children, generation: 2, everyone: false, now: 10), [],
                       "retiring multiplexers still pass connections to the old channels")
        children.removeAll { $0.slot == 1 }
        XCTAssertEqual(DrainPlan.plan(children: children, generation: 2, everyone: false, now: 10), [])
        children.removeAll { $0.slot == 3 }
        XCTAssertEqual(DrainPlan.plan(children: children, generation: 2, everyone: false, now: 10),
                       [.drain(slot: 0), .drain(slot: 2)])
    }

    func testTheCurrentGenerationIsLeftAloneOnARestart() {
        let children = [mux(0, generation: 2), worker(1, generation: 2), worker(2, generation: 1)]
        XCTAssertEqual(DrainPlan.plan(children: children, generation: 2, everyone: false, now: 10), [.drain(slot: 2)],
                       "the new generation's multiplexer does not hold the old workers back")
        XCTAssertEqual(DrainPlan.plan(children: [mux(0, generation: 2), worker(1, generation: 2)], generation: 2,
                                      everyone: false, now: 10), [])
    }

    func testAGracefulStopFinishesEveryone() {
        var children = [mux(0, generation: 2), worker(1, generation: 2), mux(2, generation: 1), worker(3, generation: 1)]
        var actions = DrainPlan.plan(children: children, generation: 2, everyone: true, now: 10)
        XCTAssertEqual(actions, [.retire(slot: 0), .retire(slot: 2)])
        children = applying(actions, to: children, now: 10)
        children.removeAll { $0.isMultiplexer }
        actions = DrainPlan.plan(children: children, generation: 2, everyone: true, now: 20)
        XCTAssertEqual(actions, [.drain(slot: 1), .drain(slot: 3)])
    }

    func testNoSignalIsSentTwice() {
        var children = [mux(0), worker(1), worker(2, draining: true), mux(3, generation: 2)]
        var sent: [DrainAction] = []
        for round in 0..<6 {
            let now = Int64(round) * 10_000
            let actions = DrainPlan.plan(children: children, generation: 2, everyone: false, now: now)
            sent += actions
            children = applying(actions, to: children, now: now)
            if round == 2 { children.removeAll { $0.slot == 0 } }  // the old multiplexer exits
        }
        XCTAssertEqual(sent, [.retire(slot: 0), .drain(slot: 1)])
    }

    func testAnExpiredChildIsKilledOnlyAfterTheGracePeriod() {
        let grace = DrainPlan.expireGraceMilliseconds
        XCTAssertEqual(grace, 2000)
        let expired = [worker(4, generation: 2, expired: true, signalledAt: 1000)]
        XCTAssertEqual(DrainPlan.plan(children: expired, generation: 2, everyone: false, now: 1000), [])
        XCTAssertEqual(DrainPlan.plan(children: expired, generation: 2, everyone: false, now: 1000 + grace), [])
        XCTAssertEqual(DrainPlan.plan(children: expired, generation: 2, everyone: false, now: 1001 + grace),
                       [.kill(slot: 4)], "of the current generation too")
        // Still there (not reaped yet): killed again once per grace period, no more often.
        let killed = applying([.kill(slot: 4)], to: expired, now: 3001)
        XCTAssertEqual(DrainPlan.plan(children: killed, generation: 2, everyone: false, now: 3002), [])
        XCTAssertEqual(DrainPlan.plan(children: killed, generation: 2, everyone: false, now: 5002), [.kill(slot: 4)])
    }

    func testOnlyExpiredChildrenAreKilled() {
        let children = [worker(0, generation: 2, signalledAt: 0), worker(1, draining: true, signalledAt: 0),
                        mux(2, generation: 1, retiring: true)]
        XCTAssertEqual(DrainPlan.plan(children: children, generation: 2, everyone: false, now: 1_000_000), [],
                       "retiring and draining children finish their connection, however long")
    }

    func testAChildSignalledNowIsNotKilledInTheSamePlan() {
        // An old expired worker gets SIGWINCH first; its grace period starts again from there.
        let children = [worker(0, generation: 1, expired: true, signalledAt: 0)]
        let actions = DrainPlan.plan(children: children, generation: 2, everyone: false, now: 10_000)
        XCTAssertEqual(actions, [.drain(slot: 0)])
        let drained = applying(actions, to: children, now: 10_000)
        XCTAssertEqual(DrainPlan.plan(children: drained, generation: 2, everyone: false, now: 12_000), [])
        XCTAssertEqual(DrainPlan.plan(children: drained, generation: 2, everyone: false, now: 12_001), [.kill(slot: 0)])
    }

    func testRetiresAndDrainsComeFirstInTheirOrderThenKills() {
        let children = [worker(5, generation: 2, expired: true, signalledAt: 0), mux(3), mux(1),
                        worker(7, generation: 2, expired: true, signalledAt: 0)]
        XCTAssertEqual(DrainPlan.plan(children: children, generation: 2, everyone: false, now: 5000),
                       [.retire(slot: 3), .retire(slot: 1), .kill(slot: 5), .kill(slot: 7)])
        XCTAssertEqual(DrainPlan.plan(children: [], generation: 2, everyone: true, now: 5000), [])
    }

    func testExtremeTimesDoNotTrap() {
        let extremes: [Int64] = [.min, .min + 1, -1, 0, 1, 2000, .max - 1, .max]
        for signalledAt in extremes {
            for now in extremes {
                let children = [worker(0, generation: 2, expired: true, signalledAt: signalledAt)]
                let actions = DrainPlan.plan(children: children, generation: 2, everyone: false, now: now)
                let due = signalledAt < now && (now.subtractingReportingOverflow(signalledAt).overflow
                                                || now - signalledAt > 2000)
                XCTAssertEqual(actions, due ? [.kill(slot: 0)] : [], "signalled \(signalledAt), now \(now)")
            }
        }
        XCTAssertEqual(DrainPlan.plan(children: [worker(0, expired: true, signalledAt: .min)], generation: 2,
                                      everyone: false, now: .max), [.drain(slot: 0)])
    }

    /// Random children, random flags, random times: the rules hold in every plan.
    func testRandomPlansKeepTheRules() {
        var rng = SplitMix64(seed: 0xD7A1_4E55)
        for _ in 0..<2000 {
            let generation = UInt32(truncatingIfNeeded: rng.next())
            let everyone = rng.chance(30)
            let now = rng.hostileInt64()
            let children = (0..<rng.within(0, 8)).map { slot in
                DrainCandidate(slot: slot, isMultiplexer: rng.chance(40),
                               generation: rng.chance(50) ? generation : generation &+ UInt32(rng.within(1, 3)),
                               retiring: rng.chance(30), draining: rng.chance(30), expired: rng.chance(30),
                               signalledAt: rng.hostileInt64())
            }
            let actions = DrainPlan.plan(children: children, generation: generation, everyone: everyone, now: now)
            let finishing = { (c: DrainCandidate) in everyone || c.generation != generation }
            let multiplexersLeft = children.contains { $0.isMultiplexer && finishing($0) }
            var seen = Set<Int>()
            for action in actions {
                switch action {
                case .retire(let slot):
                    let c = children[slot]
                    XCTAssertTrue(c.isMultiplexer && finishing(c) && !c.retiring)
                    XCTAssertTrue(seen.insert(slot).inserted)
                case .drain(let slot):
                    let c = children[slot]
                    XCTAssertTrue(!c.isMultiplexer && finishing(c) && !c.draining && !multiplexersLeft)
                    XCTAssertTrue(seen.insert(slot).inserted)
                case .kill(let slot):
                    let c = children[slot]
                    XCTAssertTrue(c.expired)
                    XCTAssertTrue(elapsedMilliseconds(since: c.signalledAt, now: now) > 2000)
                    XCTAssertTrue(seen.insert(slot).inserted, "never signalled and killed in one plan")
                }
            }
            // Every child that should hear something does.
            for c in children where finishing(c) {
                if c.isMultiplexer && !c.retiring { XCTAssertTrue(actions.contains(.retire(slot: c.slot))) }
                if !c.isMultiplexer && !c.draining && !multiplexersLeft {
                    XCTAssertTrue(actions.contains(.drain(slot: c.slot)))
                }
            }
        }
    }
}
