// The parent's side of process management: the private child records, the shared table of
// this generation, and applying the maintenance plan of PeruserCore.
//
// Pids come only from the private records, which live in Apache's retained data (parent
// memory, kept across the module's reloads). The shared table is read for status hints only.
import CPeruserShim
import Glibc
import PeruserCore

/// The shared table of this process's generation (parent and every child it forks).
var sharedTable: ChildTable?

/// The page of the table this process writes (a child: set by the parent just before the fork,
/// so a child never looks its own page up in shared memory that others can write).
var ownPage: Int?

struct ParentState {
    var records: UnsafeMutablePointer<peruser_child_record>
    var capacity: Int
    var policy: MaintenancePolicy
    var pagePools = workerPagePools()
    var backoff = RestartBackoff()
    var demanded = Set<Int>()
    var lastCapLog: Int64 = -1_000_000
    /// Environments whose last worker start failed while none of their workers was alive.
    var failingStarts = Set<Int>()
    /// When each environment's channels were last renewed.
    var lastRenewal: [Int: Int64] = [:]
}

var parent: ParentState?

/// Where each environment's pool of worker pages starts in the child table: MaxProcessors
/// pages per environment, in order; and how many there are in all.
func workerPagePools() -> (starts: [Int], total: Int) {
    var starts: [Int] = [], total = 0
    for limits in effectiveWorkerLimits() {
        starts.append(total)
        total = total.saturatingAdding(max(limits.maxProcessors, 1))
    }
    return (starts, total)
}

/// A worker stopped for ExpireTimeout that ignores SIGTERM for this long gets SIGKILL.
let expireGraceMilliseconds: Int64 = 2000
let capLogIntervalMilliseconds: Int64 = 60_000

extension ParentState {
    /// Live children, as the planner sees them (status from the shared table, as a hint).
    func children() -> [ChildState] {
        var out: [ChildState] = []
        for slot in 0..<capacity where records[slot].pid > 0 {
            let r = records[slot]
            let role: ChildRole = r.environment < 0 ? .multiplexer : .worker(environment: Int(r.environment))
            var status = ChildStatus.starting
            var since = r.started_at
            if r.generation == policy.generation, let shared = sharedTable?.slot(slot) {
                status = shared.status
                since = shared.statusSince
            }
            out.append(ChildState(slot: slot, pid: r.pid, role: role, type: ChildType(rawValue: r.type) ?? .unknown,
                                  generation: r.generation, startedAt: r.started_at,
                                  retiring: r.retiring != 0 || r.draining != 0 || r.expired != 0,
                                  status: status, statusSince: since))
        }
        return out
    }

    func environmentName(_ env: Int) -> String {
        environments[env]?.name ?? "#\(env)"
    }

    mutating func signal(_ slot: Int, _ sig: Int32, now: Int64) {
        guard slot >= 0 && slot < capacity, records[slot].pid > 0 else { return }
        _ = peruser_shim_signal(records[slot].pid, sig)
        records[slot].signalled_at = now
    }

    /// Children of older generations (and all children during a graceful stop) finish:
    /// multiplexers stop accepting first; once none of them is left, workers drain their
    /// channels and exit. Anyone who ignores that for too long is killed.
    mutating func finishOlder(than generation: UInt32, everyone: Bool, now: Int64) {
        var oldMultiplexers = 0
        for slot in 0..<capacity where records[slot].pid > 0 && records[slot].environment < 0 {
            if everyone || records[slot].generation != generation { oldMultiplexers += 1 }
        }
        for slot in 0..<capacity where records[slot].pid > 0 {
            let r = records[slot]
            guard everyone || r.generation != generation else { continue }
            if r.environment < 0 {
                if r.retiring == 0 {
                    records[slot].retiring = 1
                    signal(slot, SIGUSR1, now: now)
                }
            } else if oldMultiplexers == 0 && r.draining == 0 {
                records[slot].draining = 1
                signal(slot, SIGWINCH, now: now)
            }
        }
    }

    /// A worker stopped for ExpireTimeout that is still there after a grace period gets
    /// SIGKILL. (Retiring and draining children finish their connection, however long.)
    mutating func killExpired(now: Int64) {
        for slot in 0..<capacity where records[slot].pid > 0 && records[slot].expired != 0 {
            if now - records[slot].signalled_at > expireGraceMilliseconds {
                _ = peruser_shim_signal(records[slot].pid, SIGKILL)
                records[slot].signalled_at = now
            }
        }
    }

