// The parent's side of process management: the private child records, the shared table of
// this generation, and applying the maintenance plan of PeruserCore.
//
// Pids come only from the private records, which live in Apache's retained data (parent
// memory, kept across the module's reloads). The shared table is read for status hints only.
import CPeruserShim
import Glibc
import PeruserCore

/// The shared table of this process's generation (parent and every child it forks).
nonisolated(unsafe) var sharedTable: ChildTable?

/// The page of the table this process writes (a child: set by the parent just before the fork,
/// so a child never looks its own page up in shared memory that others can write).
nonisolated(unsafe) var ownPage: Int?

struct ParentState {
    var records: UnsafeMutablePointer<ChildRecord>
    var capacity: Int
    var policy: MaintenancePolicy
    var pagePools = workerPagePools()
    var backoff = RestartBackoff()
    var demanded = Set<Int>()
    /// When a queue asks for a worker (see QueuePatience).
    var patience = QueuePatience()
    var lastCapLog: Int64 = -1_000_000
    /// Environments whose last worker start failed while none of their workers was alive.
    var failingStarts = Set<Int>()
    /// When each environment's channels were last renewed.
    var lastRenewal: [Int: Int64] = [:]
    /// What the last planner pass saw: environments with workers, and MaxClients reached.
    var staffed = Set<Int>()
    var atMaxClients = false
    /// Environments at MaxProcessors after the last pass (MaintenancePolicy.saturated): their
    /// queues alone do not ask for another pass.
    var saturated = Set<Int>()
    /// When each environment short of spares at the last pass became short (its spares start
    /// after MaintenancePolicy.sparePatienceMilliseconds).
    var spareShortSince: [Int: Int64] = [:]
    /// Workers asked of images and not yet answered for (they hold their slots and pages).
    var pending = PendingStarts()
    /// Children reaped before an image's answer named them.
    var unclaimed = UnclaimedExits<ExitStatus>()
    /// The system refused to release the table's free pages once (logged then, not again).
    var pageReleaseRefused = false
}

nonisolated(unsafe) var parent: ParentState?

/// Where each environment's pool of worker pages starts in the child table: MaxProcessors
/// pages per environment, in order; and how many there are in all.
func workerPagePools() -> (starts: [Int], total: Int) {
    var starts: [Int] = [], total = 0
    for limits in configuration.workerLimits {
        starts.append(total)
        total = total.saturatingAdding(max(limits.maxProcessors, 1))
    }
    return (starts, total)
}

let capLogIntervalMilliseconds: Int64 = 60_000

extension ParentState {
    /// Live children, as the planner sees them (status from the shared table, as a hint).
    func children() -> [ChildState] {
        var out: [ChildState] = []
        for slot in 0..<capacity where records[slot].pid > 0 {
            let r = records[slot]
            let role: ChildRole = r.environment < 0 ? .multiplexer : .worker(environment: Int(r.environment))
            var status = ChildStatus.starting
            var since = r.startedAt
            if r.generation == policy.generation, let shared = sharedTable?.status(of: slot) {
                status = shared.status
                since = shared.since
            }
            out.append(ChildState(slot: slot, pid: r.pid, role: role, type: ChildType(rawValue: r.type) ?? .unknown,
                                  generation: r.generation, startedAt: r.startedAt,
                                  retiring: r.retiring != 0 || r.draining != 0 || r.expired != 0,
                                  status: status, statusSince: since))
        }
        return out + pending.children(generation: policy.generation)
    }

    func environmentName(_ env: Int) -> String {
        environmentLabel(env)
    }

    mutating func signal(_ slot: Int, _ sig: Int32, now: Int64) {
        guard slot >= 0 && slot < capacity, records[slot].pid > 0 else { return }
        signalProcess(records[slot].pid, sig)
        records[slot].signalledAt = now
    }

