// The shared child table of a generation: a shared mapping that every child inherits.
//
// Three regions, by who may write them:
// - the header, one identity record per slot (pid, type, environment, generation) and one
//   record per environment (multiplexers' counters, carried totals, name): the parent and the
//   multiplexers write these;
// - one page per slot for the multiplexers (status, counters), written by that multiplexer;
// - one page per environment (connections received, requests served): its workers write it;
// - a pool of MaxProcessors pages per environment, one per live worker of it (status,
//   counters): a page never changes environment, so a process a tenant left behind with a
//   writable mapping (a forked PHP child, say) can never write the status of another tenant's
//   worker. A worker's page is named in its identity record;
// - a second pool parallel to the first, one detail page per worker page (the current request
//   line, vhost, client address and hand-off ticket: what tells about a client or a request).
//   An environment's detail pages are consecutive, so they are one page-aligned range.
// A worker's view of the table is read-only except for its own page, its own detail page and
// its environment's page (the module maps those three over a read-only mapping), so a
// compromised worker can lie about itself and its own environment, and about nothing else.
// Unless its environment has the full view (the main server's, StatusEnvironment), every other
// environment's detail pages are replaced in its view by zeros (`hiddenDetailRanges`): it reads
// other tenants' status and counters, never their requests, vhosts, clients or tickets.
// Everything read back is still treated as untrusted: readers bound-check, sanitize and never trap.

public enum ChildTableLayout {
    public static let magic: UInt32 = 0x3143_5550  // "PUC1"
    public static let version: UInt32 = 5
    public static let headerSize = 64
    public static let identitySize = 32
    public static let environmentSize = 128
    /// The granularity of write access: a worker's pages are this long and aligned to it.
    public static let pageSize = 4096
    public static let nameCapacity = 64

    // Header fields.
    public static let magicOffset = 0
    public static let versionOffset = 4
    public static let slotCountOffset = 8
    public static let environmentCountOffset = 12
    public static let generationOffset = 16
    /// UInt64, parent: bumped whenever an identity record changes (see ChildTable.Roster).
    public static let rosterVersionOffset = 24
    /// UInt32, parent: 1 once the parent ended this generation (its channels close next).
    public static let generationEndedOffset = 32

    // Identity fields of a slot (parent).
    public static let pidOffset = 0          // Int32
    public static let typeOffset = 4         // UInt8 ChildType
    public static let environmentOffset = 8  // Int32 (-1: multiplexer)
    public static let slotGenerationOffset = 12  // UInt32
    public static let workerPageOffset = 16  // UInt32: index in the worker pages (workers only)

    // Fields of a slot's page (its child).
    public static let statusOffset = 0       // UInt8 ChildStatus
    public static let statusSinceOffset = 8  // Int64 ms
    public static let connectionsOffset = 16 // UInt64
    public static let requestsOffset = 24    // UInt64
    public static let holdingOffset = 32     // UInt32: connections a multiplexer holds
    public static let awaitingOffset = 40    // Int64 ms: since when a worker waits on its client (0: not)
    public static let http2Offset = 48       // UInt8: 1 while the worker's connection speaks HTTP/2

    // Fields of a worker's detail page (its worker). They keep the offsets they had in the
    // worker page before version 4 (the first 64 bytes of a detail page are unused).
    public static let requestOffset = 64     // request line, NUL-terminated
    public static let requestCapacity = 128
    public static let vhostOffset = 192      // vhost name, NUL-terminated
    public static let vhostCapacity = 64
    public static let clientOffset = 256     // 2 × UInt64: the client of the current connection (workers)
    public static let ticketOffset = 272     // UInt64: the hand-off ticket of the current connection (workers)
    public static let lendOffset = 280       // UInt64: the lend number of the current connection (0: not lent)
    /// 8 × UInt64, one cache line: the tickets of the last connections the worker took, at its
    /// count of connections modulo 8 (workers). A hand-off stays in flight until its ticket
    /// shows here. With only the current ticket, a worker that took another connection before
    /// the multiplexer looked (about one hand-off in nine at 300 tenants) hid it until ten more
    /// reached its environment, and it was looked at again every millisecond meanwhile.
    public static let recentTicketsOffset = 320
    public static let recentTicketCount = 8
    /// How often a multiplexer reads the cells of every connection it lent, stirred or not.
    public static let lentSweepMilliseconds: Int64 = 250
    public static let returnedKindShift: UInt64 = 62
    public static let lendMask: UInt64 = (1 << 62) - 1

    // Fields of an environment's record (multiplexers and parent; atomic adds).
    public static let handedOffOffset = 0    // UInt64, multiplexers
    public static let pressedAtOffset = 8    // Int64 ms: when a multiplexer last had connections waiting
    public static let carriedShedOffset = 16
    public static let droppedOffset = 24     // UInt64, multiplexers (503s)
    public static let availabilityOffset = 32 // UInt32 percent (a copy, for display)
    public static let waitingOffset = 36     // UInt32
    // Counts of earlier generations of the same environment name (parent, at a graceful restart).
    public static let carriedHandedOffOffset = 40
    public static let carriedServedOffset = 48
    public static let carriedDroppedOffset = 56
    public static let nameOffset = 64        // NUL-terminated, parent

