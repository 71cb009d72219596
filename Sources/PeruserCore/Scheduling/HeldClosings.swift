/// The lingering closes a worker keeps while it serves its next connections.
///
/// After a response with its write side shut, httpd's lingering close reads what the client still
/// sends until it closes. On loopback or a LAN that FIN is a round trip away, but waiting for it
/// costs the worker a sleep and a wake-up per connection, and handing the wait to the
/// multiplexers costs two descriptor passes and a multiplexer wake-up. Instead the worker keeps
/// the connection and looks at it without waking for it: before it waits for the next connection,
/// and on a timer while it has nothing else to do. A client's FIN normally arrived by then.
/// httpd's bounds hold per connection (2 s without data, 30 s in all). Every connection kept is
/// one this worker served for its own environment; it can neither write to it nor pass it on.
public struct HeldClosings {
    public struct Closing: Equatable {
        public let fd: Int32
        public let ticket: UInt64
        public let client: ClientAddress
        public private(set) var wait: LingeringClose

        public init(fd: Int32, ticket: UInt64, client: ClientAddress, now: Int64) {
            self.fd = fd
            self.ticket = ticket
            self.client = client
            wait = LingeringClose(now: now)
        }

        mutating func read(now: Int64) { wait.read(now: now) }
    }

    /// At most this many at once: past it the connection's wait goes as before (to the
    /// multiplexers while the environment needs the worker), so a client cannot pile up
    /// descriptors in one worker.
    public static let capacity = 32
    /// How long a worker with nothing else to do sleeps before it looks at what it keeps. A
    /// client's FIN is not worth a wake-up of its own: under a load the worker looks at its
    /// next connection; a look a second lets an idle worker wake about once after its last one
    /// (with 300 tenants, hundreds of workers each woken five times a second by a shorter timer
    /// would cost more than the FINs they look at).
    public static let lookMilliseconds: Int64 = 1000

    public private(set) var closings: [Closing] = []

    public init() {}

    public var isEmpty: Bool { closings.isEmpty }
    public var isFull: Bool { closings.count >= Self.capacity }

    /// Keeps a connection whose response is sent; false when full (the caller does the wait the
    /// old way).
    public mutating func keep(_ closing: Closing) -> Bool {
        guard !isFull, !closings.contains(where: { $0.fd == closing.fd }) else { return false }
        closings.append(closing)
        return true
    }

    /// The client sent something more (read and dropped): its quiet bound starts again.
    public mutating func read(_ fd: Int32, now: Int64) {
        guard let index = closings.firstIndex(where: { $0.fd == fd }) else { return }
        closings[index].read(now: now)
    }

    /// Forgets `fd` (the client closed, or it failed); the caller closes it.
    @discardableResult
    public mutating func release(_ fd: Int32) -> Closing? {
        guard let index = closings.firstIndex(where: { $0.fd == fd }) else { return nil }
        return closings.remove(at: index)
    }

    /// Forgets and returns every connection past httpd's bounds; the caller closes them.
    public mutating func releaseExpired(now: Int64) -> [Closing] {
        // Looked at before every wait: nothing allocated unless something expired.
        guard closings.contains(where: { $0.wait.millisecondsLeft(now: now) <= 0 }) else { return [] }
        let expired = closings.filter { $0.wait.millisecondsLeft(now: now) <= 0 }
        closings.removeAll { $0.wait.millisecondsLeft(now: now) <= 0 }
        return expired
    }

    /// How long a worker with nothing else to do may sleep before it looks again: nil when it
    /// keeps nothing (it may sleep until the next connection).
    public func sleep(now: Int64) -> Int32? {
        guard !closings.isEmpty else { return nil }
        let least = closings.reduce(Self.lookMilliseconds) { min($0, $1.wait.millisecondsLeft(now: now)) }
        return Int32(max(0, least))
    }
}
