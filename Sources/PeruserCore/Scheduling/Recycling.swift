// MaxConnectionsPerChild, spread over the workers. Workers that start together (a burst, or
// the replacements of workers that recycled together) share their environment's load evenly,
// so with one limit for all they reach it within milliseconds of each other, and the
// environment loses every worker at once; their replacements start together again, and the
// next round repeats it (BENCHMARKS.md: one busy tenant's ten workers exiting within 0.5 s
// of each other, every 1.2 s). Each worker gets its own limit instead.

public enum Recycling {
    /// The connections a worker serves before it exits: MaxConnectionsPerChild (`configured`;
    /// 0 or less: no limit, 0) less up to a quarter of it, picked by `seed` (the worker's
    /// pid). Never above what the admin set; a limit under 4 is kept as it is.
    public static func connectionLimit(configured: Int, seed: UInt32) -> Int {
        guard configured >= 4 else { return max(0, configured) }
        let spread = UInt64(configured / 4)
        return configured - Int(mixedBits(UInt64(seed) &* 0x9e37_79b9_7f4a_7c15) % (spread + 1))
    }
}

/// The connections a worker served lately, by ticket, so that one counts once toward
/// MaxConnectionsPerChild however often it comes back. A kept-alive connection whose requests
/// cross environments (a front proxy's pooled connection) is lent to a worker for each of its
/// requests there; counting every lend, a worker behind such a proxy counted requests, and a
/// box with a dozen tenants replaced each busy worker about every second (BENCHMARKS.md).
/// A ticket names one connection for one environment (HandbackTicket). It remembers the last
/// `capacity` connections it counted: with more alive at once, a forgotten one counts again
/// (sooner recycling, never later); ticket 0 (a connection with no ticket) always counts.
public struct ServedConnections {
    private var remembered: [UInt64]
    private var next = 0

    public init(remembering capacity: Int = 64) {
        remembered = Array(repeating: 0, count: max(1, capacity))
    }

    /// Whether the connection with `ticket` counts now: true unless it is one of the last
    /// connections counted.
    public mutating func counts(ticket: UInt64) -> Bool {
        guard ticket != 0 else { return true }
        guard !remembered.contains(ticket) else { return false }
        remembered[next] = ticket
        next = next + 1 == remembered.count ? 0 : next + 1
        return true
    }
}
