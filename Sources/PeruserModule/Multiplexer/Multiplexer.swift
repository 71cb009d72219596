// The multiplexer: accept on every listener, peek at each request head, find its environment,
// and pass the socket to that environment's workers. Single-threaded, non-blocking, epoll:
// a slow client, a saturated environment or a full channel never holds up anything else.
//
// A head that is there at once is read with MSG_PEEK: the worker then reads the client's
// original bytes from the socket itself. A head that trickles in is consumed as it comes (so a
// client sending one byte per packet costs linear, not quadratic, work) and travels with the
// fd, like the bytes of a connection a worker handed back.
//
// Every environment has a hand-back channel of its own; a connection comes back on it only
// with the ticket it was handed off with (HandbackTicket), so a worker can give back only what
// was given to its environment, and a broken or flooded channel harms that environment alone.
import CPeruserShim
import Glibc
import PeruserCore

struct PendingConnection {
    enum Stage {
        case readingHead
        /// Routed to `environment`, which has no free worker and cannot get one: held in the
        /// wait queue until a worker frees up or ProcessorWaitTimeout's budget runs out.
        case waitingForWorker(environment: Int)
        /// Routed to `environment`, whose channel was full at the last try.
        case waitingForChannel(environment: Int)
        /// Served: a worker sent the response, shut the write side and gave the connection
        /// back to be closed. What the client still sends is read and dropped (so that closing
        /// does not reset the connection before the client has read the response) until it
        /// closes, or nothing came for 2 s, or `until`.
        case lingering(until: Int64)
        /// Lent to `environment`'s workers (see "Lent connections"): this multiplexer kept its
        /// descriptor and watches it, and looks at the environment's pages for `number` when it
        /// stirs; `since`: when it was lent.
        case lent(environment: Int, number: UInt64, since: Int64)
    }

    var stage: Stage = .readingHead
    /// Bytes of this connection already read from the socket (by a worker that handed it back).
    var consumed: [UInt8]
    var hops: UInt16
    var deadline: Int64
    /// Responses that kept it alive so far, in every worker it went through: its next worker's
    /// Apache counts on from here, so MaxKeepAliveRequests ends it as httpd would.
    var keepalives: UInt32 = 0
    /// Whether the client sent a whole request line: at the head timeout, httpd answers 408
    /// only after one and closes silently before.
    var requestLineDone = false
    /// Registered with epoll (only connections whose head did not come at once).
    var watched = false
    /// The client opened with a TLS handshake record: routed by the ClientHello's server name,
    /// and never answered in plain text (a failure closes it).
    var tls = false
    /// The head did not come at once: its bytes are consumed into `consumed` as they arrive.
    var consuming = false
    /// An h2c connection preface and SETTINGS came, and no request yet (H2Preface).
    var http2Preface = false
    /// When the consumed bytes are worth scanning again (linear work for a trickling client).
    var trickle = TrickleScan()
    /// The hand-back channel this connection came from (its count of held connections).
    var handback: Int?
    /// The socket's cookie, for a connection handed back.
    var cookie: UInt64?
    /// Whom the connection counts against for MaxClientShare (set when it is routed).
    var client = ClientAddress.none
    /// For a connection handed back: the client it was handed off with (its ticket proves it).
    var carriedClient: ClientAddress?
    /// Holds one of its client's share (AvailabilityBoard.reserve) until a worker shows it.
    var reserved = false
    /// The socket's local and peer addresses, asked of the kernel once (the peer comes with
    /// accept4): they do not change while it is open, and a kept-alive connection is routed
    /// again at each request.
    var local: InternetAddress?
    var peer: InternetAddress?
}

/// One environment's hand-back channel (receiving end), of this generation or the previous one.
struct HandbackChannel {
    var fd: Int32
    let generation: UInt32
    let environment: Int
    /// Connections from this channel that this multiplexer holds, and how many it may hold:
    /// beyond that the channel is not read (what waits in it stays there, bounded by the kernel).
    var holding = 0
    let most: Int
    var watched = false
    /// Every sender shut it down (or a worker did): no longer read.
    var closed = false
}

/// Kinds of log lines a client or a tenant can cause: each is rate-limited (LogLimiter).
enum NoisyLine: Int {
    case invalidHandback = 1, forgedHandback, handbackClosed, routingLoop, saturated, channelFull,
         handoffFailed, descriptorsExhausted, acceptFailed, unknownEnvironment, noEnvironment, clientShare, lentLost, pressed
}

struct Multiplexer {
    let slot: Int
    let listeners: [Int32]
    /// Each listener's address where it is bound to a specific one (`Listen 192.0.2.1:80`):
    /// then it is every accepted connection's local address, and routing needs no
    /// getsockname. A wildcard listener's connections are asked.
    private let fixedLocal: [(listener: Int32, address: InternetAddress)]
    /// Hand-off channels' sending ends, by environment (renewed by the parent if one breaks).
    private var handoffs: [Int32]
    /// From the parent: renewed channels of an environment.
    let control: Int32
    /// When this multiplexer last told the parent that an environment's channel is broken.
    private var lastBrokenReport: [Int64]
    private var handbacks: [HandbackChannel]
    let generation: UInt32
    private let key: HandbackKey
    /// Pipe to the parent: the index of an environment that needs a worker (4 bytes).
    let demand: Int32
    let headTimeout: Int64
    let maxConnections: Int
    /// How long a routed connection may wait for room in its environment's channel.
    let channelWait: Int64 = 5000
    /// A connection handed back this many times without a request served is a routing loop.
    static let mostHops: UInt16 = 4
    static let largestHead = HandoffMessage.largestConsumed
    /// Holding this many connections makes a multiplexer busy (the parent may add one).
    static let busyHolding = 32
    /// How long accepting pauses after fd exhaustion.
    static let acceptPause: Int64 = 100

    private let epoll: Int32
    private var pending = DescriptorTable<PendingConnection>()
    private var waiting = WaitQueue<Int32>()
    /// Availability lives on the multiplexers' own board (see AvailabilityBoard).
    private let waitSeconds: Int
    private let waitLevels: Int
    private let workerLimits: [WorkerLimits]
    private let maxClients: Int
    /// Scratch space: consumed bytes followed by peeked ones; and one encoded message.
    private let head: UnsafeMutableRawBufferPointer
    private let message: UnsafeMutableRawBufferPointer

    /// When each environment last asked the parent for a worker: at most one ask per 20 ms.
    private var lastDemand: [Int64]
    private var stopping = false
    private var listenersWatched = true
    /// Whether there was room for more connections at the last look, and the hand-back
    /// channels whose state changed since (only those are looked at again: with hundreds of
    /// environments, a look at every channel on every turn of the loop would cost).
    private var hadRoom = false
    private var handbacksToCheck: [Int] = []
    /// Out of file descriptors: accepting resumes at this time.
    private var acceptResumesAt: Int64 = 0
    private var lastHolding = -1
    /// Each environment's capacity, read from the child table at most once per turn of the
    /// event loop (a scan of every slot) and kept current with this turn's own hand-offs.
    private var capacityCache: [EnvironmentCapacity?]
    private var roster = ChildTable.Roster.empty
    private var rosterBuiltAt: Int64 = 0

    private var noisyLines = LogLimiter()
    /// Cookies of the handed-back connections this multiplexer holds.
    private var heldCookies = Set<UInt64>()
    /// How many of each environment's workers one client may hold (nil: no limit).
    private let clientShare: [Int?]
    /// Connections this multiplexer passed to a channel with one of their client's share
    /// reserved, until a worker shows them taken (then the reservation is released): the
    /// environment, client, ticket, the `handedOff` count each made, and when.
    private var inFlight: [(environment: Int, client: ClientAddress, ticket: UInt64, handedOff: UInt64, at: Int64)] = []
    /// Each environment's count of connections its workers gave up (ReaderShedding), and when
    /// this multiplexer last saw it change.
    private var shedSeen: [(count: UInt64, changedAt: Int64)]
    private var inFlightPrunedAt: Int64 = 0

    /// Lent connections that stirred before their worker gave them back: looked at again soon,
    /// and when.
    private var lentChecks: [Int32: Int64] = [:]
    private var lentSweepAt: Int64 = 0
    /// Where the search for a free lend cell starts: after the last one taken, so that a cell
    /// just read is taken again last.
    private var lendCellHint = 0
    /// Each environment's hand-back channel of this generation (lent connections count on it).
    private var currentHandback: [Int?]
    /// Lent connections by socket cookie: a worker may send one back with bytes it read.
    private var lentByCookie: [UInt64: Int32] = [:]
    /// SCHED_BATCH while no kept-alive connection is held (MultiplexerPacing).
    private var pacing = MultiplexerPacing()
    private var pacingRefused = false
    /// This turn adopted a kept-alive connection handed back to read its next head.
    private var adoptedKeptAlive = false
    /// Whether a held connection came back from a worker (lent, or handed back) and is not
    /// being closed, at the last look (every 250 ms: a scan of what is held).
    private var heldKeptAlive = false
    private var keptAliveLookAt: Int64 = 0

