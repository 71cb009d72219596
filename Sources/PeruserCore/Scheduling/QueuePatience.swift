// When a queued connection asks for a new worker.
//
// A connection in an environment's channel is usually taken within a millisecond by a worker
// finishing its response. Starting a worker for it leaves a process the load never needed, and
// with hundreds of tenants, each with a moment of two requests at once, hundreds of them (each
// one more cold process to wake). So, for an environment that has workers, its queue (and a
// multiplexer's demand) counts only once it has not been seen empty for `patience`
// milliseconds: the connections seen first still wait, or others took their place (a queue
// that moves but never empties: the workers take each connection at once and still do not
// keep up; counting only the first ones, a busy tenant's few workers were never added to,
// BENCHMARKS.md). An environment with no worker gets one at once (the first byte waits on it).
//
// 200 ms, not less: with hundreds of tenants on saturated CPUs a woken worker waits tens of
// milliseconds for a CPU, so its queue outlasted a 10 ms (or 40 ms) patience about a hundred
// times per 5 s of random-tenant load; each start added one more runnable process, stayed for
// IdleTimeout, and at the defaults the table filled MaxClients (1,320 processes against about
// 900, p99 75-196 ms against 28-47, BENCHMARKS.md). A queue that lasts 200 ms is a load the
// workers do not keep up with. httpd's own MPMs look at their spares once a second.

public struct QueuePatience {
    public static let defaultMilliseconds: Int64 = 200
    public let patience: Int64
    /// Per environment: when a queue was first seen, and last seen (a look more than twice
    /// `patience` after the last one says nothing of the time between: watched anew).
    private var firstSeen: [Int: (at: Int64, last: Int64)] = [:]

    public init(patience: Int64 = QueuePatience.defaultMilliseconds) {
        self.patience = max(0, patience)
    }

    /// A queue is being watched: look again within `patience`.
    public var watching: Bool { !firstSeen.isEmpty }

    /// The environments whose queues are being watched.
    public var watched: Set<Int> { Set(firstSeen.keys) }

    /// The load the planner should see for `environment` now. `queued`: connections in its
    /// channel; `waitingInMultiplexers`: connections the multiplexers hold for it (their
    /// published count). At MaxClients those wait already, with no patience: they are what
    /// tells the planner to make room. Below it they are part of the queue: a busy tenant's
    /// multiplexers keep most of its waiting connections, passing one to the channel as a
    /// worker comes free, so the channel alone is often empty at a look while dozens wait.
    public mutating func load(environment: Int, queued: Int, demanded: Bool, hasWorkers: Bool, now: Int64,
                              waitingInMultiplexers: Int = 0, atMaxClients: Bool = false) -> EnvironmentLoad {
        let backlog = max(0, queued).saturatingAdding(max(0, waitingInMultiplexers))
        guard hasWorkers else {
            firstSeen[environment] = nil
            return EnvironmentLoad(queued: backlog, demanded: demanded)
        }
        if atMaxClients && waitingInMultiplexers > 0 {
            return EnvironmentLoad(queued: backlog, demanded: true)
        }
        guard backlog > 0 else {
            firstSeen[environment] = nil  // taken (a demand that found none queued asks for nothing)
            return EnvironmentLoad()
        }
        let longestGap = patience.saturatingAdding(patience)
        if let seen = firstSeen[environment], elapsedMilliseconds(since: seen.last, now: now) <= longestGap {
            // Not seen empty since it was first seen.
            firstSeen[environment] = (seen.at, max(seen.last, now))
            guard elapsedMilliseconds(since: seen.at, now: now) >= patience else { return EnvironmentLoad() }
            return EnvironmentLoad(queued: backlog, demanded: true)
        }
        firstSeen[environment] = (now, now)
        return EnvironmentLoad()
    }

    /// Forgets environments beyond `count` (a graceful restart with fewer).
    public mutating func keep(_ count: Int) {
        if firstSeen.keys.contains(where: { $0 >= count }) { firstSeen = firstSeen.filter { $0.key < count } }
    }
}
