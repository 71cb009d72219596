import XCTest
@testable import PeruserCore

final class RecyclingTests: XCTestCase {
    func testALimitIsNeverAboveTheConfiguredOneNorBelowThreeQuartersOfIt() {
        for configured in [4, 5, 10, 1000, 10_000, Int.max] {
            for seed in Array(UInt32(0)..<2000) + [.max, .max - 1, 1 << 31] {
                let limit = Recycling.connectionLimit(configured: configured, seed: seed)
                XCTAssertLessThanOrEqual(limit, configured)
                XCTAssertGreaterThanOrEqual(limit, configured - configured / 4, "\(configured) \(seed)")
            }
        }
    }

    func testNoLimitStaysNoLimitAndSmallLimitsStayAsTheyAre() {
        for seed: UInt32 in [0, 1, 12345, .max] {
            XCTAssertEqual(Recycling.connectionLimit(configured: 0, seed: seed), 0)
            XCTAssertEqual(Recycling.connectionLimit(configured: -5, seed: seed), 0)
            XCTAssertEqual(Recycling.connectionLimit(configured: Int.min, seed: seed), 0)
            for small in 1...3 { XCTAssertEqual(Recycling.connectionLimit(configured: small, seed: seed), small) }
        }
    }

    /// Ten workers started one after another (neighbouring pids) do not share a limit, and the
    /// limits cover the quarter: they leave over a stretch of the load, not at one moment.
    func testWorkersStartedTogetherGetLimitsSpreadOverTheQuarter() {
        let firstPids: [UInt32] = [300, 2288, 7659, 65_000, 4_000_000]
        for first in firstPids {
            let limits = (0..<10).map { Recycling.connectionLimit(configured: 1000, seed: first + 2 * $0) }
            XCTAssertGreaterThanOrEqual(Set(limits).count, 8, "\(limits)")
            XCTAssertGreaterThanOrEqual(limits.max()! - limits.min()!, 100, "\(limits)")
        }
        let all = (UInt32(1000)..<3000).map { Recycling.connectionLimit(configured: 1000, seed: $0) }
        XCTAssertEqual(all.min(), 750)
        XCTAssertEqual(all.max(), 1000)
        let mean = Double(all.reduce(0, +)) / Double(all.count)
        XCTAssertEqual(mean, 875, accuracy: 10, "about even over the quarter")
    }
}

final class ServedConnectionsTests: XCTestCase {
    /// A pooled connection lent again and again to one worker counts once; each other
    /// connection counts once too.
    func testAConnectionThatComesBackCountsOnce() {
        var served = ServedConnections()
        let pooled: [UInt64] = (1...32).map { 0xdead_beef_0000 &+ $0 &* 7919 }
        var counted = 0
        for round in 0..<50 {
            for ticket in pooled where served.counts(ticket: ticket) { counted += 1 }
            XCTAssertEqual(counted, 32, "round \(round)")
        }
        XCTAssertTrue(served.counts(ticket: 42))
        XCTAssertFalse(served.counts(ticket: 42))
    }

    func testAConnectionWithoutATicketAlwaysCounts() {
        var served = ServedConnections()
        for _ in 0..<5 { XCTAssertTrue(served.counts(ticket: 0)) }
    }

    /// More live connections than it remembers: forgotten ones count again, so a worker
    /// recycles sooner than with a perfect memory, never later; a new connection always counts.
    func testForgettingOnlyEverCountsMore() {
        var served = ServedConnections(remembering: 8)
        let tickets: [UInt64] = (1...9).map { $0 &* 0x9e37_79b9 }
        var counted = 0
        for _ in 0..<3 {
            for ticket in tickets where served.counts(ticket: ticket) { counted += 1 }
        }
        XCTAssertEqual(counted, 27, "nine in turn through a memory of eight: each is forgotten before it is back")
        for ticket in tickets.suffix(8) { XCTAssertFalse(served.counts(ticket: ticket)) }
        XCTAssertTrue(served.counts(ticket: 0xfeed))
        var tiny = ServedConnections(remembering: 0)
        XCTAssertTrue(tiny.counts(ticket: 5))
        XCTAssertFalse(tiny.counts(ticket: 5))
        XCTAssertTrue(tiny.counts(ticket: 6))
        XCTAssertTrue(tiny.counts(ticket: 5))
    }
}
