/// Records kept by file descriptor, as a multiplexer keeps the connections it holds.
///
/// The kernel hands out the lowest free descriptor, so descriptors stay small and dense: an
/// array indexed by them finds a record without hashing, and `table[fd]?.field = x` changes it
/// in place. (A dictionary's optional subscript moved the whole record out and back at each
/// such write, about 400 bytes for a multiplexer's connection, several times per request:
/// with the hashing, a few per cent of a multiplexer's time on `Connection: close`.)
/// The array grows to the highest descriptor stored; a negative one is never stored.
public struct DescriptorTable<Record> {
    @usableFromInline var slots: [Record?] = []
    /// Each stored descriptor's index in `held`, or -1.
    @usableFromInline var positions: [Int32] = []
    /// The descriptors stored, in no particular order.
    @usableFromInline var held: [Int32] = []

    public init() {}

    @inlinable public var count: Int { held.count }
    @inlinable public var isEmpty: Bool { held.isEmpty }

    /// The descriptors stored now: a copy, so the table may change while it is walked (a
    /// descriptor removed meanwhile then reads as nil).
    @inlinable public var descriptors: [Int32] { held }

    @inlinable
    public subscript(fd: Int32) -> Record? {
        get {
            guard fd >= 0, Int(fd) < slots.count else { return nil }
            return slots[Int(fd)]
        }
        set {
            if newValue == nil {
                _ = remove(fd)
            } else if fd >= 0 {
                reserve(fd)
                let wasStored = slots[Int(fd)] != nil
                slots[Int(fd)] = newValue
                if !wasStored { noteStored(fd) }
            }
        }
        _modify {
            guard fd >= 0 else {
                var nothing: Record? = nil
                yield &nothing
                return
            }
            reserve(fd)
            let wasStored = slots[Int(fd)] != nil
            yield &slots[Int(fd)]
            let isStored = slots[Int(fd)] != nil
            if isStored != wasStored {
                if isStored { noteStored(fd) } else { noteRemoved(fd) }
            }
        }
    }

    /// Removes and returns `fd`'s record.
    @inlinable @discardableResult
    public mutating func remove(_ fd: Int32) -> Record? {
        guard fd >= 0, Int(fd) < slots.count, let record = slots[Int(fd)] else { return nil }
        slots[Int(fd)] = nil
        noteRemoved(fd)
        return record
    }

    /// Whether any stored record satisfies `predicate` (read in place).
    @inlinable
    public func contains(where predicate: (Record) throws -> Bool) rethrows -> Bool {
        for fd in held {
            if let record = slots[Int(fd)], try predicate(record) { return true }
        }
        return false
    }

    @inlinable mutating func reserve(_ fd: Int32) {
        let needed = Int(fd) + 1
        guard needed > slots.count else { return }
        // Doubling: a multiplexer's descriptors climb one by one as it starts holding more.
        let size = max(needed, slots.count * 2, 64)
        slots.append(contentsOf: repeatElement(nil, count: size - slots.count))
        positions.append(contentsOf: repeatElement(-1, count: size - positions.count))
    }

    @inlinable mutating func noteStored(_ fd: Int32) {
        positions[Int(fd)] = Int32(held.count)
        held.append(fd)
    }

    @inlinable mutating func noteRemoved(_ fd: Int32) {
        let position = Int(positions[Int(fd)])
        positions[Int(fd)] = -1
        guard held.indices.contains(position) else { return }
        let last = held.removeLast()
        if position < held.count {
            held[position] = last
            positions[Int(last)] = Int32(position)
        }
    }
}