    private static let listenerTag: UInt64 = 1 << 32
    private static let handbackTag: UInt64 = 2 << 32
    private static let controlTag: UInt64 = 3 << 32

    init?(slot: Int, listeners: [Int32], handoffs: [Int32], handbacks: [HandbackChannel], generation: UInt32,
          key: HandbackKey, demand: Int32, control: Int32) {
        self.slot = slot
        self.control = control
        lastBrokenReport = Array(repeating: Int64.min / 2, count: handoffs.count)
        self.listeners = listeners
        fixedLocal = listeners.compactMap { listener in
            guard let address = internetAddress(listener, peer: false), address.isSpecific else { return nil }
            return (listener, address)
        }
        self.handoffs = handoffs
        self.handbacks = handbacks
        self.generation = generation
        self.key = key
        self.demand = demand
        // This process inherited the parent's configuration of this generation.
        let limits = configuration.limits
        self.headTimeout = Int64(max(limits.headTimeout, 1)) * 1000
        maxConnections = max(limits.multiplexerMaxConnections, 1)
        maxClients = limits.maxClients
        workerLimits = configuration.workerLimits
        waitSeconds = limits.processorWaitSeconds
        waitLevels = limits.processorWaitLevels
        clientShare = configuration.workerLimits.map {
            ClientShare.limit(maxProcessors: $0.maxProcessors, percent: limits.maxClientShare)
        }
        lastDemand = Array(repeating: Int64.min / 2, count: handoffs.count)
        shedSeen = Array(repeating: (0, Int64.min / 2), count: handoffs.count)
        capacityCache = Array(repeating: nil, count: handoffs.count)
        currentHandback = handoffs.indices.map { env in
            handbacks.firstIndex { $0.generation == generation && $0.environment == env }
        }
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        head = .allocate(byteCount: Self.largestHead, alignment: 8)
        message = .allocate(byteCount: HandoffMessage.largestMessage, alignment: 8)
        guard epoll >= 0 else {
            log(PERUSER_LOG_ERR, "multiplexer: epoll_create1 failed: \(errnoText())")
            return nil
        }
        for fd in listeners {
            setNonBlocking(fd)
            // EPOLLEXCLUSIVE: one multiplexer, not all of them, wakes for a new connection.
            guard watch(fd, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue,
                        data: Self.listenerTag | UInt64(UInt32(bitPattern: fd))) else {
                return nil
            }
        }
        for index in self.handbacks.indices { setNonBlocking(self.handbacks[index].fd) }
        if control >= 0 {
            setNonBlocking(control)
            guard watch(control, events: EPOLLIN.rawValue, data: Self.controlTag) else { return nil }
        }
        updateWatches(now: monotonicMilliseconds())
        for env in handoffs.indices { publish(env) }
    }

    /// Adds `fd` to epoll; `data` comes back with its events: a tag in the high half, and the
    /// fd (a listener) or an index (a hand-back channel) in the low half.
    /// A client connection: readable, or closed by the client; edge-triggered (read until EAGAIN).
    static let connectionEvents = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue

    private func watch(_ fd: Int32, events: UInt32, data: UInt64) -> Bool {
        var event = epoll_event()
        event.events = events
        event.data.u64 = data
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0 else {
            log(PERUSER_LOG_ERR, "multiplexer: epoll_ctl(\(fd)) failed: \(errnoText())")
            return false
        }
        return true
    }

