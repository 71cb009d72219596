/// An HTTP/2 connection holds its worker for as long as the client keeps it open, and browsers
/// keep theirs open, idle, between page loads. While connections wait for the worker's
/// environment (in its channel, or held by the multiplexers), a worker whose session has no
/// stream running tells mod_http2 the server is stopping (AP_MPMQ_MPM_STATE, asked at least every
/// 100 ms of an idle session): the session sends GOAWAY and ends, and the worker takes the next
/// connection, as a kept-alive HTTP/1.1 connection goes back to the multiplexers after a moment.
public enum IdleSessionYield {
    /// `idle`: the worker's connection speaks HTTP/2 and no stream of it runs. The counts come
    /// from the shared table; a lie there only ends this environment's own idle sessions.
    public static func endsSession(idle: Bool, queued: Int, waitingInMultiplexers: Int) -> Bool {
        idle && (queued > 0 || waitingInMultiplexers > 0)
    }
}
