// The shared child table: one fixed-size, versioned record per child slot and one per
// environment, in a shared mapping that every child of a generation inherits.
//
// Children write their own status and the counters; the parent writes pid, type and
// environment for display. Everything read back is untrusted: a tenant's worker can write any
// byte here. Readers therefore bound-check and sanitize every field and never trap.

public enum ChildTableLayout {
    public static let magic: UInt32 = 0x3143_5550  // "PUC1"
    public static let version: UInt32 = 1
    public static let headerSize = 64
    public static let slotSize = 256
    public static let environmentSize = 128
    public static let nameCapacity = 64

    // Header fields.
    public static let magicOffset = 0
    public static let versionOffset = 4
    public static let slotCountOffset = 8
    public static let environmentCountOffset = 12
    public static let generationOffset = 16

    // Slot fields.
    public static let pidOffset = 0          // Int32, parent
    public static let typeOffset = 4         // UInt8 ChildType, parent
    public static let statusOffset = 5       // UInt8 ChildStatus, child
    public static let environmentOffset = 8  // Int32, parent (-1: multiplexer)
    public static let slotGenerationOffset = 12  // UInt32, parent
    public static let statusSinceOffset = 16 // Int64 ms, child
    public static let connectionsOffset = 24 // UInt64, child
    public static let requestsOffset = 32    // UInt64, child
    public static let holdingOffset = 40     // UInt32: connections a multiplexer holds
    public static let requestOffset = 64     // request line, NUL-terminated, child
    public static let requestCapacity = 128
    public static let vhostOffset = 192      // vhost name, NUL-terminated, child
    public static let vhostCapacity = 64

    // Environment fields (counters written by many processes with atomic adds).
    public static let handedOffOffset = 0    // UInt64, multiplexers
    public static let receivedOffset = 8     // UInt64, workers
    public static let servedOffset = 16      // UInt64, workers (requests)
    public static let droppedOffset = 24     // UInt64, multiplexers (503s)
    public static let availabilityOffset = 32 // UInt32 percent
    public static let waitingOffset = 36     // UInt32
    // Counts of earlier generations of the same environment name (parent, at a graceful restart).
    public static let carriedHandedOffOffset = 40
    public static let carriedServedOffset = 48
    public static let carriedDroppedOffset = 56
    public static let nameOffset = 64        // NUL-terminated, parent

    public static func size(slots: Int, environments: Int) -> Int {
        headerSize + slots * slotSize + environments * environmentSize
    }

    public static func slotOffset(_ slot: Int) -> Int { headerSize + slot * slotSize }

    public static func environmentOffset(slots: Int, environment: Int) -> Int {
        headerSize + slots * slotSize + environment * environmentSize
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

    /// Since the last full restart: this generation's counts plus those carried over.
    public var totalHandedOff: UInt64 { handedOff &+ carriedHandedOff }
    public var totalServed: UInt64 { served &+ carriedServed }
    public var totalDropped: UInt64 { dropped &+ carriedDropped }

    /// Connections passed to the channel and not yet taken, clamped: the two counters come
    /// from different writers, so a lie or a race must not yield a huge or negative number.
    public var queued: Int { Self.queued(handedOff: handedOff, received: received) }

    static func queued(handedOff: UInt64, received: UInt64) -> Int {
        handedOff >= received ? Int(min(handedOff - received, 1 << 20)) : 0
    }
}

/// A view over a mapped child table. It does not own the memory.
public struct ChildTable {
    public let base: UnsafeMutableRawPointer
    public let slotCount: Int
    public let environmentCount: Int

    /// Lays out a fresh table in `base` (zeroed by the caller, `size` bytes).
    public static func format(_ base: UnsafeMutableRawPointer, size: Int, slots: Int, environments: Int,
                              generation: UInt32) -> ChildTable? {
        guard slots >= 0, environments >= 0,
              size >= ChildTableLayout.size(slots: slots, environments: environments) else { return nil }
        base.storeBytes(of: ChildTableLayout.magic, toByteOffset: ChildTableLayout.magicOffset, as: UInt32.self)
        base.storeBytes(of: ChildTableLayout.version, toByteOffset: ChildTableLayout.versionOffset, as: UInt32.self)
        base.storeBytes(of: UInt32(slots), toByteOffset: ChildTableLayout.slotCountOffset, as: UInt32.self)
        base.storeBytes(of: UInt32(environments), toByteOffset: ChildTableLayout.environmentCountOffset,
                        as: UInt32.self)
        base.storeBytes(of: generation, toByteOffset: ChildTableLayout.generationOffset, as: UInt32.self)
        return ChildTable(base: base, slotCount: slots, environmentCount: environments)
    }

