// A worker's life: give up everything that is not its environment's, drop privileges, then take
// connections from its environment's channel and serve each with Apache (CShim/connection.c),
// handing a kept-alive connection back when its next request belongs elsewhere.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// The connection being served: what a hand-back needs.
struct ServedConnection {
    let fd: Int32
    let hops: UInt16
    let ticket: UInt64
    /// The client it was handed off with: a hand-back returns it (the ticket covers it).
    let client: ClientAddress
    /// Its last request was another environment's: after the response it goes straight back.
    let crossing: Bool
    /// Not 0: lent (Multiplexer.swift, "Lent connections"): the multiplexer kept its descriptor,
    /// and this worker gives it back by writing this number on its page.
    let lend: UInt64
    /// When this worker took it (ms): its kept-alive turn counts from here (KeptAliveTurn).
    let takenAt: Int64
    /// Responses that kept it alive in the workers before this one (MaxKeepAliveRequests).
    let keepalives: UInt32

    var lent: Bool { lend != 0 }
}

/// The lend number of the connection being served until it is given back (0: none or done).
nonisolated(unsafe) var lendOutstanding: UInt64 = 0

/// Gives the lent connection being served back: a write in the cell its lend number names on
/// the environment's page, no message, no wake-up (the multiplexer looks when its copy of the
/// socket stirs). `keepalives`: the responses that kept it alive so far, which its next worker
/// counts on from.
func giveBackLent(_ how: ChildTable.Returned, keepalives: UInt32 = 0) {
    guard lendOutstanding != 0 else { return }
    sharedTable?.giveBackLent(environment: workerEnvironment, lend: lendOutstanding, how: how, keepalives: keepalives)
    lendOutstanding = 0
}

/// Ready (started, or done with a connection): while connections wait in a multiplexer for
/// this environment, one multiplexer is woken to pass one (FreeSignal). Never blocks; a full
/// channel means the multiplexers have messages to read anyway.
func tellMultiplexersFree() {
    guard let table = sharedTable, let channel = handbackChannel,
          FreeSignal.worthSending(waitingInMultiplexers: table.waitingInMultiplexers(workerEnvironment)) else { return }
    withUnsafeBytes(of: FreeSignal.value.littleEndian) { _ = channel.send(payload: $0) }
}

/// Exits on standby, so that no multiplexer counts it as a worker that could take a
/// connection. What it gave back stays in its environment's cells after it is gone.
func leave(_ code: Int32) -> Never {
    if let page = ownPage { sharedTable?.setStatus(page: page, .standby, now: monotonicMilliseconds()) }
    exitChild(code)
}

nonisolated(unsafe) var servedConnection: ServedConnection?
/// This worker's slot and environment, and its hand-back channel's sending end.
nonisolated(unsafe) var workerSlot = -1
/// The thread that serves this worker's connections (its first): the only one told that an
/// HTTP/2 session should end (http2SessionEnds).
nonisolated(unsafe) var connectionThread: pthread_t?
nonisolated(unsafe) var workerEnvironment = -1
nonisolated(unsafe) var handbackChannel: Channel?
/// The receiving end of the environment's channel: a lingering close watches it.
nonisolated(unsafe) var handoffReceiveFD: Int32 = -1
/// Where a hand-back message is encoded: allocated once, as kept-alive connections now come
/// back after every response whose next head is late.
nonisolated(unsafe) let handbackMessage = UnsafeMutableRawBufferPointer.allocate(byteCount: HandoffMessage.largestMessage,
                                                                                 alignment: 8)

