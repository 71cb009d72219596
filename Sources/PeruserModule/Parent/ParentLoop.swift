// The parent's loop: start a generation, then reap, read demands and maintain until a restart
// or stop is asked for; stop children, at once or gracefully. The run hook (RunHook.swift)
// calls these in order.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// How long a hard stop waits for children before SIGKILL.
let stopGraceMilliseconds: Int64 = 5000
/// The parent's maintenance round when nothing wakes it sooner.
let maintenanceIntervalMilliseconds: Int32 = 200
/// How long an environment is short of spares before one starts (MaintenancePolicy).
let sparePatienceMilliseconds: Int64 = 1000

/// Starts generation `generation`: channels, the child table, the multiplexers' state, the
/// planner. False when it cannot (logged).
func beginGeneration(_ retained: UnsafeMutablePointer<LastingState>, slots: Int32, generation: UInt32,
                     wasGraceful: Bool) -> Bool {
    guard retained.initializeOnce(), let records = retained.records, slots > 0, slots <= Int32(mostServerLimit) else {
        log(PERUSER_LOG_EMERG, "peruser: internal error: no room for the child records of \(slots) slots")
        return false
    }
    lasting = retained
    do throws(GenerationError) {
        try openLastingChannels(retained)
        try openGenerationChannels()
        try mapChildTable(retained, slots: Int(slots))
        try beginSupervision(records: records, slots: Int(slots), generation: generation,
                             carryFrom: wasGraceful ? retained.pointee.previousTable : nil,
                             previousSize: retained.pointee.previousTableSize,
                             previousEnvironments: Int(retained.pointee.previousTableEnvironments))
    } catch {
        log(PERUSER_LOG_EMERG, "peruser: \(error)")
        closeGenerationChannels(retained, generation: generation)
        return false
    }
    let limits = configuration.limits
    log(PERUSER_LOG_NOTICE, "peruser: generation \(generation), \(configuration.environments.count) environment(s), "
        + "\(limits.minMultiplexers) to \(limits.maxMultiplexers) multiplexer(s), \(slots) slots")
    return true
}

/// Formats this generation's table (counters carry over a graceful restart by environment
/// name; the old table's sizes come from the parent's own records of it) and the planner.
func beginSupervision(records: UnsafeMutablePointer<ChildRecord>, slots: Int, generation: UInt32,
                      carryFrom previous: UnsafeMutableRawPointer?, previousSize: Int,
                      previousEnvironments: Int) throws(GenerationError) {
    guard let table = lasting?.pointee.table, let size = lasting?.pointee.tableSize,
          let formatted = ChildTable.format(table, size: size, slots: slots,
                                            environments: configuration.environments.count,
                                            workerPages: workerPagePools().total, generation: generation) else {
        throw .message("internal error: child table too small")
    }
    for (index, environment) in configuration.environments.environments.enumerated() {
        formatted.setEnvironmentName(index, environment.name)
        if let field = formatted.environmentField(index, ChildTableLayout.availabilityOffset) {
            field.storeBytes(of: UInt32(100), as: UInt32.self)
        }
    }
    if let previous, previousEnvironments > 0,
       previousSize >= ChildTableLayout.size(slots: slots, environments: previousEnvironments) {
        let old = ChildTable(base: previous, slotCount: slots, environmentCount: previousEnvironments)
        var byName: [String: EnvironmentCounters] = [:]
        for index in 0..<old.environmentCount { if let c = old.environment(index) { byName[c.name] = c } }
        for (index, environment) in configuration.environments.environments.enumerated() {
            if let counters = byName[environment.name] { formatted.carry(counters, into: index) }
        }
    }
    sharedTable = formatted
    var limits = configuration.limits
    limits.serverLimit = slots
    limits.maxClients = min(limits.maxClients, slots)
    var policy = MaintenancePolicy(limits: limits, environments: configuration.workerLimits, generation: generation)
    policy.sparePatienceMilliseconds = sparePatienceMilliseconds
    parent = ParentState(records: records, capacity: slots, policy: policy)
}