    mutating func run() -> Int32 {
        let capacity = 64
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while true {
            if peruser_shim_stop_requested() != 0 && !stopping { stopAccepting() }
            if stopping && pending.isEmpty { return 0 }
            let turn = monotonicMilliseconds()
            updateWatches(now: turn)
            reportHolding()
            // Wake periodically while connections wait: free workers, full channels, deadlines;
            // and when accepting resumes after fd exhaustion. A worker that comes free while
            // the environment's waiting count shows some says so (FreeSignal), but that count
            // is the last writer's among the multiplexers, so the look stays frequent: a worker
            // serves a small request in well under a millisecond, and a 20 ms look left a client
            // at its share (MaxClientShare) with most of its workers idle.
            var timeout: Int32 = pending.isEmpty ? -1 : (waiting.isEmpty ? 100 : 2)
            // Hand-offs in flight hold their client's share until this multiplexer sees them
            // taken and releases them: look again soon, even with nothing else to do.
            if !inFlight.isEmpty { timeout = timeout < 0 ? 2 : min(timeout, 2) }
            // A lent connection that stirred before its worker gave it back: its client waits.
            if !lentChecks.isEmpty { timeout = timeout < 0 ? 1 : min(timeout, 1) }
            if acceptResumesAt > turn {
                let untilResume = Int32(clamping: acceptResumesAt - turn)
                timeout = timeout < 0 ? untilResume : min(timeout, untilResume)
            }
            let count = epoll_wait(epoll, events, Int32(capacity), timeout)
            for env in capacityCache.indices { capacityCache[env] = nil }
            if count < 0 {
                if errno == EINTR { continue }
                log(PERUSER_LOG_ERR, "multiplexer: epoll_wait failed: \(errnoText())")
                return 1
            }
            for i in 0..<Int(count) {
                let data = events[i].data.u64
                let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: data))
                switch data & ~0xffff_ffff {
                case Self.listenerTag: acceptAll(on: fd)
                case Self.handbackTag: receiveHandbacks(on: Int(fd))
                case Self.controlTag: receiveControl()
                default: advance(fd)
                }
            }
            let now = monotonicMilliseconds()
            lookAtLent(now: now)
            // Every turn while connections wait here: a client at its share waits for exactly
            // these releases (held once a millisecond, one busy address fell from 20k to 6k
            // requests per second).
            pruneInFlight(now: now, force: !waiting.isEmpty)
            passWaiting(now: now)
            expireAndRetry(now: now)
            pace(now: now)
        }
    }

    /// Asks for the scheduling policy MultiplexerPacing chooses. Refused (a seccomp filter, say):
    /// logged once, and the multiplexer stays as it is.
    private mutating func pace(now: Int64) {
        if now >= keptAliveLookAt {
            keptAliveLookAt = now + 250
            heldKeptAlive = pending.contains { connection in
                if case .lingering = connection.stage { return false }
                return connection.handback != nil
            }
        }
        let keptAlive = heldKeptAlive || !lentByCookie.isEmpty || adoptedKeptAlive
        adoptedKeptAlive = false
        guard !pacingRefused, let policy = pacing.afterTurn(holdsKeptAlive: keptAlive, now: now) else { return }
        do {
            try setSchedulingPolicy(policy)
        } catch {
            pacingRefused = true
            log(PERUSER_LOG_WARNING, "multiplexer: cannot change its scheduling policy: \(error)")
        }
    }

    // MARK: Status

    /// Asked to stop (graceful restart, or retired): new connections and hand-backs are left
    /// to the other multiplexers; what this one holds is finished first.
    private mutating func stopAccepting() {
        stopping = true
        updateWatches(now: monotonicMilliseconds())
        for fd in listeners { close(fd) }
        if let page = ownPage { sharedTable?.setStatus(page: page, .standby, now: monotonicMilliseconds()) }
    }

    /// Which sources are read this turn. At MultiplexerMaxConnections (hand-backs count too)
    /// nothing new is taken: other multiplexers accept, or the kernel queues, until this one
    /// holds fewer. After fd exhaustion accepting pauses briefly instead of spinning. A
    /// hand-back channel is not read while this multiplexer holds its bound of connections
    /// from it, nor once it is closed: a level-triggered source that is not drained must not
    /// be watched, or epoll would wake us for it again and again.
    private mutating func updateWatches(now: Int64) {
        let room = !stopping && pending.count < maxConnections
        let listen = room && now >= acceptResumesAt
        if listen != listenersWatched && (!stopping || listenersWatched) {
            listenersWatched = listen
            for fd in listeners {
                if listen {
                    _ = watch(fd, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue,
                              data: Self.listenerTag | UInt64(UInt32(bitPattern: fd)))
                } else {
                    epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
                }
            }
        }
        let toCheck: [Int]
        if room != hadRoom {
            hadRoom = room
            toCheck = Array(handbacks.indices)
        } else {
            toCheck = handbacksToCheck
        }
        handbacksToCheck.removeAll(keepingCapacity: true)
        for index in toCheck where handbacks.indices.contains(index) {
            let channel = handbacks[index]
            let read = room && !channel.closed && channel.holding < channel.most
            guard read != channel.watched else { continue }
            if read {
                handbacks[index].watched = watch(channel.fd, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue,
                                                 data: Self.handbackTag | UInt64(index))
            } else {
                epoll_ctl(epoll, EPOLL_CTL_DEL, channel.fd, nil)
                handbacks[index].watched = false
            }
        }
    }

    /// Writes a line a client or tenant can cause, at most once per kind every few seconds.
    private mutating func note(_ kind: NoisyLine, _ level: Int, _ text: String) {
        guard let leftOut = noisyLines.admit(kind.rawValue, now: monotonicMilliseconds()) else { return }
        log(level, text + LogLimiter.note(leftOut))
    }

    private mutating func reportHolding() {
        guard pending.count != lastHolding, let table = sharedTable, let page = ownPage else { return }
        peruser_atomic_store_u32(table.field(page: page, ChildTableLayout.holdingOffset), UInt32(clamping: pending.count))
        if !stopping {
            let busy = pending.count >= Self.busyHolding
            if busy != (lastHolding >= Self.busyHolding) || lastHolding < 0 {
                table.setStatus(page: page, busy ? .active : .ready, now: monotonicMilliseconds())
            }
        }
        lastHolding = pending.count
    }

    private func availability(_ environment: Int) -> Availability {
        availabilityBoard?.availability(environment, waitSeconds: waitSeconds, levels: waitLevels)
            ?? Availability(waitSeconds: waitSeconds, levels: waitLevels)
    }

    private func changeAvailability(_ environment: Int, _ change: (inout Availability) -> Void) {
        availabilityBoard?.update(environment, waitSeconds: waitSeconds, levels: waitLevels, change)
    }

    /// Copies availability and this multiplexer's waiting connections into the child table,
    /// for display.
    private func publish(_ environment: Int) {
        guard let table = sharedTable, handoffs.indices.contains(environment) else { return }
        if let field = table.environmentField(environment, ChildTableLayout.availabilityOffset) {
            peruser_atomic_store_u32(field, UInt32(availability(environment).percent))
        }
        if let field = table.environmentField(environment, ChildTableLayout.waitingOffset) {
            peruser_atomic_store_u32(field, UInt32(clamping: waiting.count(for: environment)))
        }
    }

    /// After a hand-off (counted in the table before it was sent).
    private mutating func handedOff(to environment: Int) {
        guard let table = sharedTable else { return }
        capacityCache[environment]?.queued += 1
        if !stopping && pending.count < Self.busyHolding {
            if let page = ownPage {
                table.setStatus(page: page, .ready, now: monotonicMilliseconds())  // MultiplexerIdleTimeout counts from here
            }
        }
        if availability(environment).percent != 100 {
            changeAvailability(environment) { $0.passed() }
            publish(environment)
        }
    }

    /// Asks the parent for a worker: a connection arrived and found none free (the shared
    /// table is a hint, and so is this; the parent decides within the limits).
    private mutating func askForWorker(_ environment: Int) {
        let now = monotonicMilliseconds()
        guard now - lastDemand[environment] >= 20 else { return }
        lastDemand[environment] = now
        var index = UInt32(environment)
        _ = write(demand, &index, 4)  // non-blocking; a full pipe means the parent is already busy
    }

    /// The roster of the table (which slots are each environment's), rebuilt when the parent
    /// has started or reaped a child since, and at least once a second.
    private mutating func currentRoster(_ table: ChildTable) -> ChildTable.Roster {
        let now = monotonicMilliseconds()
        if roster.version != table.rosterVersion || now - rosterBuiltAt >= 1000 {
            roster = table.roster()
            rosterBuiltAt = now
        }
        return roster
    }

    private mutating func capacity(of environment: Int) -> EnvironmentCapacity {
        guard let table = sharedTable, workerLimits.indices.contains(environment) else {
            return EnvironmentCapacity(workers: 0, idle: 0, queued: 0, maxProcessors: 1, serverFull: false)
        }
        if let cached = capacityCache[environment] { return cached }
        var fresh = table.capacity(of: environment, limits: workerLimits[environment], maxClients: maxClients,
                                   roster: currentRoster(table))
        fresh.startFailing = availabilityBoard?.startFailing(environment) ?? false
        capacityCache[environment] = fresh
        return fresh
    }

    /// Answers 503 for a saturated environment; its availability falls one level.
    private mutating func drop(_ fd: Int32, environment: Int) {
        if let field = sharedTable?.environmentField(environment, ChildTableLayout.droppedOffset) {
            peruser_atomic_add_u64(field, 1)
        }
        changeAvailability(environment) { $0.dropped() }
        publish(environment)
        respond(fd, .serviceUnavailable)
    }

    // MARK: New connections

    private mutating func acceptAll(on listener: Int32) {
        let local = fixedLocal.first { $0.listener == listener }?.address
        for _ in 0..<64 where pending.count < maxConnections {
            // Left blocking: the multiplexer only uses MSG_DONTWAIT on it, and the worker gets
            // the fd as apr expects it.
            var peer = sockaddr_storage()
            var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    accept4(listener, $0, &peerLength, Int32(SOCK_CLOEXEC.rawValue))
                }
            }
            if fd < 0 {
                let code = errno
                switch code {
                case EAGAIN, EWOULDBLOCK: return
                case EINTR, ECONNABORTED, EPROTO: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // The connection stays in the kernel's queue; the listener stays readable,
                    // so it is not watched for a moment rather than retried in a busy loop.
                    acceptResumesAt = monotonicMilliseconds() + Self.acceptPause
                    note(.descriptorsExhausted, PERUSER_LOG_ERR, "multiplexer: accept failed: \(errnoText(code)); "
                         + "not accepting for \(Self.acceptPause) ms (holding \(pending.count) connections)")
                    return
                default:
                    note(.acceptFailed, PERUSER_LOG_ERR, "multiplexer: accept on fd \(listener) failed: \(errnoText(code))")
                    acceptResumesAt = monotonicMilliseconds() + Self.acceptPause
                    return
                }
            }
            let peerAddress = InternetAddress(peer)
            adopt(fd, consumed: [], hops: 0, peer: peerAddress, local: local)
            // Until it is routed, a connection counts for its peer (a trusted proxy's for no
            // one): a client's footprint here orders the wait (passWaiting).
            if pending[fd] != nil, pending[fd]?.client.isNone == true {
                let address = peerAddress.map(ClientAddress.init) ?? .none
                setClient(fd, proxyTrust.trusts(address) ? .none : address)
            }
        }
    }

    /// Connections a worker of the channel's environment gave back because the next request is
    /// for another environment. Untrusted: the message is validated, the fd must be a TCP
    /// socket, and its ticket must say that it was handed to that environment.
    private mutating func receiveHandbacks(on index: Int) {
        guard handbacks.indices.contains(index) else { return }
        let channel = handbacks[index]
        for _ in 0..<64 {
            guard pending.count < maxConnections, handbacks[index].holding < channel.most else { return }
            let length: Int, fd: Int32
            switch Channel(fd: channel.fd).receive(into: message, blocking: false, descriptorOptional: true) {
            case .nothing: return
            case .interrupted: continue
            case .empty where !receiveSideShutDown(channel.fd):
                // An empty message: garbage from a sender, not the end of the channel.
                note(.invalidHandback, PERUSER_LOG_WARNING, "multiplexer: dropped an empty message on the "
                     + "hand-back channel of environment \(handbackLabel(channel))")
                continue
            case .empty:
                // A sender shut the channel down (every sender shares that socket): stop reading it.
                handbacks[index].closed = true
                handbacksToCheck.append(index)
                updateWatches(now: monotonicMilliseconds())
                guard channel.generation == generation, sharedTable?.generationEnded != true else {
                    // The parent closed its end when the generation ended: the channel ends
                    // with the last of that generation's workers, as expected (debug: a line
                    // per environment and multiplexer at every stop).
                    log(PERUSER_LOG_DEBUG, "multiplexer: the hand-back channel of environment "
                        + "\(handbackLabel(channel)) ended with its generation")
                    return
                }
                reportBroken(channel.environment)
                note(.handbackClosed, PERUSER_LOG_WARNING, "multiplexer: the hand-back channel of environment "
                     + "\(handbackLabel(channel)) was shut down by a sender; kept-alive connections of that "
                     + "environment can no longer move to another environment (until the next restart)")
                return
            case .message(let received, let descriptor) where descriptor < 0:
                // A worker came free: this turn's passWaiting gives it a waiting connection.
                // Anything else without a descriptor is an invalid hand-back.
                if FreeSignal.matches(UnsafeRawBufferPointer(rebasing: message[0..<received])) { continue }
                fallthrough
            case .invalid:
                note(.invalidHandback, PERUSER_LOG_WARNING, "multiplexer: dropped an invalid message on the "
                     + "hand-back channel of environment \(handbackLabel(channel)) (truncated, or not exactly one fd)")
                continue
            case .failed(let failure):
                note(.invalidHandback, PERUSER_LOG_ERR, "multiplexer: hand-back receive on environment "
                     + "\(handbackLabel(channel)) failed: \(failure)")
                return
            case .message(let received, let descriptor):
                (length, fd) = (received, descriptor)
            }
            let decoded: HandoffMessage
            do {
                decoded = try HandoffMessage.decode(UnsafeRawBufferPointer(rebasing: message[0..<length]))
            } catch {
                close(fd)
                note(.invalidHandback, PERUSER_LOG_WARNING, "multiplexer: dropped an invalid hand-back from "
                     + "environment \(handbackLabel(channel)) (\(error))")
                continue
            }
            // A connection given back may be closed by its client already (then it has no peer
            // any more): its ticket still proves whose it is.
            let connected = isTCPStream(fd)
            guard connected || isStreamSocket(fd), let cookie = socketCookie(fd),
                  key.accepts(decoded.ticket, cookie: cookie, generation: channel.generation,
                              environment: channel.environment, client: decoded.client) else {
                close(fd)
                note(.forgedHandback, PERUSER_LOG_WARNING, "multiplexer: dropped a hand-back from environment "
                     + "\(handbackLabel(channel)) whose connection was never handed to it")
                continue
            }
            // The client left while its kept-alive connection came back for its next request
            // (a pool closed between two): nothing to route, and nothing forged.
            if !connected && !decoded.closing {
                close(fd)
                continue
            }
            // A connection this multiplexer lent, sent back with bytes a worker read (before this
            // multiplexer looked at its lend cell): this copy replaces ours, and its count of
            // kept-alive answers never goes below what ours said.
            var keepalives = decoded.keepalives
            if let lentFD = lentByCookie[cookie], let lent = pending[lentFD], case .lent = lent.stage {
                keepalives = max(keepalives, lent.keepalives)
                closeConnection(lentFD)
            }
            // A copy of a connection this multiplexer already holds: one connection is held once
            // (a worker cannot multiply what it hands back by duplicating the descriptor).
            guard !heldCookies.contains(cookie) else {
                close(fd)
                note(.forgedHandback, PERUSER_LOG_WARNING, "multiplexer: dropped a second copy of a connection "
                     + "handed back by environment \(handbackLabel(channel))")
                continue
            }
            if decoded.closing {
                if connected { linger(fd, handback: index, cookie: cookie) } else { close(fd) }
            } else {
                adopt(fd, consumed: decoded.consumed, hops: decoded.hops, handback: index, cookie: cookie,
                      client: decoded.client, keepalives: keepalives)
            }
        }
    }

    /// Tells the parent that one of `environment`'s channels was shut down (by one of its own
    /// workers: nobody else holds them): the parent makes new ones and passes them on the
    /// control channel. At most once a second per environment.
    private mutating func reportBroken(_ environment: Int) {
        let now = monotonicMilliseconds()
        guard lastBrokenReport.indices.contains(environment), now - lastBrokenReport[environment] >= 1000 else { return }
        lastBrokenReport[environment] = now
        var word = UInt32(environment) | Self.brokenChannelFlag
        _ = write(demand, &word, 4)
    }

    /// On the demand pipe: an environment index with this bit asks for new channels.
    static let brokenChannelFlag: UInt32 = 0x4000_0000

    /// Renewed channels from the parent: {environment, kind} with the new end.
    private mutating func receiveControl() {
        for _ in 0..<16 {
            let length: Int, fd: Int32
            switch Channel(fd: control).receive(into: message, blocking: false) {
            case .interrupted, .invalid: continue
            case .empty:
                epoll_ctl(epoll, EPOLL_CTL_DEL, control, nil)
                return
            case .nothing, .failed: return
            case .message(let received, let descriptor): (length, fd) = (received, descriptor)
            }
            guard length == 8 else {
                close(fd)
                continue
            }
            let environment = Int(message.load(fromByteOffset: 0, as: UInt32.self))
            let kind = message.load(fromByteOffset: 4, as: UInt32.self)
            if kind == ControlKind.handoff.rawValue, handoffs.indices.contains(environment) {
                close(handoffs[environment])
                handoffs[environment] = fd
                setNonBlocking(fd)
            } else if kind == ControlKind.handback.rawValue,
                      let index = handbacks.firstIndex(where: { $0.generation == generation && $0.environment == environment }) {
                if handbacks[index].watched { epoll_ctl(epoll, EPOLL_CTL_DEL, handbacks[index].fd, nil) }
                close(handbacks[index].fd)
                handbacks[index].fd = fd
                handbacks[index].watched = false
                handbacks[index].closed = false
                handbacksToCheck.append(index)
                setNonBlocking(fd)
            } else {
                close(fd)
                continue
            }
            log(PERUSER_LOG_INFO, "multiplexer: took renewed channels of environment \(environmentLabel(environment))")
        }
        updateWatches(now: monotonicMilliseconds())
    }

    private func handbackLabel(_ channel: HandbackChannel) -> String {
        channel.generation == generation ? environmentLabel(channel.environment)
            : "#\(channel.environment) of generation \(channel.generation)"
    }

    /// Most clients send their request with the connection, so the head is usually there at
    /// once: such a connection is routed and passed on without ever entering epoll. Only one
    /// still waiting for its head is watched (edge-triggered: an ADD reports data already there).
    private mutating func adopt(_ fd: Int32, consumed: [UInt8], hops: UInt16, handback: Int? = nil,
                                cookie: UInt64? = nil, client: ClientAddress? = nil, peer: InternetAddress? = nil,
                                local: InternetAddress? = nil, keepalives: UInt32 = 0) {
        pending[fd] = PendingConnection(consumed: consumed, hops: hops,
                                        deadline: monotonicMilliseconds() + headTimeout, keepalives: keepalives,
                                        consuming: !consumed.isEmpty,
                                        handback: handback, cookie: cookie, carriedClient: client, local: local, peer: peer)
        if let cookie { heldCookies.insert(cookie) }
        if let client { setClient(fd, client) }
        if let handback {
            handbacks[handback].holding += 1
            handbacksToCheck.append(handback)
            adoptedKeptAlive = true
        }
        advance(fd, handedBack: !consumed.isEmpty)
        guard let connection = pending[fd], case .readingHead = connection.stage else { return }
        // Closed through forget() if epoll refuses it: its cookie, hand-back count and footprint go too.
        _ = watchConnection(fd)
    }

    // MARK: Lingering close

    /// Takes over the end of a served connection from its worker (HandoffMessage.closing), as
    /// httpd's lingering close does it: the worker is free for the next connection at once.
    private mutating func linger(_ fd: Int32, handback: Int, cookie: UInt64) {
        pending[fd] = PendingConnection(consumed: [], hops: 0, deadline: 0, handback: handback, cookie: cookie)
        heldCookies.insert(cookie)
        handbacks[handback].holding += 1
        handbacksToCheck.append(handback)
        lingerHeld(fd)
    }

    /// The lingering close of a connection this multiplexer holds (given back to close, or lent
    /// and ended in its worker): what the client still sends is read and dropped.
    private mutating func lingerHeld(_ fd: Int32) {
        let now = monotonicMilliseconds()
        pending[fd]?.deadline = now + LingeringClose.idleMilliseconds
        pending[fd]?.stage = .lingering(until: now + LingeringClose.mostMilliseconds)
        drain(fd)
        if pending[fd] != nil { watchConnection(fd) }
    }

    /// Watches a held connection's socket unless it is already: false if epoll refused it (the
    /// connection is closed then).
    @discardableResult
    private mutating func watchConnection(_ fd: Int32) -> Bool {
        guard let connection = pending[fd] else { return false }
        if connection.watched { return true }
        guard watch(fd, events: Self.connectionEvents, data: UInt64(UInt32(bitPattern: fd))) else {
            closeConnection(fd)
            return false
        }
        pending[fd]?.watched = true
        return true
    }

    /// Reads and drops what a lingering connection's client sent; closes it at its end.
    private mutating func drain(_ fd: Int32) {
        guard let connection = pending[fd], case .lingering(let until) = connection.stage,
              let base = head.baseAddress else { return }
        for _ in 0..<16 {
            let n = recv(fd, base, head.count, Int32(MSG_DONTWAIT))
            if n > 0 {
                pending[fd]?.deadline = min(monotonicMilliseconds() + LingeringClose.idleMilliseconds, until)
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
            break  // the client closed, or the connection failed
        }
        closeConnection(fd)
    }

    // MARK: Reading the head

    /// `handedBack`: the connection just came back with bytes a worker read; when they hold a
    /// whole head (a kept-alive client's next request), it is routed without reading the socket.
    private mutating func advance(_ fd: Int32, handedBack: Bool = false) {
        if case .lingering = pending[fd]?.stage {
            drain(fd)
            return
        }
        if case .lent = pending[fd]?.stage {
            lookAtLent(fd, stirred: true)
            return
        }
        guard var connection = pending[fd], case .readingHead = connection.stage,
              let base = head.baseAddress else { return }
        if handedBack {
            let decision = connection.consumed.withUnsafeBytes { classify(fd, $0, final: false) }
            if case .route = decision {
                decide(fd, decision)
                return
            }
        }
        // A connection back from a worker (lent or handed back: plain HTTP/1.x, hops > 0) is
        // read, not peeked: its head travels with it, and the worker, which parses those very
        // bytes, reads nothing from the socket for a request without a body. One read of the
        // socket per request instead of two (a kept-alive connection whose requests cross
        // environments comes back here after nearly every answer).
        if !connection.consuming && connection.hops == 0 {
            // A new connection, whose head is usually there at once (a TLS ClientHello, an h2c
            // preface, a PROXY header or a request): peek, route, pass the socket untouched.
            let n = recv(fd, base, head.count, Int32(MSG_PEEK | MSG_DONTWAIT))
            if n == 0 {
                closeConnection(fd)  // gone before saying anything
                return
            }
            if n < 0 {
                if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR { closeConnection(fd) }
                return
            }
            let bytes = UnsafeRawBufferPointer(start: base, count: n)
            connection.requestLineDone = bytes.contains(UInt8(ascii: "\n"))
            pending[fd] = connection
            let decision = classify(fd, bytes, final: n >= head.count)
            guard case .wait(let tls, let awaitingRequest) = decision else {
                decide(fd, decision)
                return
            }
            // Not all there: from now on take its bytes as they come.
            connection.consuming = true
            connection.tls = connection.tls || tls
            if awaitingRequest { awaitHTTP2Request(&connection) }
        }
        var clientDone = false
        while connection.consumed.count < Self.largestHead {
            let wanted = min(head.count, Self.largestHead - connection.consumed.count)
            let n = recv(fd, base, wanted, Int32(MSG_DONTWAIT))
            if n > 0 {
                let bytes = UnsafeRawBufferPointer(start: base, count: n)
                if !connection.requestLineDone { connection.requestLineDone = bytes.contains(UInt8(ascii: "\n")) }
                connection.consumed.append(contentsOf: bytes)
                // Less than asked, ending with a blank line: the socket held no more just now,
                // and a head is complete (a request without a body, the usual kept-alive one).
                // No second call only to learn EAGAIN; what comes later wakes this multiplexer
                // again (edge-triggered epoll reports each arrival). Anything else reads on, so
                // that a client's end after part of a head is seen now.
                if n < wanted && RequestHead.endsWithBlankLine(bytes) { break }
                continue
            }
            if n == 0 {
                clientDone = true
                break
            }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { break }
            closeConnection(fd)
            return
        }
        if connection.consumed.isEmpty && clientDone {
            closeConnection(fd)
            return
        }
        let final = clientDone || connection.consumed.count >= Self.largestHead
        let due = connection.consumed.withUnsafeBytes { connection.trickle.worthScanning($0) }
        pending[fd] = connection
        guard final || due else { return }
        decide(fd, connection.consumed.withUnsafeBytes { classify(fd, $0, final: final) })
    }

    enum HeadDecision {
        case route(RouteHint, tls: Bool)
        case close
        /// Not complete yet; `tls`: it opens like a TLS handshake (never answered in plain text);
        /// `awaitingRequest`: an h2c preface and SETTINGS came, no request yet.
        case wait(tls: Bool, awaitingRequest: Bool = false)
    }

    /// What the bytes so far say: where to route, or nil to wait for more. `final`: no more
    /// will come (the client stopped sending, or the buffer is full).
    private func classify(_ fd: Int32, _ whole: UnsafeRawBufferPointer, final: Bool) -> HeadDecision {
        // Behind a front proxy with mod_remoteip's RemoteIPProxyProtocol, a PROXY header comes
        // first: routing reads past it (the worker's mod_remoteip consumes it), and its client is
        // the connection's. Only on a connection no worker has read yet.
        var bytes = whole
        var proxied: ClientAddress?
        if proxyTrust.proxyProtocol && pending[fd]?.hops == 0 {
            switch ProxyHeader.scan(whole) {
            case .notProxy: break
            case .needMore: return final ? .route(RouteHint(), tls: false) : .wait(tls: false)
            case .malformed: return .route(RouteHint(), tls: false)  // the address's first vhost; mod_remoteip refuses it
            case .header(let length, let source):
                proxied = source ?? ClientAddress.none
                bytes = UnsafeRawBufferPointer(rebasing: whole[length...])
            }
        }
        var decision = classifyAfterProxyHeader(fd, bytes, final: final)
        if case .route(var hint, let tls) = decision, proxied != nil {
            hint.proxied = proxied
            decision = .route(hint, tls: tls)
        }
        return decision
    }

    private func classifyAfterProxyHeader(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, final: Bool) -> HeadDecision {
        // A connection that opens with a TLS handshake record: route by SNI. The worker does
        // the whole handshake; nothing here ever speaks TLS.
        // (Only a connection no worker has read yet: a worker hands back plain HTTP only.)
        if bytes.count > 0 && bytes[0] == ClientHello.handshakeRecordByte && pending[fd]?.hops == 0 {
            switch ClientHello.scan(bytes) {
            case .hello(let serverName): return .route(RouteHint(host: serverName), tls: true)
            case .malformed: return .route(RouteHint(), tls: true)  // the address's first vhost; mod_ssl refuses it
            case .needMore: return final ? .route(RouteHint(), tls: true) : .wait(tls: true)
            case .notTLS: break
            }
        }
        // Prior-knowledge h2c: routed by its first request's :authority, as a Host header is.
        // (Only a connection no worker has read yet: a worker hands back HTTP/1.x only.)
        if pending[fd]?.hops == 0 {
            switch H2Preface.scan(bytes) {
            case .notHTTP2: break
            case .request(let hint): return .route(hint, tls: false)
            case .malformed: return .route(RouteHint(), tls: false)  // the address's first vhost; mod_http2 answers
            case .needMore(let awaitingRequest):
                return final ? .route(RouteHint(), tls: false) : .wait(tls: false, awaitingRequest: awaitingRequest)
            }
        }
        switch RequestHead.scan(bytes, forwardedHeader: proxyTrust.header) {
        case .complete(let hint, _):
            return .route(hint, tls: false)
        case .malformed:
            // Apache, in the default vhost of the address, answers it with its own 400.
            return .route(RouteHint(), tls: false)
        case .needMore(let hint):
            if bytes.isEmpty { return final ? .close : .wait(tls: false) }
            // As much as we will ever look at: route on what we found.
            return final ? .route(hint, tls: false) : .wait(tls: false)
        }
    }

    private mutating func decide(_ fd: Int32, _ decision: HeadDecision) {
        switch decision {
        case .route(let hint, let tls):
            if tls { markTLS(fd) }
            route(fd, hint)
        case .close:
            closeConnection(fd)
        case .wait(let tls, let awaitingRequest):
            if tls { markTLS(fd) }
            if awaitingRequest, var connection = pending[fd] {
                awaitHTTP2Request(&connection)
                pending[fd] = connection
            }
        }
    }

    /// A client may wait for the server's SETTINGS before its first request, which this
    /// multiplexer never sends: such a connection goes to the address's first vhost soon, as
    /// every prior-knowledge connection did before it was routed by :authority.
    private func awaitHTTP2Request(_ connection: inout PendingConnection) {
        guard !connection.http2Preface else { return }
        connection.http2Preface = true
        connection.deadline = min(connection.deadline, monotonicMilliseconds() + Self.http2RequestWait)
    }

    static let http2RequestWait: Int64 = 250

    /// A held connection's addresses: from its record once known, else from the kernel (and
    /// kept in the record).
    private mutating func socketAddresses(_ fd: Int32) -> (local: InternetAddress, peer: InternetAddress)? {
        let record = pending[fd]
        if let local = record?.local, let peer = record?.peer { return (local, peer) }
        guard let peer = record?.peer ?? internetAddress(fd, peer: true),
              let local = record?.local ?? internetAddress(fd, peer: false) else { return nil }
        pending[fd]?.local = local
        pending[fd]?.peer = peer
        return (local, peer)
    }

    private mutating func markTLS(_ fd: Int32) {
        guard var connection = pending[fd], !connection.tls else { return }
        connection.tls = true
        pending[fd] = connection
    }

    private mutating func route(_ fd: Int32, _ hint: RouteHint) {
        let env: Int
        let addresses = socketAddresses(fd)
        let peerStorage = addresses?.peer
        switch routeByVirtualHost(local: addresses?.local, peer: peerStorage, host: hint.host, target: hint.target) {
        case .environment(let found): env = found
        case .noEnvironment(let line):
            note(.noEnvironment, PERUSER_LOG_ERR, line)
            respond(fd, .serviceUnavailable)
            return
        case .gone:
            respond(fd, .serviceUnavailable)
            return
        }
        guard handoffs.indices.contains(env), var connection = pending[fd] else {
            note(.unknownEnvironment, PERUSER_LOG_ERR, "multiplexer: route gave unknown environment \(env)")
            respond(fd, .serviceUnavailable)
            return
        }
        let peer = peerStorage.map(ClientAddress.init) ?? .none
        let client: ClientAddress
        if let proxied = hint.proxied {
            client = proxied
        } else if let carried = connection.carriedClient, !(proxyTrust.trusts(peer) && hint.forwarded != nil) {
            // Handed back: the client it came with (a PROXY header's, say), unless a trusted
            // proxy names one in this request (a proxy's pooled connection serves many clients).
            client = carried
        } else {
            client = proxyTrust.client(peer: peer, forwarded: hint.forwarded, readable: !connection.tls)
        }
        setClient(fd, client)
        connection.client = client
        let now = monotonicMilliseconds()
        // A client at its share waits for its own connections to end; and while a lighter
        // client waits for this environment (in any multiplexer), it goes first.
        var overShare = clientHolds(connection.client, environment: env) >= clientLimit(env)
        if overShare && !inFlight.isEmpty {
            // Perhaps only for this multiplexer's hand-offs that workers took meanwhile.
            pruneInFlight(now: now, force: true)
            overShare = clientHolds(connection.client, environment: env) >= clientLimit(env)
        }
        let lighterWaiting = availabilityBoard?.lightest(env, now: now).map {
            $0.goesFirst(before: connection.client.hash32, rank: rank(ofNew: connection.client, environment: env))
        } ?? false
        // One that came back from a worker (its kept-alive turn over, say) queues behind those
        // waiting here; a new one takes a free worker at once, itself or, where its client has
        // older ones waiting here, for the oldest of them (queueing every new connection
        // instead cost a turn of passWaiting each: 13-40% of one busy tenant's throughput on
        // `Connection: close`).
        let waitingHere = waiting.contains(for: env) { _ in true }
        let waitingAhead = connection.handback != nil && waitingHere
        let decision = RouteDecision.decide(hops: connection.hops, mostHops: Self.mostHops, capacity: capacity(of: env),
                                            availability: availability(env), now: now, channelWait: channelWait,
                                            overShare: overShare, lighterWaiting: lighterWaiting,
                                            waitingAhead: waitingAhead, waitingHere: waitingHere && !client.isNone)
        if decision.asksForWorker { askForWorker(env) }
        switch decision {
        case .loop:
            note(.routingLoop, PERUSER_LOG_ERR, "multiplexer: connection handed back \(connection.hops) times "
                 + "without a request served (routing loop); answering 503")
            respond(fd, .serviceUnavailable)
        case .send(let deadline, _):
            sendDown(fd, environment: env, until: deadline)
        case .sendEarlier(let deadline, let waitDeadline, _):
            // The client's own oldest, if one of those waiting is the client's.
            guard let earlier = waiting.takeFirst(for: env, where: { pending[$0]?.client == client }) else {
                sendDown(fd, environment: env, until: deadline)
                return
            }
            // The client still waits here, as many times: its mark on the board and the
            // waiting count shown stay as they are.
            sendDown(earlier, environment: env, until: deadline)
            connection.stage = .waitingForWorker(environment: env)
            connection.deadline = waitDeadline
            pending[fd] = connection
            waiting.add(fd, environment: env, deadline: waitDeadline, since: now)
        case .wait(let deadline, _):
            // Saturated: wait at most (availability / 100) * ProcessorWaitTimeout.
            connection.stage = .waitingForWorker(environment: env)
            connection.deadline = deadline
            pending[fd] = connection
            waiting.add(fd, environment: env, deadline: deadline, since: now)
            publish(env)
        case .drop:
            drop(fd, environment: env)
        }
    }

    // MARK: Waiting and hand-off

    /// Sends a routed connection down its environment's channel, retrying while the channel
    /// is full until `deadline`.
    private mutating func sendDown(_ fd: Int32, environment: Int, until deadline: Int64) {
        guard var connection = pending[fd] else { return }
        connection.stage = .waitingForChannel(environment: environment)
        connection.deadline = deadline
        pending[fd] = connection
        trySend(fd)
    }

    /// Passes waiting connections to environments that have a free worker again, lightest
    /// client first; drops those whose wait ran out.
    private mutating func passWaiting(now: Int64) {
        guard !waiting.isEmpty else { return }
        for env in waiting.environments {
            if let field = sharedTable?.environmentPageField(env, ChildTableLayout.shedOffset),
               shedSeen.indices.contains(env) {
                let count = peruser_atomic_load_u64(field)
                if count != shedSeen[env].count { shedSeen[env] = (count, now) }
            }
            let room = capacity(of: env).roomForWaiting
            var load = clientLoad(env)
            let limit = clientLimit(env)
            var clientOf: [Int32: ClientAddress] = [:]
            for entry in waiting.entries where entry.environment == env {
                clientOf[entry.item] = pending[entry.item]?.client ?? ClientAddress.none
            }
            // Lightest client first: the fewest connections in this environment (held by its
            // workers or waiting). A client with many cannot crowd out one with a single
            // request; a client at its share (MaxClientShare) waits for its own to end.
            func rank(_ fd: Int32) -> Int? {
                guard let client = clientOf[fd], !client.isNone, let l = load[client] else { return 0 }
                return l.held < limit ? l.held + l.waiting : nil
            }
            // The lightest here is offered to the other multiplexers; none passes another
            // client's heavier connection while a lighter one waits anywhere.
            var lightestHere: (rank: Int, fd: Int32)?
            for entry in waiting.entries where entry.environment == env {
                if let r = rank(entry.item), r < lightestHere?.rank ?? Int.max { lightestHere = (r, entry.item) }
            }
            if let lightestHere {
                availabilityBoard?.offerLightest(env, LightestWaiting(rank: lightestHere.rank,
                                                                      client: (clientOf[lightestHere.fd] ?? .none).hash32,
                                                                      at: now), now: now)
            }
            let mark = availabilityBoard?.lightest(env, now: now)
            var ready: [Int32] = []
            for _ in 0..<room {
                // (The ranking reads only this pass's locals: taken from the queue in place.)
                let picked = waiting.take(1, for: env) { fd in
                    guard let r = rank(fd) else { return nil }
                    if let mark, mark.goesFirst(before: (clientOf[fd] ?? .none).hash32, rank: r) { return nil }
                    return r
                }
                guard let fd = picked.first else { break }
                ready.append(fd)
                if let client = clientOf[fd], !client.isNone, let l = load[client] {
                    load[client] = (l.held + 1, l.waiting - 1)
                }
            }
            for fd in ready {
                guard let client = pending[fd]?.client else { continue }
                availabilityBoard?.withdrawLightest(env, client: client.hash32)
                sendDown(fd, environment: env, until: now.saturatingAdding(channelWait))
            }
            if !ready.isEmpty { publish(env) }
            // Connections that could take a worker have waited for one a while, and none can be
            // added: the environment is pressed, and its workers give up clients they have
            // waited on too long (ReaderShedding).
            let full = capacity(of: env)
            if ReaderShedding.presses(canTake: full.canTake, oldestWaitingSince: waiting.oldestSince(for: env, where: { rank($0) != nil }), now: now),
               let field = sharedTable?.environmentField(env, ChildTableLayout.pressedAtOffset) {
                // Said when the pressure starts (the last mark, this multiplexer's or another's,
                // has lapsed): why the environment's slow clients are about to be given up.
                let last = Int64(bitPattern: peruser_atomic_load_u64(field))
                if !ReaderShedding.pressed(pressedAt: last, now: now) {
                    note(.pressed, PERUSER_LOG_INFO, "multiplexer: environment \(environmentLabel(env)) is full "
                         + "(\(full.workers) of \(full.maxProcessors) workers alive, \(full.idle) idle, "
                         + "\(full.queued) connections in its channel\(full.serverFull ? ", MaxClients reached" : "")) "
                         + "and \(waiting.count(for: env)) wait here: its workers give up clients they have "
                         + "waited on past ReaderShedTimeout")
                }
                peruser_atomic_store_u64(field, UInt64(bitPattern: now))
            }
        }
        for entry in waiting.expired(at: now) {
            guard let connection = pending[entry.item] else { continue }
            let env = entry.environment
            let saturated = !capacity(of: env).canTake
            let shedding = shedSeen.indices.contains(env) && now - shedSeen[env].changedAt <= Int64(waitSeconds) * 1000
            if saturated && !shedding {
                note(.saturated, PERUSER_LOG_INFO, "multiplexer: no worker of environment "
                     + "\(environmentLabel(env)) came free in time; answering 503")
                drop(entry.item, environment: env)
                continue
            }
            // 503, but the environment's availability stays: it had room for others and this
            // client waited on its own share (MaxClientShare), or its workers are giving slow
            // clients up (they are not slow to serve, and lighter clients go first).
            note(.clientShare, PERUSER_LOG_INFO, "multiplexer: a connection of client \(connection.client) to "
                 + "environment \(environmentLabel(env)) waited all of ProcessorWaitTimeout "
                 + (saturated ? "while its workers give slow clients up" : "for its client's share (MaxClientShare)")
                 + "; answering 503")
            if let field = sharedTable?.environmentField(env, ChildTableLayout.droppedOffset) {
                peruser_atomic_add_u64(field, 1)
            }
            respond(entry.item, .serviceUnavailable)
        }
    }

    /// Sets whom a connection counts against, keeping the multiplexers' footprint of each client.
    private mutating func setClient(_ fd: Int32, _ client: ClientAddress) {
        guard let old = pending[fd]?.client, old != client else { return }
        availabilityBoard?.addFootprint(old, -1)
        availabilityBoard?.addFootprint(client, 1)
        pending[fd]?.client = client
    }

    /// The rank of a connection of `client` being routed (see passWaiting; it is one of the
    /// client's connections in the multiplexers already).
    private mutating func rank(ofNew client: ClientAddress, environment: Int) -> Int {
        guard !client.isNone else { return 0 }
        return clientHolds(client, environment: environment, always: true) + (availabilityBoard?.footprint(client) ?? 1)
    }

    /// For each client with a connection waiting for `environment`: the workers of it the
    /// client holds (MaxClientShare's count), and its connections in every multiplexer, in any
    /// stage (a client trickling a hundred heads is heavy before any of them is routed).
    private mutating func clientLoad(_ environment: Int) -> [ClientAddress: (held: Int, waiting: Int)] {
        var load: [ClientAddress: (held: Int, waiting: Int)] = [:]
        for entry in waiting.entries where entry.environment == environment {
            guard let client = pending[entry.item]?.client, !client.isNone, load[client] == nil else { continue }
            load[client] = (clientHolds(client, environment: environment, always: true),
                            availabilityBoard?.footprint(client) ?? 1)
        }
        return load
    }

    // MARK: Per-client share (MaxClientShare)

    private func clientLimit(_ environment: Int) -> Int {
        (clientShare.indices.contains(environment) ? clientShare[environment] : nil) ?? Int.max
    }

    /// How many of `environment`'s workers `client` holds: those whose pages name it, and its
    /// hand-offs from every multiplexer still in the channel (ClientShare.holds).
    /// `always`: counted even when MaxClientShare sets no limit (for the order of the wait).
    private mutating func clientHolds(_ client: ClientAddress, environment: Int, always: Bool = false) -> Int {
        guard !client.isNone, always || clientLimit(environment) < Int.max, let table = sharedTable else { return 0 }
        let counts = shareCounts(client, environment: environment, table: table)
        return ClientShare.holds(serving: counts.serving,
                                 reserved: availabilityBoard?.reserved(client, environment) ?? 0, queued: counts.queued)
    }

    /// `client`'s workers in `environment` and the connections in its channel, the channel read
    /// first: a connection a worker takes meanwhile is then in one count or the other
    /// (ClientShare.holds).
    private mutating func shareCounts(_ client: ClientAddress, environment: Int,
                                      table: ChildTable) -> (serving: Int, queued: Int) {
        let queued = table.queued(environment)
        return (table.workersServing(client, environment: environment, roster: currentRoster(table)), queued)
    }

    /// No longer in flight: a worker of its environment shows its ticket (among the last
    /// connections it took); or that many connections and a few more (hand-offs of several
    /// multiplexers may reach the channel out of their count's order) were taken since; or it
    /// is lost.
    ///
    /// Each entry costs a look at its environment's pages, which workers on the other CPU keep
    /// writing; with a random tenant per request the entries name as many environments as they
    /// are. So it runs once a millisecond (a release only lowers a count that is too high:
    /// never too few), or `force`d where a client's share is in question: a reservation or a
    /// route refused for it, and every turn while connections wait. Looked at before each
    /// hand-off and with sets built each time, it was half of a multiplexer's time at 300
    /// tenants with the default MaxClientShare.
    private mutating func pruneInFlight(now: Int64, force: Bool = false) {
        guard let table = sharedTable, !inFlight.isEmpty, force || now != inFlightPrunedAt else { return }
        inFlightPrunedAt = now
        let roster = currentRoster(table)
        let slack = UInt64(max(1, configuration.limits.maxMultiplexers))
        var released: [(ClientAddress, Int)] = []
        inFlight.removeAll { entry in
            // Sent this very millisecond: most likely still in the channel (unless forced).
            guard force || entry.at != now else { return false }
            let gone = now - entry.at > 2000
                || table.showsTaken(entry.ticket, environment: entry.environment, roster: roster)
                || (table.environmentPageField(entry.environment, ChildTableLayout.receivedOffset)
                    .map { peruser_atomic_load_u64($0) } ?? 0)
                    >= entry.handedOff.addingReportingOverflow(slack).partialValue
            if gone { released.append((entry.client, entry.environment)) }
            return gone
        }
        for (client, environment) in released { availabilityBoard?.release(client, environment) }
    }

    private mutating func trySend(_ fd: Int32) {
        guard var connection = pending[fd], case .waitingForChannel(let environment) = connection.stage else {
            return
        }
        // Counted before its share is reserved and before it is sent: no worker can take it, nor
        // another multiplexer look at this environment's queue or reserve for the same client,
        // before the count shows it (MaxClientShare bounds reservations by the queue).
        let handedOffCount = sharedTable?.environmentField(environment, ChildTableLayout.handedOffOffset)
        let handedOffSoFar = handedOffCount.map { peruser_atomic_add_fetch_u64($0, 1) } ?? 0
        if !connection.reserved && !connection.client.isNone && clientLimit(environment) < Int.max,
           let board = availabilityBoard, let table = sharedTable {
            let counts = shareCounts(connection.client, environment: environment, table: table)
            let queued = max(0, counts.queued - 1)  // others' connections: this one is counted already
            let limit = clientLimit(environment)
            // Refused: perhaps only for this multiplexer's hand-offs that were taken meanwhile.
            var reserved = board.reserve(connection.client, environment, serving: counts.serving, queued: queued,
                                         limit: limit)
            if !reserved {
                pruneInFlight(now: monotonicMilliseconds(), force: true)
                reserved = board.reserve(connection.client, environment, serving: counts.serving, queued: queued,
                                         limit: limit)
            }
            guard reserved else {
                // Another multiplexer gave this client the last of its share meanwhile: wait.
                if let handedOffCount { _ = peruser_atomic_add_fetch_u64(handedOffCount, UInt64.max) }
                connection.stage = .waitingForWorker(environment: environment)
                let now = monotonicMilliseconds()
                connection.deadline = now.saturatingAdding(Int64(waitSeconds) * 1000)
                pending[fd] = connection
                waiting.add(fd, environment: environment, deadline: connection.deadline, since: now)
                publish(environment)
                return
            }
            connection.reserved = true
            pending[fd] = connection
        }
        let length: Int
        // Handed back by another environment's worker: the connection crosses environments
        // (a front proxy's pool), so its next worker gives it back right after the response.
        let crossing = connection.handback.map {
            handbacks.indices.contains($0)
                && (handbacks[$0].environment != environment || handbacks[$0].generation != generation)
        } ?? false
        let cookie = connection.cookie ?? socketCookie(fd)
        // The ticket the worker must show to give this connection back (HandbackTicket).
        let ticket = cookie.map {
            key.ticket(cookie: $0, generation: generation, environment: environment, client: connection.client)
        } ?? 0
        // Crossing: most likely it comes back after one answer, so it is lent (kept and watched
        // here) rather than given, within the environment's share of this multiplexer. Not by a
        // multiplexer that is stopping (a graceful restart): given, the connection comes back
        // by message to the new generation's multiplexers.
        // It needs a lend cell for its worker's answer: with none free, it is given.
        var lendTo = !stopping && crossing && cookie != nil && sharedTable != nil
            ? currentHandback[environment].flatMap { handbacks[$0].holding < handbacks[$0].most ? $0 : nil } : nil
        var lendNumber: UInt64 = 0
        if lendTo != nil, let cell = availabilityBoard?.takeLendCell(environment, slot: slot, from: lendCellHint) {
            lendCellHint = cell + 1
            if let number = ChildTable.lendNumber(count: handedOffSoFar, cell: cell) {
                lendNumber = number
            } else {
                availabilityBoard?.releaseLendCell(environment, cell, slot: slot)
            }
        }
        if lendNumber == 0 { lendTo = nil }
        /// A lend cell taken for a connection that did not go.
        func releaseCell() {
            if lendNumber != 0 {
                availabilityBoard?.releaseLendCell(environment, ChildTable.lendCell(of: lendNumber), slot: slot)
            }
        }
        do {
            length = try connection.consumed.withUnsafeBytes { consumed in
                try HandoffMessage.encode(hops: connection.hops, ticket: ticket, client: connection.client,
                                          crossing: crossing, lend: lendNumber,
                                          keepalives: connection.keepalives, consumed: consumed, into: message)
            }
        } catch {
            releaseCell()
            if let handedOffCount { _ = peruser_atomic_add_fetch_u64(handedOffCount, UInt64.max) }
            log(PERUSER_LOG_ERR, "multiplexer: cannot encode hand-off (\(error))")
            respond(fd, .serviceUnavailable)
            return
        }
        let sent = Channel(fd: handoffs[environment]).send(fd: fd, payload: UnsafeRawBufferPointer(rebasing: message[0..<length]))
        if case .sent = sent {} else {
            releaseCell()
            if let handedOffCount { _ = peruser_atomic_add_fetch_u64(handedOffCount, UInt64.max) }
        }
        switch sent {
        case .sent:
            pending[fd]?.reserved = false  // the reservation moves to the in-flight entry
            if let lendTo, let cookie {
                lend(fd, to: environment, number: lendNumber, handback: lendTo, cookie: cookie)
            } else {
                forget(fd)
                close(fd)
            }
            handedOff(to: environment)
            if connection.reserved {
                if inFlight.count >= 64 { pruneInFlight(now: monotonicMilliseconds(), force: true) }
                inFlight.append((environment, connection.client, ticket, handedOffSoFar, monotonicMilliseconds()))
            }
        case .full:
            return  // A full channel counts as no free worker: retry on the tick.
        case .failed(let failure):
            note(.handoffFailed, PERUSER_LOG_ERR, "multiplexer: hand-off to environment "
                 + "\(environmentLabel(environment)) failed: \(failure)"
                 + (failure == .brokenPipe ? " (one of its workers shut its channel down; the parent renews it)" : ""))
            if failure == .brokenPipe { reportBroken(environment) }
            respond(fd, .serviceUnavailable)
        }
    }

    private mutating func expireAndRetry(now: Int64) {
        for fd in pending.descriptors {
            guard let connection = pending[fd] else { continue }
            switch connection.stage {
            case .readingHead where now >= connection.deadline:
                // A head that never completed: as httpd does at its own timeout, 408 after a
                // whole request line, a silent close before one. A ClientHello that never
                // completed goes to the address's first vhost.
                switch HeadTimeoutAnswer.decide(tls: connection.tls, http2Preface: connection.http2Preface,
                                                requestLineDone: connection.requestLineDone,
                                                consumed: connection.consumed) {
                case .routeToDefault: route(fd, RouteHint())
                case .requestTimeout: respond(fd, .requestTimeout)
                case .closeSilently: closeConnection(fd)
                }
            case .lingering where now >= connection.deadline:
                closeConnection(fd)
            case .readingHead, .waitingForWorker, .lingering, .lent:
                break
            case .waitingForChannel(let environment):
                trySend(fd)
                if pending[fd] != nil && now >= connection.deadline {
                    note(.channelFull, PERUSER_LOG_WARNING, "multiplexer: environment "
                         + "\(environmentLabel(environment))'s channel stayed full for \(channelWait) ms; answering 503")
                    drop(fd, environment: environment)
                }
            }
        }
    }

    // MARK: Lent connections
    //
    // A connection that crosses environments (a front proxy's pooled connection) comes back
    // after nearly every answer. Instead of giving it away and taking it back by message (two
    // descriptor passings and a wake-up of this multiplexer for each request), this multiplexer
    // lends it: it keeps its own descriptor, watched, and the worker, once it has answered and
    // read nothing more, writes the lend number into the lend cell it names, on its
    // environment's page (ChildTable.giveBackLent), and closes its copy. The cell is this
    // multiplexer's until it has read it (AvailabilityBoard.takeLendCell). When the client sends
    // its next request, the socket stirs here, the cell says it is back, and it is routed as a
    // handed-back connection. What a worker writes there misplaces only connections lent to its
    // own environment.

    /// Keeps a connection just handed to `environment` as lent.
    private mutating func lend(_ fd: Int32, to environment: Int, number: UInt64, handback: Int, cookie: UInt64) {
        guard var connection = pending[fd] else { return }
        if let old = connection.handback {
            handbacks[old].holding -= 1
            handbacksToCheck.append(old)
        }
        connection.handback = handback
        handbacks[handback].holding += 1
        handbacksToCheck.append(handback)
        if connection.cookie == nil {
            connection.cookie = cookie
            heldCookies.insert(cookie)
        }
        lentByCookie[cookie] = fd
        connection.stage = .lent(environment: environment, number: number, since: monotonicMilliseconds())
        connection.consumed = []
        connection.consuming = false
        connection.trickle = TrickleScan()
        connection.requestLineDone = false
        connection.http2Preface = false
        pending[fd] = connection
        // Watched from now on (edge-triggered: an ADD reports the request still unread, which
        // its worker reads; the look finds it not back yet).
        watchConnection(fd)
    }

    /// Forgets that `fd` (`connection`) is lent: its look-again time, its cookie's entry and
    /// its lend cell, read for the last time.
    private mutating func unlend(_ fd: Int32, _ connection: PendingConnection) {
        lentChecks[fd] = nil
        if let cookie = connection.cookie { lentByCookie[cookie] = nil }
        if case .lent(let environment, let number, _) = connection.stage {
            availabilityBoard?.releaseLendCell(environment, ChildTable.lendCell(of: number), slot: slot)
        }
    }

    /// Lent connections that stirred before they were back, soon; every lent one now and then
    /// (one whose worker is gone, or ended it without the client stirring since).
    private mutating func lookAtLent(now: Int64) {
        if !lentChecks.isEmpty {
            for (fd, since) in lentChecks {
                if now - since > 200 { lentChecks[fd] = nil }  // then only the sweep
                lookAtLent(fd, stirred: false)
            }
        }
        guard now >= lentSweepAt else { return }
        lentSweepAt = now + ChildTableLayout.lentSweepMilliseconds
        for fd in pending.descriptors {
            if case .lent? = pending[fd]?.stage { lookAtLent(fd, stirred: false) }
        }
    }

    /// Where a lent connection is, and what to do about it.
    private mutating func lookAtLent(_ fd: Int32, stirred: Bool) {
        guard let connection = pending[fd], case .lent(let environment, let number, let since) = connection.stage,
              let table = sharedTable else { return }
        let now = monotonicMilliseconds()
        switch table.lendState(number, environment: environment, roster: currentRoster(table)) {
        case .returned(.answered, let keepalives):
            unlend(fd, connection)
            var back = connection
            back.stage = .readingHead
            back.hops = 1
            // Its worker answered at least once more and kept it alive: a lower count is a lie.
            back.keepalives = max(keepalives, connection.keepalives.saturatingAdding(1))
            back.deadline = now + headTimeout
            back.carriedClient = connection.client
            pending[fd] = back
            advance(fd)
            // Unwatched while it was served (below): watched again for its next head.
            if case .readingHead? = pending[fd]?.stage { watchConnection(fd) }
        case .returned(.ended, _):
            unlend(fd, connection)
            // Its worker shut the write side (or could not); the rest of httpd's lingering close.
            shutdown(fd, Int32(SHUT_WR))
            lingerHeld(fd)
        case .returned(.sentBack, _):
            // Its worker sent it back with what it read: the message carries its own reference,
            // to whichever multiplexer reads it first. This copy has done its part.
            closeConnection(fd)
        case .serving where stirred && now - since > 200:
            // A long exchange (a slow answer, an upgraded HTTP/2 session): its client's every
            // packet would wake this multiplexer. Unwatched; the sweep finds it back.
            lentChecks[fd] = nil
            if connection.watched {
                epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
                pending[fd]?.watched = false
            }
        case .serving:
            if stirred { lentChecks[fd] = lentChecks[fd] ?? now }
        case .unknown:
            // In the channel still, or its worker is gone. Gone once a worker surely took it
            // (the channel was empty since, or that many connections and a few more were taken)
            // and, a moment later, nobody shows it.
            let flow = table.flow(environment)
            let slack = UInt64(max(1, configuration.limits.maxMultiplexers))
            let count = ChildTable.lendCount(of: number)
            let taken = flow.received >= flow.handedOff || flow.received >= count.addingReportingOverflow(slack).partialValue
            if taken && now - since > 1000 {
                note(.lentLost, PERUSER_LOG_INFO, "multiplexer: a connection lent to environment "
                     + "\(environmentLabel(environment)) was never given back (its worker is gone); closed")
                closeConnection(fd)
            } else if stirred {
                lentChecks[fd] = lentChecks[fd] ?? now
            }
        }
    }

    // MARK: Answers and closing

    /// Reads what the client sent (so that closing does not reset the connection), writes the
    /// answer without blocking, and closes.
    private mutating func respond(_ fd: Int32, _ response: CannedResponse) {
        if pending[fd]?.tls == true {
            // Plain text would be garbage inside a TLS handshake: the client sees a closed connection.
            closeConnection(fd)
            return
        }
        for _ in 0..<4 {
            if recv(fd, head.baseAddress, head.count, Int32(MSG_DONTWAIT)) <= 0 { break }
        }
        let bytes = response.bytes
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
        shutdown(fd, Int32(SHUT_WR))
        closeConnection(fd)
    }

    private mutating func closeConnection(_ fd: Int32) {
        forget(fd)
        close(fd)
    }

    private mutating func forget(_ fd: Int32) {
        guard let connection = pending.remove(fd) else { return }
        if connection.reserved, case .waitingForChannel(let environment) = connection.stage {
            availabilityBoard?.release(connection.client, environment)  // reserved, never sent
        }
        availabilityBoard?.addFootprint(connection.client, -1)
        if let cookie = connection.cookie { heldCookies.remove(cookie) }
        if let handback = connection.handback {
            handbacks[handback].holding -= 1
            handbacksToCheck.append(handback)
        }
        if case .waitingForWorker(let env) = connection.stage {
            waiting.remove(fd)
            publish(env)
        }
        if case .lent = connection.stage { unlend(fd, connection) }
        if connection.watched { epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil) }
    }
}