    /// Slots of this generation's live children of `environment` (-1: the multiplexers).
    func currentSlots(of environment: Int) -> [Int] {
        (0..<capacity).filter {
            records[$0].pid > 0 && Int(records[$0].environment) == environment && records[$0].generation == policy.generation
        }
    }

    func liveWorkers(of environment: Int) -> Int {
        currentSlots(of: environment).count
    }

    /// A worker of `environment` could not start (fork failed, it could not be moved into its
    /// cgroup, or it died right away, say at its chroot or setuid). With no worker left, the
    /// connections queued in its channel would wait for one that may never come: flag the
    /// environment, so that multiplexers hold its connections under ProcessorWaitTimeout
    /// instead, and give them those already queued.
    mutating func startFailed(environment: Int) {
        guard environment >= 0 && environment < environments.count, liveWorkers(of: environment) == 0 else { return }
        if !failingStarts.contains(environment) {
            failingStarts.insert(environment)
            availabilityBoard?.setStartFailing(environment, true)
            log(PERUSER_LOG_ERR, "peruser: environment \(environmentName(environment)) has no worker and "
                + "cannot start one; its connections get 503 after ProcessorWaitTimeout until a worker starts")
        }
        var lost: Int32 = 0
        let moved = peruser_shim_return_queued(Int32(environment), &lost)
        if moved + lost > 0, let field = sharedTable?.environmentPageField(environment, ChildTableLayout.receivedOffset) {
            peruser_atomic_add_u64(field, UInt64(moved + lost))
        }
    }

    /// An environment is healthy again once one of its workers got past its start.
    mutating func clearFailedStarts(_ children: [ChildState]) {
        for env in failingStarts where children.contains(where: {
            $0.role == .worker(environment: env) && $0.generation == policy.generation
                && ($0.status == .ready || $0.status == .active)
        }) {
            failingStarts.remove(env)
            availabilityBoard?.setStartFailing(env, false)
            log(PERUSER_LOG_NOTICE, "peruser: environment \(environmentName(env)) has a worker again")
        }
    }

    /// A free page of `environment`'s pool for a new worker, or nil while every page is held
    /// by a live worker of this generation (some of them retiring).
    func freeWorkerPage(_ environment: Int) -> Int? {
        guard pagePools.starts.indices.contains(environment), policy.environments.indices.contains(environment) else {
            return nil
        }
        let start = pagePools.starts[environment], count = max(policy.environments[environment].maxProcessors, 1)
        let used = Set(currentSlots(of: environment).map { Int(records[$0].page) })
        return (start..<(start + count)).first { !used.contains($0) }
    }

    /// One of `environment`'s channels was shut down, which only its own workers can do: new
    /// channels for it, passed to every live multiplexer of this generation; its workers are
    /// retired (they hold the old ones) and the plan starts new ones. Other environments are
    /// untouched. At most once every 10 s per environment, so a worker doing it again and
    /// again costs the parent little.
    mutating func renewChannels(_ environment: Int, now: Int64) {
        guard environment >= 0 && environment < environments.count else { return }
        if let last = lastRenewal[environment], now - last < 10_000 { return }
        lastRenewal[environment] = now
        guard peruser_shim_renew_channels(Int32(environment)) == 0 else { return }
        var multiplexers = 0
        for slot in currentSlots(of: -1) where records[slot].retiring == 0 {
            if peruser_shim_give_channels(Int32(slot), Int32(environment)) == 0 { multiplexers += 1 }
        }
        for slot in currentSlots(of: environment) where records[slot].retiring == 0 {
            records[slot].retiring = 1
            signal(slot, SIGUSR1, now: now)
        }
        log(PERUSER_LOG_WARNING, "peruser: a channel of environment \(environmentName(environment)) was shut down "
            + "from inside one of its workers; made new ones (passed to \(multiplexers) multiplexers) and "
            + "restarting its workers")
    }