/// How often every record is checked against the parent's children (forgetLostChildren): a
/// waitid each, about a millisecond for a thousand.
let lostChildrenAuditMilliseconds: Int64 = 5000

/// Supervises until a restart or a stop is asked for.
func superviseUntilAsked() {
    var lastMonitor: Int64 = 0, lastFullLook: Int64 = .min, lastAudit: Int64 = 0
    var spoke: [ImageRole]? = nil  // every image, the first time
    while !restartOrStopPending() {
        // Per round, only what changed: with hundreds of images, asking each (and waitpid over
        // each child) 100 times a second was most of the parent's CPU under load.
        let reaped = peruser_shim_children_exited() != 0 && reapChildren(quietly: false)
        readDemands()
        readImages(spoke)
        let now = monotonicMilliseconds()
        parent?.noteOverdueStarts(now: now)
        // Between full looks (200 ms), only the watched queues: the children's status lives on a
        // page per child, and reading hundreds of pages every 10 ms cost more than the queues.
        // A multiplexer's demand is one more queue to look at (for an environment with no
        // worker, it asks at once).
        let everything = reaped || imageBecameReady
            || elapsedMilliseconds(since: lastFullLook, now: now) >= Int64(maintenanceIntervalMilliseconds)
        imageBecameReady = false
        if maintain(now: now, everything: everything) { lastFullLook = now }
        if now - lastMonitor >= 1000 {
            lastMonitor = now
            closeIdleImages(now: now)
            closeIdleZygote(now: now)
            ap_run_monitor(configurationPool, ap_server_conf)
            apr_proc_other_child_refresh_all(APR_OC_REASON_RUNNING)
            if now - lastAudit >= lostChildrenAuditMilliseconds {
                lastAudit = now
                forgetLostChildren()
            }
        }
        // A queue under watch (QueuePatience) is looked at again soon.
        spoke = waitForWork(parent?.patience.watching == true ? Int32(QueuePatience.defaultMilliseconds)
                                                                  : maintenanceIntervalMilliseconds)
    }
}

func endGeneration() {
    // A worker an image forks now must be on record, to be stopped or drained with the rest.
    settlePendingStarts(within: PendingStarts.deadlineMilliseconds)
    if let slots = parent?.pending.dropAll(), !slots.isEmpty {
        log(PERUSER_LOG_WARNING, "peruser: \(slots.count) worker start(s) asked of process images had no answer when "
            + "the generation ended (slots \(slots.map(String.init).joined(separator: ", ")))")
    }
    closeImages()
    closeWakeups()
    guard let lasting, let state = parent else { return }
    closeGenerationChannels(lasting, generation: state.policy.generation)
}

/// Stops every child: SIGTERM, then SIGKILL after a grace period.
func stopChildren() {
    let deadline = monotonicMilliseconds() + stopGraceMilliseconds
    signalEveryChild(SIGTERM)
    while liveChildren() > 0 && monotonicMilliseconds() < deadline {
        poll(nil, 0, 20)
        reapOrForgetLost(quietly: true)
    }
    if liveChildren() > 0 {
        log(PERUSER_LOG_WARNING, "peruser: children still alive \(stopGraceMilliseconds) ms after SIGTERM; sending SIGKILL")
        signalEveryChild(SIGKILL)
        while liveChildren() > 0 {
            poll(nil, 0, 20)
            reapOrForgetLost(quietly: true)
        }
    }
}

