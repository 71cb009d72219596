// What a multiplexer does with a connection once its vhost lookup has named an environment:
// send it now, hold it for a worker, or answer 503. Pure: the capacity and the availability
// are read by the caller (from the child table and the multiplexers' board, which tenants'
// workers can skew, but only within their own environment).

public enum RouteDecision: Equatable {
    /// Handed back `mostHops` times without a request served: a routing loop; answer 503.
    case loop
    /// The environment can take it: send it down its channel, retrying while the channel is
    /// full until `deadline` (then 503).
    case send(deadline: Int64, askForWorker: Bool)
    /// The environment can take one, and connections wait for it here: the oldest of this
    /// one's client, if one of them is, is sent instead (until `deadline`, as for `.send`) and
    /// this one waits in its place until `waitDeadline`; if none is, this one is sent as for
    /// `.send`. One client's connections are served in the order they came, and the worker is
    /// used at the same moment as by `.send`.
    case sendEarlier(deadline: Int64, waitDeadline: Int64, askForWorker: Bool)
    /// Saturated: hold it in the wait queue until a worker frees up, at most until `deadline`
    /// ((availability / 100) * ProcessorWaitTimeout from now).
    case wait(deadline: Int64, askForWorker: Bool)
    /// Saturated and availability is down to no wait at all: answer 503 now (availability then
    /// falls one level).
    case drop(askForWorker: Bool)

    /// Whether to ask the parent for a worker (no idle worker is free for this connection).
    /// Saturated means no free worker, so `.wait` and `.drop` always ask; `.loop` never does.
    public var asksForWorker: Bool {
        switch self {
        case .loop: return false
        case .send(_, let ask), .wait(_, let ask), .sendEarlier(_, _, let ask): return ask
        case .drop(let ask): return ask
        }
    }

    /// - `hops`: how many times workers handed the connection back; `mostHops`: the most allowed.
    /// - `channelWait`: how long a connection may wait for room in the channel (ms).
    /// - `overShare`: the connection's client holds its share of the environment's workers
    ///   (MaxClientShare): it waits for one of its own to end, and asks for no worker.
    /// - `lighterWaiting`: a lighter client's connection waits for this environment: it goes first.
    /// - `waitingAhead`: connections wait for this environment in this multiplexer: this one
    ///   waits behind them (they are passed first, lightest client first, in this same turn
    ///   where there is room), so that one that comes back, a kept-alive connection whose turn
    ///   was over (KeptAliveTurn), does not take the worker it just gave up. Unless nothing may
    ///   wait at all (availability 0): then it goes now.
    /// Either way the connection waits under the ProcessorWaitTimeout rule, as for a saturated one.
    /// - `waitingHere`: connections wait for this environment in this multiplexer: where this
    ///   one could go now, the result is `.sendEarlier` (the caller sends the client's own
    ///   oldest if one waits). Without it a client's new connections took each worker that came
    ///   free while its older ones waited for a turn with no new arrival (BENCHMARKS.md: p99
    ///   3-5 × longer for one busy client). Unless nothing may wait at all: then this one goes.
    public static func decide(hops: UInt16, mostHops: UInt16, capacity: EnvironmentCapacity,
                              availability: Availability, now: Int64, channelWait: Int64,
                              overShare: Bool = false, lighterWaiting: Bool = false,
                              waitingAhead: Bool = false, waitingHere: Bool = false) -> RouteDecision {
        guard hops < mostHops else { return .loop }
        let ask = capacity.freeWorkers == 0 && !overShare
        let budget = availability.waitBudgetMilliseconds
        if capacity.canTake && !overShare && !lighterWaiting && !(waitingAhead && budget > 0) {
            let deadline = now.saturatingAdding(max(0, channelWait))
            if waitingHere && budget > 0 {
                return .sendEarlier(deadline: deadline, waitDeadline: now.saturatingAdding(budget), askForWorker: ask)
            }
            return .send(deadline: deadline, askForWorker: ask)
        }
        guard budget > 0 else { return .drop(askForWorker: ask) }
        return .wait(deadline: now.saturatingAdding(budget), askForWorker: ask)
    }
}

extension EnvironmentCapacity {
    /// How many waiting connections may be passed to the environment now: one per free worker;
    /// with none free, one if a worker can be started for it; else none.
    public var roomForWaiting: Int {
        let free = freeWorkers
        if free > 0 { return free }
        return canTake ? 1 : 0
    }
}

extension Int64 {
    /// A sum that sticks at the bounds instead of trapping (a deadline far in the future stays
    /// far in the future).
    public func saturatingAdding(_ other: Int64) -> Int64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? (other < 0 ? .min : .max) : sum
    }
}
