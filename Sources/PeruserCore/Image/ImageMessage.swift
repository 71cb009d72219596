// The control channel between the root parent and a process image (16-byte messages; the
// channel ends travel with theirs as SCM_RIGHTS). The root asks, the image answers; an image
// is root too, but each side still checks what it reads.

public enum ImageMessage: Equatable {
    /// Root to image: an environment's current hand-off end (with the descriptor): the
    /// receiving end for its own image, the sending end for the multiplexers'.
    case handoffEnd(environment: Int)
    /// Root to image: an environment's current hand-back end (sending for its own image,
    /// receiving for the multiplexers').
    case handbackEnd(environment: Int)
    /// Root to the multiplexers' image: the previous generation's hand-back receiving end of an
    /// environment (the next generation's multiplexers still read it).
    case previousHandback(environment: Int)
    /// Root to image: fork a child into `slot`, whose status page is worker page `page` (a
    /// worker), or with its control channel as the descriptor (a multiplexer).
    case spawn(slot: Int, page: Int)
    /// Image to root: configured, and ready to fork.
    case ready
    /// Image to root: the worker of `slot` runs as `pid` (now the root's child).
    case spawned(slot: Int, pid: Int32)
    /// Image to root: no worker for `slot` (an errno value, or 0 when the image lacks its channel).
    case failed(slot: Int, errno: Int32)

    public static let size = 16

    enum Kind: UInt32 {
        case handoffEnd = 1, handbackEnd, spawn, previousHandback, ready = 10, spawned, failed
    }

    public var bytes: [UInt8] {
        let words: [UInt32]
        switch self {
        case .handoffEnd(let environment): words = [Kind.handoffEnd.rawValue, UInt32(truncatingIfNeeded: environment), 0, 0]
        case .handbackEnd(let environment): words = [Kind.handbackEnd.rawValue, UInt32(truncatingIfNeeded: environment), 0, 0]
        case .previousHandback(let environment):
            words = [Kind.previousHandback.rawValue, UInt32(truncatingIfNeeded: environment), 0, 0]
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

    /// Decodes a message; nil for anything that is not exactly one valid message. Slots, pages
    /// and environments are bounded by `slots`, `pages` and `environments`.
    public static func decode(_ bytes: UnsafeRawBufferPointer, slots: Int, pages: Int,
                              environments: Int = Int(Int32.max)) -> ImageMessage? {
        guard bytes.count == size else { return nil }
        func word(_ index: Int) -> UInt32 { UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self)) }
        guard let kind = Kind(rawValue: word(0)) else { return nil }
        let slot = Int(word(1)), second = word(2)
        switch kind {
        case .handoffEnd: return slot < environments ? .handoffEnd(environment: slot) : nil
        case .handbackEnd: return slot < environments ? .handbackEnd(environment: slot) : nil
        case .previousHandback: return slot < environments ? .previousHandback(environment: slot) : nil
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
