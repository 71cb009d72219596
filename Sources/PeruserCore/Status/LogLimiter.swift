// Log lines that a client or a tenant can cause (invalid hand-backs, routing loops, 503s,
// fd exhaustion) must not become a way to fill the disk or burn a core: each kind of line is
// written at most once per interval, and the next one written says how many were left out.

public struct LogLimiter {
    public let intervalMilliseconds: Int64
    private var lastWritten: [Int: Int64] = [:]
    private var suppressed: [Int: Int] = [:]

    public init(intervalMilliseconds: Int64 = 5000) {
        self.intervalMilliseconds = intervalMilliseconds
    }

    /// Whether a line of kind `key` may be written at `now`: nil if not (it is counted), or
    /// how many lines of that kind were left out since the last one written.
    public mutating func admit(_ key: Int, now: Int64) -> Int? {
        if let last = lastWritten[key], now >= last, now - last < intervalMilliseconds {
            suppressed[key, default: 0] += 1
            return nil
        }
        lastWritten[key] = now
        return suppressed.removeValue(forKey: key) ?? 0
    }

    /// The suffix for an admitted line: empty, or how many similar lines were left out.
    public static func note(_ leftOut: Int) -> String {
        leftOut == 0 ? "" : " (\(leftOut) similar line\(leftOut == 1 ? "" : "s") left out)"
    }
}
