// The parent's private table of children and the decision of whom to start next.
//
// This table is the only source of pids the parent signals and of roles it forks: it lives in
// the parent's own memory, never in shared memory that children can write.

public enum ChildRole: Hashable {
    case multiplexer
    case worker(environment: Int)
}

public struct Child: Equatable {
    public var role: ChildRole
    public var pid: Int32
    public var startedAt: Int64
}

/// How many children of each role the server keeps alive.
public struct ChildQuota: Equatable {
    public var multiplexers: Int
    /// Workers per environment, indexed like the environment table.
    public var workers: [Int]

    public init(multiplexers: Int, workers: [Int]) {
        self.multiplexers = multiplexers
        self.workers = workers
    }

    public var total: Int { multiplexers + workers.reduce(0, +) }

    /// Each environment keeps its own MinProcessors, else the global one, and never fewer than
    /// one worker, so that every environment can serve its first request without waiting.
    public init(multiplexers: Int, environments: [Environment], globalMinProcessors: Int) {
        self.multiplexers = max(1, multiplexers)
        self.workers = environments.map { max(1, $0.minProcessors ?? globalMinProcessors) }
    }
}

public struct SpawnOrder: Equatable {
    public var slot: Int
    public var role: ChildRole

    public init(slot: Int, role: ChildRole) {
        self.slot = slot
        self.role = role
    }
}

public struct Supervisor {
    public let quota: ChildQuota
    public private(set) var slots: [Child?]
    /// Consecutive quick deaths per role, and the time before which that role is not restarted.
    private var failures: [ChildRole: Int] = [:]
    private var notBefore: [ChildRole: Int64] = [:]

    /// A child that dies sooner than this after its start counts as a failed start.
    public static let quickDeathMilliseconds: Int64 = 2000
    public static let longestBackoffMilliseconds: Int64 = 60_000

    public init(quota: ChildQuota, slotCount: Int) {
        self.quota = quota
        self.slots = Array(repeating: nil, count: max(0, slotCount))
    }

    public func count(of role: ChildRole) -> Int {
        slots.reduce(0) { $0 + ($1?.role == role ? 1 : 0) }
    }

    public var livePids: [Int32] { slots.compactMap { $0?.pid } }

    /// One past the highest slot in use (Apache's MAX_DAEMON_USED).
    public var slotsInUse: Int { (slots.lastIndex { $0 != nil }).map { $0 + 1 } ?? 0 }

    /// The next child to start at `now`, or nil when every quota is met, the roles still short
    /// are backing off after failed starts, or no slot is free.
    public func nextSpawn(now: Int64) -> SpawnOrder? {
        guard let slot = slots.firstIndex(where: { $0 == nil }) else { return nil }
        var wanted: [(ChildRole, Int)] = [(.multiplexer, quota.multiplexers)]
        for (env, count) in quota.workers.enumerated() { wanted.append((.worker(environment: env), count)) }
        for (role, target) in wanted where count(of: role) < target {
            if let until = notBefore[role], now < until { continue }
            return SpawnOrder(slot: slot, role: role)
        }
        return nil
    }

    public mutating func started(_ order: SpawnOrder, pid: Int32, now: Int64) {
        guard slots.indices.contains(order.slot) else { return }
        slots[order.slot] = Child(role: order.role, pid: pid, startedAt: now)
    }

    /// Records the exit of `pid`; returns its slot and role, or nil when it is not our child.
    public mutating func exited(pid: Int32, now: Int64) -> (slot: Int, child: Child)? {
        guard let slot = slots.firstIndex(where: { $0?.pid == pid }), let child = slots[slot] else {
            return nil
        }
        slots[slot] = nil
        if now - child.startedAt < Self.quickDeathMilliseconds {
            let count = (failures[child.role] ?? 0) + 1
            failures[child.role] = count
            notBefore[child.role] = now + Self.backoff(afterFailures: count)
        } else {
            failures[child.role] = nil
            notBefore[child.role] = nil
        }
        return (slot, child)
    }

    /// 0.5 s, 1 s, 2 s, ... capped at a minute.
    public static func backoff(afterFailures count: Int) -> Int64 {
        let shift = min(max(count - 1, 0), 10)
        return min(Int64(500) << Int64(shift), longestBackoffMilliseconds)
    }
}
