// The availability of each environment, shared by the multiplexers of a generation.
//
// It lives in its own mapping, which workers unmap as soon as they are forked: tenants can
// neither read nor write it, so no tenant can make the multiplexers drop another tenant's
// connections. The child table gets a copy for display only.
import CPeruserShim
import PeruserCore

struct AvailabilityBoard {
    static let recordSize = 64
    let base: UnsafeMutableRawPointer
    let count: Int

    /// Buckets of the clients' footprint (client.hash32 modulo this).
    static let footprintBuckets = 8192

    static func size(environments: Int) -> Int {
        max(1, environments) * (recordSize + ChildTableLayout.lendCellCount * 4) + footprintBuckets * 8
    }

    /// How many connections the multiplexers hold, together, for clients in `client`'s bucket:
    /// what ranks a client in the wait (a client spread over many connections and multiplexers
    /// is heavy in each). Two clients in one bucket count as one, which only orders them later.
    /// A multiplexer that crashed leaves its count behind until the next restart: its clients
    /// rank heavier, nothing worse.
    private func footprintField(_ client: ClientAddress) -> UnsafeMutableRawPointer? {
        client.isNone ? nil : base + count * Self.recordSize + Int(client.hash32 % UInt32(Self.footprintBuckets)) * 4
    }

    func footprint(_ client: ClientAddress) -> Int {
        footprintField(client).map { Int(peruser_atomic_load_u32($0)) } ?? 0
    }

    /// Hand-offs in flight (passed, not yet shown on a worker's page) per client and
    /// environment, in buckets: reserved by compare-and-swap before a hand-off, so two
    /// multiplexers can never both give a client the last worker of its share.
    private func reservedField(_ client: ClientAddress, _ environment: Int) -> UnsafeMutableRawPointer? {
        guard !client.isNone else { return nil }
        let mixed = client.hash32 &+ UInt32(truncatingIfNeeded: environment) &* 0x9e37_79b9
        return base + count * Self.recordSize + Self.footprintBuckets * 4 + Int(mixed % UInt32(Self.footprintBuckets)) * 4
    }

    func reserved(_ client: ClientAddress, _ environment: Int) -> Int {
        reservedField(client, environment).map { Int(peruser_atomic_load_u32($0)) } ?? 0
    }

    /// Takes one of `client`'s share in `environment` if it holds fewer than `limit`, with the
    /// `serving` workers its pages show and `queued` connections in the environment's channel
    /// (ClientShare.holds).
    func reserve(_ client: ClientAddress, _ environment: Int, serving: Int, queued: Int, limit: Int) -> Bool {
        guard let f = reservedField(client, environment) else { return true }
        while true {
            let old = peruser_atomic_load_u32(f)
            guard ClientShare.holds(serving: serving, reserved: Int(old), queued: queued) < limit else { return false }
            if peruser_atomic_cas_u32(f, old, old &+ 1) != 0 { return true }
        }
    }

    /// After a multiplexer died with reservations only it could release (the parent's call).
    func clearShareReservations() {
        let start = base + count * Self.recordSize + Self.footprintBuckets * 4
        for bucket in 0..<Self.footprintBuckets { peruser_atomic_store_u32(start + bucket * 4, 0) }
    }

    func release(_ client: ClientAddress, _ environment: Int) {
        guard let f = reservedField(client, environment) else { return }
        while true {
            let old = peruser_atomic_load_u32(f)
            guard old > 0 else { return }
            if peruser_atomic_cas_u32(f, old, old - 1) != 0 { return }
        }
    }

    /// Who holds each of an environment's lend cells (ChildTableLayout.lendCellsOffset): 0,
    /// or the slot + 1 of the multiplexer that lent a connection with it and has not yet read
    /// it back. Here, where no tenant writes, so no tenant can free a cell in use.
    private func lendCellOwners(_ environment: Int) -> UnsafeMutableRawPointer? {
        guard environment >= 0 && environment < count else { return nil }
        return base + count * Self.recordSize + Self.footprintBuckets * 8
            + environment * ChildTableLayout.lendCellCount * 4
    }

    /// What an owned cell holds for the multiplexer in `slot` (0 is a free cell).
    private static func owner(_ slot: Int) -> UInt32 { UInt32(truncatingIfNeeded: slot &+ 1) }

    /// A free lend cell of `environment`, taken for the multiplexer in `slot`, looking from
    /// cell `from` on; nil when every cell is in use (the connection is then given, not lent).
    func takeLendCell(_ environment: Int, slot: Int, from: Int) -> Int? {
        guard let owners = lendCellOwners(environment) else { return nil }
        let cells = ChildTableLayout.lendCellCount, mark = Self.owner(slot)
        let first = (from % cells + cells) % cells
        for step in 0..<cells {
            let cell = (first + step) % cells
            let field = owners + cell * 4
            if peruser_atomic_load_u32(field) == 0 && peruser_atomic_cas_u32(field, 0, mark) != 0 { return cell }
        }
        return nil
    }

