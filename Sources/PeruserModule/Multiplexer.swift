// The multiplexer: accept on every listener, peek at each request head, find its environment,
// and pass the socket to that environment's workers. Single-threaded, non-blocking, epoll:
// a slow client, a saturated environment or a full channel never holds up anything else.
//
// Heads are read with MSG_PEEK (edge-triggered, so new bytes wake us although old ones stay
// unread): the worker then reads the client's original bytes from the socket itself. Only
// connections handed back by a worker arrive with bytes already consumed; those travel on.
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
    }

    var stage: Stage = .readingHead
    /// Bytes of this connection already read from the socket (by a worker that handed it back).
    var consumed: [UInt8]
    var hops: UInt16
    var deadline: Int64
    /// Whether the client sent anything yet (a silent one is closed without a 408).
    var sawBytes = false
    /// Registered with epoll (only connections whose head did not come at once).
    var watched = false
    /// The client opened with a TLS handshake record: routed by the ClientHello's server name,
    /// and never answered in plain text (a failure closes it).
    var tls = false
}

struct Multiplexer {
    let slot: Int
    let listeners: [Int32]
    let handback: Int32
    let channels: [Int32]
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

    private let epoll: Int32
    private var pending: [Int32: PendingConnection] = [:]
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
    private var acceptPaused = false
    private var lastHolding = -1
    /// Each environment's capacity, read from the child table at most once per turn of the
    /// event loop (a scan of every slot) and kept current with this turn's own hand-offs.
    private var capacityCache: [EnvironmentCapacity?]

    private static let listenerTag: UInt64 = 1 << 32
    private static let handbackTag: UInt64 = 2 << 32