    mutating func apply(_ plan: Plan, now: Int64) {
        var forkFailed = false
        for action in plan.actions {
            switch action {
            case .spawn(let slot, let role, let type):
                guard !forkFailed, slot >= 0 && slot < capacity, records[slot].pid == 0 else { continue }
                let env: Int32
                var page = 0
                switch role {
                case .multiplexer: env = -1
                case .worker(let e):
                    env = Int32(e)
                    // Retiring workers still hold their pages; the spawn waits for one to exit.
                    guard let free = freeWorkerPage(e) else { continue }
                    page = free
                }
                sharedTable?.setSlot(slot, pid: 0, type: type, environment: Int(env), generation: policy.generation,
                                     status: .starting, now: now, workerPage: page)
                ownPage = sharedTable?.pageOffset(slot: slot, type: type, workerPage: page)
                let pid = peruser_shim_spawn(Int32(slot), env, Int32(type.rawValue))
                ownPage = nil
                guard pid > 0 else {  // fork failed (logged); try again next round
                    forkFailed = true
                    sharedTable?.setSlot(slot, pid: 0, type: .unknown, environment: 0, generation: policy.generation,
                                         status: .standby, now: now)
                    startFailed(environment: Int(env))
                    continue
                }
                records[slot] = peruser_child_record(pid: pid, environment: env, generation: policy.generation,
                                                     type: type.rawValue, retiring: 0, draining: 0, expired: 0,
                                                     page: Int32(page), started_at: now, signalled_at: 0)
                sharedTable?.setPid(slot, pid)  // the child may already have reported its status
                log(PERUSER_LOG_DEBUG, "peruser: started \(describe(slot)) as \(type.name)")
            case .retire(let slot, let reason):
                guard slot >= 0 && slot < capacity, records[slot].pid > 0, records[slot].retiring == 0 else { continue }
                records[slot].retiring = 1
                log(PERUSER_LOG_DEBUG, "peruser: retiring \(describe(slot)) (\(reason))")
                signal(slot, SIGUSR1, now: now)
            case .expire(let slot):
                guard slot >= 0 && slot < capacity, records[slot].pid > 0, records[slot].expired == 0 else { continue }
                records[slot].expired = 1
                let shown = sharedTable?.slot(slot)
                log(PERUSER_LOG_WARNING, "peruser: stopping \(describe(slot)): on one request longer than "
                    + "ExpireTimeout \(policy.limits.expireTimeout) s (vhost \(shown?.vhost ?? "?"), "
                    + "request \"\(shown?.request ?? "?")\")")
                signal(slot, SIGTERM, now: now)
            }
        }
        if plan.capReached && now - lastCapLog >= capLogIntervalMilliseconds {
            lastCapLog = now
            log(PERUSER_LOG_WARNING, "peruser: MaxClients \(policy.limits.maxClients) (or ServerLimit "
                + "\(policy.limits.serverLimit)) reached; not starting more children (logged once a minute)")
        }
    }

    func describe(_ slot: Int) -> String {
        let r = records[slot]
        let what = r.environment < 0 ? "multiplexer" : "worker of \(environmentName(Int(r.environment)))"
        return "\(what) (pid \(r.pid), slot \(slot))"
    }
}

/// Offsets of the two pages a worker may write: its own page (the one the parent computed
/// before the fork) and its environment's page.
@_cdecl("peruser_table_worker_pages")
public func peruserTableWorkerPages(_ slot: Int32, _ environment: Int32,
                                    _ workerPage: UnsafeMutablePointer<Int>?, _ environmentPage: UnsafeMutablePointer<Int>?) -> Int32 {
    guard let table = sharedTable, let own = ownPage, (0..<table.environmentCount).contains(Int(environment)),
          own >= ChildTableLayout.workerPageOffset(slots: table.slotCount, environments: table.environmentCount, index: 0)
    else { return -1 }
    workerPage?.pointee = own
    environmentPage?.pointee = ChildTableLayout.environmentPageOffset(slots: table.slotCount,
                                                                     environments: table.environmentCount,
                                                                     environment: Int(environment))
    return 0
}

@_cdecl("peruser_table_page_size")
public func peruserTablePageSize() -> Int { ChildTableLayout.pageSize }

@_cdecl("peruser_table_size")
public func peruserTableSize(_ slots: Int32, _ environments: Int32) -> Int {
    ChildTableLayout.size(slots: Int(max(0, slots)), environments: Int(max(0, environments)),
                          workerPages: workerPagePools().total)
}

