/// A kept-alive HTTP/1.1 connection whose client sends each next request at once keeps its
/// worker for as long as it goes on (the worker serves a next head that comes within a moment).
/// With more such clients than the environment may have workers (MaxProcessors, MaxClients),
/// the others waited until one of them happened to pause: seconds under steady load. So while
/// connections wait for the environment in the multiplexers, a connection that has had its
/// worker for a turn gives it up before its next request: a plain one goes back to the
/// multiplexers (and waits behind those that came first), a TLS one, whose session cannot move,
/// is answered with `Connection: close`.
///
/// The waiting count comes from the shared table; a lie there only moves this environment's own
/// connections sooner or later.
public enum KeptAliveTurn {
    /// A turn. Each one ends with a hop (a hand-back and a hand-off); one busy tenant on 32
    /// kept-alive connections with 10 workers (bench/many_tenants.py) lost about 8% of its
    /// throughput with 10 ms turns and little with 25 ms, and its p99 was about 0.2 s with
    /// either, against 0.6-0.8 s without turns (and 2 s timeouts on a slow run).
    public static let milliseconds: Int64 = 25

    /// Whether the connection a worker took at `takenAt` (ms) gives the worker up before its
    /// next request, at `now`.
    public static func isOver(takenAt: Int64, now: Int64, waitingInMultiplexers: Int) -> Bool {
        waitingInMultiplexers > 0 && elapsedMilliseconds(since: takenAt, now: now) >= milliseconds
    }

    /// Whether an HTTP/2 session (`streams` running; negative: the connection does not speak
    /// HTTP/2) is ended (GOAWAY, its streams finished) while connections wait: an idle one at
    /// once (IdleSessionYield), a busy one once its connection had its turn, so that a client
    /// that always keeps a stream running cannot hold the worker either.
    public static func sessionEnds(streams: Int, takenAt: Int64?, now: Int64, waitingInMultiplexers: Int) -> Bool {
        guard streams >= 0 else { return false }
        if streams == 0 { return IdleSessionYield.saturated(idle: true, waitingInMultiplexers: waitingInMultiplexers) }
        guard let takenAt else { return false }
        return isOver(takenAt: takenAt, now: now, waitingInMultiplexers: waitingInMultiplexers)
    }
}