    // Fields of an environment's page (its workers; atomic adds).
    public static let receivedOffset = 8     // UInt64 connections taken from the channel
    public static let servedOffset = 16      // UInt64 requests
    public static let shedOffset = 24        // UInt64 connections given up under pressure (ReaderShedding)
    /// Lend cells, after the counters: where the environment's workers give lent connections
    /// back (ChildTable.giveBackLent). Each is an UInt64 entry (the lend number, with how in the
    /// top two bits) and the UInt32 count of kept-alive answers so far. A multiplexer takes a
    /// cell for each connection it lends (AvailabilityBoard.takeLendCell) and frees it once it
    /// has read it, and the cell travels in the lend number: an entry stays until its
    /// multiplexer looked, however late, however many others the workers gave back meanwhile.
    /// (A ring of the last 256 give-backs per worker was overrun: a busy tenant's worker behind
    /// a front proxy gives back 256 in about 20 ms, and a multiplexer kept off the CPU that
    /// long closed the connection as lost.)
    public static let lendCellsOffset = 64
    public static let lendCellSize = 16
    public static let lendCellCount = (pageSize - lendCellsOffset) / lendCellSize
    /// A lend number: the environment's hand-off count in the bits below this, its cell above.
    public static let lendCellShift: UInt64 = 48

    public static func identityOffset(_ slot: Int) -> Int { headerSize + slot * identitySize }

    public static func environmentOffset(slots: Int, environment: Int) -> Int {
        headerSize + slots * identitySize + environment * environmentSize
    }

    public static func slotPageOffset(slots: Int, environments: Int, slot: Int) -> Int {
        pagesStart(slots: slots, environments: environments) + slot * pageSize
    }

    public static func environmentPageOffset(slots: Int, environments: Int, environment: Int) -> Int {
        pagesStart(slots: slots, environments: environments) + (slots + environment) * pageSize
    }

    /// The `index`-th worker page (pages of environment e's pool are consecutive).
    public static func workerPageOffset(slots: Int, environments: Int, index: Int) -> Int {
        pagesStart(slots: slots, environments: environments) + (slots + environments + index) * pageSize
    }

    /// The detail page of the `index`-th worker page: after every worker page, in the same order.
    public static func detailPageOffset(slots: Int, environments: Int, workerPages: Int, index: Int) -> Int {
        workerPageOffset(slots: slots, environments: environments, index: workerPages + index)
    }

    public static func size(slots: Int, environments: Int, workerPages: Int = 0) -> Int {
        pagesStart(slots: slots, environments: environments) + (slots + environments + 2 * workerPages) * pageSize
    }

    /// The byte ranges of the table a worker of `environment` must not read: the detail pages
    /// of every other environment's pool (at most two ranges, before and after its own pool),
    /// or none when its environment has the full view. `poolStarts`: the index of each
    /// environment's first worker page, ascending (its pool ends where the next begins, the
    /// last at `workerPages`). An environment without a pool sees no detail page at all.
    public static func hiddenDetailRanges(slots: Int, environments: Int, workerPages: Int, poolStarts: [Int],
                                          environment: Int, fullView: Bool) -> [Range<Int>] {
        guard !fullView, workerPages > 0 else { return [] }
        func detail(_ index: Int) -> Int {
            detailPageOffset(slots: slots, environments: environments, workerPages: workerPages, index: index)
        }
        let pool = workerPool(poolStarts: poolStarts, workerPages: workerPages, environment: environment)
        let start = pool.lowerBound, end = pool.upperBound
        var ranges: [Range<Int>] = []
        if start > 0 { ranges.append(detail(0)..<detail(start)) }
        if end < workerPages {
            if let last = ranges.last, last.upperBound == detail(end) {  // an empty pool: one range
                ranges[ranges.count - 1] = last.lowerBound..<detail(workerPages)
            } else {
                ranges.append(detail(end)..<detail(workerPages))
            }
        }
        return ranges
    }

    /// The byte ranges of the worker pages at `indices` and of their detail pages, consecutive
    /// pages as one range (ascending, bounds-checked): what a pool's pages without a worker
    /// take up, to be given back to the system (their next reader finds zeros: standby,
    /// nothing counted, no client).
    public static func workerPageRanges(_ indices: [Int], slots: Int, environments: Int,
                                        workerPages: Int) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        for index in indices.sorted() where index >= 0 && index < workerPages {
            if let last = runs.last, last.upperBound == index {
                runs[runs.count - 1] = last.lowerBound..<(index + 1)
            } else if runs.last.map({ $0.upperBound <= index }) ?? true {
                runs.append(index..<(index + 1))
            }
        }
        func bytes(_ run: Range<Int>, _ first: Int) -> Range<Int> {
            let start = workerPageOffset(slots: slots, environments: environments, index: first + run.lowerBound)
            return start..<(start + run.count * pageSize)
        }
        return runs.map { bytes($0, 0) } + runs.map { bytes($0, workerPages) }
    }

    /// The worker pages of `environment`'s pool (indices): from its start in `poolStarts`
    /// (ascending) to the next pool's, the last to `workerPages`; an environment without a pool
    /// has the empty range at `workerPages`.
    public static func workerPool(poolStarts: [Int], workerPages: Int, environment: Int) -> Range<Int> {
        guard poolStarts.indices.contains(environment) else { return workerPages..<workerPages }
        let start = min(max(poolStarts[environment], 0), workerPages)
        let next = environment + 1 < poolStarts.count ? poolStarts[environment + 1] : workerPages
        return start..<min(max(next, start), workerPages)
    }

    private static func pagesStart(slots: Int, environments: Int) -> Int {
        let records = environmentOffset(slots: slots, environment: environments)
        return (records + pageSize - 1) / pageSize * pageSize
    }
}

