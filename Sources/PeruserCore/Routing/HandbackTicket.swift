// A hand-back ticket: proof that a connection coming back on an environment's hand-back
// channel is one the multiplexers handed to that environment.
//
// When a multiplexer passes a connection to environment E of generation G, the message carries
// SipHash-2-4(key, cookie ‖ G ‖ E), where cookie is the kernel's socket cookie (SO_COOKIE,
// unique per socket for the boot) and the key is a random secret that only the multiplexers
// map (workers unmap it before they drop privileges; the parent never copies it out of that
// mapping). The worker keeps the ticket and returns it with a hand-back. A compromised worker
// therefore cannot hand back an outbound socket, a socket it accepted itself, or any connection
// that was not given to its own environment: it cannot compute a ticket for it.

public struct HandbackKey: Equatable {
    public var k0: UInt64
    public var k1: UInt64

    public init(k0: UInt64, k1: UInt64) {
        self.k0 = k0
        self.k1 = k1
    }

    /// The key stored little-endian in 16 bytes (the multiplexers' shared secret page).
    public init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= 16 else { return nil }
        k0 = UInt64(littleEndianBytes: bytes, at: 0)
        k1 = UInt64(littleEndianBytes: bytes, at: 8)
    }

    /// The ticket of socket `cookie` handed to environment `environment` of `generation`, for
    /// `client` (MaxClientShare's: a worker must give back the client it was given, so a PROXY
    /// header's client survives a hand-back and no worker can name another).
    public func ticket(cookie: UInt64, generation: UInt32, environment: Int, client: ClientAddress = .none) -> UInt64 {
        SipHash24.hash(key: self, words: cookie, UInt64(generation) << 32 | UInt64(UInt32(truncatingIfNeeded: environment)),
                       client.high, client.low)
    }

    /// Whether `ticket` is the one for that socket, channel and client (no early exit on a mismatch).
    public func accepts(_ ticket: UInt64, cookie: UInt64, generation: UInt32, environment: Int,
                        client: ClientAddress = .none) -> Bool {
        ticket ^ self.ticket(cookie: cookie, generation: generation, environment: environment, client: client) == 0
    }
}

/// SipHash-2-4 (Aumasson and Bernstein, 2012): a keyed hash for short inputs.
public enum SipHash24 {
    /// The hash of `bytes` under `key`.
    public static func hash(key: HandbackKey, bytes: UnsafeRawBufferPointer) -> UInt64 {
        var state = State(key: key)
        let whole = bytes.count / 8
        for i in 0..<whole { state.compress(UInt64(littleEndianBytes: bytes, at: i * 8)) }
        var last = UInt64(truncatingIfNeeded: bytes.count) << 56
        for i in 0..<(bytes.count % 8) { last |= UInt64(bytes[whole * 8 + i]) << (8 * UInt64(i)) }
        state.compress(last)
        return state.finish()
    }

    /// The hash of four 64-bit words as 32 little-endian bytes, without a buffer.
    public static func hash(key: HandbackKey, words first: UInt64, _ second: UInt64, _ third: UInt64,
                            _ fourth: UInt64) -> UInt64 {
        var state = State(key: key)
        state.compress(first)
        state.compress(second)
        state.compress(third)
        state.compress(fourth)
        state.compress(32 << 56)
        return state.finish()
    }

    /// The hash of two 64-bit words as 16 little-endian bytes, without a buffer.
    public static func hash(key: HandbackKey, words first: UInt64, _ second: UInt64) -> UInt64 {
        var state = State(key: key)
        state.compress(first)
        state.compress(second)
        state.compress(16 << 56)
        return state.finish()
    }

    private struct State {
        var v0: UInt64, v1: UInt64, v2: UInt64, v3: UInt64

        init(key: HandbackKey) {
            v0 = key.k0 ^ 0x736f_6d65_7073_6575
            v1 = key.k1 ^ 0x646f_7261_6e64_6f6d
            v2 = key.k0 ^ 0x6c79_6765_6e65_7261
            v3 = key.k1 ^ 0x7465_6462_7974_6573
        }

        mutating func round() {
            v0 = v0 &+ v1; v1 = v1.rotatedLeft(13); v1 ^= v0; v0 = v0.rotatedLeft(32)
            v2 = v2 &+ v3; v3 = v3.rotatedLeft(16); v3 ^= v2
            v0 = v0 &+ v3; v3 = v3.rotatedLeft(21); v3 ^= v0
            v2 = v2 &+ v1; v1 = v1.rotatedLeft(17); v1 ^= v2; v2 = v2.rotatedLeft(32)
        }

        mutating func compress(_ m: UInt64) {
            v3 ^= m
            round()
            round()
            v0 ^= m
        }

        mutating func finish() -> UInt64 {
            v2 ^= 0xff
            round(); round(); round(); round()
            return v0 ^ v1 ^ v2 ^ v3
        }
    }
}

extension FixedWidthInteger {
    init(littleEndianBytes bytes: UnsafeRawBufferPointer, at offset: Int) {
        var value: Self = 0
        for i in 0..<(Self.bitWidth / 8) { value |= Self(truncatingIfNeeded: bytes[offset + i]) << (8 * i) }
        self = value
    }
}

extension UInt64 {
    func rotatedLeft(_ count: UInt64) -> UInt64 { self << count | self >> (64 - count) }
}