/// Graceful stop: multiplexers first, then workers drain their channels, within `timeoutSeconds`
/// (0: as long as it takes, or until a second stop signal); then the rest is stopped.
func stopChildrenGracefully(timeoutSeconds: Int32) {
    let cutoff = timeoutSeconds > 0 ? monotonicMilliseconds() + Int64(timeoutSeconds) * 1000 : 0
    while ap_unixd_mpm_get_retained_data()?.pointee.shutdown_pending == 0
            && (cutoff == 0 || monotonicMilliseconds() < cutoff) {
        guard var state = parent else { break }
        state.finish(everyone: true, now: monotonicMilliseconds())
        parent = state
        guard liveChildren() > 0 else { break }
        // A queue under watch (QueuePatience) is looked at again soon.
        waitForWork(parent?.patience.watching == true ? Int32(QueuePatience.defaultMilliseconds) : maintenanceIntervalMilliseconds)
        reapOrForgetLost(quietly: false)
    }
    stopChildren()
}

/// A stop loop's turn: reaps what exited, and only when nothing did, looks for lost records
/// (forgetLostChildren asks waitid once per record: about 45,000 calls a second with 900
/// children if every 20 ms turn did; a lost record only holds a stop up once nothing else
/// is reaped).
private func reapOrForgetLost(quietly: Bool) {
    if !reapChildren(quietly: quietly) { forgetLostChildren() }
}

/// Whether a signal asked the parent to restart or stop.
func restartOrStopPending() -> Bool {
    guard let mpm = ap_unixd_mpm_get_retained_data() else { return true }
    return mpm.pointee.restart_pending != 0 || mpm.pointee.shutdown_pending != 0
}

func liveChildren() -> Int {
    guard let state = parent else { return 0 }
    return (0..<state.capacity).filter { state.records[$0].pid > 0 }.count
}

/// Signals only pids from the parent's private records, never pids read from shared memory.
func signalEveryChild(_ signal: Int32) {
    guard let state = parent else { return }
    for slot in 0..<state.capacity where state.records[slot].pid > 0 {
        signalProcess(state.records[slot].pid, signal)
    }
}

/// Environments the multiplexers asked workers for (4-byte words, validated here).
func readDemands() {
    guard let demand = lasting?.pointee.demand.0, demand >= 0 else { return }
    var batch = [UInt32](repeating: 0, count: 64)
    while true {
        let length = batch.withUnsafeMutableBytes { read(demand, $0.baseAddress, $0.count) }
        guard length > 0 else { return }
        for index in 0..<(length / 4) { demanded(batch[index]) }
    }
}

func demanded(_ word: UInt32) {
    let environment = Int(word & ~Multiplexer.brokenChannelFlag)
    guard environment < configuration.environments.count, var state = parent else { return }
    if word & Multiplexer.brokenChannelFlag != 0 {
        state.renewChannels(environment, now: monotonicMilliseconds())
    } else {
        state.demanded.insert(environment)
    }
    parent = state
}

/// The planner's pass: retirements, starts, makeRoom. With `everything` false, the queues are
/// looked at first, and the pass runs only if one of them asks for a worker. True if it ran.
func maintain(now: Int64, everything: Bool) -> Bool {
    guard var state = parent else { return false }
    state.patience.keep(configuration.environments.count)  // after a graceful restart with fewer
    if !everything {
        // The watched queues and the demanded environments, against the environments staffed
        // at the last pass (one staffed since then only asks for a pass that starts nothing).
        // A queue that formed with no demand waits for the next full pass, at most 200 ms.
        // An environment at MaxProcessors asks for nothing a pass could start.
        let asks = environmentLoads(&state, of: state.patience.watched.union(state.demanded), staffed: state.staffed,
                                    atMaxClients: state.atMaxClients, now: now)
            .enumerated().contains { $0.element != EnvironmentLoad() && !state.saturated.contains($0.offset) }
        guard asks else {
            state.demanded.removeAll()
            parent = state
            return false
        }
    }
    state.finish(everyone: false, now: now)
    // Children first, queues second: a worker that takes a connection in between then shows
    // as idle-with-work-queued or busy-with-nothing-queued, never busy-with-work-queued
    // (which would start a worker nobody needs).
    let children = state.children()
    state.clearFailedStarts(children)
    var staffed = Set<Int>()
    for child in children where child.generation == state.policy.generation {
        if case .worker(let environment) = child.role { staffed.insert(environment) }
    }
    let full = children.filter { $0.generation == state.policy.generation }.count >= state.policy.limits.maxClients
    let load = environmentLoads(&state, of: nil, staffed: staffed, atMaxClients: full, now: now)
    state.staffed = staffed
    state.atMaxClients = full
    state.demanded.removeAll()
    let plan = state.policy.plan(children: children, load: load, backoffUntil: state.backoff.until, now: now,
                                 spareShortSince: state.spareShortSince)
    state.spareShortSince = plan.shortOfSpares.reduce(into: [:]) { $0[$1] = state.spareShortSince[$1] ?? now }
    state.saturated = state.policy.saturated(children: children, after: plan)
    state.apply(plan, now: now)
    parent = state
    return true
}