@_cdecl("peruser_supervisor_begin")
public func peruserSupervisorBegin(_ records: UnsafeMutableRawPointer?, _ capacity: Int32,
                                   _ table: UnsafeMutableRawPointer?, _ tableSize: Int, _ slots: Int32,
                                   _ generation: UInt32, _ previous: UnsafeMutableRawPointer?,
                                   _ previousSize: Int, _ previousEnvironments: Int32,
                                   _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    guard let records, let table, capacity >= slots, slots > 0 else {
        copyOut("internal error: no child records or table", errorBuffer, errorCap)
        return -1
    }
    var limits = serverLimits
    limits.serverLimit = Int(slots)
    limits.maxClients = min(limits.maxClients, Int(slots))
    guard let formatted = ChildTable.format(table, size: tableSize, slots: Int(slots),
                                            environments: environments.count,
                                            workerPages: workerPagePools().total, generation: generation) else {
        copyOut("internal error: child table too small", errorBuffer, errorCap)
        return -1
    }
    for (i, env) in environments.environments.enumerated() {
        formatted.setEnvironmentName(i, env.name)
        if let field = formatted.environmentField(i, ChildTableLayout.availabilityOffset) {
            field.storeBytes(of: UInt32(100), as: UInt32.self)
        }
    }
    // Counters carry over a graceful restart by environment name. The old table's sizes come
    // from the parent's own records of it; its names and counts are hints like everything there.
    if let previous, previousEnvironments > 0,
       previousSize >= ChildTableLayout.size(slots: Int(slots), environments: Int(previousEnvironments)) {
        let old = ChildTable(base: previous, slotCount: Int(slots), environmentCount: Int(previousEnvironments))
        var byName: [String: EnvironmentCounters] = [:]
        for e in 0..<old.environmentCount { if let c = old.environment(e) { byName[c.name] = c } }
        for (i, env) in environments.environments.enumerated() {
            if let counters = byName[env.name] { formatted.carry(counters, into: i) }
        }
    }
    sharedTable = formatted
    let pointer = records.bindMemory(to: peruser_child_record.self, capacity: Int(capacity))
    let policy = MaintenancePolicy(limits: limits, environments: effectiveWorkerLimits(), generation: generation)
    parent = ParentState(records: pointer, capacity: Int(slots), policy: policy)
    return 0
}

@_cdecl("peruser_supervisor_demand")
public func peruserSupervisorDemand(_ word: Int32) {
    let value = UInt32(bitPattern: word)
    let environment = Int(value & ~Multiplexer.brokenChannelFlag)
    guard environment < environments.count else { return }
    if value & Multiplexer.brokenChannelFlag != 0 {
        parent?.renewChannels(environment, now: monotonicMilliseconds())
    } else {
        parent?.demanded.insert(environment)
    }
}

@_cdecl("peruser_supervisor_reaped")
public func peruserSupervisorReaped(_ pid: Int32, _ exitedCleanly: Int32, _ stopping: Int32, _ now: Int64,
                                    _ slot: UnsafeMutablePointer<Int32>?, _ environment: UnsafeMutablePointer<Int32>?,
                                    _ type: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard var state = parent, pid > 0 else { return 0 }
    guard let found = (0..<state.capacity).first(where: { state.records[$0].pid == pid }) else { return 0 }
    let r = state.records[found]
    slot?.pointee = Int32(found)
    environment?.pointee = r.environment
    type?.pointee = Int32(r.type)
    let role: ChildRole = r.environment < 0 ? .multiplexer : .worker(environment: Int(r.environment))
    // A child asked to stop, or of an older generation, is not a failed start.
    let expected = r.retiring != 0 || r.draining != 0 || r.expired != 0
    // A worker that dies before it ever reported ready did not start (its jail, cgroup or user
    // is missing); one that dies later, or while the server stops, is an ordinary death.
    var failedToStart = false
    if r.generation == state.policy.generation {
        failedToStart = stopping == 0 && exitedCleanly == 0 && !expected && r.environment >= 0
            && sharedTable?.slot(found)?.status == .starting
        let status = sharedTable?.slot(found)?.status
        state.backoff.childExited(role: role, startedAt: r.started_at, now: now,
                                  cleanly: exitedCleanly != 0 || expected,
                                  wasServing: status == .ready || status == .active)
        sharedTable?.setSlot(found, pid: 0, type: .unknown, environment: 0, generation: r.generation,
                             status: .standby, now: now)
    }
    state.records[found] = peruser_child_record()
    if failedToStart {
        state.startFailed(environment: Int(r.environment))
    }
    parent = state
    return 1
}

