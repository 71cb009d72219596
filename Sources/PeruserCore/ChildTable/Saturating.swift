// Arithmetic on values that children write into the shared table. Swift traps on overflow, and
// a worker can store any bytes in its own pages (Int64.min as a timestamp, UInt64.max as a
// counter): the parent and the multiplexers must clamp instead, or one tenant could crash them.

/// Milliseconds from `since` to `now`: 0 when `since` is not in the past (a lie or a clock
/// race), Int64.max when the difference does not fit.
public func elapsedMilliseconds(since: Int64, now: Int64) -> Int64 {
    guard since < now else { return 0 }
    let (elapsed, overflow) = now.subtractingReportingOverflow(since)
    return overflow ? .max : elapsed
}

/// A configured number of seconds in milliseconds, clamped to what fits.
public func milliseconds(seconds: Int) -> Int64 {
    let (product, overflow) = Int64(clamping: seconds).multipliedReportingOverflow(by: 1000)
    return overflow ? (seconds < 0 ? .min : .max) : product
}

extension FixedWidthInteger where Self: UnsignedInteger {
    /// A sum that sticks at the maximum: an inflated counter then shows as huge, rather than
    /// wrapping round to a small, believable number.
    public func saturatingAdding(_ other: Self) -> Self {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}

extension Int {
    public func saturatingAdding(_ other: Int) -> Int {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? (other < 0 ? .min : .max) : sum
    }

    public func saturatingSubtracting(_ other: Int) -> Int {
        let (difference, overflow) = subtractingReportingOverflow(other)
        return overflow ? (other < 0 ? .max : .min) : difference
    }
}