/// What one slot says, sanitized.
public struct SlotSnapshot: Equatable {
    /// Request line and vhost of the current request (printable ASCII only), for logs and status.
    public var request: String
    public var vhost: String
    public var pid: Int32
    public var type: ChildType
    public var status: ChildStatus
    public var environment: Int
    public var generation: UInt32
    public var statusSince: Int64
    public var connections: UInt64
    public var requests: UInt64
    public var holding: UInt32
    /// A worker waiting on its client right now.
    public var awaitingClient: Bool = false
    /// A worker whose connection speaks HTTP/2.
    public var http2: Bool = false
    /// The client of a worker's current (or last) connection, from its detail page.
    public var client: ClientAddress = .none
}

public struct EnvironmentCounters: Equatable {
    public var handedOff: UInt64
    public var received: UInt64
    public var served: UInt64
    public var dropped: UInt64
    public var availability: UInt32
    public var waiting: UInt32
    public var name: String
    public var carriedHandedOff: UInt64 = 0
    public var carriedServed: UInt64 = 0
    public var carriedDropped: UInt64 = 0
    public var shed: UInt64 = 0
    public var carriedShed: UInt64 = 0

    /// Since the last full restart: this generation's counts plus those carried over (saturating:
    /// `served` is its workers' to write, and a sum must neither trap nor wrap to a likely number).
    public var totalHandedOff: UInt64 { handedOff.saturatingAdding(carriedHandedOff) }
    public var totalServed: UInt64 { served.saturatingAdding(carriedServed) }
    public var totalDropped: UInt64 { dropped.saturatingAdding(carriedDropped) }
    public var totalShed: UInt64 { shed.saturatingAdding(carriedShed) }

    /// Connections passed to the channel and not yet taken, clamped: the two counters come
    /// from different writers, so a lie or a race must not yield a huge or negative number.
    public var queued: Int { Self.queued(handedOff: handedOff, received: received) }

    public static func queued(handedOff: UInt64, received: UInt64) -> Int {
        handedOff >= received ? Int(min(handedOff - received, 1 << 20)) : 0
    }
}

/// A view over a mapped child table. It does not own the memory.
public struct ChildTable {
    public let base: UnsafeMutableRawPointer
    public let slotCount: Int
    public let environmentCount: Int
    /// Worker pages after the environment pages (0: workers use their slot's page).
    public let workerPageCount: Int

    /// Lays out a fresh table in `base` (zeroed by the caller, `size` bytes).
    public static func format(_ base: UnsafeMutableRawPointer, size: Int, slots: Int, environments: Int,
                              workerPages: Int = 0, generation: UInt32) -> ChildTable? {
        guard slots >= 0, environments >= 0, workerPages >= 0,
              size >= ChildTableLayout.size(slots: slots, environments: environments, workerPages: workerPages)
        else { return nil }
        base.storeBytes(of: ChildTableLayout.magic, toByteOffset: ChildTableLayout.magicOffset, as: UInt32.self)
        base.storeBytes(of: ChildTableLayout.version, toByteOffset: ChildTableLayout.versionOffset, as: UInt32.self)
        base.storeBytes(of: UInt32(slots), toByteOffset: ChildTableLayout.slotCountOffset, as: UInt32.self)
        base.storeBytes(of: UInt32(environments), toByteOffset: ChildTableLayout.environmentCountOffset,
                        as: UInt32.self)
        base.storeBytes(of: generation, toByteOffset: ChildTableLayout.generationOffset, as: UInt32.self)
        return ChildTable(base: base, slotCount: slots, environmentCount: environments, workerPageCount: workerPages)
    }

    /// The parent's view: sizes come from the parent's own configuration, never from the
    /// (writable) header.
    public init(base: UnsafeMutableRawPointer, slotCount: Int, environmentCount: Int, workerPageCount: Int = 0) {
        self.base = base
        self.slotCount = slotCount
        self.environmentCount = environmentCount
        self.workerPageCount = max(0, workerPageCount)
    }

    private func identity(_ slot: Int) -> Int { ChildTableLayout.identityOffset(slot) }

    /// Offset of the page a slot's child writes, as readers find it: a worker's page from its
    /// identity (bounds-checked: the identity region is written by the parent, but the
    /// multiplexers map it too); a multiplexer's (or a free slot's) own slot page.
    public func pageOffset(_ slot: Int) -> Int {
        let i = identity(slot)
        let type = ChildType(rawValue: load(i + ChildTableLayout.typeOffset, as: UInt8.self)) ?? .unknown
        return pageOffset(slot: slot, type: type,
                          workerPage: Int(load(i + ChildTableLayout.workerPageOffset, as: UInt32.self)))
    }

    /// Offset of the page of a child of `type` in `slot` with worker page `workerPage`: what the
    /// parent computes before a fork, so that the child never looks its own page up in memory
    /// that others can write.
    public func pageOffset(slot: Int, type: ChildType, workerPage: Int) -> Int {
        if (type == .processor || type == .worker) && workerPage >= 0 && workerPage < workerPageCount {
            return ChildTableLayout.workerPageOffset(slots: slotCount, environments: environmentCount, index: workerPage)
        }
        return ChildTableLayout.slotPageOffset(slots: slotCount, environments: environmentCount, slot: slot)
    }