func workerMain(slot: Int, environment: Int, parentPid: pid_t) -> Never {
    workerSlot = slot
    workerEnvironment = environment
    // A worker holds no listener, no other environment's channel, no demand pipe, no control
    // channel, and no view of the multiplexers' state or secret.
    if let lasting {
        unmap(lasting.pointee.multiplexerState, lasting.pointee.multiplexerStateSize)
        lasting.pointee.multiplexerState = nil
        unmap(lasting.pointee.multiplexerSecret, Int(getpagesize()))
        lasting.pointee.multiplexerSecret = nil
        for fd in [lasting.pointee.multiplexerSecretFD, lasting.pointee.multiplexerStateFD] where fd >= 0 { close(fd) }
        lasting.pointee.multiplexerSecretFD = -1
        lasting.pointee.multiplexerStateFD = -1
        lasting.closePreviousHandbacks()
        lasting.closeEveryControl()
        for end in [lasting.pointee.demand.0, lasting.pointee.demand.1] where end >= 0 { close(end) }
        lasting.pointee.demand = (-1, -1)
    }
    // Forked from the root (ProcessorImage shared), it inherited the root's ends of the images'
    // control channels: whoever holds one can ask an image for a child, or give the
    // multiplexers' image channels of its own for another environment. The root's epoll goes
    // first: through a copy of it, a worker could take the root's watches away.
    dropInheritedWakeups()
    closeImages()
    availabilityBoard = nil
    ap_close_listeners()
    for index in channels.indices {
        channels[index].handoffSend.close()
        channels[index].handbackReceive.close()
        if index != environment { channels[index].closeAll() }
    }
    guard channels.indices.contains(environment) else { exitChild(exitChildSick) }
    let handoff = Channel(fd: channels[environment].handoffReceive.raw)
    handoffReceiveFD = handoff.fd
    handbackChannel = Channel(fd: channels[environment].handbackSend.raw)
    do throws(Errno) {
        try confineTableView(slot: slot, environment: environment)
    } catch {
        log(PERUSER_LOG_EMERG, "peruser: worker could not map its read-only view of the child table: \(error)")
        exitChild(exitChildSick)
    }
    ap_reopen_scoreboard(childPool, nil, 0)
    do throws(ConfinementError) {
        try dropToEnvironment(environment)
    } catch {
        log(PERUSER_LOG_EMERG, "peruser: \(error)")
        exitChild(exitChildSick)
    }
    dieWithParent(parentPid)
    // A worker runs as a normal process: the multiplexers turn SCHED_BATCH while they only
    // take new connections (MultiplexerPacing), which spreads a burst over the workers.
    peruser_shim_worker_serves(Int32(environment))
    connectionThread = pthread_self()
    prepareRequestTurns()
    ap_run_child_init(childPool, ap_server_conf)
    var scoreboardHandle: OpaquePointer?
    ap_create_sb_handle(&scoreboardHandle, childPool, Int32(slot), 0)
    let bucketAllocator = apr_bucket_alloc_create(childPool)
    guard let transactionPool = makePool(below: childPool, tag: "transaction") else { exitChild(exitChildSick) }
    setMPMState(AP_MPMQ_RUNNING)
    // Not the same count for every worker: those started together would all exit together.
    let mostConnections = Recycling.connectionLimit(configured: Int(ap_max_requests_per_child),
                                                    seed: UInt32(bitPattern: getpid()))
    let message = UnsafeMutableRawBufferPointer.allocate(byteCount: HandoffMessage.largestMessage, alignment: 8)
    var served = 0
    // Toward MaxConnectionsPerChild: a connection lent back again counts once (ServedConnections).
    var counted = 0
    var servedConnections = ServedConnections()
    var statusShown = false
    let pools = workerPagePools()
    let ownPool = ChildTableLayout.workerPool(poolStarts: pools.starts, workerPages: pools.total, environment: environment)
    watchChannel(handoff.fd)
    while true {
        // Retired, recycled (MaxConnectionsPerChild), or told to drain: never in the middle
        // of a connection.
        let draining = peruser_shim_drain_requested() != 0
        if (peruser_shim_stop_requested() != 0 && !draining) || (mostConnections > 0 && counted >= mostConnections) {
            finishHeldClosings()
            leave(0)
        }
        if !statusShown {
            // Once per connection: a wake-up to look at kept closings does not restart the idle
            // time the parent retires spares by.
            ap_update_child_status(scoreboardHandle, SERVER_READY, nil)
            setOwnStatus(.ready)
            statusShown = true
            tellMultiplexersFree()
        }
        lookAtHeldClosings()
        var blocking = !draining
        // Through the channel's epoll (channelWatch: the kernel wakes the environment's oldest
        // idle worker), and with kept closings to look at again, only that long. With none, and
        // no other worker of the environment ready, in recvmsg itself: one call per connection
        // instead of two. The kernel still serves the epolls first (their entries are older on
        // the channel), so a worker that becomes ready meanwhile takes the next connection.
        if blocking {
            let sleep = heldClosings.sleep(now: monotonicMilliseconds())
            if sleep != nil || (channelWatch != nil && !waitsAlone(pool: ownPool)) {
                guard channelReadable(handoff.fd, within: sleep ?? -1) else { continue }
                blocking = false
            }
        }
        switch handoff.receive(into: message, blocking: blocking) {
        case .nothing where !draining, .interrupted:
            continue  // another worker took it, or a signal: look at the flags again
        case .empty, .nothing:
            finishHeldClosings()
            leave(0)  // drained, or every writer of this generation's channel is gone
        case .invalid:
            log(PERUSER_LOG_WARNING, "peruser: worker dropped an invalid message on its channel")
        case .failed(let failure):
            log(PERUSER_LOG_ERR, "peruser: worker lost its channel (\(failure)); exiting")
            leave(exitChildSick)
        case .message(let length, let fd):
            guard let decoded = try? HandoffMessage.decodeHeader(UnsafeRawBufferPointer(rebasing: message[0..<length]))
            else {
                log(PERUSER_LOG_WARNING, "peruser: worker dropped an invalid hand-off message (\(length) bytes)")
                close(fd)
                continue
            }
            // Only the multiplexers write this channel, and only TCP streams they accepted or
            // checked (a hand-back's: SO_TYPE and a peer): the local address is all that is
            // asked here (one call per connection fewer; an IPv4 or IPv6 socket, or dropped).
            guard let local = socketAddress(fd, peer: false), local.isInternet else {
                log(PERUSER_LOG_WARNING, "peruser: received an fd that is not an IPv4 or IPv6 socket; dropped")
                close(fd)
                continue
            }
            tookConnection(client: decoded.client, ticket: decoded.ticket, lend: decoded.lend)
            statusShown = false
            servedConnection = ServedConnection(fd: fd, hops: decoded.hops, ticket: decoded.ticket, client: decoded.client,
                                                crossing: decoded.crossing, lend: decoded.lend,
                                                takenAt: monotonicMilliseconds(), keepalives: decoded.keepalives)
            lendOutstanding = decoded.lend
            let consumed = UnsafeRawBufferPointer(rebasing: message[HandoffMessage.headerSize..<(HandoffMessage.headerSize
                                                                                               + decoded.consumedCount)])
            apr_pool_clear(transactionPool)
            serve(fd, local: local, consumed: consumed, id: served, pool: transactionPool,
                  scoreboard: scoreboardHandle, buckets: bucketAllocator)
            // A lent connection not given back ended here (or never became one for Apache).
            giveBackLent(.ended)
            servedConnection = nil
            served += 1
            if servedConnections.counts(ticket: decoded.ticket) { counted += 1 }
        }
    }
}

