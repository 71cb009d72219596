// Whom to start, retire or kill: pure functions of the child table, the limits and the clock.
//
// The parent applies the plan. The children it plans for come from its private table (pid,
// role, generation: written only by the parent); the status of each child comes from shared
// memory that children write, so it is only a hint: a lie there can at worst move spawning
// and retiring within the configured limits, never fork another user or signal a stranger.

public enum ChildRole: Hashable {
    case multiplexer
    case worker(environment: Int)
}

/// The type column of the original's status page.
public enum ChildType: UInt8, Equatable {
    case unknown = 0
    case multiplexer = 1
    /// An environment's guaranteed worker: it may start even when MaxClients is reached.
    case processor = 2
    case worker = 3

    public var name: String {
        switch self {
        case .unknown: return "UNKNOWN"
        case .multiplexer: return "MULTIPLEXER"
        case .processor: return "PROCESSOR"
        case .worker: return "WORKER"
        }
    }
}

public enum ChildStatus: UInt8, Equatable {
    case standby = 0
    case starting = 1
    case ready = 2
    case active = 3

    public var name: String {
        switch self {
        case .standby: return "STANDBY"
        case .starting: return "STARTING"
        case .ready: return "READY"
        case .active: return "ACTIVE"
        }
    }
}

/// One live child as the parent sees it.
public struct ChildState: Equatable {
    public var slot: Int
    public var pid: Int32
    public var role: ChildRole
    public var type: ChildType
    public var generation: UInt32
    public var startedAt: Int64
    /// Already asked to exit when done.
    public var retiring: Bool
    /// From shared memory (a hint).
    public var status: ChildStatus
    public var statusSince: Int64

    public init(slot: Int, pid: Int32, role: ChildRole, type: ChildType, generation: UInt32,
                startedAt: Int64, retiring: Bool = false, status: ChildStatus, statusSince: Int64) {
        self.slot = slot
        self.pid = pid
        self.role = role
        self.type = type
        self.generation = generation
        self.startedAt = startedAt
        self.retiring = retiring
        self.status = status
        self.statusSince = statusSince
    }
}

/// What the multiplexers report about an environment (hints from shared memory).
public struct EnvironmentLoad: Equatable {
    /// Connections passed to the environment's channel and not yet taken by a worker.
    public var queued: Int
    /// A multiplexer found no idle worker for a new connection since the last plan.
    public var demanded: Bool

    public init(queued: Int = 0, demanded: Bool = false) {
        self.queued = queued
        self.demanded = demanded
    }
}

public enum RetireReason: Equatable {
    case idleTimeout
    case tooManySpare
    case multiplexerIdle
    /// MaxClients is reached and another environment has connections waiting: an idle worker
    /// of an environment above its MinProcessors makes room.
    case makeRoom
}

public enum Action: Equatable {
    case spawn(slot: Int, role: ChildRole, type: ChildType)
    /// Ask the child to exit once its current connection is done.
    case retire(slot: Int, reason: RetireReason)
    /// Kill a worker that has been on one request longer than ExpireTimeout.
    case expire(slot: Int)
}

public struct Plan: Equatable {
    public var actions: [Action] = []
    /// A spawn was wanted but MaxClients (or the slots) did not allow it.
    public var capReached = false
    /// Environments this pass saw wanting spares (fewer idle workers than MinSpareProcessors
    /// beside what waits): the parent keeps when each became short (the next pass's
    /// `spareShortSince`).
    public var shortOfSpares = Set<Int>()

    /// The slots this plan asks to exit.
    public var retiredSlots: Set<Int> {
        Set(actions.compactMap { action -> Int? in
            if case .retire(let slot, _) = action { return slot }
            return nil
        })
    }
}

public struct MaintenancePolicy {
    public var limits: ServerLimits
    /// Effective limits of each environment of the current generation.
    public var environments: [WorkerLimits]
    public var generation: UInt32
    /// A multiplexer holding at least this many connections counts as busy.
    public var busyMultiplexerConnections = 32
    /// How long an environment must have been short of spares, pass after pass, before one
    /// is started (0: at once). Two requests at the same moment leave a tenant one idle worker
    /// for a millisecond; a pass that saw it started a spare, kept for IdleTimeout (900 s by
    /// default), and with hundreds of tenants those moments added up to MaxProcessors each and
    /// filled MaxClients. Connections that wait never wait for this: their workers start as
    /// soon as their queue asks (QueuePatience). httpd's own MPMs look at their spares once a
    /// second.
    public var sparePatienceMilliseconds: Int64 = 0