    private func page(_ slot: Int) -> Int { pageOffset(slot) }

    /// The detail page that goes with the worker page at `o`, or nil if `o` is no worker page
    /// (a multiplexer's or a free slot's page has none).
    public func detailPage(ofPage o: Int) -> Int? {
        let first = ChildTableLayout.workerPageOffset(slots: slotCount, environments: environmentCount, index: 0)
        guard o >= first, o < first + workerPageCount * ChildTableLayout.pageSize,
              (o - first) % ChildTableLayout.pageSize == 0 else { return nil }
        return o + workerPageCount * ChildTableLayout.pageSize
    }

    /// The detail page of a slot's worker, as readers find it (see pageOffset(_:)).
    public func detailOffset(_ slot: Int) -> Int? { detailPage(ofPage: page(slot)) }

    private func record(_ environment: Int) -> Int {
        ChildTableLayout.environmentOffset(slots: slotCount, environment: environment)
    }

    private func environmentPage(_ environment: Int) -> Int {
        ChildTableLayout.environmentPageOffset(slots: slotCount, environments: environmentCount, environment: environment)
    }

    private func load<T>(_ offset: Int, as type: T.Type) -> T {
        base.loadUnaligned(fromByteOffset: offset, as: T.self)
    }

    /// A NUL-terminated string field, with anything but printable ASCII replaced by '?'.
    private func text(_ offset: Int, capacity: Int) -> String {
        var bytes: [UInt8] = []
        for i in 0..<(capacity - 1) {
            let byte = load(offset + i, as: UInt8.self)
            if byte == 0 { break }
            bytes.append(byte >= 0x20 && byte < 0x7f ? byte : UInt8(ascii: "?"))
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func storeText(_ text: String, _ offset: Int, capacity: Int) {
        let bytes = Array(text.utf8.prefix(capacity - 1)) + [0]
        for (i, byte) in bytes.enumerated() { base.storeBytes(of: byte, toByteOffset: offset + i, as: UInt8.self) }
    }

    public func slot(_ index: Int) -> SlotSnapshot? {
        guard index >= 0 && index < slotCount else { return nil }
        let i = identity(index), o = page(index), detail = detailPage(ofPage: o)
        guard inUse(index) else {  // a free slot: its page is not read (nor allocated)
            return SlotSnapshot(request: "", vhost: "", pid: load(i + ChildTableLayout.pidOffset, as: Int32.self),
                                type: .unknown, status: .standby, environment: -1,
                                generation: load(i + ChildTableLayout.slotGenerationOffset, as: UInt32.self),
                                statusSince: 0, connections: 0, requests: 0, holding: 0)
        }
        return SlotSnapshot(
            request: detail.map { text($0 + ChildTableLayout.requestOffset, capacity: ChildTableLayout.requestCapacity) } ?? "",
            vhost: detail.map { text($0 + ChildTableLayout.vhostOffset, capacity: ChildTableLayout.vhostCapacity) } ?? "",
            pid: load(i + ChildTableLayout.pidOffset, as: Int32.self),
            type: ChildType(rawValue: load(i + ChildTableLayout.typeOffset, as: UInt8.self)) ?? .unknown,
            // An unknown status reads as busy: the safe guess for a child that lies.
            status: ChildStatus(rawValue: load(o + ChildTableLayout.statusOffset, as: UInt8.self)) ?? .active,
            environment: Int(load(i + ChildTableLayout.environmentOffset, as: Int32.self)),
            generation: load(i + ChildTableLayout.slotGenerationOffset, as: UInt32.self),
            // A monotonic clock never reads negative; readers still subtract it only saturating.
            statusSince: max(0, load(o + ChildTableLayout.statusSinceOffset, as: Int64.self)),
            connections: load(o + ChildTableLayout.connectionsOffset, as: UInt64.self),
            requests: load(o + ChildTableLayout.requestsOffset, as: UInt64.self),
            holding: load(o + ChildTableLayout.holdingOffset, as: UInt32.self),
            awaitingClient: load(o + ChildTableLayout.awaitingOffset, as: Int64.self) != 0,
            http2: load(o + ChildTableLayout.http2Offset, as: UInt8.self) != 0,
            client: detail.map { ClientAddress(high: load($0 + ChildTableLayout.clientOffset, as: UInt64.self),
                                               low: load($0 + ChildTableLayout.clientOffset + 8, as: UInt64.self)) }
                ?? .none)
    }

    /// Whether a worker page among `pages` (indices in the worker pages: an environment's pool)
    /// other than the one at offset `own` says ready. A worker asks before it sleeps on its
    /// environment's channel: alone, it waits in recvmsg itself (WorkerMain). A page a dead
    /// worker left ready only makes the answer yes, which is the careful one.
    public func anotherWorkerReady(among pages: Range<Int>, except own: Int) -> Bool {
        for index in pages where index >= 0 && index < workerPageCount {
            let o = ChildTableLayout.workerPageOffset(slots: slotCount, environments: environmentCount, index: index)
            if o != own && load(o + ChildTableLayout.statusOffset, as: UInt8.self) == ChildStatus.ready.rawValue {
                return true
            }
        }
        return false
    }

    /// A slot's status and when it began, without the text fields: what the parent's planner
    /// reads of every child, up to every 10 ms. Same reading as `slot`.
    public func status(of index: Int) -> (status: ChildStatus, since: Int64)? {
        guard index >= 0 && index < slotCount else { return nil }
        guard inUse(index) else { return (.standby, 0) }
        let o = page(index)
        return (ChildStatus(rawValue: load(o + ChildTableLayout.statusOffset, as: UInt8.self)) ?? .active,
                max(0, load(o + ChildTableLayout.statusSinceOffset, as: Int64.self)))
    }

    /// Whether the parent has a child in this slot (its identity says so): readers skip free
    /// slots without touching their pages, which then cost no memory.
    public func inUse(_ index: Int) -> Bool {
        guard index >= 0 && index < slotCount else { return false }
        return ChildType(rawValue: load(identity(index) + ChildTableLayout.typeOffset, as: UInt8.self)) ?? .unknown != .unknown
    }

    /// Type, status and environment of a slot, without the text fields (the multiplexer's hot path).
    public func brief(_ index: Int) -> (type: ChildType, status: ChildStatus, environment: Int)? {
        guard index >= 0 && index < slotCount else { return nil }
        let i = identity(index)
        let type = ChildType(rawValue: load(i + ChildTableLayout.typeOffset, as: UInt8.self)) ?? .unknown
        guard type != .unknown else { return (.unknown, .standby, -1) }
        return (type,
                ChildStatus(rawValue: load(page(index) + ChildTableLayout.statusOffset, as: UInt8.self)) ?? .active,
                Int(load(i + ChildTableLayout.environmentOffset, as: Int32.self)))
    }

    /// Which slots hold a child of each environment, and how many hold any child: read from
    /// the identity records, which only the parent writes (at a start and a reap), so a reader
    /// keeps one and looks only at an environment's own slots, not at every slot of the table,
    /// until `version` changes. With hundreds of environments that is the difference between
    /// a few pages and the whole table per routed connection.
    public struct Roster: Equatable {
        public var slots: [[Int]]
        public var occupied: Int
        public var version: UInt64

        public static let empty = Roster(slots: [], occupied: 0, version: .max)

        public func slots(of environment: Int) -> [Int] {
            slots.indices.contains(environment) ? slots[environment] : []
        }
    }

    /// Whether the parent ended this generation: a channel of it that ends now was closed by
    /// the parent, not shut down by a sender.
    public var generationEnded: Bool { load(ChildTableLayout.generationEndedOffset, as: UInt32.self) != 0 }

    /// The parent, before it closes the generation's channels.
    public func markGenerationEnded() {
        base.storeBytes(of: UInt32(1), toByteOffset: ChildTableLayout.generationEndedOffset, as: UInt32.self)
    }

    /// Bumped by `setSlot`: a reader's roster is stale once this differs from its version.
    public var rosterVersion: UInt64 { load(ChildTableLayout.rosterVersionOffset, as: UInt64.self) }

    /// The version is read first: an identity changed during the scan bumps it again, and the
    /// next look rebuilds.
    public func roster() -> Roster {
        let version = rosterVersion
        var slots = [[Int]](repeating: [], count: environmentCount)
        var occupied = 0
        for index in 0..<slotCount {
            let i = identity(index)
            let type = ChildType(rawValue: load(i + ChildTableLayout.typeOffset, as: UInt8.self)) ?? .unknown
            guard type != .unknown else { continue }
            occupied += 1
            let environment = Int(load(i + ChildTableLayout.environmentOffset, as: Int32.self))
            if (type == .processor || type == .worker) && slots.indices.contains(environment) {
                slots[environment].append(index)
            }
        }
        return Roster(slots: slots, occupied: occupied, version: version)
    }

    /// What the table says about an environment's room for one more connection. Every child
    /// of the roster counts toward MaxClients (one starting or on standby holds its slot too).
    public func capacity(of environment: Int, limits: WorkerLimits, maxClients: Int,
                         roster: Roster) -> EnvironmentCapacity {
        var workers = 0, idle = 0
        for index in roster.slots(of: environment) {
            guard let s = brief(index), s.status != .standby, s.environment == environment,
                  s.type == .processor || s.type == .worker else { continue }
            workers += 1
            if s.status == .ready { idle += 1 }
        }
        return EnvironmentCapacity(workers: workers, idle: idle, queued: queued(environment),
                                   maxProcessors: limits.maxProcessors, serverFull: roster.occupied >= maxClients)
    }

    /// The same from a fresh roster (tests, and readers that look once).
    public func capacity(of environment: Int, limits: WorkerLimits, maxClients: Int) -> EnvironmentCapacity {
        capacity(of: environment, limits: limits, maxClients: maxClients, roster: roster())
    }

    /// Connections a multiplexer holds for an environment that could not take them (the last
    /// multiplexer to change its count wrote it: a hint that some wait).
    public func waitingInMultiplexers(_ environment: Int) -> Int {
        guard environment >= 0 && environment < environmentCount else { return 0 }
        return Int(min(load(record(environment) + ChildTableLayout.waitingOffset, as: UInt32.self), 1 << 20))
    }

    /// Connections handed to an environment's channel, and taken from it, so far.
    public func flow(_ environment: Int) -> (handedOff: UInt64, received: UInt64) {
        guard environment >= 0 && environment < environmentCount else { return (0, 0) }
        let handedOff = load(record(environment) + ChildTableLayout.handedOffOffset, as: UInt64.self)
        return (handedOff, pageCounter(environment, ChildTableLayout.receivedOffset, handedOff: handedOff))
    }

    /// Connections handed to an environment's channel and not yet taken (see EnvironmentCounters).
    public func queued(_ environment: Int) -> Int {
        let (handedOff, received) = flow(environment)
        return EnvironmentCounters.queued(handedOff: handedOff, received: received)
    }

    /// A counter of an environment's page (its workers'), or 0 for an environment nothing was
    /// ever handed to in this table: its workers count only what they took. Reading the page of
    /// a memfd makes the kernel give it memory, 4 KiB for each of hundreds of quiet tenants.
    private func pageCounter(_ environment: Int, _ offset: Int, handedOff: UInt64) -> UInt64 {
        handedOff == 0 ? 0 : load(environmentPage(environment) + offset, as: UInt64.self)
    }

    public func environment(_ index: Int) -> EnvironmentCounters? {
        guard index >= 0 && index < environmentCount else { return nil }
        let o = record(index)
        let handedOff = load(o + ChildTableLayout.handedOffOffset, as: UInt64.self)
        return EnvironmentCounters(
            handedOff: handedOff,
            received: pageCounter(index, ChildTableLayout.receivedOffset, handedOff: handedOff),
            served: pageCounter(index, ChildTableLayout.servedOffset, handedOff: handedOff),
            dropped: load(o + ChildTableLayout.droppedOffset, as: UInt64.self),
            availability: min(load(o + ChildTableLayout.availabilityOffset, as: UInt32.self), 100),
            waiting: load(o + ChildTableLayout.waitingOffset, as: UInt32.self),
            name: text(o + ChildTableLayout.nameOffset, capacity: ChildTableLayout.nameCapacity),
            carriedHandedOff: load(o + ChildTableLayout.carriedHandedOffOffset, as: UInt64.self),
            carriedServed: load(o + ChildTableLayout.carriedServedOffset, as: UInt64.self),
            carriedDropped: load(o + ChildTableLayout.carriedDroppedOffset, as: UInt64.self),
            shed: pageCounter(index, ChildTableLayout.shedOffset, handedOff: handedOff),
            carriedShed: load(o + ChildTableLayout.carriedShedOffset, as: UInt64.self))
    }

    /// When a multiplexer last had connections of `environment` waiting for a worker (ms, 0: never).
    public func pressedAt(_ environment: Int) -> Int64 {
        guard environment >= 0 && environment < environmentCount else { return 0 }
        return load(record(environment) + ChildTableLayout.pressedAtOffset, as: Int64.self)
    }

    /// How many of `environment`'s workers are busy with a connection of `client` (each worker
    /// says so on its own page: a liar skews only its own environment's count).
    public func workersServing(_ client: ClientAddress, environment: Int, roster: Roster) -> Int {
        var count = 0
        for index in roster.slots(of: environment) {
            guard let worker = workerDetail(index, of: environment),
                  worker.status != .ready, worker.status != .standby, worker.status != .starting else { continue }
            if load(worker.offset + ChildTableLayout.clientOffset, as: UInt64.self) == client.high
                && load(worker.offset + ChildTableLayout.clientOffset + 8, as: UInt64.self) == client.low {
                count += 1
            }
        }
        return count
    }

    /// A worker's write to its own detail page (`page`: its worker page): the client and ticket
    /// of the connection it took.
    public func setClient(page: Int, _ client: ClientAddress, ticket: UInt64) {
        guard let o = detailPage(ofPage: page) else { return }
        base.storeBytes(of: client.high, toByteOffset: o + ChildTableLayout.clientOffset, as: UInt64.self)
        base.storeBytes(of: client.low, toByteOffset: o + ChildTableLayout.clientOffset + 8, as: UInt64.self)
        base.storeBytes(of: ticket, toByteOffset: o + ChildTableLayout.ticketOffset, as: UInt64.self)
        let taken = load(page + ChildTableLayout.connectionsOffset, as: UInt64.self)
        let recent = Int(taken % UInt64(ChildTableLayout.recentTicketCount))
        base.storeBytes(of: ticket, toByteOffset: o + ChildTableLayout.recentTicketsOffset + recent * 8, as: UInt64.self)
    }

    /// A worker took a connection: its lend number, or 0 when it was not lent.
    public func setLend(page: Int, _ lend: UInt64) {
        guard let o = detailPage(ofPage: page) else { return }
        base.storeBytes(of: lend, toByteOffset: o + ChildTableLayout.lendOffset, as: UInt64.self)
    }

    /// How a worker gave a lent connection back.
    public enum Returned: UInt64, Equatable {
        /// Answered, nothing read past the answer: the multiplexer reads the next head.
        case answered = 0
        /// It ended in the worker: the multiplexer shuts it down and closes it.
        case ended = 2
        /// Sent back on the hand-back channel with bytes read past the answer: the multiplexer
        /// takes that copy when the message comes.
        case sentBack = 1
    }

    /// The lend number of a connection lent with `cell` as the environment's `count`-th
    /// hand-off, or nil when either does not fit (then it is given, not lent).
    public static func lendNumber(count: UInt64, cell: Int) -> UInt64? {
        guard count != 0, count < 1 << ChildTableLayout.lendCellShift,
              cell >= 0, cell < ChildTableLayout.lendCellCount else { return nil }
        return UInt64(cell) << ChildTableLayout.lendCellShift | count
    }

    /// The cell a lend number names (it may name none: readers check it against the count).
    public static func lendCell(of lend: UInt64) -> Int {
        Int((lend & ChildTableLayout.lendMask) >> ChildTableLayout.lendCellShift)
    }

    /// The environment's hand-off count a lend number carries.
    public static func lendCount(of lend: UInt64) -> UInt64 { lend & ((1 << ChildTableLayout.lendCellShift) - 1) }

    /// Where the cell named in lend number `lend` is, in `environment`'s page.
    private func lendCell(_ environment: Int, _ lend: UInt64) -> Int? {
        guard environment >= 0 && environment < environmentCount else { return nil }
        let cell = Self.lendCell(of: lend)
        guard cell < ChildTableLayout.lendCellCount else { return nil }
        return environmentPage(environment) + ChildTableLayout.lendCellsOffset + cell * ChildTableLayout.lendCellSize
    }

    /// A worker of `environment` is done with lent connection `lend`: how, and the responses
    /// that kept it alive so far (`keepalives`, written first: the entry is what a multiplexer
    /// looks for), go into the cell its number names.
    public func giveBackLent(environment: Int, lend: UInt64, how: Returned, keepalives: UInt32 = 0) {
        guard lend & ChildTableLayout.lendMask != 0, let o = lendCell(environment, lend) else { return }
        let entry = (lend & ChildTableLayout.lendMask) | how.rawValue << ChildTableLayout.returnedKindShift
        base.storeBytes(of: keepalives, toByteOffset: o + 8, as: UInt32.self)
        base.storeBytes(of: entry, toByteOffset: o, as: UInt64.self)
    }

    public enum LendState: Equatable {
        /// A worker gave it back, with the responses that kept it alive so far (as it says).
        case returned(Returned, keepalives: UInt32)
        /// A live worker shows it as its current connection.
        case serving
        /// Neither: still in the channel, or its worker is gone (or gave back so many since that
        /// its ring no longer holds it).
        case unknown
    }

    /// Where lent connection `lend` is: given back if its cell in `environment`'s page says so,
    /// else served while a live worker of the environment (`roster`) names it as its current
    /// connection. Only pages of workers that exist are read (a page nobody wrote would be
    /// allocated by reading it). Written by that environment's workers: a lie only misplaces
    /// that environment's own connections.
    public func lendState(_ lend: UInt64, environment: Int, roster: Roster) -> LendState {
        let wanted = lend & ChildTableLayout.lendMask
        guard wanted != 0, let cell = lendCell(environment, wanted) else { return .unknown }
        let entry = load(cell, as: UInt64.self)
        if entry & ChildTableLayout.lendMask == wanted {
            return .returned(Returned(rawValue: entry >> ChildTableLayout.returnedKindShift) ?? .ended,
                             keepalives: load(cell + 8, as: UInt32.self))
        }
        for index in roster.slots(of: environment) {
            guard let worker = workerDetail(index, of: environment), worker.status == .active,
                  load(worker.offset + ChildTableLayout.lendOffset, as: UInt64.self) == wanted else { continue }
            return .serving
        }
        return .unknown
    }

    /// The detail page of slot `index` if it holds a live worker of `environment` (the roster
    /// checked against the identity record), and that worker's status.
    private func workerDetail(_ index: Int, of environment: Int) -> (offset: Int, status: ChildStatus)? {
        guard let s = brief(index), s.environment == environment, s.type == .processor || s.type == .worker,
              let o = detailOffset(index) else { return nil }
        return (o, s.status)
    }

    /// Whether one of `environment`'s workers shows `ticket` among the last connections it took
    /// (busy with one or done): a multiplexer's hand-off is in flight until it does. A look at
    /// the environment's few pages, with nothing allocated: it runs for every hand-off in
    /// flight that counts against a client's share. (A connection lent to the same environment
    /// again has the same ticket: its reservation may go a moment early, as it could when only
    /// the last ticket showed.)
    public func showsTaken(_ ticket: UInt64, environment: Int, roster: Roster) -> Bool {
        for index in roster.slots(of: environment) {
            guard let worker = workerDetail(index, of: environment),
                  worker.status == .active || worker.status == .ready else { continue }
            let recent = worker.offset + ChildTableLayout.recentTicketsOffset
            for i in 0..<ChildTableLayout.recentTicketCount where load(recent + i * 8, as: UInt64.self) == ticket {
                return true
            }
        }
        return false
    }

    // Writes by the parent (display fields of a slot) and by the slot's own child.

    /// `workerPage`: the index of a worker's page in the worker pages (its environment's pool).
    public func setSlot(_ index: Int, pid: Int32, type: ChildType, environment: Int, generation: UInt32,
                        status: ChildStatus, now: Int64, workerPage: Int = 0) {
        guard index >= 0 && index < slotCount else { return }
        let i = identity(index)
        base.storeBytes(of: UInt32(clamping: workerPage), toByteOffset: i + ChildTableLayout.workerPageOffset,
                        as: UInt32.self)
        base.storeBytes(of: pid, toByteOffset: i + ChildTableLayout.pidOffset, as: Int32.self)
        base.storeBytes(of: type.rawValue, toByteOffset: i + ChildTableLayout.typeOffset, as: UInt8.self)
        let o = pageOffset(slot: index, type: type, workerPage: workerPage)
        base.storeBytes(of: Int32(clamping: environment), toByteOffset: i + ChildTableLayout.environmentOffset,
                        as: Int32.self)
        base.storeBytes(of: generation, toByteOffset: i + ChildTableLayout.slotGenerationOffset, as: UInt32.self)
        // A free slot's page is never read (slot(_:), status(of:)): writing it would only
        // allocate it, and a worker's slot keeps its page in its pool.
        if type != .unknown { setStatus(page: o, status, now: now) }
        let version = load(ChildTableLayout.rosterVersionOffset, as: UInt64.self) &+ 1
        base.storeBytes(of: version, toByteOffset: ChildTableLayout.rosterVersionOffset, as: UInt64.self)
        if status == .starting {
            base.storeBytes(of: UInt64(0), toByteOffset: o + ChildTableLayout.connectionsOffset, as: UInt64.self)
            base.storeBytes(of: UInt64(0), toByteOffset: o + ChildTableLayout.requestsOffset, as: UInt64.self)
            base.storeBytes(of: UInt32(0), toByteOffset: o + ChildTableLayout.holdingOffset, as: UInt32.self)
        }
    }

    public func setPid(_ index: Int, _ pid: Int32) {
        guard index >= 0 && index < slotCount else { return }
        base.storeBytes(of: pid, toByteOffset: identity(index) + ChildTableLayout.pidOffset, as: Int32.self)
    }

    public func setStatus(_ index: Int, _ status: ChildStatus, now: Int64) {
        guard index >= 0 && index < slotCount else { return }
        setStatus(page: page(index), status, now: now)
    }

    /// A child's write to its own page (`page`: the offset the parent computed before the fork).
    public func setStatus(page o: Int, _ status: ChildStatus, now: Int64) {
        base.storeBytes(of: now, toByteOffset: o + ChildTableLayout.statusSinceOffset, as: Int64.self)
        base.storeBytes(of: status.rawValue, toByteOffset: o + ChildTableLayout.statusOffset, as: UInt8.self)
    }

    public func setEnvironmentName(_ index: Int, _ name: String) {
        guard index >= 0 && index < environmentCount else { return }
        storeText(name, record(index) + ChildTableLayout.nameOffset, capacity: ChildTableLayout.nameCapacity)
    }

    /// Carries an earlier generation's totals into this generation's environment `index`.
    public func carry(_ old: EnvironmentCounters, into index: Int) {
        guard index >= 0 && index < environmentCount else { return }
        let o = record(index)
        base.storeBytes(of: old.totalHandedOff, toByteOffset: o + ChildTableLayout.carriedHandedOffOffset, as: UInt64.self)
        base.storeBytes(of: old.totalServed, toByteOffset: o + ChildTableLayout.carriedServedOffset, as: UInt64.self)
        base.storeBytes(of: old.totalDropped, toByteOffset: o + ChildTableLayout.carriedDroppedOffset, as: UInt64.self)
        base.storeBytes(of: old.totalShed, toByteOffset: o + ChildTableLayout.carriedShedOffset, as: UInt64.self)
    }

    /// Stores the request line and vhost of a slot's current request, from C strings, without
    /// building Swift strings (a worker does this per request).
    public func setRequest(_ index: Int, request: UnsafePointer<CChar>?, vhost: UnsafePointer<CChar>?) {
        guard index >= 0 && index < slotCount else { return }
        setRequest(page: page(index), request: request, vhost: vhost)
    }

    /// A worker's write to its own detail page (`page`: its worker page).
    public func setRequest(page: Int, request: UnsafePointer<CChar>?, vhost: UnsafePointer<CChar>?) {
        guard let o = detailPage(ofPage: page) else { return }
        storeCString(request, o + ChildTableLayout.requestOffset, capacity: ChildTableLayout.requestCapacity)
        storeCString(vhost, o + ChildTableLayout.vhostOffset, capacity: ChildTableLayout.vhostCapacity)
    }

    private func storeCString(_ text: UnsafePointer<CChar>?, _ offset: Int, capacity: Int) {
        var i = 0
        if let text {
            while i < capacity - 1 && text[i] != 0 {
                base.storeBytes(of: UInt8(bitPattern: text[i]), toByteOffset: offset + i, as: UInt8.self)
                i += 1
            }
        }
        base.storeBytes(of: UInt8(0), toByteOffset: offset + i, as: UInt8.self)
    }


    /// Address of a field of a slot's page, an environment's record, or an environment's page,
    /// for the atomic counters of the module.
    public func slotField(_ index: Int, _ offset: Int) -> UnsafeMutableRawPointer? {
        guard index >= 0 && index < slotCount else { return nil }
        return base + page(index) + offset
    }

    /// A field of a child's own page (see setStatus(page:)).
    public func field(page: Int, _ offset: Int) -> UnsafeMutableRawPointer { base + page + offset }

    public func environmentField(_ index: Int, _ offset: Int) -> UnsafeMutableRawPointer? {
        guard index >= 0 && index < environmentCount else { return nil }
        return base + record(index) + offset
    }

    public func environmentPageField(_ index: Int, _ offset: Int) -> UnsafeMutableRawPointer? {
        guard index >= 0 && index < environmentCount else { return nil }
        return base + environmentPage(index) + offset
    }
}
