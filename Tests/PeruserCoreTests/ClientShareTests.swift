import XCTest
@testable import PeruserCore

final class ClientAddressTests: XCTestCase {
    func testParsesIPv4AndIPv6() throws {
        XCTAssertEqual(ClientAddress(parsing: "127.0.0.2")?.description, "127.0.0.2")
        XCTAssertEqual(ClientAddress(parsing: "127.0.0.2"), ClientAddress(ipv4: 0x7f00_0002))
        XCTAssertEqual(ClientAddress(parsing: "::1"), ClientAddress(high: 0, low: 1))
        XCTAssertEqual(ClientAddress(parsing: "[::1]"), ClientAddress(high: 0, low: 1))
        XCTAssertEqual(ClientAddress(parsing: "2001:db8::1")?.description, "2001:db8:0:0:0:0:0:1")
        XCTAssertEqual(ClientAddress(parsing: "::ffff:10.1.2.3"), ClientAddress(parsing: "10.1.2.3"))
        XCTAssertEqual(ClientAddress(parsing: "1:2:3:4:5:6:7:8")?.description, "1:2:3:4:5:6:7:8")
    }

    func testRefusesWhatIsNotAnAddress() {
        for text in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4:80", "01234.1.1.1", "a.b.c.d", ":::",
                     "1::2::3", "1:2:3:4:5:6:7:8:9", "12345::", "example.com", "::1%eth0", "1.2.3.-4",
                     String(repeating: "1", count: 300), "[::1", "\u{0}"] {
            XCTAssertNil(ClientAddress(parsing: text), text)
        }
    }

    func testRangesMatchByPrefix() throws {
        let net = try XCTUnwrap(AddressRange(parsing: "10.0.0.0/8"))
        XCTAssertTrue(net.contains(try XCTUnwrap(ClientAddress(parsing: "10.200.3.4"))))
        XCTAssertFalse(net.contains(try XCTUnwrap(ClientAddress(parsing: "11.0.0.1"))))
        XCTAssertFalse(net.contains(try XCTUnwrap(ClientAddress(parsing: "::a00:1"))))
        let one = try XCTUnwrap(AddressRange(parsing: "192.0.2.7"))
        XCTAssertTrue(one.contains(try XCTUnwrap(ClientAddress(parsing: "192.0.2.7"))))
        XCTAssertFalse(one.contains(try XCTUnwrap(ClientAddress(parsing: "192.0.2.8"))))
        let v6 = try XCTUnwrap(AddressRange(parsing: "2001:db8::/32"))
        XCTAssertTrue(v6.contains(try XCTUnwrap(ClientAddress(parsing: "2001:db8:ffff::1"))))
        XCTAssertFalse(v6.contains(try XCTUnwrap(ClientAddress(parsing: "2001:db9::1"))))
        XCTAssertNotNil(AddressRange(parsing: "0.0.0.0/0"))
        XCTAssertNil(AddressRange(parsing: "10.0.0.0/33"))
        XCTAssertNil(AddressRange(parsing: "10.0.0.0/-1"))
        XCTAssertNil(AddressRange(parsing: "10.0.0.0/8/8"))
    }
}

final class ProxyTrustTests: XCTestCase {
    let proxy = ClientAddress(parsing: "127.0.0.1")!

    func testWithoutRemoteIPHeaderThePeerIsTheClient() {
        let trust = ProxyTrust()
        XCTAssertEqual(trust.client(peer: proxy, forwarded: "203.0.113.9", readable: true), proxy)
    }

    func testATrustedProxysForwardedAddressIsTheClient() throws {
        let trust = ProxyTrust(header: "X-Forwarded-For", proxies: [try XCTUnwrap(AddressRange(parsing: "127.0.0.1"))])
        XCTAssertEqual(trust.client(peer: proxy, forwarded: "203.0.113.9", readable: true),
                       ClientAddress(parsing: "203.0.113.9"))
        // From the right, through trusted proxies only: the client cannot choose its address.
        XCTAssertEqual(trust.client(peer: proxy, forwarded: "1.1.1.1, 203.0.113.9", readable: true),
                       ClientAddress(parsing: "203.0.113.9"))
        XCTAssertEqual(trust.client(peer: proxy, forwarded: "1.1.1.1 , 127.0.0.1,203.0.113.9 ", readable: true),
                       ClientAddress(parsing: "203.0.113.9"))
        XCTAssertEqual(trust.client(peer: proxy, forwarded: "203.0.113.9, 127.0.0.1", readable: true),
                       ClientAddress(parsing: "203.0.113.9"))
        // Garbage stops the walk at the last address a trusted proxy vouched for.
        XCTAssertEqual(trust.client(peer: proxy, forwarded: "203.0.113.9, junk", readable: true), proxy)
        // No header: the proxy's own request.
        XCTAssertEqual(trust.client(peer: proxy, forwarded: nil, readable: true), proxy)
        // A header that cannot be read (TLS): nobody's share; never the proxy's.
        XCTAssertEqual(trust.client(peer: proxy, forwarded: nil, readable: false), .none)
    }