/// Serves one connection with Apache. Its addresses come from the kernel, never from a message,
/// so a tenant cannot forge the client address another tenant's vhost sees: the local one from
/// the worker's own look, the peer from apr's when core makes the connection (a socket with no
/// peer, its client gone, is then closed with an info line from core).
func serve(_ fd: Int32, local: sockaddr_storage, consumed: UnsafeRawBufferPointer,
           id: Int, pool: OpaquePointer, scoreboard: OpaquePointer?, buckets: OpaquePointer?) {
    var local = local
    var socket: OpaquePointer?
    var descriptor = fd
    let made = withUnsafeMutablePointer(to: &local) { localPointer in
        withUnsafeMutablePointer(to: &descriptor) { descriptorPointer -> Bool in
            var info = apr_os_sock_info_t(os_sock: descriptorPointer,
                                          local: UnsafeMutableRawPointer(localPointer).assumingMemoryBound(to: sockaddr.self),
                                          remote: nil, family: Int32(localPointer.pointee.ss_family),
                                          type: Int32(SOCK_STREAM.rawValue), protocol: Int32(IPPROTO_TCP))
            return apr_os_sock_make(&socket, &info, pool) == APR_SUCCESS
        }
    }
    guard made, let socket else {
        close(fd)
        return
    }
    // Whatever happens below, this copy goes when the connection is done here (close only: no
    // shutdown, so that where the multiplexer holds the connection too, a client's close still
    // ends it). apr makes a second close a no-op (core closes a connection it refuses itself).
    defer { apr_socket_close(socket) }
    // A new connection comes blocking, a lent one non-blocking (one open file for every copy,
    // and apr in the worker before set the flag); apr takes a socket it makes for a blocking
    // one until a timeout is set. Set one now, as core's pre_connection would later: apr marks
    // the socket non-blocking (its own F_GETFL and F_SETFL), the hooks before core's see what
    // they see after it, and core's call changes nothing. Clearing the flag of a lent one here
    // first, as before, was two more calls per lend.
    guard apr_socket_timeout_set(socket, ap_server_conf?.pointee.timeout ?? 0) == APR_SUCCESS else { return }
    peruser_shim_connection_begins(UnsafeMutableRawPointer(socket), consumed.baseAddress?.assumingMemoryBound(to: UInt8.self),
                                   consumed.count, servedConnection?.lent == true ? 1 : 0,
                                   servedConnection?.keepalives ?? 0)
    // Refused (core's, when the socket has no peer any more): closed now, not at the next
    // connection's pool clear.
    guard let connection = ap_run_create_connection(pool, ap_server_conf, socket, id,
                                                    UnsafeMutableRawPointer(scoreboard), buckets) else { return }
    IdleSessionWatch.serving(fd)
    ap_process_connection(connection, UnsafeMutableRawPointer(socket))
    IdleSessionWatch.served()
    peruserWorkerSpeaksHTTP2(0)
    // Handed back, or lent and given back: the multiplexer holds it now.
    guard peruser_shim_connection_handed_back() == 0 else { return }
    if servedConnection?.lent == true {
        // Lent: the multiplexer holds the connection too, and does the lingering close once
        // this worker's write side is shut and the end is on its page (workerMain).
        _ = ap_start_lingering_close(connection)
        return
    }
    // httpd's lingering close: kept beside the next connections (HeldClosings); with too
    // many kept, waited for here while the environment needs no more workers, by the
    // multiplexers as soon as it does (LingeringClose).
    if ap_start_lingering_close(connection) == 0 && !keepClosing(fd) {
        ap_update_child_status(scoreboard, SERVER_CLOSING, nil)
        linger(fd)
    }
}