    public init(limits: ServerLimits, environments: [WorkerLimits], generation: UInt32) {
        self.limits = limits
        self.environments = environments
        self.generation = generation
    }

    /// Slots [0, environments.count) are the environments' reserved PROCESSOR slots.
    public var reservedSlots: Int { environments.count }

    /// `spareShortSince`: when each environment of the last pass's `shortOfSpares` became short.
    public func plan(children: [ChildState], load: [EnvironmentLoad], backoffUntil: [ChildRole: Int64],
                     now: Int64, spareShortSince: [Int: Int64] = [:]) -> Plan {
        var plan = Plan()
        var occupied = Set(children.map(\.slot))
        let current = children.filter { $0.generation == generation && !$0.retiring }
        var total = children.filter { $0.generation == generation }.count

        func backingOff(_ role: ChildRole) -> Bool {
            if let until = backoffUntil[role], now < until { return true }
            return false
        }

        func generalSlot() -> Int? {
            (reservedSlots..<limits.serverLimit).first { !occupied.contains($0) }
        }

        /// Adds a spawn if the caps and slots allow; false when they do not.
        func spawn(_ role: ChildRole, asProcessor: Bool) -> Bool {
            var slot: Int?
            if asProcessor, case .worker(let env) = role {
                slot = (env < limits.serverLimit && !occupied.contains(env)) ? env : generalSlot()
            } else if total < limits.maxClients {
                slot = generalSlot()
            }
            guard let slot else {
                plan.capReached = true
                return false
            }
            occupied.insert(slot)
            total += 1
            let type: ChildType = role == .multiplexer ? .multiplexer : (asProcessor ? .processor : .worker)
            plan.actions.append(.spawn(slot: slot, role: role, type: type))
            return true
        }

        /// Adds up to `count` workers of `env`, the first its PROCESSOR unless it has one
        /// (`hasProcessor`, updated); how many the caps and slots allowed.
        func startWorkers(of env: Int, count: Int, hasProcessor: inout Bool) -> Int {
            var started = 0
            while started < count, spawn(.worker(environment: env), asProcessor: !hasProcessor) {
                hasProcessor = true
                started += 1
            }
            return started
        }

        // Multiplexers: at least MinMultiplexers; one more when every one is busy; idle ones
        // above the minimum retire after MultiplexerIdleTimeout.
        let muxes = current.filter { $0.role == .multiplexer }
        if !backingOff(.multiplexer) {
            var wanted = max(0, limits.minMultiplexers - muxes.count)
            if wanted == 0 && !muxes.isEmpty && muxes.count < limits.maxMultiplexers
                && muxes.allSatisfy({ $0.status == .active }) {
                wanted = 1
            }
            for _ in 0..<wanted {
                guard spawn(.multiplexer, asProcessor: false) else { break }
            }
        }
        if limits.multiplexerIdleTimeout > 0 && muxes.count > limits.minMultiplexers {
            let limit = milliseconds(seconds: limits.multiplexerIdleTimeout)
            let idle = muxes
                .filter { $0.status == .ready && elapsedMilliseconds(since: $0.statusSince, now: now) >= limit }
                .sorted(by: longestIdleFirst)
            for child in idle.prefix(muxes.count - limits.minMultiplexers) {
                plan.actions.append(.retire(slot: child.slot, reason: .multiplexerIdle))
            }
        }

        // Environments with connections waiting that MaxClients kept from a worker.
        var starved: [Int] = []
        // Spares each environment wants beyond what its waiting connections and MinProcessors
        // need: started after every environment's needs, and only if no connection was left
        // without a worker. A slot freed at MaxClients then goes to the connection it was
        // freed for, not to the spare of an environment earlier in the configuration (which
        // made room again for the waiting one: a retire and a start per connection).
        var sparesWanted: [(env: Int, count: Int, hasProcessor: Bool)] = []

        // Workers, environment by environment (grouped once: hundreds of environments).
        var workersOf = [[ChildState]](repeating: [], count: environments.count)
        for child in current {
            if case .worker(let env) = child.role, workersOf.indices.contains(env) { workersOf[env].append(child) }
        }
        let idleLimit = milliseconds(seconds: limits.idleTimeout)
        for (env, workerLimits) in environments.enumerated() {
            let role = ChildRole.worker(environment: env)
            let workers = workersOf[env]
            let idle = workers.filter { $0.status == .ready }
            let starting = workers.filter { $0.status == .starting }
            let envLoad = env < load.count ? load[env] : EnvironmentLoad()
            let queued = min(max(envLoad.queued, 0), workerLimits.maxProcessors)

            if limits.expireTimeout > 0 {
                let limit = milliseconds(seconds: limits.expireTimeout)
                for child in workers
                where child.status == .active && elapsedMilliseconds(since: child.statusSince, now: now) >= limit {
                    plan.actions.append(.expire(slot: child.slot))
                }
            }

            // An environment nobody asked for stays at MinProcessors; once it has workers or
            // work, it keeps MinSpareProcessors idle ones, within MaxProcessors, until it has
            // had no work for IdleTimeout (dormant): then it goes back to MinProcessors, so
            // the memory of hundreds of quiet tenants comes back.
            // Each queued connection needs a worker of its own; a demand with an empty queue
            // (a worker took it meanwhile) still asks for one.
            let dormant = limits.idleTimeout > 0 && queued == 0 && !envLoad.demanded && !workers.isEmpty
                && workers.allSatisfy {
                    $0.status == .ready && elapsedMilliseconds(since: $0.statusSince, now: now) >= idleLimit
                }
            let inUse = (!workers.isEmpty && !dormant) || queued > 0 || envLoad.demanded
            let wantedIdle = inUse ? workerLimits.minSpare : 0
            let waiting = max(queued, envLoad.demanded ? 1 : 0)
            let belowMinimum = workerLimits.minProcessors - workers.count
            let unserved = waiting - idle.count - starting.count
            let wanted = min(max(belowMinimum, wantedIdle + unserved), workerLimits.maxProcessors - workers.count)
            if wanted > 0 && !backingOff(role) {
                let needed = min(wanted, max(belowMinimum, unserved, 0))
                var hasProcessor = workers.contains { $0.type == .processor }
                let started = startWorkers(of: env, count: needed, hasProcessor: &hasProcessor)
                let short = min(waiting, needed) - started
                if short > 0 { starved += Array(repeating: env, count: short) }
                // Spares once the shortage has lasted (sparePatienceMilliseconds); needs at once.
                if started == needed && wanted > needed {
                    plan.shortOfSpares.insert(env)
                    if elapsedMilliseconds(since: spareShortSince[env] ?? now, now: now) >= sparePatienceMilliseconds {
                        sparesWanted.append((env, wanted - needed, hasProcessor))
                    }
                }
                continue
            }

            // Retire idle workers: beyond MaxSpareProcessors, or idle past IdleTimeout, but
            // never below MinProcessors or MinSpareProcessors.
            let keepIdle = inUse ? workerLimits.minSpare + waiting : 0
            let retirable = min(workers.count - workerLimits.minProcessors, idle.count - keepIdle)
            guard retirable > 0 else { continue }
            let excess = workerLimits.maxSpare > 0 ? idle.count - workerLimits.maxSpare : 0
            var count = 0
            for child in idle.sorted(by: longestIdleFirst) where count < retirable {
                let timedOut = limits.idleTimeout > 0
                    && elapsedMilliseconds(since: child.statusSince, now: now) >= idleLimit
                if count < excess {
                    plan.actions.append(.retire(slot: child.slot, reason: .tooManySpare))
                } else if timedOut {
                    plan.actions.append(.retire(slot: child.slot, reason: .idleTimeout))
                } else {
                    break
                }
                count += 1
            }
        }
        if starved.isEmpty {
            for (env, count, processorPlanned) in sparesWanted {
                var hasProcessor = processorPlanned
                _ = startWorkers(of: env, count: count, hasProcessor: &hasProcessor)
            }
        }
        // Children already asked to exit free their slots soon: room is made only beyond them,
        // or every plan until they are gone would retire another round.
        let leaving = children.filter { $0.retiring }.count
        makeRoom(for: Array(starved.dropFirst(leaving)), in: &plan, workersOf: workersOf, now: now)
        return plan
    }

