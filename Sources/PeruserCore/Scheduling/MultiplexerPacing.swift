/// A multiplexer's scheduling policy. While it holds no kept-alive connection, its work is
/// new connections: accepting, reading a head, handing it off. Then it runs SCHED_BATCH, so a
/// client's connect does not preempt the worker serving an earlier one; the multiplexer runs
/// when a CPU comes free and takes the connections that came meanwhile in one turn. While it
/// holds a kept-alive connection (lent to a worker, or handed back), every next request on it
/// waits for this multiplexer: then it runs as a normal process and wakes at once.
///
/// Measured (BENCHMARKS.md): multiplexers batch and workers normal took 4–14 % more
/// `Connection: close` requests per second than the reverse (workers batch, as before) in 5 of 5
/// paired rounds with 300 tenants, and 7–11 % more with two environments; with the multiplexers
/// batch all the time, kept-alive connections lost about 8 %, hence the switch.
public struct MultiplexerPacing: Equatable {
    /// How long a multiplexer must have held no kept-alive connection before it turns batch:
    /// a client between two keep-alive requests does not flip it back and forth.
    public static let settleMilliseconds: Int64 = 1000

    public private(set) var policy: SchedulingPolicy = .normal
    private var quietSince: Int64?

    public init() {}

    /// After a turn of the event loop: the policy to switch to now, or nil to keep this one.
    /// Back to normal at once when a kept-alive connection is held; to batch only after none
    /// was held for `settleMilliseconds`.
    public mutating func afterTurn(holdsKeptAlive: Bool, now: Int64) -> SchedulingPolicy? {
        if holdsKeptAlive {
            quietSince = nil
            guard policy == .batch else { return nil }
            policy = .normal
            return .normal
        }
        let since = quietSince ?? now
        quietSince = since
        guard policy == .normal, now - since >= Self.settleMilliseconds else { return nil }
        policy = .batch
        return .batch
    }
}

/// The scheduling policies a child may ask for itself (an unprivileged process may move between
/// these two within its RLIMIT_NICE).
public enum SchedulingPolicy: Equatable {
    case normal
    case batch
}
