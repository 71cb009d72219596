// The payload that travels with a connection's fd over a hand-off or hand-back channel.
//
// Layout (little endian): magic "PRU5", hops (UInt16), flags (UInt8: bit 0 crossing, bit 1
// closing), reserved (UInt8, zero),
// length of the consumed bytes (UInt32), the hand-back ticket (UInt64; see HandbackTicket),
// the client the connection counts against (16 bytes, network order; see ClientAddress),
// the lend number (UInt64; 0: not lent; see Multiplexer's "Lent connections"), the
// connection's kept-alive responses so far (UInt32), then exactly that many bytes. The fd
// itself travels in SCM_RIGHTS; the addresses a vhost sees never travel: the receiver reads
// them from the socket.
// Messages come from other processes, some of them run by tenants, so decoding trusts nothing.

public struct HandoffMessage: Equatable {
    /// How many times this connection has been handed back without a request being served.
    /// Bounds routing loops.
    public var hops: UInt16
    /// Bytes of the connection that the sender already read from the socket; the receiver
    /// must see them before anything still in the socket.
    public var consumed: [UInt8]
    /// From a multiplexer: what the worker must return with a hand-back of this connection.
    /// From a worker: the ticket it was given.
    public var ticket: UInt64
    /// From a multiplexer: the client for MaxClientShare (the worker shows it on its page).
    /// From a worker: the one it was given (the ticket covers it, so no worker can name another).
    public var client: ClientAddress
    /// From a multiplexer: the connection's last request was another environment's (a front
    /// proxy's pooled connection, say), so after its response the worker hands it back at once
    /// instead of looking for a next head that most likely is not its own. From a worker: 0.
    public var crossing: Bool
    /// From a worker: the response is sent and the write side shut down; the multiplexer does
    /// the lingering close (LingeringClose: a worker passes it when its environment needs it),
    /// so the worker is free at once. From a multiplexer: 0.
    public var closing: Bool
    /// From a multiplexer: not 0 when the connection is lent (LentConnection): the multiplexer
    /// keeps its own descriptor and watches it, and the worker, once it has answered, gives it
    /// back by writing this number on its page instead of sending the descriptor. From a worker: 0.
    public var lend: UInt64
    /// How many responses kept the connection alive so far, in every worker it went through
    /// (Apache's `keepalives`): MaxKeepAliveRequests counts the connection, not each worker's
    /// part of it. Written by workers too: a lie only moves the close of that one connection.
    public var keepalives: UInt32

    public init(hops: UInt16, consumed: [UInt8], ticket: UInt64 = 0, client: ClientAddress = .none,
                crossing: Bool = false, closing: Bool = false, lend: UInt64 = 0, keepalives: UInt32 = 0) {
        self.lend = lend
        self.keepalives = keepalives
        self.hops = hops
        self.consumed = consumed
        self.ticket = ticket
        self.client = client
        self.crossing = crossing
        self.closing = closing
    }

    static let crossingFlag: UInt8 = 1
    static let closingFlag: UInt8 = 2

    /// "PRU5", little endian: a constant, where an array was a lazily made global (a call to
    /// swift_once and a heap object read on every message, in the multiplexers and in the
    /// workers, whose cold pages it added to each request).
    static let magic: UInt32 = 0x3555_5250
    public static let headerSize = 48
    /// A request head of up to 64 KiB plus what the worker's input filters had buffered past
    /// it (one socket read, at most 8000 bytes in httpd), with margin; one SOCK_SEQPACKET
    /// message this size fits well under the default socket buffer (208 KiB).
    public static let largestConsumed = 96 * 1024
    public static let largestMessage = headerSize + largestConsumed

    public enum DecodeError: Error, Equatable {
        case tooShort(Int)
        case badMagic
        case reservedNotZero
        case lengthMismatch(declared: Int, actual: Int)
        case tooLong(Int)
    }

    public enum EncodeError: Error, Equatable {
        case consumedTooLong(Int)
        case bufferTooSmall(needed: Int)
    }

    /// Encoded size of a message carrying `consumedCount` bytes.
    public static func encodedSize(consumedCount: Int) -> Int { headerSize + consumedCount }