@_cdecl("peruser_supervisor_maintain")
public func peruserSupervisorMaintain(_ now: Int64) {
    guard var state = parent else { return }
    state.finishOlder(than: state.policy.generation, everyone: false, now: now)
    state.killExpired(now: now)
    // Children first, queues second: a worker that takes a connection in between then shows
    // as idle-with-work-queued or busy-with-nothing-queued, never busy-with-work-queued
    // (which would start a worker nobody needs).
    let children = state.children()
    state.clearFailedStarts(children)
    var load: [EnvironmentLoad] = []
    for env in 0..<environments.count {
        let counters = sharedTable?.environment(env)
        load.append(EnvironmentLoad(queued: counters?.queued ?? 0, demanded: state.demanded.contains(env)))
    }
    state.demanded.removeAll()
    let plan = state.policy.plan(children: children, load: load, backoffUntil: state.backoff.until, now: now)
    state.apply(plan, now: now)
    parent = state
}

@_cdecl("peruser_supervisor_drain_all")
public func peruserSupervisorDrainAll(_ now: Int64) -> Int32 {
    guard var state = parent else { return 0 }
    state.finishOlder(than: state.policy.generation, everyone: true, now: now)
    parent = state
    return Int32((0..<state.capacity).filter { state.records[$0].pid > 0 }.count)
}

@_cdecl("peruser_supervisor_pids")
public func peruserSupervisorPids(_ out: UnsafeMutablePointer<Int32>?, _ capacity: Int32) -> Int32 {
    guard let state = parent else { return 0 }
    var count: Int32 = 0
    for slot in 0..<state.capacity where state.records[slot].pid > 0 {
        if let out, count < capacity { out[Int(count)] = state.records[slot].pid }
        count += 1
    }
    return count
}

@_cdecl("peruser_supervisor_slots_in_use")
public func peruserSupervisorSlotsInUse() -> Int32 {
    guard let state = parent else { return 0 }
    return Int32(((0..<state.capacity).last { state.records[$0].pid > 0 }).map { $0 + 1 } ?? 0)
}

// MARK: - Children's writes to the shared table

@_cdecl("peruser_child_set_status")
public func peruserChildSetStatus(_ slot: Int32, _ status: Int32) {
    guard let status = ChildStatus(rawValue: UInt8(clamping: status)), let page = ownPage else { return }
    sharedTable?.setStatus(page: page, status, now: monotonicMilliseconds())
}

@_cdecl("peruser_worker_took_connection")
public func peruserWorkerTookConnection(_ slot: Int32, _ environment: Int32) {
    guard let table = sharedTable, let page = ownPage else { return }
    // Off the queue before busy: whoever sees this worker busy also sees the queue shrink.
    if let field = table.environmentPageField(Int(environment), ChildTableLayout.receivedOffset) {
        peruser_atomic_add_u64(field, 1)
    }
    peruser_atomic_add_u64(table.field(page: page, ChildTableLayout.connectionsOffset), 1)
    table.setStatus(page: page, .active, now: monotonicMilliseconds())
}

@_cdecl("peruser_worker_started_request")
public func peruserWorkerStartedRequest(_ slot: Int32, _ environment: Int32, _ request: UnsafePointer<CChar>?,
                                        _ vhost: UnsafePointer<CChar>?) {
    guard let table = sharedTable, let page = ownPage else { return }
    table.setRequest(page: page, request: request, vhost: vhost)
    // ExpireTimeout counts from the start of each request.
    table.setStatus(page: page, .active, now: monotonicMilliseconds())
    peruser_atomic_add_u64(table.field(page: page, ChildTableLayout.requestsOffset), 1)
    if let field = table.environmentPageField(Int(environment), ChildTableLayout.servedOffset) {
        peruser_atomic_add_u64(field, 1)
    }
}