/// Each environment's load as the planner should see it (QueuePatience), or only those of
/// `only` (the others empty). Asked twice at one instant (a queue look, then a pass) it
/// answers the same.
func environmentLoads(_ state: inout ParentState, of only: Set<Int>?, staffed: Set<Int>, atMaxClients: Bool,
                      now: Int64) -> [EnvironmentLoad] {
    var load = [EnvironmentLoad](repeating: EnvironmentLoad(), count: configuration.environments.count)
    for environment in 0..<configuration.environments.count where only?.contains(environment) ?? true {
        let flow = sharedTable?.flow(environment) ?? (handedOff: 0, received: 0)
        // The multiplexers' count is a hint: the last one to write it wins, and it includes
        // connections of a client at its share (MaxClientShare). Below MaxClients it joins the
        // channel's queue under QueuePatience; what it over-asks are idle workers for other
        // clients, within MaxProcessors, gone after IdleTimeout.
        load[environment] = state.patience.load(
            environment: environment, queued: EnvironmentCounters.queued(handedOff: flow.handedOff, received: flow.received),
            demanded: state.demanded.contains(environment), hasWorkers: staffed.contains(environment), now: now,
            waitingInMultiplexers: sharedTable?.waitingInMultiplexers(environment) ?? 0, atMaxClients: atMaxClients)
    }
    return load
}

/// Reaps every child that exited; `quietly` while the server stops every child. True if any did.
@discardableResult
func reapChildren(quietly: Bool) -> Bool {
    var reaped = false
    while let (pid, status) = reapOne() {
        reaped = true
        guard let state = parent, let found = (0..<state.capacity).first(where: { state.records[$0].pid == pid }) else {
            if imageExited(pid, status: status, quietly: quietly) || zygoteExited(pid, status: status, quietly: quietly) {
                continue
            }
            // A worker whose image has not answered yet, perhaps: its answer will claim this.
            parent?.unclaimed.remember(pid: pid, status: status, now: monotonicMilliseconds())
            var process = apr_proc_t()
            process.pid = pid
            apr_proc_other_child_alert(&process, APR_OC_REASON_DEATH, status.raw)  // a piped logger, say
            continue
        }
        childExited(slot: found, status: status, quietly: quietly)
    }
    return reaped
}

/// An image answered for a worker it was asked for (Images.swift reads the answers).
func imageAnswered(environment: Int, _ message: ImageMessage) {
    guard var state = parent else { return }
    let exited = state.imageAnswered(environment: environment, message, now: monotonicMilliseconds())
    parent = state
    if let exited {
        childExited(slot: exited.slot, status: exited.status, quietly: false)
    } else if case .spawned(let slot, _) = message {
        forgetLostChildren([slot])
    }
}

