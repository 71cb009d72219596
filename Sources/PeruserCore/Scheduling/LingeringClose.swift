/// httpd's lingering close (after the response, read and drop what the client still sends until
/// it closes, nothing comes for 2 s, or 30 s have passed), and who does the waiting.
///
/// A worker waits there itself while nothing waits for its environment: the client's FIN is
/// usually one round trip away, and passing the connection to the multiplexers costs two
/// descriptor passes and a multiplexer wake-up, a third of the work of a small request.
/// As soon as a connection waits for the environment (in its channel, or held by the
/// multiplexers), the waiting moves to the multiplexers' event loop and the worker is free.
public struct LingeringClose: Equatable {
    /// httpd's bounds (MAX_SECS_TO_LINGER, SECONDS_TO_LINGER).
    public static let idleMilliseconds: Int64 = 2000
    public static let mostMilliseconds: Int64 = 30_000
    /// How often a worker that waits looks whether its environment now needs it: connections
    /// the multiplexers hold wake nothing in the worker.
    public static let lookMilliseconds: Int64 = 10

    public enum Step: Equatable {
        /// Give the connection to the multiplexers (the environment needs this worker).
        case pass
        /// Poll the client (and the channel) for at most this long, then ask again.
        case wait(milliseconds: Int32)
        /// Done: close the connection.
        case finish
    }

    public let started: Int64
    public private(set) var lastRead: Int64
    /// A pass failed (the hand-back channel was full): the worker finishes the wait itself.
    public private(set) var passRefused = false

    public init(now: Int64) {
        started = now
        lastRead = now
    }

    /// What to do next. `queued` and `waitingInMultiplexers` come from the shared table (any
    /// value clamps: a lie costs only this worker's own environment a pass it did not need),
    /// `channelReadable` from the last poll.
    public func next(now: Int64, queued: Int, waitingInMultiplexers: Int, channelReadable: Bool) -> Step {
        let left = millisecondsLeft(now: now)
        if left <= 0 { return .finish }
        if !passRefused && (queued > 0 || waitingInMultiplexers > 0 || channelReadable) { return .pass }
        return .wait(milliseconds: Int32(max(1, min(left, Self.lookMilliseconds))))
    }

    /// Until the first of httpd's bounds (quiet, or in all) is reached; 0 or less: it is.
    public func millisecondsLeft(now: Int64) -> Int64 {
        let since = elapsedMilliseconds(since: started, now: now)
        let quiet = elapsedMilliseconds(since: lastRead, now: now)
        return min(Self.idleMilliseconds - quiet, Self.mostMilliseconds - since)
    }

    /// The client sent something (dropped): the idle bound starts again.
    public mutating func read(now: Int64) { lastRead = max(lastRead, now) }

    public mutating func passFailed() { passRefused = true }
}
