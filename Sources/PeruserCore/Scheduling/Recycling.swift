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