    /// The parent's view: sizes come from the parent's own configuration, never from the
    /// (writable) header.
    public init(base: UnsafeMutableRawPointer, slotCount: Int, environmentCount: Int) {
        self.base = base
        self.slotCount = slotCount
        self.environmentCount = environmentCount
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
        let o = ChildTableLayout.slotOffset(index)
        return SlotSnapshot(
            request: text(o + ChildTableLayout.requestOffset, capacity: ChildTableLayout.requestCapacity),
            vhost: text(o + ChildTableLayout.vhostOffset, capacity: ChildTableLayout.vhostCapacity),
            pid: load(o + ChildTableLayout.pidOffset, as: Int32.self),
            type: ChildType(rawValue: load(o + ChildTableLayout.typeOffset, as: UInt8.self)) ?? .unknown,
            // An unknown status reads as busy: the safe guess for a child that lies.
            status: ChildStatus(rawValue: load(o + ChildTableLayout.statusOffset, as: UInt8.self)) ?? .active,
            environment: Int(load(o + ChildTableLayout.environmentOffset, as: Int32.self)),
            generation: load(o + ChildTableLayout.slotGenerationOffset, as: UInt32.self),
            statusSince: load(o + ChildTableLayout.statusSinceOffset, as: Int64.self),
            connections: load(o + ChildTableLayout.connectionsOffset, as: UInt64.self),
            requests: load(o + ChildTableLayout.requestsOffset, as: UInt64.self),
            holding: load(o + ChildTableLayout.holdingOffset, as: UInt32.self))
    }

    /// Type, status and environment of a slot, without the text fields (the multiplexer's hot path).
    public func brief(_ index: Int) -> (type: ChildType, status: ChildStatus, environment: Int)? {
        guard index >= 0 && index < slotCount else { return nil }
        let o = ChildTableLayout.slotOffset(index)
        return (ChildType(rawValue: load(o + ChildTableLayout.typeOffset, as: UInt8.self)) ?? .unknown,
                ChildStatus(rawValue: load(o + ChildTableLayout.statusOffset, as: UInt8.self)) ?? .active,
                Int(load(o + ChildTableLayout.environmentOffset, as: Int32.self)))
    }

    /// What the table says about an environment's room for one more connection.
    public func capacity(of environment: Int, limits: WorkerLimits, maxClients: Int) -> EnvironmentCapacity {
        var workers = 0, idle = 0, children = 0
        for index in 0..<slotCount {
            guard let s = brief(index), s.status != .standby else { continue }
            children += 1
            guard s.environment == environment, s.type == .processor || s.type == .worker else { continue }
            workers += 1
            if s.status == .ready { idle += 1 }
        }
        return EnvironmentCapacity(workers: workers, idle: idle, queued: queued(environment),
                                   maxProcessors: limits.maxProcessors, serverFull: children >= maxClients)
    }

    /// Connections handed to an environment's channel and not yet taken (see EnvironmentCounters).
    public func queued(_ environment: Int) -> Int {
        guard environment >= 0 && environment < environmentCount else { return 0 }
        let o = ChildTableLayout.environmentOffset(slots: slotCount, environment: environment)
        return EnvironmentCounters.queued(handedOff: load(o + ChildTableLayout.handedOffOffset, as: UInt64.self),
                                          received: load(o + ChildTableLayout.receivedOffset, as: UInt64.self))
    }

    public func environment(_ index: Int) -> EnvironmentCounters? {
        guard index >= 0 && index < environmentCount else { return nil }
        let o = ChildTableLayout.environmentOffset(slots: slotCount, environment: index)
        return EnvironmentCounters(
            handedOff: load(o + ChildTableLayout.handedOffOffset, as: UInt64.self),
            received: load(o + ChildTableLayout.receivedOffset, as: UInt64.self),
            served: load(o + ChildTableLayout.servedOffset, as: UInt64.self),
            dropped: load(o + ChildTableLayout.droppedOffset, as: UInt64.self),
            availability: min(load(o + ChildTableLayout.availabilityOffset, as: UInt32.self), 100),
            waiting: load(o + ChildTableLayout.waitingOffset, as: UInt32.self),
            name: text(o + ChildTableLayout.nameOffset, capacity: ChildTableLayout.nameCapacity),
            carriedHandedOff: load(o + ChildTableLayout.carriedHandedOffOffset, as: UInt64.self),
            carriedServed: load(o + ChildTableLayout.carriedServedOffset, as: UInt64.self),
            carriedDropped: load(o + ChildTableLayout.carriedDroppedOffset, as: UInt64.self))
    }

