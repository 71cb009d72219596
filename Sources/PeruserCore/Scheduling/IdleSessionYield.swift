/// An HTTP/2 connection holds its worker for as long as the client keeps it open, and browsers
/// keep theirs open, idle, between page loads. When connections wait for the worker's
/// environment, a worker whose session has no stream running ends that session (GOAWAY) and
/// takes the next connection, as a kept-alive HTTP/1.1 connection goes back to the multiplexers.
///
/// Waiting means: held by the multiplexers (the environment is at MaxProcessors or the server at
/// MaxClients), or queued in the environment's channel and still there one look later (an idle
/// worker usually takes a queued connection within a millisecond; ending a session for it would
/// only cost the browser a new connection). The counts come from the shared table; a lie there
/// only ends this environment's own idle sessions.
public struct IdleSessionYield: Equatable {
    /// How many connections had been handed off when a queue was first seen.
    private var firstSeen: UInt64?

    public init() {}

    /// The environment is saturated: its waiting connections cannot get a new worker.
    public static func saturated(idle: Bool, waitingInMultiplexers: Int) -> Bool {
        idle && waitingInMultiplexers > 0
    }

    /// One look (every 100 ms): whether the idle session should end now.
    public mutating func look(idle: Bool, handedOff: UInt64, received: UInt64, waitingInMultiplexers: Int) -> Bool {
        guard idle else {
            firstSeen = nil
            return false
        }
        if Self.saturated(idle: idle, waitingInMultiplexers: waitingInMultiplexers) { return true }
        guard EnvironmentCounters.queued(handedOff: handedOff, received: received) > 0 else {
            firstSeen = nil
            return false
        }
        if let first = firstSeen, received < first { return true }  // those seen queued still wait
        firstSeen = handedOff
        return false
    }
}