    /// Environments this planner can start no worker for until one of theirs exits: at
    /// MaxProcessors with the workers of `children` (this generation's, not asked to exit) and
    /// the starts of `plan`. Between full passes the parent skips a pass that only these ask
    /// for: a busy tenant at its limit keeps a queue all the time, and each such pass read every
    /// child's page and planned every environment to start nothing. A child's exit, or a worker
    /// asked to exit, changes the count, and the pass after it looks again.
    public func saturated(children: [ChildState], after plan: Plan) -> Set<Int> {
        var workers = [Int](repeating: 0, count: environments.count)
        func count(_ role: ChildRole) {
            if case .worker(let env) = role, workers.indices.contains(env) { workers[env] += 1 }
        }
        // A worker asked to exit, before or in this plan, no longer counts.
        let retired = plan.retiredSlots
        for child in children where child.generation == generation && !child.retiring && !retired.contains(child.slot) {
            count(child.role)
        }
        for case .spawn(_, let role, _) in plan.actions { count(role) }
        return Set(environments.indices.filter { workers[$0] >= max(environments[$0].maxProcessors, 1) })
    }

    /// At MaxClients, idle workers of hundreds of quiet tenants must not keep a busy one from
    /// growing: for each connection that waits without a worker, an idle worker of an
    /// environment with nothing waiting retires, never below its MinProcessors, and the next
    /// plan starts the waiting environment's worker in its slot. Spares go first (an idle
    /// worker beside another idle one), the longest idle first; then the one idle worker of a
    /// tenant idle for at least `lastIdleWorkerMilliseconds`. Environments that wait never take
    /// from each other.
    private func makeRoom(for starved: [Int], in plan: inout Plan, workersOf: [[ChildState]], now: Int64) {
        guard !starved.isEmpty else { return }
        let needy = Set(starved)
        let retiring = plan.retiredSlots
        var spares: [ChildState] = [], lastIdle: [ChildState] = []
        for (env, workers) in workersOf.enumerated() where !needy.contains(env) && environments.indices.contains(env) {
            let above = workers.count - environments[env].minProcessors
            guard above > 0 else { continue }
            let idle = workers.filter { $0.status == .ready && !retiring.contains($0.slot) }
                .sorted(by: longestIdleFirst).prefix(above)
            guard let newest = idle.last else { continue }
            // The most recently idle one stays the tenant's warm worker, unless it too is long idle.
            spares += idle.dropLast()
            if elapsedMilliseconds(since: newest.statusSince, now: now) >= Self.lastIdleWorkerMilliseconds {
                lastIdle.append(newest)
            }
        }
        let victims = spares.sorted(by: longestIdleFirst) + lastIdle.sorted(by: longestIdleFirst)
        for child in victims.prefix(starved.count) {
            plan.actions.append(.retire(slot: child.slot, reason: .makeRoom))
        }
    }