/// Forgets the records (of `slots`, or all) whose pid is no longer this parent's child, with an
/// error line each. Such a child was reaped while nothing recorded it (its image answered after
/// UnclaimedExits let its exit go, say), so the record would never end: the stop would wait for
/// it forever, MaxClients would count it, and a signal for it could reach whatever process the
/// system gives that pid next.
func forgetLostChildren(_ slots: [Int]? = nil) {
    guard let state = parent else { return }
    for slot in slots ?? Array(0..<state.capacity) where slot >= 0 && slot < state.capacity {
        let pid = state.records[slot].pid
        guard pid > 0, !isOwnChild(pid) else { continue }
        let described = state.describe(slot)
        childExited(slot: slot, status: ExitStatus(raw: 0), quietly: true)
        log(PERUSER_LOG_ERR, "peruser: \(described) is no longer a child of this server, and its exit was not "
            + "seen (reaped before its start was recorded); its record is dropped and its slot freed")
    }
}

/// `environment`'s image exited: what it was asked for will not come. With no worker left,
/// the environment's connections go by ProcessorWaitTimeout.
func pendingStartsLost(environment: Int, quietly: Bool) {
    guard var state = parent else { return }
    let slots = state.pending.drop(environment: environment)
    let now = monotonicMilliseconds()
    for slot in slots { state.standBy(slot, now: now) }
    if !slots.isEmpty && !quietly { state.startFailed(environment: environment) }
    parent = state
}

/// The child in `found` exited with `status` (reaped; its record is still there).
private func childExited(slot found: Int, status: ExitStatus, quietly: Bool) {
    guard var state = parent, found >= 0 && found < state.capacity else { return }
    let record = state.records[found]
    let role: ChildRole = record.environment < 0 ? .multiplexer : .worker(environment: Int(record.environment))
    let exit = ChildExit.classify(role: role, generation: record.generation, retiring: record.retiring != 0,
                                  draining: record.draining != 0, expired: record.expired != 0,
                                  status: sharedTable?.slot(found)?.status, exitedCleanly: status.isClean,
                                  serverStopping: quietly, currentGeneration: state.policy.generation)
    let now = monotonicMilliseconds()
    if exit.isCurrentGeneration {
        state.backoff.childExited(role: role, startedAt: record.startedAt, now: now,
                                  cleanly: exit.countsAsClean, wasServing: exit.wasServing)
        sharedTable?.setSlot(found, pid: 0, type: .unknown, environment: 0, generation: record.generation,
                             status: .standby, now: now)
    }
    let described = state.describe(found)
    state.records[found] = ChildRecord()
    if exit.failedToStart { state.startFailed(environment: Int(record.environment)) }
    if case .worker(let environment) = role,
       exit.releasesPoolPages(otherWorkersLive: state.liveWorkers(of: environment) > 0) {
        state.releaseFreePages(of: environment)
    }
    parent = state
    setScoreboardSlot(found, pid: 0, starting: false)
    lasting?.closeControl(found)
    // The lend cells it held are nobody's now (before its slot goes to another multiplexer).
    if case .multiplexer = role, exit.isCurrentGeneration { availabilityBoard?.releaseLendCells(ownedBy: found) }
    if quietly { return }
    if status.isClean {
        log(PERUSER_LOG_DEBUG, "peruser: \(described) exited")
        return
    }
    if case .multiplexer = role, exit.isCurrentGeneration {
        // Its share reservations (MaxClientShare) would never be released: start them over.
        // Until its hand-offs are seen taken, a client may get one worker past its share.
        availabilityBoard?.clearShareReservations()
        // Its waiting counts would ask for workers for connections gone with it (the live
        // ones write theirs again at their next change).
        if let table = sharedTable {
            for environment in 0..<table.environmentCount {
                if let field = table.environmentField(environment, ChildTableLayout.waitingOffset) {
                    peruser_atomic_store_u32(field, 0)
                }
            }
        }
    }
    if let signal = status.killedBySignal {
        log(PERUSER_LOG_WARNING, "peruser: \(described) was killed by signal \(signal)")
    } else {
        log(PERUSER_LOG_WARNING, "peruser: \(described) exited with status \(status.exitCode)")
    }
}
