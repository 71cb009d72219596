// ProcessorWaitTimeout: how long a connection may wait for a busy environment, and the
// availability that shrinks that wait each time an environment fails to take a connection.
//
// The spec ("Waiting for the processor"): a connection for an environment with no free worker
// that cannot get one waits at most (availability / 100) * ProcessorWaitTimeout seconds. A worker
// freeing up in time passes the connection and resets availability to 100%; otherwise the client
// gets 503 and availability falls by 100/levels percent, never below 0. At 0% a connection for a
// saturated environment is dropped at once. ProcessorWaitTimeout 0 means no waiting at all.

public struct Availability: Equatable {
    /// Percent, 0...100.
    public private(set) var percent: Int = 100
    public let waitSeconds: Int
    public let levels: Int

    public init(waitSeconds: Int, levels: Int, percent: Int = 100) {
        self.waitSeconds = max(0, waitSeconds)
        self.levels = max(1, levels)
        self.percent = min(max(percent, 0), 100)
    }

    /// How long a connection may wait now, in milliseconds.
    public var waitBudgetMilliseconds: Int64 {
        Int64(waitSeconds) * 1000 * Int64(percent) / 100
    }

    /// A connection reached a worker (after waiting or not): the environment is healthy.
    public mutating func passed() {
        percent = 100
    }

    /// A connection was dropped with 503.
    public mutating func dropped() {
        percent = max(0, percent - 100 / levels)
    }
}

/// Connections held for saturated environments, in the order their deadlines come.
public struct WaitQueue<Item: Equatable>: Equatable {
    public struct Entry: Equatable {
        public var item: Item
        public var environment: Int
        public var deadline: Int64
        /// When it began to wait (ReaderShedding: how long connections have waited).
        public var since: Int64
    }

    public private(set) var entries: [Entry] = []

    public init() {}

    public var isEmpty: Bool { entries.isEmpty }
    public var count: Int { entries.count }

    public func count(for environment: Int) -> Int {
        entries.reduce(0) { $0 + ($1.environment == environment ? 1 : 0) }
    }

    /// Adds a connection. Entries stay sorted by deadline, earliest first, ties in arrival
    /// order (a later arrival can have an earlier deadline when availability fell meanwhile).
    public mutating func add(_ item: Item, environment: Int, deadline: Int64, since: Int64) {
        let index = entries.firstIndex { $0.deadline > deadline } ?? entries.endIndex
        entries.insert(Entry(item: item, environment: environment, deadline: deadline, since: since), at: index)
    }

    /// Takes up to `count` waiting connections of `environment`, earliest deadline first.
    public mutating func take(_ count: Int, for environment: Int) -> [Item] {
        guard count > 0 else { return [] }
        var taken: [Item] = []
        entries.removeAll { entry in
            guard taken.count < count, entry.environment == environment else { return false }
            taken.append(entry.item)
            return true
        }
        return taken
    }

    /// Takes up to `count` waiting connections of `environment`, one at a time: each time the
    /// one `rank` ranks lowest (nil: not eligible now), the earliest deadline among equals.
    /// `rank` is asked afresh for every pick, so it may count what was already taken.
    public mutating func take(_ count: Int, for environment: Int, rank: (Item) -> Int?) -> [Item] {
        var taken: [Item] = []
        while taken.count < count {
            var best: (index: Int, rank: Int)?
            for (index, entry) in entries.enumerated() where entry.environment == environment {
                guard let r = rank(entry.item) else { continue }
                if best == nil || r < best!.rank { best = (index, r) }
            }
            guard let chosen = best else { break }
            taken.append(entries.remove(at: chosen.index).item)
        }
        return taken
    }

    /// Takes the waiting connection of `environment` with the earliest deadline that `eligible`
    /// admits, if any.
    public mutating func takeFirst(for environment: Int, where eligible: (Item) -> Bool) -> Item? {
        guard let index = entries.firstIndex(where: { $0.environment == environment && eligible($0.item) }) else {
            return nil
        }
        return entries.remove(at: index).item
    }

    /// Whether a connection of `environment` that `eligible` admits is waiting.
    public func contains(for environment: Int, where eligible: (Item) -> Bool) -> Bool {
        entries.contains { $0.environment == environment && eligible($0.item) }
    }

    /// When the longest-waiting connection of `environment` that `eligible` admits began to
    /// wait, if one does.
    public func oldestSince(for environment: Int, where eligible: (Item) -> Bool) -> Int64? {
        var oldest: Int64?
        for entry in entries where entry.environment == environment && eligible(entry.item) {
            oldest = min(oldest ?? entry.since, entry.since)
        }
        return oldest
    }

    /// Removes and returns every connection whose deadline has passed at `now`.
    public mutating func expired(at now: Int64) -> [Entry] {
        let split = entries.firstIndex { $0.deadline > now } ?? entries.endIndex
        let gone = Array(entries[..<split])
        entries.removeFirst(split)
        return gone
    }

    /// Forgets a connection (its client went away).
    public mutating func remove(_ item: Item) {
        entries.removeAll { $0.item == item }
    }

    /// Environments that have connections waiting.
    public var environments: [Int] {
        var seen: [Int] = []
        for entry in entries where !seen.contains(entry.environment) { seen.append(entry.environment) }
        return seen
    }
}

/// Whether an environment can take a connection now, from what the child table says.
public struct EnvironmentCapacity: Equatable {
    /// Workers of the environment that are alive (starting, ready or busy).
    public var workers: Int
    /// Of those, idle ones.
    public var idle: Int
    /// Connections already in the environment's channel, not yet taken.
    public var queued: Int
    public var maxProcessors: Int
    /// MaxClients is reached (an environment with no worker still gets its PROCESSOR).
    public var serverFull: Bool
    /// The parent's last attempt to start a worker failed and none is alive (a missing user,
    /// cgroup or jail): connections must not queue for a worker that may never come.
    public var startFailing: Bool

    public init(workers: Int, idle: Int, queued: Int, maxProcessors: Int, serverFull: Bool,
                startFailing: Bool = false) {
        self.workers = workers
        self.idle = idle
        self.queued = queued
        self.maxProcessors = maxProcessors
        self.serverFull = serverFull
        self.startFailing = startFailing
    }

    /// Idle workers not already spoken for by queued connections.
    public var freeWorkers: Int { max(0, idle.saturatingSubtracting(queued)) }

    /// Queued connections that no idle worker will take: each claims a worker still to start.
    public var queuedBeyondIdle: Int { max(0, queued.saturatingSubtracting(idle)) }

    /// A worker is free, or one can be started for the connection. Queued connections that
    /// idle workers are about to take claim no worker still to start: counting them on top of
    /// those idle workers (which `workers` includes) read an environment that can grow as full
    /// for the moment a burst sat in its channel, and its readers were shed (ReaderShedding).
    public var canTake: Bool {
        if freeWorkers > 0 { return true }
        if workers == 0 { return !startFailing }
        return workers.saturatingAdding(queuedBeyondIdle) < maxProcessors && !serverFull
    }
}
