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

    /// How long a connection that could take a worker must have waited for one before its
    /// environment counts as pressed. A worker finishing a response, or one just started, comes
    /// free within milliseconds: a wait that short once had every reader past
    /// ReaderShedTimeout given up (five slow uploads shed for a request that waited 3 ms).
    /// Short against any attack the shedding answers (ReaderShedTimeout is whole seconds).
    public static let pressureAfterMilliseconds: Int64 = 100

    /// Whether a multiplexer marks an environment pressed at `now`: no worker can be added or
    /// is free (`canTake` false), and a connection that could take one has waited for it since
    /// `oldestWaitingSince` (nil: none waits) for at least `pressureAfterMilliseconds`. The
    /// queue is only looked at when the environment cannot take a connection (every turn of a
    /// multiplexer's loop while connections wait).
    public static func presses(canTake: Bool, oldestWaitingSince: @autoclosure () -> Int64?, now: Int64) -> Bool {
        guard !canTake, let since = oldestWaitingSince() else { return false }
        return elapsedMilliseconds(since: since, now: now) >= pressureAfterMilliseconds
    }

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
/// connections in the environment), a hash of the client, and when a multiplexer last said so.
/// Each multiplexer ranks only its own waiting connections; with this, none passes another
/// client's heavier connection to a worker that a lighter one waits for elsewhere. One client's
/// connections never hold each other up (a single busy client, say a load balancer, would
/// otherwise queue behind itself).
public struct LightestWaiting: Equatable {
    public var rank: Int
    public var client: UInt32
    /// Milliseconds, modulo 2^24 (about 4.6 hours: a mark is only ever compared within seconds).
    public var at: Int64
    /// A mark older than this has lapsed (multiplexers with waiting connections renew theirs
    /// on every turn of their loop, at least every 20 ms).
    public static let lapseMilliseconds: Int64 = 60
    static let timeMask: Int64 = (1 << 24) - 1

    public init(rank: Int, client: UInt32, at: Int64) {
        self.rank = min(max(0, rank), 0xff)
        self.client = client
        self.at = at & Self.timeMask
    }

    /// Time in the low 24 bits, rank in the next 8, the client's hash in the high 32; 0: none.
    public init(packed: UInt64) {
        at = Int64(packed & 0xff_ffff)
        rank = Int(packed >> 24 & 0xff)
        client = UInt32(truncatingIfNeeded: packed >> 32)
    }

    public var packed: UInt64 { UInt64(client) << 32 | UInt64(rank) << 24 | UInt64(at) | (packedIsZero ? 1 : 0) }

    /// A mark of all zeros would read as "none": time 0 is stored as 1 ms.
    private var packedIsZero: Bool { client == 0 && rank == 0 && at == 0 }

    /// The mark, unless it has lapsed at `now`.
    public func live(now: Int64) -> LightestWaiting? {
        let age = (now & Self.timeMask) - at
        let wrapped = age < 0 ? age + Self.timeMask + 1 : age
        return wrapped <= Self.lapseMilliseconds ? self : nil
    }

    /// Whether `offered` replaces this mark: it is lighter, as light and newer, or this one lapsed.
    public func yields(to offered: LightestWaiting, now: Int64) -> Bool {
        guard let current = live(now: now) else { return true }
        return offered.rank < current.rank || offered.rank == current.rank
    }

    /// Whether a connection of `client` with rank `rank` must let this mark's client go first.
    public func goesFirst(before client: UInt32, rank: Int) -> Bool {
        self.client != client && self.rank < min(max(0, rank), 0xff)
    }
}

extension ClientAddress {
    /// 32 bits of the address, mixed (for LightestWaiting; a collision only makes two clients
    /// wait as one).
    public var hash32: UInt32 {
        UInt32(truncatingIfNeeded: mixedBits(high ^ (low &* 0x9e37_79b9_7f4a_7c15))) | 1
    }
}

/// `x` with its bits spread (neighbouring inputs land far apart): for hashes and seeds.
func mixedBits(_ x: UInt64) -> UInt64 {
    var x = x
    x ^= x >> 31
    x = x &* 0xbf58_476d_1ce4_e5b9
    x ^= x >> 29
    return x
}
