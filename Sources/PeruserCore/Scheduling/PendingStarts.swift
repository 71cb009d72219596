// Workers asked of an environment's process image and not yet answered for. The parent asks
// and goes on: an image that takes long (its supplementary groups from LDAP, a fork on a busy
// box) holds back only its own environment's starts, never the parent's reaping and starting
// for the others. A pending start keeps its slot and page until the image answers or exits,
// so a late answer always has a place and no worker runs unrecorded.

public struct PendingStart: Equatable {
    public var environment: Int
    public var type: ChildType
    public var page: Int
    public var askedAt: Int64
    /// Its deadline passed: logged and counted as a failed start; the slot still waits.
    public var overdue = false
    /// Its environment's channels were renewed meanwhile: it may hold the old ones, so it is
    /// retired as soon as it is recorded.
    public var stale = false

    public init(environment: Int, type: ChildType, page: Int, askedAt: Int64) {
        self.environment = environment
        self.type = type
        self.page = page
        self.askedAt = askedAt
    }
}

public struct PendingStarts {
    /// An answer slower than this counts as a failed start (the environment's waiting
    /// connections then go by ProcessorWaitTimeout); two forks take a few ms.
    public static let deadlineMilliseconds: Int64 = 1000

    public private(set) var bySlot: [Int: PendingStart] = [:]

    public init() {}

    public var isEmpty: Bool { bySlot.isEmpty }

    public mutating func asked(slot: Int, _ start: PendingStart) {
        bySlot[slot] = start
    }

    /// What an image's answer for `slot` means.
    public enum Answer: Equatable {
        /// The start it answers for (now no longer pending).
        case answers(PendingStart)
        /// Nothing of `environment` was pending in that slot: a child the parent did not ask for.
        case unasked
    }

    /// Takes the start `environment`'s image answered for in `slot`.
    public mutating func answer(slot: Int, environment: Int) -> Answer {
        guard let start = bySlot[slot], start.environment == environment else { return .unasked }
        bySlot[slot] = nil
        return .answers(start)
    }

    /// Starts that became overdue at `now` (each reported once), by slot.
    public mutating func becameOverdue(now: Int64) -> [(slot: Int, start: PendingStart)] {
        var late: [(slot: Int, start: PendingStart)] = []
        for (slot, start) in bySlot where !start.overdue && now - start.askedAt >= Self.deadlineMilliseconds {
            bySlot[slot]?.overdue = true
            late.append((slot, start))
        }
        return late.sorted { $0.slot < $1.slot }
    }

    /// `environment`'s image exited: its pending starts will never be answered. Their slots.
    public mutating func drop(environment: Int) -> [Int] {
        let slots = bySlot.filter { $0.value.environment == environment }.map(\.key).sorted()
        for slot in slots { bySlot[slot] = nil }
        return slots
    }

    /// Every pending start is given up (the generation ends). Their slots.
    public mutating func dropAll() -> [Int] {
        defer { bySlot = [:] }
        return bySlot.keys.sorted()
    }

    public mutating func markStale(environment: Int) {
        for (slot, start) in bySlot where start.environment == environment { bySlot[slot]?.stale = true }
    }

    public func pages(of environment: Int) -> Set<Int> {
        Set(bySlot.values.filter { $0.environment == environment }.map(\.page))
    }

    public func hasStarts(of environment: Int) -> Bool {
        bySlot.values.contains { $0.environment == environment }
    }

    /// The pending starts as the planner sees them: starting workers of `generation` (no pid).
    public func children(generation: UInt32) -> [ChildState] {
        bySlot.sorted { $0.key < $1.key }.map { slot, start in
            ChildState(slot: slot, pid: 0, role: .worker(environment: start.environment), type: start.type,
                       generation: generation, startedAt: start.askedAt, status: .starting,
                       statusSince: start.askedAt)
        }
    }
}

/// Children the parent reaped before it knew their pids: an image's answer can come after its
/// child already exited (a worker that dies at its chroot, say). Kept a short while, so the
/// answer that names one is read as a start that ended, not as a live worker.
public struct UnclaimedExits<Status> {
    public static var keptMilliseconds: Int64 { 5000 }
    public static var capacity: Int { 64 }

    private var exits: [(pid: Int32, status: Status, at: Int64)] = []

    public init() {}

    public mutating func remember(pid: Int32, status: Status, now: Int64) {
        exits.removeAll { now - $0.at >= Self.keptMilliseconds || $0.pid == pid }
        if exits.count >= Self.capacity { exits.removeFirst(exits.count - Self.capacity + 1) }
        exits.append((pid, status, now))
    }

    /// The exit of `pid`, if it was reaped unclaimed lately (and is then forgotten).
    public mutating func claim(pid: Int32, now: Int64) -> Status? {
        exits.removeAll { now - $0.at >= Self.keptMilliseconds }
        guard let index = exits.firstIndex(where: { $0.pid == pid }) else { return nil }
        return exits.remove(at: index).status
    }

    public var count: Int { exits.count }
}
