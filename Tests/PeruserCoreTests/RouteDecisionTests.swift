import XCTest
@testable import PeruserCore

final class RouteDecisionTests: XCTestCase {
    private let full = Availability(waitSeconds: 5, levels: 10)

    private func capacity(workers: Int, idle: Int = 0, queued: Int = 0, max: Int = 4, serverFull: Bool = false,
                          startFailing: Bool = false) -> EnvironmentCapacity {
        EnvironmentCapacity(workers: workers, idle: idle, queued: queued, maxProcessors: max, serverFull: serverFull,
                            startFailing: startFailing)
    }

    private func decide(hops: UInt16 = 0, _ capacity: EnvironmentCapacity, _ availability: Availability? = nil,
                        now: Int64 = 1000, waitingHere: Bool = false) -> RouteDecision {
        RouteDecision.decide(hops: hops, mostHops: 4, capacity: capacity, availability: availability ?? full,
                             now: now, channelWait: 5000, waitingHere: waitingHere)
    }

    private func availability(percent: Int, waitSeconds: Int = 5) -> Availability {
        Availability(waitSeconds: waitSeconds, levels: 10, percent: percent)
    }

    func testAFreeWorkerTakesItAtOnceWithoutAskingForMore() {
        XCTAssertEqual(decide(capacity(workers: 2, idle: 1)), .send(deadline: 6000, askForWorker: false))
    }

    func testWithNoFreeWorkerItIsSentForTheWorkerToComeAndOneIsAskedFor() {
        XCTAssertEqual(decide(capacity(workers: 2, idle: 0)), .send(deadline: 6000, askForWorker: true))
        XCTAssertEqual(decide(capacity(workers: 2, idle: 1, queued: 1)), .send(deadline: 6000, askForWorker: true),
                       "an idle worker already spoken for by a queued connection is not free")
        XCTAssertEqual(decide(capacity(workers: 0)), .send(deadline: 6000, askForWorker: true),
                       "an environment nobody asked for yet gets its first worker")
    }

    func testASaturatedEnvironmentHoldsItForTheAvailableWait() {
        XCTAssertEqual(decide(capacity(workers: 4, idle: 0)), .wait(deadline: 6000, askForWorker: true),
                       "at MaxProcessors")
        XCTAssertEqual(decide(capacity(workers: 1, idle: 0, serverFull: true)), .wait(deadline: 6000, askForWorker: true),
                       "at MaxClients")
        XCTAssertEqual(decide(capacity(workers: 0, startFailing: true)), .wait(deadline: 6000, askForWorker: true),
                       "no worker can start: not queued for one that may never come")
        XCTAssertEqual(decide(capacity(workers: 4), availability(percent: 30)), .wait(deadline: 2500, askForWorker: true))
    }

    func testWithNoWaitLeftItIsDropped() {
        XCTAssertEqual(decide(capacity(workers: 4), availability(percent: 0)), .drop(askForWorker: true))
        XCTAssertEqual(decide(capacity(workers: 4), availability(percent: 100, waitSeconds: 0)), .drop(askForWorker: true),
                       "ProcessorWaitTimeout 0: no waiting at all")
        XCTAssertEqual(decide(capacity(workers: 4, idle: 1), availability(percent: 0)),
                       .send(deadline: 6000, askForWorker: false), "availability matters only when saturated")
    }