    init?(slot: Int, listeners: [Int32], handback: Int32, channels: [Int32], demand: Int32) {
        self.slot = slot
        self.listeners = listeners
        self.handback = handback
        self.channels = channels
        self.demand = demand
        // This process inherited the parent's configuration of this generation.
        let limits = serverLimits
        self.headTimeout = Int64(max(limits.headTimeout, 1)) * 1000
        maxConnections = max(limits.multiplexerMaxConnections, 1)
        maxClients = limits.maxClients
        workerLimits = effectiveWorkerLimits()
        waitSeconds = limits.processorWaitSeconds
        waitLevels = limits.processorWaitLevels
        lastDemand = Array(repeating: Int64.min / 2, count: channels.count)
        capacityCache = Array(repeating: nil, count: channels.count)
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
            guard watch(fd, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue, tag: Self.listenerTag) else {
                return nil
            }
        }
        setNonBlocking(handback)
        guard watch(handback, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue, tag: Self.handbackTag) else {
            return nil
        }
        for env in channels.indices { publish(env) }
    }

    private func watch(_ fd: Int32, events: UInt32, tag: UInt64) -> Bool {
        var event = epoll_event()
        event.events = events
        event.data.u64 = tag | UInt64(UInt32(bitPattern: fd))
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
            limitConnections()
            reportHolding()
            // Wake periodically while connections wait: free workers, full channels, deadlines.
            let timeout: Int32 = pending.isEmpty ? -1 : (waiting.isEmpty ? 100 : 20)
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
                case Self.handbackTag: receiveHandbacks()
                default: advance(fd)
                }
            }
            let now = monotonicMilliseconds()
            passWaiting(now: now)
            expireAndRetry(now: now)
        }
    }

    // MARK: Status

    /// Asked to stop (graceful restart, or retired): new connections and hand-backs are left
    /// to the other multiplexers; what this one holds is finished first.
    private mutating func stopAccepting() {
        stopping = true
        for fd in listeners {
            if !acceptPaused { epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil) }
            close(fd)
        }
        epoll_ctl(epoll, EPOLL_CTL_DEL, handback, nil)
        sharedTable?.setStatus(slot, .standby, now: monotonicMilliseconds())
    }

    /// At MultiplexerMaxConnections this multiplexer stops accepting; other multiplexers
    /// accept, or the kernel queues the connections, until it holds fewer.
    private mutating func limitConnections() {
        guard !stopping else { return }
        let full = pending.count >= maxConnections
        guard full != acceptPaused else { return }
        acceptPaused = full
        for fd in listeners {
            if full {
                epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
            } else {
                _ = watch(fd, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue, tag: Self.listenerTag)
            }
        }
    }

    private mutating func reportHolding() {
        guard pending.count != lastHolding, let table = sharedTable else { return }
        if let field = table.slotField(slot, ChildTableLayout.holdingOffset) {
            peruser_atomic_store_u32(field, UInt32(clamping: pending.count))
        }
        if !stopping {
            let busy = pending.count >= Self.busyHolding
            if busy != (lastHolding >= Self.busyHolding) || lastHolding < 0 {
                table.setStatus(slot, busy ? .active : .ready, now: monotonicMilliseconds())
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
        guard let table = sharedTable, channels.indices.contains(environment) else { return }
        if let field = table.environmentField(environment, ChildTableLayout.availabilityOffset) {
            peruser_atomic_store_u32(field, UInt32(availability(environment).percent))
        }
        if let field = table.environmentField(environment, ChildTableLayout.waitingOffset) {
            peruser_atomic_store_u32(field, UInt32(clamping: waiting.count(for: environment)))
        }
    }

    /// Counts a hand-off.
    private mutating func handedOff(to environment: Int) {
        guard let table = sharedTable else { return }
        capacityCache[environment]?.queued += 1
        if let field = table.environmentField(environment, ChildTableLayout.handedOffOffset) {
            peruser_atomic_add_u64(field, 1)
        }
        if !stopping && pending.count < Self.busyHolding {
            table.setStatus(slot, .ready, now: monotonicMilliseconds())  // MultiplexerIdleTimeout counts from here
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

    private mutating func capacity(of environment: Int) -> EnvironmentCapacity {
        guard let table = sharedTable, workerLimits.indices.contains(environment) else {
            return EnvironmentCapacity(workers: 0, idle: 0, queued: 0, maxProcessors: 1, serverFull: false)
        }
        if let cached = capacityCache[environment] { return cached }
        var fresh = table.capacity(of: environment, limits: workerLimits[environment], maxClients: maxClients)
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
        for _ in 0..<64 where pending.count < maxConnections {
            // Left blocking: the multiplexer only uses MSG_DONTWAIT on it, and the worker gets
            // the fd as apr expects it.
            let fd = accept4(listener, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
            if fd < 0 {
                switch errno {
                case EAGAIN, EWOULDBLOCK: return
                case EINTR, ECONNABORTED, EPROTO: continue
                default:
                    log(PERUSER_LOG_ERR, "multiplexer: accept on fd \(listener) failed: \(errnoText())")
                    return
                }
            }
            adopt(fd, consumed: [], hops: 0)
        }
    }

    /// Connections a worker gave back because the next request is for another environment.
    /// The message is untrusted: it is validated, and the fd must be a TCP stream socket.
    private mutating func receiveHandbacks() {
        for _ in 0..<64 {
            var fd: Int32 = -1
            let length = peruser_shim_recv_fd(handback, message.baseAddress, message.count, 1, &fd)
            if length == -Int(EAGAIN) || length == -Int(EWOULDBLOCK) { return }
            if length == 0 || length == -Int(EBADMSG) || length == -Int(EINTR) { continue }
            if length < 0 {
                log(PERUSER_LOG_ERR, "multiplexer: hand-back receive failed: \(errnoText(Int32(-length)))")
                return
            }
            let received = UnsafeRawBufferPointer(rebasing: message[0..<length])
            let decoded: HandoffMessage
            do {
                decoded = try HandoffMessage.decode(received)
            } catch {
                log(PERUSER_LOG_WARNING, "multiplexer: dropped an invalid hand-back message (\(error))")
                close(fd)
                continue
            }
            guard isTCPStream(fd) else {
                log(PERUSER_LOG_WARNING, "multiplexer: dropped a hand-back whose fd is not a TCP socket")
                close(fd)
                continue
            }
            adopt(fd, consumed: decoded.consumed, hops: decoded.hops)
        }
    }

    /// Most clients send their request with the connection, so the head is usually there at
    /// once: such a connection is routed and passed on without ever entering epoll. Only one
    /// still waiting for its head is watched (edge-triggered: an ADD reports data already there).
    private mutating func adopt(_ fd: Int32, consumed: [UInt8], hops: UInt16) {
        pending[fd] = PendingConnection(consumed: consumed, hops: hops,
                                        deadline: monotonicMilliseconds() + headTimeout,
                                        sawBytes: !consumed.isEmpty)
        advance(fd)
        guard var connection = pending[fd], case .readingHead = connection.stage else { return }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
        event.data.u64 = UInt64(UInt32(bitPattern: fd))
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0 else {
            log(PERUSER_LOG_ERR, "multiplexer: epoll_ctl(\(fd)) failed: \(errnoText())")
            pending[fd] = nil
            close(fd)
            return
        }
        connection.watched = true
        pending[fd] = connection
    }

    // MARK: Reading the head

    private mutating func advance(_ fd: Int32) {
        guard var connection = pending[fd], case .readingHead = connection.stage,
              let base = head.baseAddress else { return }
        let carried = min(connection.consumed.count, head.count)
        connection.consumed.withUnsafeBytes { consumed in
            if let source = consumed.baseAddress { base.copyMemory(from: source, byteCount: carried) }
        }
        let room = head.count - carried
        var peeked = 0
        var clientDone = false
        if room > 0 {
            let n = recv(fd, base + carried, room, Int32(MSG_PEEK | MSG_DONTWAIT))
            if n > 0 {
                peeked = n
            } else if n == 0 {
                clientDone = true
            } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                closeConnection(fd)
                return
            }
        }
        let total = carried + peeked
        if total > 0 && !connection.sawBytes {
            connection.sawBytes = true
            pending[fd] = connection
        }
        // A fresh connection that opens with a TLS handshake record: route by SNI. The worker
        // does the whole handshake; nothing here ever speaks TLS.
        if carried == 0 && total > 0 && head[0] == ClientHello.handshakeRecordByte {
            switch ClientHello.scan(UnsafeRawBufferPointer(rebasing: head[0..<total])) {
            case .hello(let serverName):
                markTLS(fd)
                route(fd, RouteHint(host: serverName))
                return
            case .malformed:
                markTLS(fd)
                route(fd, RouteHint())  // the address's first vhost; mod_ssl refuses the handshake
                return
            case .needMore:
                markTLS(fd)
                if total >= head.count || clientDone { route(fd, RouteHint()) }
                return
            case .notTLS:
                break
            }
        }
        switch RequestHead.scan(UnsafeRawBufferPointer(rebasing: head[0..<total])) {
        case .complete(let hint, _):
            route(fd, hint)
        case .malformed:
            // Apache, in the default vhost of the address, answers it with its own 400.
            route(fd, RouteHint())
        case .needMore(let hint):
            if total == 0 && clientDone {
                closeConnection(fd)
            } else if total >= head.count || clientDone {
                // As much as we will ever look at: route on what we found.
                route(fd, hint)
            }
        }
    }

    private mutating func markTLS(_ fd: Int32) {
        guard var connection = pending[fd], !connection.tls else { return }
        connection.tls = true
        pending[fd] = connection
    }

    private mutating func route(_ fd: Int32, _ hint: RouteHint) {
        let environment = withOptionalCString(hint.host) { host in
            withOptionalCString(hint.target) { target in peruser_shim_route(fd, host, target) }
        }
        guard environment != PERUSER_ROUTE_NO_ENVIRONMENT else {
            respond(fd, .serviceUnavailable)
            return
        }
        let env = Int(environment)
        guard channels.indices.contains(env), var connection = pending[fd] else {
            log(PERUSER_LOG_ERR, "multiplexer: route gave unknown environment \(environment)")
            respond(fd, .serviceUnavailable)
            return
        }
        if connection.hops >= Self.mostHops {
            log(PERUSER_LOG_ERR, "multiplexer: connection handed back \(connection.hops) times without "
                + "a request served (routing loop); answering 503")
            respond(fd, .serviceUnavailable)
            return
        }
        let now = monotonicMilliseconds()
        let capacity = self.capacity(of: env)
        if capacity.freeWorkers == 0 { askForWorker(env) }
        if capacity.canTake {
            connection.stage = .waitingForChannel(environment: env)
            connection.deadline = now + channelWait
            pending[fd] = connection
            trySend(fd)
            return
        }
        // Saturated: wait at most (availability / 100) * ProcessorWaitTimeout.
        let budget = availability(env).waitBudgetMilliseconds
        guard budget > 0 else {
            drop(fd, environment: env)
            return
        }
        connection.stage = .waitingForWorker(environment: env)
        connection.deadline = now + budget
        pending[fd] = connection
        waiting.add(fd, environment: env, deadline: connection.deadline)
        publish(env)
    }

    // MARK: Waiting and hand-off

    /// Passes waiting connections to environments that have a free worker again; drops
    /// those whose wait ran out.
    private mutating func passWaiting(now: Int64) {
        guard !waiting.isEmpty else { return }
        for env in waiting.environments {
            let capacity = self.capacity(of: env)
            let room = capacity.freeWorkers > 0 ? capacity.freeWorkers : (capacity.canTake ? 1 : 0)
            let ready = waiting.take(room, for: env)
            for fd in ready {
                guard var connection = pending[fd] else { continue }
                connection.stage = .waitingForChannel(environment: env)
                connection.deadline = now + channelWait
                pending[fd] = connection
                trySend(fd)
            }
            if !ready.isEmpty { publish(env) }
        }
        for entry in waiting.expired(at: now) where pending[entry.item] != nil {
            log(PERUSER_LOG_INFO, "multiplexer: no worker of environment \(environmentLabel(entry.environment)) came free in "
                + "time; answering 503")
            drop(entry.item, environment: entry.environment)
        }
    }

    private mutating func trySend(_ fd: Int32) {
        guard let connection = pending[fd], case .waitingForChannel(let environment) = connection.stage else {
            return
        }
        let length: Int
        do {
            length = try connection.consumed.withUnsafeBytes { consumed in
                try HandoffMessage.encode(hops: connection.hops, consumed: consumed, into: message)
            }
        } catch {
            log(PERUSER_LOG_ERR, "multiplexer: cannot encode hand-off (\(error))")
            respond(fd, .serviceUnavailable)
            return
        }
        let result = peruser_shim_send_fd(channels[environment], fd, message.baseAddress, length)
        if result == 0 {
            forget(fd)
            close(fd)
            handedOff(to: environment)
        } else if result == -EAGAIN || result == -EWOULDBLOCK {
            return  // A full channel counts as no free worker: retry on the tick.
        } else {
            log(PERUSER_LOG_ERR, "multiplexer: hand-off to environment \(environmentLabel(environment)) failed: "
                + errnoText(-result))
            respond(fd, .serviceUnavailable)
        }
    }

    private mutating func expireAndRetry(now: Int64) {
        for (fd, connection) in pending {
            switch connection.stage {
            case .readingHead where now >= connection.deadline:
                // A head that never completed: 408 if the client said anything, else just close.
                // A ClientHello that never completed goes to the address's first vhost.
                if connection.tls {
                    route(fd, RouteHint())
                } else if connection.sawBytes {
                    respond(fd, .requestTimeout)
                } else {
                    closeConnection(fd)
                }
            case .readingHead, .waitingForWorker:
                break
            case .waitingForChannel(let environment):
                trySend(fd)
                if pending[fd] != nil && now >= connection.deadline {
                    log(PERUSER_LOG_WARNING, "multiplexer: environment \(environmentLabel(environment))'s channel stayed full "
                        + "for \(channelWait) ms; answering 503")
                    drop(fd, environment: environment)
                }
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
        guard let connection = pending.removeValue(forKey: fd) else { return }
        if case .waitingForWorker(let env) = connection.stage {
            waiting.remove(fd)
            publish(env)
        }
        if connection.watched { epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil) }
    }
}

// MARK: - Small syscall helpers

func log(_ level: Int, _ text: String) {
    peruser_shim_log(Int32(level), text)
}

func errnoText(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}

func setNonBlocking(_ fd: Int32) {
    let flags = fcntl(fd, F_GETFL)
    if flags >= 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
}

func monotonicMilliseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
}

/// Whether `fd` is a connected TCP stream socket (IPv4 or IPv6).
func isTCPStream(_ fd: Int32) -> Bool {
    var type: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0, type == Int32(SOCK_STREAM.rawValue) else {
        return false
    }
    var address = sockaddr_storage()
    var addressLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let family = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
            guard getpeername(fd, pointer, &addressLength) == 0 else { return -1 }
            return Int32(pointer.pointee.sa_family)
        }
    }
    return family == AF_INET || family == AF_INET6
}

func withOptionalCString<R>(_ text: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let text else { return body(nil) }
    return text.withCString { body($0) }
}

/// An environment's name for the log (the multiplexer inherited the parent's table of this
/// generation when it was forked).
func environmentLabel(_ index: Int) -> String {
    environments[index]?.name ?? "#\(index)"
}