    /// Children of older generations (and every child during a graceful stop) finish, in
    /// DrainPlan's order; a worker stopped for ExpireTimeout that ignores it is killed.
    mutating func finish(everyone: Bool, now: Int64) {
        var candidates: [DrainCandidate] = []
        for slot in 0..<capacity where records[slot].pid > 0 {
            let r = records[slot]
            candidates.append(DrainCandidate(slot: slot, isMultiplexer: r.environment < 0, generation: r.generation,
                                             retiring: r.retiring != 0, draining: r.draining != 0,
                                             expired: r.expired != 0, signalledAt: r.signalledAt))
        }
        for action in DrainPlan.plan(children: candidates, generation: policy.generation, everyone: everyone, now: now) {
            switch action {
            case .retire(let slot):
                records[slot].retiring = 1
                signal(slot, SIGUSR1, now: now)
            case .drain(let slot):
                records[slot].draining = 1
                signal(slot, SIGWINCH, now: now)
            case .kill(let slot):
                signal(slot, SIGKILL, now: now)
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
        guard channels.indices.contains(environment), liveWorkers(of: environment) == 0 else { return }
        if !failingStarts.contains(environment) {
            failingStarts.insert(environment)
            availabilityBoard?.setStartFailing(environment, true)
            log(PERUSER_LOG_ERR, "peruser: environment \(environmentName(environment)) has no worker and "
                + "cannot start one; its connections get 503 after ProcessorWaitTimeout until a worker starts")
        }
        let (moved, lost) = channels[environment].returnQueued()
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
        freeWorkerPages(environment).first
    }

    /// The pages of `environment`'s pool that no live worker of this generation (retiring ones
    /// included) and no start asked of its image holds.
    func freeWorkerPages(_ environment: Int) -> [Int] {
        guard pagePools.starts.indices.contains(environment), policy.environments.indices.contains(environment) else {
            return []
        }
        let start = pagePools.starts[environment], count = max(policy.environments[environment].maxProcessors, 1)
        let used = Set(currentSlots(of: environment).map { Int(records[$0].page) }).union(pending.pages(of: environment))
        return (start..<(start + count)).filter { !used.contains($0) }
    }

    /// Gives the system back the memory of `environment`'s free worker and detail pages, after
    /// one of its workers exited (ChildExit.releasesPoolPages: one the parent stopped, or the
    /// last). Each page a worker wrote stays allocated in the table's memfd (and counted in the
    /// PSS of every process that read it) until it is released: with 300 tenants, 16 MiB of a
    /// quiet server's 35 after a load. Its next worker finds zeros, as in a fresh table; readers
    /// look only at live workers' pages, so none is allocated again by a look. The whole free
    /// part of the pool each time: a live worker's look for a ready neighbour
    /// (anotherWorkerReady) allocates the free pages it reads.
    mutating func releaseFreePages(of environment: Int) {
        guard let table = sharedTable, !pageReleaseRefused else { return }
        let ranges = ChildTableLayout.workerPageRanges(freeWorkerPages(environment), slots: table.slotCount,
                                                       environments: table.environmentCount,
                                                       workerPages: table.workerPageCount)
        do throws(Errno) {
            try releasePages(base: table.base, ranges)
        } catch {
            pageReleaseRefused = true
            log(PERUSER_LOG_WARNING, "peruser: cannot give back the child table's pages of workers that exited "
                + "(madvise MADV_REMOVE: \(error)); they stay allocated until the next restart")
        }
    }

    /// One of `environment`'s channels was shut down, which only its own workers can do: new
    /// channels for it, passed to every live multiplexer of this generation; its workers are
    /// retired (they hold the old ones) and the plan starts new ones. Other environments are
    /// untouched. At most once every 10 s per environment, so a worker doing it again and
    /// again costs the parent little.
    mutating func renewChannels(_ environment: Int, now: Int64) {
        guard channels.indices.contains(environment) else { return }
        if let last = lastRenewal[environment], elapsedMilliseconds(since: last, now: now) < 10_000 { return }
        lastRenewal[environment] = now
        do throws(Errno) {
            let renewed = try EnvironmentChannels.open()
            channels[environment].closeAll()
            channels[environment] = renewed
        } catch {
            log(PERUSER_LOG_ERR, "peruser: cannot renew the channels of environment \(environmentName(environment)): \(error)")
            return
        }
        var multiplexers = 0
        for slot in currentSlots(of: -1) where records[slot].retiring == 0 {
            if giveChannels(environment, toMultiplexerIn: slot) { multiplexers += 1 }
        }
        giveChannelsToImage(environment)
        for slot in currentSlots(of: environment) where records[slot].retiring == 0 {
            records[slot].retiring = 1
            signal(slot, SIGUSR1, now: now)
        }
        pending.markStale(environment: environment)
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
                if env >= 0 && configuration.isolatesImage(of: Int(env)) {
                    switch askImageForWorker(slot: slot, environment: Int(env), page: page) {
                    case .asked:
                        pending.asked(slot: slot, PendingStart(environment: Int(env), type: type, page: page, askedAt: now))
                    case .notYet:  // the image is starting: next round
                        standBy(slot, now: now)
                    case .failed:  // this image's trouble: other environments' starts go on
                        standBy(slot, now: now)
                        startFailed(environment: Int(env))
                    }
                    continue
                }
                ownPage = sharedTable?.pageOffset(slot: slot, type: type, workerPage: page)
                let outcome = spawn(slot: slot, environment: env < 0 ? nil : Int(env))
                ownPage = nil
                if case .notYet = outcome {  // the image is starting: next round
                    standBy(slot, now: now)
                    continue
                }
                guard case .started(let pid) = outcome else {  // fork failed (logged); try again next round
                    forkFailed = true
                    standBy(slot, now: now)
                    startFailed(environment: Int(env))
                    continue
                }
                records[slot] = ChildRecord(pid: pid, environment: env, generation: policy.generation,
                                                     type: type.rawValue, retiring: 0, draining: 0, expired: 0,
                                                     page: Int32(page), startedAt: now, signalledAt: 0)
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

    /// `environment`'s image answered for `slot`: the worker is recorded (or the start failed).
    /// Returns the exit status if the child was already reaped: the caller handles its exit.
    mutating func imageAnswered(environment: Int, _ message: ImageMessage, now: Int64) -> (slot: Int, status: ExitStatus)? {
        let slot: Int
        switch message {
        case .spawned(let answered, _), .failed(let answered, _): slot = answered
        default: return nil
        }
        let what = "the process image of environment \(environmentName(environment))"
        guard case .answers(let start) = pending.answer(slot: slot, environment: environment) else {
            // Nothing was asked there: never a second child in a slot. A pid of a child not
            // yet reaped cannot have been reused, so it is safe to stop.
            if case .spawned(_, let pid) = message, pid > 1,
               !(0..<capacity).contains(where: { records[$0].pid == pid }) {
                if unclaimed.claim(pid: pid, now: now) == nil { signalProcess(pid, SIGTERM) }
                log(PERUSER_LOG_ERR, "peruser: \(what) started a child (pid \(pid)) in slot \(slot) that was not asked "
                    + "for; it is stopped")
            }
            return nil
        }
        let took = now - start.askedAt
        guard case .spawned(_, let pid) = message else {
            if case .failed(_, let errno) = message {
                log(PERUSER_LOG_ERR, "peruser: \(what) could not start a child: "
                    + "\(errno == 0 ? "it has no channel" : Errno(errno).description)")
            }
            standBy(slot, now: now)
            if !start.overdue { startFailed(environment: environment) }  // an overdue one was counted
            return nil
        }
        setScoreboardSlot(slot, pid: pid, starting: true)
        records[slot] = ChildRecord(pid: pid, environment: Int32(environment), generation: policy.generation,
                                    type: start.type.rawValue, retiring: 0, draining: 0, expired: 0,
                                    page: Int32(start.page), startedAt: now, signalledAt: 0)
        sharedTable?.setPid(slot, pid)  // the child may already have reported its status
        log(PERUSER_LOG_DEBUG, "peruser: started \(describe(slot)) as \(start.type.name)")
        if took >= slowSpawnMilliseconds {
            log(start.overdue ? PERUSER_LOG_NOTICE : PERUSER_LOG_INFO, "peruser: \(what) took \(took) ms to start "
                + "\(describe(slot))" + (start.overdue ? "; it was counted as a failed start at 1 s and serves now" : ""))
        }
        if let status = unclaimed.claim(pid: pid, now: now) { return (slot, status) }
        if start.stale {  // it may hold the channels renewed meanwhile
            records[slot].retiring = 1
            signal(slot, SIGUSR1, now: now)
        }
        return nil
    }

    /// Asked starts unanswered for PendingStarts.deadlineMilliseconds: logged and counted as
    /// failed (the environment's waiting connections then go by ProcessorWaitTimeout).
    mutating func noteOverdueStarts(now: Int64) {
        for (slot, start) in pending.becameOverdue(now: now) {
            log(PERUSER_LOG_ERR, "peruser: the process image of environment \(environmentName(start.environment)) "
                + "did not start a worker (slot \(slot)) within \(PendingStarts.deadlineMilliseconds) ms; counted as a "
                + "failed start, its slot waits for the image's answer (other environments are not held up)")
            startFailed(environment: start.environment)
        }
    }

    /// `slot` shows as free again in the child table (a start that did not happen).
    func standBy(_ slot: Int, now: Int64) {
        sharedTable?.setSlot(slot, pid: 0, type: .unknown, environment: 0, generation: policy.generation,
                             status: .standby, now: now)
    }

    func describe(_ slot: Int) -> String {
        let r = records[slot]
        let what = r.environment < 0 ? "multiplexer" : "worker of \(environmentName(Int(r.environment)))"
        return "\(what) (pid \(r.pid), slot \(slot))"
    }
}