    func testAClientAtItsShareWaitsUnderTheAvailabilityRuleAndAsksForNoWorker() {
        let free = capacity(workers: 4, idle: 3)
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: free, availability: full, now: 1000,
                                            channelWait: 5000, overShare: true),
                       .wait(deadline: 6000, askForWorker: false))
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 1), availability:
                                                availability(percent: 50), now: 1000, channelWait: 5000, overShare: true),
                       .wait(deadline: 3500, askForWorker: false))
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: free, availability: availability(percent: 0),
                                            now: 1000, channelWait: 5000, overShare: true),
                       .drop(askForWorker: false))
    }

    func testALighterClientWaitingGoesFirst() {
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 2, idle: 0),
                                            availability: full, now: 1000, channelWait: 5000, lighterWaiting: true),
                       .wait(deadline: 6000, askForWorker: true))
        XCTAssertEqual(RouteDecision.decide(hops: 4, mostHops: 4, capacity: capacity(workers: 2, idle: 1),
                                            availability: full, now: 1000, channelWait: 5000, overShare: true,
                                            lighterWaiting: true), .loop)
    }

    func testOneThatCouldGoNowWaitsBehindThoseAlreadyWaitingHere() {
        // A kept-alive connection that gave up its worker (its turn was over) comes back at once:
        // it must not take the worker back from those that waited first.
        XCTAssertEqual(RouteDecision.decide(hops: 1, mostHops: 4, capacity: capacity(workers: 4, idle: 1),
                                            availability: full, now: 1000, channelWait: 5000, waitingAhead: true),
                       .wait(deadline: 6000, askForWorker: false))
        XCTAssertEqual(RouteDecision.decide(hops: 1, mostHops: 4, capacity: capacity(workers: 4, idle: 1),
                                            availability: full, now: 1000, channelWait: 5000, waitingAhead: false),
                       .send(deadline: 6000, askForWorker: false))
    }

    func testWhereItCouldGoNowAnOlderConnectionWaitingHereMayGoInstead() {
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 4, idle: 1),
                                            availability: full, now: 1000, channelWait: 5000, waitingHere: true),
                       .sendEarlier(deadline: 6000, waitDeadline: 6000, askForWorker: false))
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 2, idle: 0),
                                            availability: availability(percent: 50), now: 1000, channelWait: 5000,
                                            waitingHere: true),
                       .sendEarlier(deadline: 6000, waitDeadline: 3500, askForWorker: true),
                       "a worker to come counts as one free; this one waits under the availability rule")
        XCTAssertTrue(RouteDecision.sendEarlier(deadline: 0, waitDeadline: 0, askForWorker: true).asksForWorker)
    }

    func testConnectionsWaitingHereChangeNothingWhereThisOneCouldNotGo() {
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 4, idle: 0),
                                            availability: full, now: 1000, channelWait: 5000, waitingHere: true),
                       .wait(deadline: 6000, askForWorker: true), "saturated")
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 4, idle: 1),
                                            availability: full, now: 1000, channelWait: 5000, lighterWaiting: true,
                                            waitingHere: true),
                       .wait(deadline: 6000, askForWorker: false), "a lighter client goes first")
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 4, idle: 1),
                                            availability: availability(percent: 0), now: 1000, channelWait: 5000,
                                            waitingHere: true),
                       .send(deadline: 6000, askForWorker: false), "nothing may wait: this one goes now")
        XCTAssertEqual(RouteDecision.decide(hops: 4, mostHops: 4, capacity: capacity(workers: 4, idle: 1),
                                            availability: full, now: 1000, channelWait: 5000, waitingHere: true),
                       .loop)
    }

    func testWithNoWaitAllowedOneThatCouldGoNowIsNotDroppedForThoseAhead() {
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 4, idle: 1),
                                            availability: availability(percent: 0), now: 1000, channelWait: 5000,
                                            waitingAhead: true),
                       .send(deadline: 6000, askForWorker: false))
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 4, idle: 0),
                                            availability: availability(percent: 0), now: 1000, channelWait: 5000,
                                            waitingAhead: true),
                       .drop(askForWorker: true), "a saturated environment still answers 503 at availability 0")
    }

    func testARoutingLoopIsAnsweredBeforeAnythingElse() {
        for hops: UInt16 in [4, 5, .max] {
            XCTAssertEqual(decide(hops: hops, capacity(workers: 2, idle: 2)), .loop, "\(hops)")
            XCTAssertEqual(decide(hops: hops, capacity(workers: 4), availability(percent: 0)), .loop, "\(hops)")
        }
        XCTAssertEqual(decide(hops: 3, capacity(workers: 2, idle: 2)), .send(deadline: 6000, askForWorker: false))
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 0, capacity: capacity(workers: 1, idle: 1),
                                            availability: full, now: 0, channelWait: 1), .loop)
    }

    func testAsksForWorker() {
        XCTAssertFalse(RouteDecision.loop.asksForWorker)
        XCTAssertTrue(RouteDecision.send(deadline: 0, askForWorker: true).asksForWorker)
        XCTAssertFalse(RouteDecision.send(deadline: 0, askForWorker: false).asksForWorker)
        XCTAssertTrue(RouteDecision.wait(deadline: 0, askForWorker: true).asksForWorker)
        XCTAssertTrue(RouteDecision.drop(askForWorker: true).asksForWorker)
    }

    /// Capacity from the child table, availability from the board: both are skewed by what
    /// tenants' workers write. Any values give a decision, never a trap.
    func testExtremesDoNotTrap() {
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 1, idle: 1), availability: full,
                                            now: .max, channelWait: 5000), .send(deadline: .max, askForWorker: false))
        XCTAssertEqual(RouteDecision.decide(hops: 0, mostHops: 4, capacity: capacity(workers: 1, idle: 1), availability: full,
                                            now: .min, channelWait: -5), .send(deadline: .min, askForWorker: false),
                       "a negative channel wait counts as none")
        XCTAssertEqual(decide(capacity(workers: 4), now: .max - 1), .wait(deadline: .max, askForWorker: true))
        let values = [Int.min, -1, 0, 1, 3, Int.max]
        for workers in values {
            for idle in values {
                for queued in values {
                    for (serverFull, waitingHere) in [(false, false), (true, false), (false, true), (true, true)] {
                        let c = EnvironmentCapacity(workers: workers, idle: idle, queued: queued, maxProcessors: 4,
                                                    serverFull: serverFull)
                        let d = decide(c, now: .max, waitingHere: waitingHere)
                        switch d {
                        case .send(_, let ask): XCTAssertEqual(ask, c.freeWorkers == 0); XCTAssertFalse(waitingHere)
                        case .sendEarlier(_, let waitDeadline, let ask):
                            XCTAssertEqual(ask, c.freeWorkers == 0)
                            XCTAssertTrue(waitingHere)
                            XCTAssertEqual(waitDeadline, .max)
                        case .wait(_, let ask), .drop(let ask): XCTAssertTrue(ask)
                        case .loop: XCTFail("no loop at 0 hops")
                        }
                        XCTAssertGreaterThanOrEqual(c.roomForWaiting, 0)
                    }
                }
            }
        }
    }

    func testRoomForWaitingConnections() {
        XCTAssertEqual(capacity(workers: 3, idle: 3).roomForWaiting, 3, "one per free worker")
        XCTAssertEqual(capacity(workers: 3, idle: 3, queued: 1).roomForWaiting, 2)
        XCTAssertEqual(capacity(workers: 2, idle: 0).roomForWaiting, 1, "one for the worker that can start")
        XCTAssertEqual(capacity(workers: 0).roomForWaiting, 1)
        XCTAssertEqual(capacity(workers: 4, idle: 0).roomForWaiting, 0, "saturated")
        XCTAssertEqual(capacity(workers: 0, startFailing: true).roomForWaiting, 0)
        XCTAssertEqual(capacity(workers: 2, idle: 0, serverFull: true).roomForWaiting, 0)
        XCTAssertEqual(capacity(workers: 1, idle: Int.max, queued: Int.min).roomForWaiting, Int.max)
    }
}