    /// How long a tenant's one idle worker is kept from a waiting tenant at MaxClients.
    public static let lastIdleWorkerMilliseconds: Int64 = 2000

    /// Earliest `statusSince` first; the slot breaks ties, so that the order (and which child
    /// retires) does not depend on where the sort happened to leave equal, possibly forged, times.
    private func longestIdleFirst(_ a: ChildState, _ b: ChildState) -> Bool {
        (a.statusSince, a.slot) < (b.statusSince, b.slot)
    }
}

/// Children that die right after they start are restarted with a growing delay, per role,
/// so a broken environment (say, a user deleted after startup) cannot make the parent spin.
public struct RestartBackoff {
    private var failures: [ChildRole: Int] = [:]
    public private(set) var until: [ChildRole: Int64] = [:]

    /// A child that dies sooner than this after its start counts as a failed start.
    public static let quickDeathMilliseconds: Int64 = 2000
    public static let longestMilliseconds: Int64 = 60_000

    public init() {}

    /// `wasServing`: the child had reported itself ready or busy. Such a child started; if it
    /// then dies at once (a module that crashes after a response, say), restarting it is not
    /// held back: only children that die before they ever served count as failed starts.
    public mutating func childExited(role: ChildRole, startedAt: Int64, now: Int64, cleanly: Bool,
                                     wasServing: Bool = false) {
        if !cleanly && !wasServing && elapsedMilliseconds(since: startedAt, now: now) < Self.quickDeathMilliseconds {
            let count = (failures[role] ?? 0) + 1
            failures[role] = count
            until[role] = now + Self.delay(afterFailures: count)
        } else {
            failures[role] = nil
            until[role] = nil
        }
    }

    /// 0.5 s, 1 s, 2 s, ... capped at a minute.
    public static func delay(afterFailures count: Int) -> Int64 {
        let shift = min(max(count - 1, 0), 10)
        return min(Int64(500) << Int64(shift), longestMilliseconds)
    }
}