/// Replaces the worker's writable mapping of this generation's table by a read-only one with
/// only its own page, its own detail page and its environment's page writable, and, unless its
/// environment has the full view, every other environment's detail pages by zeros (a private
/// anonymous read-only mapping: readers read zeros instead of faulting, and with the table's
/// descriptor closed nothing maps them back); drops the previous generation's.
func confineTableView(slot: Int, environment: Int) throws(Errno) {
    guard let lasting, let base = lasting.pointee.table, let table = sharedTable, let own = ownPage,
          (0..<table.environmentCount).contains(environment), lasting.pointee.tableFD >= 0,
          own >= ChildTableLayout.workerPageOffset(slots: table.slotCount, environments: table.environmentCount, index: 0),
          let ownDetail = table.detailPage(ofPage: own)
    else { throw Errno(EINVAL) }
    unmap(lasting.pointee.previousTable, lasting.pointee.previousTableSize)
    lasting.pointee.previousTable = nil
    let environmentPage = ChildTableLayout.environmentPageOffset(slots: table.slotCount,
                                                                 environments: table.environmentCount,
                                                                 environment: environment)
    try confineMapping(base: base, size: lasting.pointee.tableSize, fd: lasting.pointee.tableFD,
                       writablePages: [own, ownDetail, environmentPage], pageSize: ChildTableLayout.pageSize)
    let hidden = ChildTableLayout.hiddenDetailRanges(slots: table.slotCount, environments: table.environmentCount,
                                                     workerPages: table.workerPageCount,
                                                     poolStarts: workerPagePools().starts, environment: environment,
                                                     fullView: hasFullView(environment))
    try hideRanges(base: base, size: lasting.pointee.tableSize, hidden)
    close(lasting.pointee.tableFD)
    lasting.pointee.tableFD = -1
}

// MARK: - The worker's writes to the shared table

