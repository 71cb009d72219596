// A worker's word on its hand-back channel that it came free while its environment's
// connections waited in a multiplexer: four bytes, no descriptor.
//
// A multiplexer passes a waiting connection at its next turn, and no worker wakes it: with
// nothing else to do it looked again after 2 ms. One busy tenant at its MaxProcessors left its
// workers idle between connections (8 % of the CPU on close, 32 clients and 10 workers), against
// 1 % where every client had a worker. The signal only wakes one multiplexer (the channel is
// watched with EPOLLEXCLUSIVE) for a turn; it carries nothing else, and anything that is not
// exactly it is an invalid hand-back, as before. A worker can send it at will: what it costs a
// multiplexer is a turn, as any message on the channel did.

public enum FreeSignal {
    /// "PRUF", little endian.
    public static let value: UInt32 = 0x4655_5250
    public static let size = 4

    /// Whether a message without a descriptor is the signal.
    public static func matches(_ message: UnsafeRawBufferPointer) -> Bool {
        message.count == size && message.loadUnaligned(as: UInt32.self) == value.littleEndian
    }

    /// Whether a worker that just came free should send it: a multiplexer's count of the
    /// connections waiting for its environment (a hint, written by whichever multiplexer changed
    /// its own last) says some wait.
    public static func worthSending(waitingInMultiplexers: Int) -> Bool {
        waitingInMultiplexers > 0
    }
}
