// When a queued connection asks for a new worker.
//
// A connection in an environment's channel is usually taken within a millisecond by a worker
// finishing its response. Starting a worker for it leaves a process the load never needed, and
// with hundreds of tenants, each with a moment of two requests at once, hundreds of them (each
// one more cold process to wake). So, for an environment that has workers, its queue (and a
// multiplexer's demand) counts only once the same connections are still there `patience`
// milliseconds later. An environment with no worker gets one at once (the first byte waits on it).

public struct QueuePatience {
    public static let defaultMilliseconds: Int64 = 10
    public let patience: Int64
    /// Per environment: when a queue was first seen, and how many connections had been handed
    /// off by then (the queue is gone once that many were taken).
    private var firstSeen: [Int: (at: Int64, handedOff: UInt64)] = [:]

    public init(patience: Int64 = QueuePatience.defaultMilliseconds) {
        self.patience = max(0, patience)
    }

    /// A queue is being watched: look again within `patience`.
    public var watching: Bool { !firstSeen.isEmpty }

    /// The environments whose queues are being watched.
    public var watched: Set<Int> { Set(firstSeen.keys) }

    /// The load the planner should see for `environment` now. `waitingInMultiplexers`:
    /// connections a multiplexer holds because the environment could not take them (no worker
    /// free and none to add: at MaxProcessors or MaxClients); they wait already, no patience.
    public mutating func load(environment: Int, queued: Int, demanded: Bool, handedOff: UInt64, received: UInt64,
                              hasWorkers: Bool, now: Int64, waitingInMultiplexers: Int = 0) -> EnvironmentLoad {
        guard hasWorkers else {
            firstSeen[environment] = nil
            return EnvironmentLoad(queued: queued.saturatingAdding(max(0, waitingInMultiplexers)), demanded: demanded)
        }
        if waitingInMultiplexers > 0 {
            return EnvironmentLoad(queued: max(0, queued).saturatingAdding(waitingInMultiplexers), demanded: true)
        }
        guard queued > 0 else {
            firstSeen[environment] = nil  // taken (a demand that found none queued asks for nothing)
            return EnvironmentLoad()
        }
        if let seen = firstSeen[environment], received < seen.handedOff {
            // Some of the connections queued at first sight still wait.
            guard elapsedMilliseconds(since: seen.at, now: now) >= patience else { return EnvironmentLoad() }
            return EnvironmentLoad(queued: queued, demanded: true)
        }
        firstSeen[environment] = (now, handedOff)
        return EnvironmentLoad()
    }

    /// Forgets environments beyond `count` (a graceful restart with fewer).
    public mutating func keep(_ count: Int) {
        if firstSeen.keys.contains(where: { $0 >= count }) { firstSeen = firstSeen.filter { $0.key < count } }
    }
}