    /// Writes the message into `out`; returns the number of bytes written.
    public static func encode(hops: UInt16, ticket: UInt64 = 0, client: ClientAddress = .none,
                              crossing: Bool = false, closing: Bool = false, lend: UInt64 = 0,
                              keepalives: UInt32 = 0, consumed: UnsafeRawBufferPointer,
                              into out: UnsafeMutableRawBufferPointer) throws(EncodeError) -> Int {
        guard consumed.count <= largestConsumed else { throw .consumedTooLong(consumed.count) }
        let size = encodedSize(consumedCount: consumed.count)
        guard out.count >= size else { throw .bufferTooSmall(needed: size) }
        out.storeBytes(of: magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        out[4] = UInt8(truncatingIfNeeded: hops)
        out[5] = UInt8(truncatingIfNeeded: hops >> 8)
        out[6] = (crossing ? crossingFlag : 0) | (closing ? closingFlag : 0)
        out[7] = 0
        let length = UInt32(consumed.count)
        for i in 0..<4 { out[8 + i] = UInt8(truncatingIfNeeded: length >> (8 * UInt32(i))) }
        for i in 0..<8 { out[12 + i] = UInt8(truncatingIfNeeded: ticket >> (8 * UInt64(i))) }
        for i in 0..<8 {
            out[20 + i] = UInt8(truncatingIfNeeded: client.high >> (56 - 8 * UInt64(i)))
            out[28 + i] = UInt8(truncatingIfNeeded: client.low >> (56 - 8 * UInt64(i)))
        }
        for i in 0..<8 { out[36 + i] = UInt8(truncatingIfNeeded: lend >> (8 * UInt64(i))) }
        for i in 0..<4 { out[44 + i] = UInt8(truncatingIfNeeded: keepalives >> (8 * UInt32(i))) }
        if consumed.count > 0, let base = consumed.baseAddress, let dest = out.baseAddress {
            (dest + headerSize).copyMemory(from: base, byteCount: consumed.count)
        }
        return size
    }

    /// Validates a received message; the consumed bytes are `message[headerSize ..< headerSize+count]`.
    public static func decodeHeader(_ message: UnsafeRawBufferPointer) throws(DecodeError)
        -> (hops: UInt16, consumedCount: Int, ticket: UInt64, client: ClientAddress, crossing: Bool, closing: Bool,
            lend: UInt64, keepalives: UInt32)
    {
        guard message.count >= headerSize else { throw .tooShort(message.count) }
        guard message.count <= largestMessage else { throw .tooLong(message.count) }
        guard message.loadUnaligned(fromByteOffset: 0, as: UInt32.self) == magic.littleEndian else { throw .badMagic }
        guard message[6] & ~(crossingFlag | closingFlag) == 0, message[7] == 0 else { throw .reservedNotZero }
        let hops = UInt16(message[4]) | UInt16(message[5]) << 8
        let length = Int(UInt32(littleEndianBytes: message, at: 8))
        guard length == message.count - headerSize else {
            throw .lengthMismatch(declared: length, actual: message.count - headerSize)
        }
        var high: UInt64 = 0, low: UInt64 = 0
        for i in 0..<8 {
            high = high << 8 | UInt64(message[20 + i])
            low = low << 8 | UInt64(message[28 + i])
        }
        return (hops, length, UInt64(littleEndianBytes: message, at: 12), ClientAddress(high: high, low: low),
                message[6] & crossingFlag != 0, message[6] & closingFlag != 0, UInt64(littleEndianBytes: message, at: 36),
                UInt32(littleEndianBytes: message, at: 44))
    }

    public static func decode(_ message: UnsafeRawBufferPointer) throws(DecodeError) -> HandoffMessage {
        let header = try decodeHeader(message)
        return HandoffMessage(hops: header.hops,
                              consumed: Array(message[headerSize..<(headerSize + header.consumedCount)]),
                              ticket: header.ticket, client: header.client, crossing: header.crossing,
                              closing: header.closing, lend: header.lend, keepalives: header.keepalives)
    }
}
