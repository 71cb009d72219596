// Ends a worker's idle HTTP/2 session while connections wait for its environment.
//
// An idle session of mod_http2 (2.0.x) waits in its own pollset for the client, for up to
// KeepAliveTimeout, and asks nothing of the MPM meanwhile; a signal does not end that wait (it
// retries on EINTR). So once a worker's connection speaks HTTP/2, a thread of this worker looks
// every 100 ms; when the session has no stream running and connections wait for the environment
// (IdleSessionYield: held by the multiplexers, or queued and still there a look later), it shuts
// the read side of the connection: mod_http2 reads the end of its
// input, sends GOAWAY and closes, and the worker takes the next connection. The thread starts
// only in a worker that has served HTTP/2 (mod_http2 runs threads of its own there anyway).
import CPeruserShim
import Glibc
import PeruserCore

enum IdleSessionWatch {
    private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
        return lock
    }()
    /// The connection being served, while it is (under `lock`), and whether it was ended.
    nonisolated(unsafe) private static var fd: Int32 = -1
    nonisolated(unsafe) private static var ended = false
    nonisolated(unsafe) private static var started = false
    static let lookMilliseconds: Int32 = 100

    /// serve(): the connection `fd` is this worker's until `served()`.
    static func serving(_ fd: Int32) {
        pthread_mutex_lock(lock)
        self.fd = fd
        ended = false
        pthread_mutex_unlock(lock)
    }

    /// Before the connection's descriptor is closed: the watch never touches a later one.
    static func served() {
        pthread_mutex_lock(lock)
        fd = -1
        pthread_mutex_unlock(lock)
    }

    /// The connection being served speaks HTTP/2: start watching (once per worker).
    static func start() {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard !started else { return }
        var thread = pthread_t()
        if pthread_create(&thread, nil, { _ in IdleSessionWatch.watch() }, nil) == 0 {
            started = true
            pthread_detach(thread)
        } else {
            log(PERUSER_LOG_WARNING, "peruser: worker could not start its HTTP/2 idle watch (\(Errno.current)); an idle "
                + "HTTP/2 connection holds it until KeepAliveTimeout")
        }
    }

    nonisolated(unsafe) private static var yield = IdleSessionYield()

    private static func yieldsNow() -> Bool {
        guard workerEnvironment >= 0, let table = sharedTable else { return false }
        let flow = table.flow(workerEnvironment)
        return yield.look(idle: peruser_shim_http2_streams() == 0, handedOff: flow.handedOff, received: flow.received,
                          waitingInMultiplexers: table.waitingInMultiplexers(workerEnvironment))
    }

    private static func watch() -> UnsafeMutableRawPointer? {
        var random = SystemRandomNumberGenerator()
        while true {
            // Looks spread over 75-125 ms: of a tenant's idle sessions, the first to look frees
            // a worker for a waiting connection, and the others usually see it gone.
            poll(nil, 0, lookMilliseconds * 3 / 4 + Int32.random(in: 0...(lookMilliseconds / 2), using: &random))
            pthread_mutex_lock(lock)
            if fd >= 0 && !ended && yieldsNow() {
                ended = true
                shutdown(fd, Int32(SHUT_RD))
                log(PERUSER_LOG_INFO, "peruser: ended an idle HTTP/2 connection: connections wait for this environment")
            }
            pthread_mutex_unlock(lock)
        }
    }
}
