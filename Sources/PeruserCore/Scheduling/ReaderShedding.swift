// Under pressure, readers are shed before workers: when an environment has connections waiting
// for a worker, a worker that has spent too long waiting on its client in the current request
// (a TLS handshake, a head inside TLS, a slow body, an idle TLS keep-alive) gives that
// connection up, and takes a waiting one. An environment without waiting connections keeps
// httpd's own patience (Timeout, mod_reqtimeout, KeepAliveTimeout).

public enum ReaderShedding {
    /// Each this many bytes received from the client earn one more second of waiting: a real
    /// upload keeps its worker, a trickle does not.
    public static let bytesPerSecondOfPatience: UInt64 = 16 * 1024
    /// A multiplexer marks an environment pressed on every turn of its loop while connections
    /// wait for it (at least every 100 ms); a mark older than this has lapsed.
    public static let pressureLapseMilliseconds: Int64 = 500

    /// Whether an environment marked pressed at `pressedAt` (0: never) is pressed at `now`.
    /// The mark is a multiplexer's; a mark from the future is read as lapsed.
    public static func pressed(pressedAt: Int64, now: Int64) -> Bool {
        pressedAt > 0 && pressedAt <= now && now - pressedAt <= pressureLapseMilliseconds
    }

    /// Whether a worker that has waited `waited` ms on its client in this request, having
    /// received `received` bytes of it, gives the connection up. `bound`: ReaderShedTimeout in
    /// ms (0: never).
    public static func shouldShed(waited: Int64, received: UInt64, bound: Int64, pressed: Bool) -> Bool {
        guard pressed, bound > 0 else { return false }
        let credit = Int64(clamping: received / bytesPerSecondOfPatience).multipliedReportingOverflow(by: 1000)
        let allowed = credit.overflow ? Int64.max : bound.saturatingAdding(credit.partialValue)
        return waited > allowed
    }
}

/// The lightest client waiting for an environment in any multiplexer: its rank (the client's
/// connections in the environment) and when a multiplexer last said so. Each multiplexer
/// ranks only its own waiting connections; with this, none passes a heavier client's
/// connection to a worker that another multiplexer's lighter one is waiting for.
public struct LightestWaiting: Equatable {
    public var rank: Int
    public var at: Int64
    /// A mark older than this has lapsed (multiplexers with waiting connections renew theirs
    /// every 20 ms).
    public static let lapseMilliseconds: Int64 = 60

    public init(rank: Int, at: Int64) {
        self.rank = min(max(0, rank), 0xff_ffff)
        self.at = max(0, at)
    }

    /// Time in the high 40 bits, rank in the low 24.
    public init(packed: UInt64) {
        rank = Int(packed & 0xff_ffff)
        at = Int64(packed >> 24)
    }

    public var packed: UInt64 { UInt64(min(at, (1 << 40) - 1)) << 24 | UInt64(rank) }

    public func rank(now: Int64) -> Int? {
        at > 0 && at <= now && now - at <= Self.lapseMilliseconds ? rank : nil
    }

    /// Whether `offered` replaces this mark: it is lighter, as light and newer, or this one lapsed.
    public func yields(to offered: LightestWaiting, now: Int64) -> Bool {
        guard let current = rank(now: now) else { return true }
        return offered.rank < current || (offered.rank == current && offered.at >= at)
    }
}