func setOwnStatus(_ status: ChildStatus) {
    guard let page = ownPage else { return }
    sharedTable?.setStatus(page: page, status, now: monotonicMilliseconds())
}

/// A worker took a connection from its channel.
func tookConnection(client: ClientAddress, ticket: UInt64, lend: UInt64) {
    guard let table = sharedTable, let page = ownPage else { return }
    table.setLend(page: page, lend)
    // Its client and ticket first, then busy: a multiplexer counts the connection in flight
    // until a busy worker shows its ticket, and then as that worker's.
    // (For a moment it is both busy and queued: readers count one worker too few, never one too many.)
    table.setClient(page: page, client, ticket: ticket)
    table.setStatus(page: page, .active, now: monotonicMilliseconds())
    if let field = table.environmentPageField(workerEnvironment, ChildTableLayout.receivedOffset) {
        peruser_atomic_add_u64(field, 1)
    }
    peruser_atomic_add_u64(table.field(page: page, ChildTableLayout.connectionsOffset), 1)
}

/// The connection being served speaks HTTP/2 (its first stream began), or it ended (0).
@_cdecl("peruser_worker_speaks_http2")
public func peruserWorkerSpeaksHTTP2(_ yes: Int32) {
    if yes != 0 { IdleSessionWatch.start() }
    guard let table = sharedTable, let page = ownPage else { return }
    table.field(page: page, ChildTableLayout.http2Offset).storeBytes(of: UInt8(yes != 0 ? 1 : 0), as: UInt8.self)
}

@_cdecl("peruser_worker_started_request")
public func peruserWorkerStartedRequest(_ request: UnsafePointer<CChar>?, _ vhost: UnsafePointer<CChar>?) {
    guard let table = sharedTable, let page = ownPage else { return }
    table.setRequest(page: page, request: request, vhost: vhost)
    // ExpireTimeout counts from the start of each request.
    table.setStatus(page: page, .active, now: monotonicMilliseconds())
    peruser_atomic_add_u64(table.field(page: page, ChildTableLayout.requestsOffset), 1)
    if let field = table.environmentPageField(workerEnvironment, ChildTableLayout.servedOffset) {
        peruser_atomic_add_u64(field, 1)
    }
}

/// No other worker of this environment is ready: this one waits on the channel alone.
func waitsAlone(pool: Range<Int>) -> Bool {
    guard let table = sharedTable, let page = ownPage else { return false }
    return !table.anotherWorkerReady(among: pool, except: page)
}

/// Gives a served connection (response sent, write side shut) to the multiplexers to close;
/// false if the hand-back channel cannot take it now.
func passLingeringClose() -> Bool {
    guard let connection = servedConnection else { return false }
    return giveBack(fd: connection.fd, ticket: connection.ticket, client: connection.client, hops: 0,
                    consumed: UnsafeRawBufferPointer(start: nil, count: 0), closing: true, keepalives: 0,
                    attempts: 1) == 0
}

/// Sends a connection back to the multiplexers on the environment's hand-back channel with its
/// ticket and client: 0, or -errno. `attempts`: sends tried while the channel is full, 10 ms apart.
private func giveBack(fd: Int32, ticket: UInt64, client: ClientAddress, hops: UInt16,
                      consumed: UnsafeRawBufferPointer, closing: Bool, keepalives: UInt32, attempts: Int) -> Int32 {
    guard let channel = handbackChannel else { return -EINVAL }
    let encoded: Int
    do {
        encoded = try HandoffMessage.encode(hops: hops, ticket: ticket, client: client, closing: closing,
                                            keepalives: keepalives, consumed: consumed, into: handbackMessage)
    } catch {
        return -EMSGSIZE
    }
    for attempt in 0..<attempts {
        switch channel.send(fd: fd, payload: UnsafeRawBufferPointer(rebasing: handbackMessage[0..<encoded])) {
        case .sent: return 0
        case .failed(let failure): return -failure.code
        case .full: if attempt + 1 < attempts { poll(nil, 0, 10) }
        }
    }
    return -EAGAIN
}

// MARK: Kept closings