    func testAnUntrustedPeerCannotForward() throws {
        let trust = ProxyTrust(header: "x-forwarded-for", proxies: [try XCTUnwrap(AddressRange(parsing: "10.0.0.0/8"))])
        XCTAssertEqual(trust.client(peer: proxy, forwarded: "203.0.113.9", readable: true), proxy)
        XCTAssertEqual(trust.client(peer: proxy, forwarded: nil, readable: false), proxy)
    }

    func testWithNoProxyListEveryPeerIsTrustedAsModRemoteipDoes() {
        let trust = ProxyTrust(header: "X-Real-IP")
        XCTAssertEqual(trust.client(peer: proxy, forwarded: "198.51.100.1", readable: true),
                       ClientAddress(parsing: "198.51.100.1"))
    }
}

final class ClientShareAndSheddingTests: XCTestCase {
    func testShareRoundsUpAndNeverFallsBelowOne() {
        XCTAssertEqual(ClientShare.limit(maxProcessors: 10, percent: 50), 5)
        XCTAssertEqual(ClientShare.limit(maxProcessors: 3, percent: 50), 2)
        XCTAssertEqual(ClientShare.limit(maxProcessors: 1, percent: 1), 1)
        XCTAssertEqual(ClientShare.limit(maxProcessors: 10, percent: 99), 10)
        XCTAssertNil(ClientShare.limit(maxProcessors: 10, percent: 100))
        XCTAssertEqual(ClientShare.limit(maxProcessors: Int.max, percent: 99).map { $0 > 0 }, true)
    }

    func testAHandOffAWorkerTookCountsOnceWhateverItsReservation() {
        // Two reserved, both taken (the channel is empty): the workers' pages count them.
        XCTAssertEqual(ClientShare.holds(serving: 2, reserved: 2, queued: 0), 2)
        // One of them still in the channel, beside another client's.
        XCTAssertEqual(ClientShare.holds(serving: 1, reserved: 2, queued: 2), 3)
        // Fewer reserved than queued: the rest of the channel is other clients'.
        XCTAssertEqual(ClientShare.holds(serving: 3, reserved: 1, queued: 5), 4)
        XCTAssertEqual(ClientShare.holds(serving: 0, reserved: 0, queued: 7), 0)
    }

    func testCountsWorkersWriteAreClampedNotTrusted() {
        XCTAssertEqual(ClientShare.holds(serving: -3, reserved: 4, queued: -1), 0)
        XCTAssertEqual(ClientShare.holds(serving: Int.max, reserved: Int.max, queued: Int.max), Int.max)
        XCTAssertEqual(ClientShare.holds(serving: 2, reserved: -5, queued: 9), 2)
    }

    func testPressureLapses() {
        XCTAssertFalse(ReaderShedding.pressed(pressedAt: 0, now: 10_000))
        XCTAssertTrue(ReaderShedding.pressed(pressedAt: 9_800, now: 10_000))
        XCTAssertFalse(ReaderShedding.pressed(pressedAt: 9_000, now: 10_000))
        XCTAssertFalse(ReaderShedding.pressed(pressedAt: 20_000, now: 10_000))
        XCTAssertFalse(ReaderShedding.pressed(pressedAt: .min, now: 10_000))
    }

    func testAnEnvironmentIsPressedOnlyOnceAConnectionHasWaitedAWhile() {
        let after = ReaderShedding.pressureAfterMilliseconds
        // A wait of a few milliseconds (a worker finishing its response) is no pressure.
        XCTAssertFalse(ReaderShedding.presses(canTake: false, oldestWaitingSince: 10_000, now: 10_003))
        XCTAssertFalse(ReaderShedding.presses(canTake: false, oldestWaitingSince: 10_000, now: 10_000 + after - 1))
        XCTAssertTrue(ReaderShedding.presses(canTake: false, oldestWaitingSince: 10_000, now: 10_000 + after))
        // Nobody waiting, or room for a worker: never.
        XCTAssertFalse(ReaderShedding.presses(canTake: false, oldestWaitingSince: nil, now: 10_000))
        XCTAssertFalse(ReaderShedding.presses(canTake: true, oldestWaitingSince: 0, now: 10_000))
        // A time from the future or from far back does not trap.
        XCTAssertFalse(ReaderShedding.presses(canTake: false, oldestWaitingSince: .max, now: 10_000))
        XCTAssertTrue(ReaderShedding.presses(canTake: false, oldestWaitingSince: .min, now: .max))
    }