    // Writes by the parent (display fields of a slot) and by the slot's own child.

    public func setSlot(_ index: Int, pid: Int32, type: ChildType, environment: Int, generation: UInt32,
                        status: ChildStatus, now: Int64) {
        guard index >= 0 && index < slotCount else { return }
        let o = ChildTableLayout.slotOffset(index)
        base.storeBytes(of: pid, toByteOffset: o + ChildTableLayout.pidOffset, as: Int32.self)
        base.storeBytes(of: type.rawValue, toByteOffset: o + ChildTableLayout.typeOffset, as: UInt8.self)
        base.storeBytes(of: Int32(clamping: environment), toByteOffset: o + ChildTableLayout.environmentOffset,
                        as: Int32.self)
        base.storeBytes(of: generation, toByteOffset: o + ChildTableLayout.slotGenerationOffset, as: UInt32.self)
        setStatus(index, status, now: now)
        if status == .starting {
            base.storeBytes(of: UInt64(0), toByteOffset: o + ChildTableLayout.connectionsOffset, as: UInt64.self)
            base.storeBytes(of: UInt64(0), toByteOffset: o + ChildTableLayout.requestsOffset, as: UInt64.self)
            base.storeBytes(of: UInt32(0), toByteOffset: o + ChildTableLayout.holdingOffset, as: UInt32.self)
        }
    }

    public func setPid(_ index: Int, _ pid: Int32) {
        guard index >= 0 && index < slotCount else { return }
        base.storeBytes(of: pid, toByteOffset: ChildTableLayout.slotOffset(index) + ChildTableLayout.pidOffset, as: Int32.self)
    }

    public func setStatus(_ index: Int, _ status: ChildStatus, now: Int64) {
        guard index >= 0 && index < slotCount else { return }
        let o = ChildTableLayout.slotOffset(index)
        base.storeBytes(of: now, toByteOffset: o + ChildTableLayout.statusSinceOffset, as: Int64.self)
        base.storeBytes(of: status.rawValue, toByteOffset: o + ChildTableLayout.statusOffset, as: UInt8.self)
    }

    public func setEnvironmentName(_ index: Int, _ name: String) {
        guard index >= 0 && index < environmentCount else { return }
        let o = ChildTableLayout.environmentOffset(slots: slotCount, environment: index) + ChildTableLayout.nameOffset
        storeText(name, o, capacity: ChildTableLayout.nameCapacity)
    }

    /// Carries an earlier generation's totals into this generation's environment `index`.
    public func carry(_ old: EnvironmentCounters, into index: Int) {
        guard index >= 0 && index < environmentCount else { return }
        let o = ChildTableLayout.environmentOffset(slots: slotCount, environment: index)
        base.storeBytes(of: old.totalHandedOff, toByteOffset: o + ChildTableLayout.carriedHandedOffOffset, as: UInt64.self)
        base.storeBytes(of: old.totalServed, toByteOffset: o + ChildTableLayout.carriedServedOffset, as: UInt64.self)
        base.storeBytes(of: old.totalDropped, toByteOffset: o + ChildTableLayout.carriedDroppedOffset, as: UInt64.self)
    }

    /// Stores the request line and vhost of a slot's current request, from C strings, without
    /// building Swift strings (a worker does this per request).
    public func setRequest(_ index: Int, request: UnsafePointer<CChar>?, vhost: UnsafePointer<CChar>?) {
        guard index >= 0 && index < slotCount else { return }
        let o = ChildTableLayout.slotOffset(index)
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


    /// Address of a slot's or an environment's field, for the atomic counters of the module.
    public func slotField(_ index: Int, _ offset: Int) -> UnsafeMutableRawPointer? {
        guard index >= 0 && index < slotCount else { return nil }
        return base + ChildTableLayout.slotOffset(index) + offset
    }

    public func environmentField(_ index: Int, _ offset: Int) -> UnsafeMutableRawPointer? {
        guard index >= 0 && index < environmentCount else { return nil }
        return base + ChildTableLayout.environmentOffset(slots: slotCount, environment: index) + offset
    }
}