    /// The multiplexer in `slot` read what `environment`'s cell `cell` held for it.
    func releaseLendCell(_ environment: Int, _ cell: Int, slot: Int) {
        guard let owners = lendCellOwners(environment), cell >= 0, cell < ChildTableLayout.lendCellCount else { return }
        _ = peruser_atomic_cas_u32(owners + cell * 4, Self.owner(slot), 0)
    }

    /// After the multiplexer in `slot` died: the cells it held (the parent's call, before the
    /// slot is given to another).
    func releaseLendCells(ownedBy slot: Int) {
        let mark = Self.owner(slot)
        for environment in 0..<count {
            guard let owners = lendCellOwners(environment) else { continue }
            for cell in 0..<ChildTableLayout.lendCellCount {
                _ = peruser_atomic_cas_u32(owners + cell * 4, mark, 0)
            }
        }
    }

    func addFootprint(_ client: ClientAddress, _ delta: Int32) {
        guard let f = footprintField(client) else { return }
        _ = peruser_atomic_add_fetch_u32(f, UInt32(bitPattern: delta))
    }

    private func field(_ environment: Int) -> UnsafeMutableRawPointer? {
        environment >= 0 && environment < count ? base + environment * Self.recordSize : nil
    }

    /// Record fields: availability percent (multiplexers), and whether the parent's last start
    /// of a worker failed with none alive (parent). Both out of every tenant's reach.
    static let percentOffset = 0
    static let startFailingOffset = 4
    /// The lightest client waiting in any multiplexer (LightestWaiting), packed in a UInt64.
    static let lightestOffset = 8

    /// Sets every environment to 100%, with no failed start.
    func reset() {
        for env in 0..<count {
            guard let f = field(env) else { continue }
            f.storeBytes(of: UInt32(100), toByteOffset: Self.percentOffset, as: UInt32.self)
            f.storeBytes(of: UInt32(0), toByteOffset: Self.startFailingOffset, as: UInt32.self)
            f.storeBytes(of: UInt64(0), toByteOffset: Self.lightestOffset, as: UInt64.self)
        }
    }

    func startFailing(_ environment: Int) -> Bool {
        field(environment).map { peruser_atomic_load_u32($0 + Self.startFailingOffset) != 0 } ?? false
    }

    func setStartFailing(_ environment: Int, _ failing: Bool) {
        guard let f = field(environment) else { return }
        peruser_atomic_store_u32(f + Self.startFailingOffset, failing ? 1 : 0)
    }

    /// A multiplexer has a connection of `offered`'s client and rank waiting for `environment`.
    func offerLightest(_ environment: Int, _ offered: LightestWaiting, now: Int64) {
        guard let f = field(environment) else { return }
        while true {
            let old = peruser_atomic_load_u64(f + Self.lightestOffset)
            guard old == 0 || LightestWaiting(packed: old).yields(to: offered, now: now) else { return }
            if peruser_atomic_cas_u64(f + Self.lightestOffset, old, offered.packed) != 0 { return }
        }
    }

    /// The lightest client waiting for `environment` in any multiplexer, if one is.
    func lightest(_ environment: Int, now: Int64) -> LightestWaiting? {
        guard let f = field(environment) else { return nil }
        let packed = peruser_atomic_load_u64(f + Self.lightestOffset)
        return packed == 0 ? nil : LightestWaiting(packed: packed).live(now: now)
    }

    /// A connection of `client` was passed: its mark, if it is the one, no longer holds others up.
    func withdrawLightest(_ environment: Int, client: UInt32) {
        guard let f = field(environment) else { return }
        let old = peruser_atomic_load_u64(f + Self.lightestOffset)
        if old != 0 && LightestWaiting(packed: old).client == client {
            _ = peruser_atomic_cas_u64(f + Self.lightestOffset, old, 0)
        }
    }

    func availability(_ environment: Int, waitSeconds: Int, levels: Int) -> Availability {
        let percent = field(environment).map { Int(peruser_atomic_load_u32($0)) } ?? 100
        return Availability(waitSeconds: waitSeconds, levels: levels, percent: percent)
    }

    /// Applies a change atomically against concurrent multiplexers; returns the new value.
    @discardableResult
    func update(_ environment: Int, waitSeconds: Int, levels: Int, _ change: (inout Availability) -> Void) -> Availability {
        guard let f = field(environment) else { return Availability(waitSeconds: waitSeconds, levels: levels) }
        while true {
            let old = peruser_atomic_load_u32(f)
            var value = Availability(waitSeconds: waitSeconds, levels: levels, percent: Int(old))
            change(&value)
            if peruser_atomic_cas_u32(f, old, UInt32(value.percent)) != 0 { return value }
        }
    }
}

nonisolated(unsafe) var availabilityBoard: AvailabilityBoard?