    func testTheLongestWaitIsTheEarliestStartAmongEligibleConnections() {
        var q = WaitQueue<Int32>()
        q.add(1, environment: 0, deadline: 500, since: 300)
        q.add(2, environment: 0, deadline: 900, since: 100)  // waited longest, later deadline
        q.add(3, environment: 1, deadline: 400, since: 50)
        XCTAssertEqual(q.oldestSince(for: 0) { _ in true }, 100)
        XCTAssertEqual(q.oldestSince(for: 0) { $0 != 2 }, 300)
        XCTAssertEqual(q.oldestSince(for: 1) { _ in true }, 50)
        XCTAssertNil(q.oldestSince(for: 0) { _ in false })
        XCTAssertNil(q.oldestSince(for: 2) { _ in true })
    }

    func testOnlyPressedEnvironmentsShedAndOnlyPastTheBound() {
        XCTAssertFalse(ReaderShedding.shouldShed(waited: 60_000, received: 0, bound: 1000, pressed: false))
        XCTAssertFalse(ReaderShedding.shouldShed(waited: 900, received: 0, bound: 1000, pressed: true))
        XCTAssertTrue(ReaderShedding.shouldShed(waited: 1001, received: 0, bound: 1000, pressed: true))
        XCTAssertFalse(ReaderShedding.shouldShed(waited: 60_000, received: 0, bound: 0, pressed: true))
    }

    func testBytesReceivedEarnPatience() {
        // 64 KiB earns 4 s: an upload at 16 KiB/s or faster is never shed.
        XCTAssertFalse(ReaderShedding.shouldShed(waited: 4_900, received: 64 * 1024, bound: 1000, pressed: true))
        XCTAssertTrue(ReaderShedding.shouldShed(waited: 5_100, received: 64 * 1024, bound: 1000, pressed: true))
        // A trickle at 500 bytes/s earns almost nothing.
        XCTAssertTrue(ReaderShedding.shouldShed(waited: 2_000, received: 1_000, bound: 1000, pressed: true))
        XCTAssertFalse(ReaderShedding.shouldShed(waited: .max, received: .max, bound: .max, pressed: true))
    }
}

final class LightestWaitingTests: XCTestCase {
    func testPacksAndLapses() {
        let mark = LightestWaiting(rank: 3, client: 0xdead_beef, at: 1_000_000)
        XCTAssertEqual(LightestWaiting(packed: mark.packed), mark)
        XCTAssertNotNil(mark.live(now: 1_000_050))
        XCTAssertNil(mark.live(now: 1_000_061))
        XCTAssertEqual(LightestWaiting(rank: .max, client: 1, at: 1).rank, 0xff)
        XCTAssertNotEqual(LightestWaiting(rank: 0, client: 0, at: 0).packed, 0)
        // Times wrap modulo 2^24 ms; a mark just before the wrap is live just after it.
        let late = LightestWaiting(rank: 1, client: 7, at: (1 << 24) - 10)
        XCTAssertNotNil(late.live(now: 1 << 24 + 20))
        XCTAssertNil(late.live(now: (1 << 24) + 100))
    }

    func testLighterOrEquallyLightReplacesALiveMark() {
        let mark = LightestWaiting(rank: 3, client: 1, at: 1000)
        XCTAssertTrue(mark.yields(to: LightestWaiting(rank: 1, client: 2, at: 1010), now: 1010))
        XCTAssertTrue(mark.yields(to: LightestWaiting(rank: 3, client: 2, at: 1010), now: 1010))
        XCTAssertFalse(mark.yields(to: LightestWaiting(rank: 9, client: 2, at: 1010), now: 1010))
        XCTAssertTrue(mark.yields(to: LightestWaiting(rank: 9, client: 2, at: 1100), now: 1100))
    }

    func testOnlyAnotherLighterClientGoesFirst() {
        let mark = LightestWaiting(rank: 1, client: 5, at: 0)
        XCTAssertTrue(mark.goesFirst(before: 6, rank: 16))
        XCTAssertFalse(mark.goesFirst(before: 5, rank: 16), "a client never waits for itself")
        XCTAssertFalse(mark.goesFirst(before: 6, rank: 1))
        XCTAssertNotEqual(ClientAddress(parsing: "127.0.0.1")!.hash32, ClientAddress(parsing: "127.0.0.2")!.hash32)
    }
}