/// The lingering closes this worker keeps while it takes its next connections (HeldClosings).
nonisolated(unsafe) var heldClosings = HeldClosings()
/// lookAtHeldClosings' poll set, one entry per connection a worker may keep.
nonisolated(unsafe) let heldPollSet = UnsafeMutableBufferPointer<pollfd>.allocate(capacity: HeldClosings.capacity)
/// An epoll with the environment's channel alone (EPOLLEXCLUSIVE), made as the worker starts
/// serving; every sleep on the channel goes through it. Of the epolls registered on one file
/// the kernel wakes the first registered that has a sleeper, one per message: the environment's
/// oldest idle worker takes the next connection, and spares the load does not need stay asleep
/// (IdleTimeout retires them). A blocking recvmsg would queue its sleepers first-in first-out,
/// handing each connection to the worker that slept longest, whose memory is the coldest
/// (BENCHMARKS.md: a few per cent of CPU per request at 300 tenants).
nonisolated(unsafe) var channelWatch: Epoll?
/// The channel's epoll failed once: the worker sleeps on the channel itself from then on.
nonisolated(unsafe) var channelWatchFailed = false
/// Where what a closing client still sends is read and dropped.
nonisolated(unsafe) let droppedBytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8)

/// Keeps the connection being served (response sent, write side shut) until its client closes;
/// false when this worker keeps as many as it may, or cannot copy the descriptor (the caller
/// waits the old way). A copy, close-on-exec: Apache closes its own with the connection's pool,
/// and no CGI started later inherits it.
func keepClosing(_ fd: Int32) -> Bool {
    guard !heldClosings.isFull, let connection = servedConnection else { return false }
    let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
    guard copy >= 0 else { return false }
    guard heldClosings.keep(HeldClosings.Closing(fd: copy, ticket: connection.ticket, client: connection.client,
                                                 now: monotonicMilliseconds())) else {
        close(copy)
        return false
    }
    return true
}

/// Reads and drops what kept clients sent, waiting at most `milliseconds` for any; closes those
/// that closed, failed, or passed httpd's bounds. False if poll failed (not interrupted).
@discardableResult
func lookAtHeldClosings(waiting milliseconds: Int32 = 0) -> Bool {
    guard !heldClosings.isEmpty else { return true }
    // Once per connection on `Connection: close`: the poll set is filled in place, not allocated.
    var count = 0
    for closing in heldClosings.closings where count < heldPollSet.count {
        heldPollSet[count] = pollfd(fd: closing.fd, events: Int16(POLLIN), revents: 0)
        count += 1
    }
    let ready = poll(heldPollSet.baseAddress, nfds_t(count), milliseconds)
    let failed = ready < 0 && errno != EINTR
    if ready > 0 {
        for entry in heldPollSet[0..<count] where entry.revents != 0 { drainHeldClosing(entry.fd) }
    }
    for expired in heldClosings.releaseExpired(now: monotonicMilliseconds()) { close(expired.fd) }
    return !failed
}

/// At most 64 KiB at a time: a client that keeps sending is read again at the next look.
private func drainHeldClosing(_ fd: Int32) {
    for _ in 0..<16 {
        let n = recv(fd, droppedBytes.baseAddress, droppedBytes.count, Int32(MSG_DONTWAIT))
        if n > 0 {
            heldClosings.read(fd, now: monotonicMilliseconds())
            continue
        }
        if n < 0 && errno == EINTR { continue }
        if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
        // The client closed, or the connection failed.
        heldClosings.release(fd)
        close(fd)
        return
    }
}

/// Before the worker exits: the multiplexers take what is still open; what they cannot take
/// the worker waits for itself, within httpd's bounds.
func finishHeldClosings() {
    lookAtHeldClosings()
    for closing in heldClosings.closings {
        if giveBack(fd: closing.fd, ticket: closing.ticket, client: closing.client, hops: 0,
                    consumed: UnsafeRawBufferPointer(start: nil, count: 0), closing: true, keepalives: 0,
                    attempts: 1) == 0 {
            heldClosings.release(closing.fd)
            close(closing.fd)
        }
    }
    while let sleep = heldClosings.sleep(now: monotonicMilliseconds()), lookAtHeldClosings(waiting: sleep) {}
    for closing in heldClosings.closings {
        heldClosings.release(closing.fd)
        close(closing.fd)
    }
}

