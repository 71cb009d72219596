// The control channel between the root parent and a process image (16-byte messages; the
// channel ends travel with theirs as SCM_RIGHTS). The root asks, the image answers; an image
// is root too, but each side still checks what it reads.

public enum ImageMessage: Equatable {
    /// Root to image: the environment's current hand-off receiving end (with the descriptor).
    case handoffEnd
    /// Root to image: the environment's current hand-back sending end (with the descriptor).
    case handbackEnd
    /// Root to image: fork a worker into `slot`, whose status page is worker page `page`.
    case spawn(slot: Int, page: Int)
    /// Image to root: configured, and ready to fork.
    case ready
    /// Image to root: the worker of `slot` runs as `pid` (now the root's child).
    case spawned(slot: Int, pid: Int32)
    /// Image to root: no worker for `slot` (an errno value, or 0 when the image lacks its channel).
    case failed(slot: Int, errno: Int32)

    public static let size = 16

    enum Kind: UInt32 {
        case handoffEnd = 1, handbackEnd, spawn, ready = 10, spawned, failed
    }

    public var bytes: [UInt8] {
        let words: [UInt32]
        switch self {
        case .handoffEnd: words = [Kind.handoffEnd.rawValue, 0, 0, 0]
        case .handbackEnd: words = [Kind.handbackEnd.rawValue, 0, 0, 0]
        case .spawn(let slot, let page): words = [Kind.spawn.rawValue, UInt32(truncatingIfNeeded: slot),
                                                  UInt32(truncatingIfNeeded: page), 0]
        case .ready: words = [Kind.ready.rawValue, 0, 0, 0]
        case .spawned(let slot, let pid): words = [Kind.spawned.rawValue, UInt32(truncatingIfNeeded: slot),
                                                   UInt32(bitPattern: pid), 0]
        case .failed(let slot, let errno): words = [Kind.failed.rawValue, UInt32(truncatingIfNeeded: slot),
                                                    UInt32(bitPattern: errno), 0]
        }
        var out: [UInt8] = []
        out.reserveCapacity(Self.size)
        for word in words { withUnsafeBytes(of: word.littleEndian) { out.append(contentsOf: $0) } }
        return out
    }

    /// Decodes a message; nil for anything that is not exactly one valid message. Slots and
    /// pages are bounded by `slots` and `pages`.
    public static func decode(_ bytes: UnsafeRawBufferPointer, slots: Int, pages: Int) -> ImageMessage? {
        guard bytes.count == size else { return nil }
        func word(_ index: Int) -> UInt32 { UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self)) }
        guard let kind = Kind(rawValue: word(0)) else { return nil }
        let slot = Int(word(1)), second = word(2)
        switch kind {
        case .handoffEnd: return .handoffEnd
        case .handbackEnd: return .handbackEnd
        case .ready: return .ready
        case .spawn:
            guard slot < slots, Int(second) < pages else { return nil }
            return .spawn(slot: slot, page: Int(second))
        case .spawned:
            let pid = Int32(bitPattern: second)
            guard slot < slots, pid > 1 else { return nil }
            return .spawned(slot: slot, pid: pid)
        case .failed:
            guard slot < slots else { return nil }
            return .failed(slot: slot, errno: Int32(bitPattern: second))
        }
    }
}