final class HeadTimeoutAnswerTests: XCTestCase {
    private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    func testAnUnfinishedClientHelloGoesToTheDefaultVhost() {
        XCTAssertEqual(HeadTimeoutAnswer.decide(tls: true, requestLineDone: false, consumed: [0x16, 0x03]), .routeToDefault)
        XCTAssertEqual(HeadTimeoutAnswer.decide(tls: true, requestLineDone: true, consumed: bytes("x\n")), .routeToDefault,
                       "never answered in plain text")
    }

    func testAnH2cPrefaceWithNoRequestGoesToTheDefaultVhost() {
        // "PRI * HTTP/2.0" is a whole line, but a client that waits for the server's SETTINGS
        // is not answered 408 in HTTP/1.1: the first vhost's mod_http2 speaks to it.
        XCTAssertEqual(HeadTimeoutAnswer.decide(tls: false, http2Preface: true, requestLineDone: true,
                                                consumed: H2Preface.preface), .routeToDefault)
    }

    func testAWholeRequestLineGets408() {
        XCTAssertEqual(HeadTimeoutAnswer.decide(tls: false, requestLineDone: true, consumed: []), .requestTimeout)
        XCTAssertEqual(HeadTimeoutAnswer.decide(tls: false, requestLineDone: false,
                                                consumed: bytes("GET / HTTP/1.1\r\nHost: a")), .requestTimeout)
        XCTAssertEqual(HeadTimeoutAnswer.decide(tls: false, requestLineDone: false, consumed: bytes("\n")),
                       .requestTimeout)
    }

    func testBeforeARequestLineItClosesSilently() {
        XCTAssertEqual(HeadTimeoutAnswer.decide(tls: false, requestLineDone: false, consumed: []), .closeSilently)
        XCTAssertEqual(HeadTimeoutAnswer.decide(tls: false, requestLineDone: false, consumed: bytes("GET / HTTP/1.1\r")),
                       .closeSilently)
        XCTAssertEqual(HeadTimeoutAnswer.decide(tls: false, requestLineDone: false, consumed: [0, 0xFF, 0x0D]),
                       .closeSilently)
    }
}