/// Makes channelWatch, once; if it cannot, the worker sleeps on the channel itself.
func watchChannel(_ channel: Int32) {
    guard channelWatch == nil && !channelWatchFailed else { return }
    do {
        var watch = try Epoll()
        do { try watch.watch(channel, tag: 0, exclusive: true) } catch {
            watch.close()
            throw error
        }
        channelWatch = watch
    } catch {
        channelWatchFailed = true
        log(PERUSER_LOG_ERR, "peruser: worker cannot watch its channel with an epoll (\(error)); it sleeps on "
            + "the channel itself (connections go to the worker that slept longest)")
    }
}

/// Sleeps until the channel has a message or `milliseconds` pass (-1: no limit): true if it has
/// one (which another worker may take first).
func channelReadable(_ channel: Int32, within milliseconds: Int32) -> Bool {
    watchChannel(channel)
    guard var watch = channelWatch else {
        // Every sleeping worker with kept closings wakes for each connection: slower, not wrong.
        var entry = pollfd(fd: channel, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, milliseconds) > 0
    }
    do {
        return try watch.waitForAny(milliseconds: milliseconds)
    } catch {
        watch.close()
        channelWatch = nil
        channelWatchFailed = true
        log(PERUSER_LOG_ERR, "peruser: worker's epoll on its channel failed (\(error)); it sleeps on the "
            + "channel itself from now on")
        return false
    }
}

/// The rest of httpd's ap_lingering_close for a worker that keeps all the closings it may: read
/// and drop until the client closes, nothing comes for 2 s, or 30 s have passed; handed to the
/// multiplexers once a connection waits for this environment (in its channel, or held by them).
func linger(_ fd: Int32) {
    var state = LingeringClose(now: monotonicMilliseconds())
    var buffer = [UInt8](repeating: 0, count: 512)
    var channelReadable = false
    while true {
        let now = monotonicMilliseconds()
        let table = sharedTable
        switch state.next(now: now, queued: table?.queued(workerEnvironment) ?? 0,
                          waitingInMultiplexers: table?.waitingInMultiplexers(workerEnvironment) ?? 0,
                          channelReadable: channelReadable) {
        case .finish:
            return
        case .pass:
            if passLingeringClose() { return }
            state.passFailed()
        case .wait(let milliseconds):
            var entries = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: state.passRefused ? -1 : handoffReceiveFD, events: Int16(POLLIN), revents: 0)]
            guard poll(&entries, 2, milliseconds) >= 0 || errno == EINTR else { return }
            channelReadable = entries[1].revents & Int16(POLLIN) != 0
            guard entries[0].revents != 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN) { return }
            state.read(now: monotonicMilliseconds())
        }
    }
}

@_cdecl("peruser_worker_hand_back")
public func peruserWorkerHandBack(_ consumed: UnsafePointer<UInt8>?, _ length: Int, _ requestsServed: Int32,
                                  _ keptAlive: Int32) -> Int32 {
    guard let connection = servedConnection else { return -EINVAL }
    let keepalives = UInt32(clamping: keptAlive)
    if connection.lend != 0 && (consumed == nil || length == 0) {
        // Lent and nothing read past the response: the multiplexer still watches it.
        giveBackLent(.answered, keepalives: keepalives)
        return 0
    }
    let hops = requestsServed > 0 ? 1 : (connection.hops == .max ? .max : connection.hops + 1)
    // Lent: its cell says first that it comes back by message (with what was read of it), so
    // the multiplexer that lent it drops its copy instead of reading the socket. Written once,
    // before the message: the cell may be another connection's as soon as that multiplexer
    // read it or took the message. If the message cannot go, the connection ends here (421)
    // on this worker's copy alone.
    giveBackLent(.sentBack)
    // The multiplexers drain this channel in their event loops; a full one is brief.
    return giveBack(fd: connection.fd, ticket: connection.ticket, client: connection.client, hops: hops,
                    consumed: UnsafeRawBufferPointer(start: length > 0 ? consumed : nil,
                                                     count: consumed == nil ? 0 : length),
                    closing: false, keepalives: keepalives, attempts: 100)
}
