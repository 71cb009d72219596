// One request at a time in a worker, whatever mod_http2 does with its threads.
//
// mod_http2 serves the streams of one connection on threads of its own inside the worker, at
// once. Debian's mod_php (and mod_perl, mod_python) are not thread-safe: two PHP requests on two
// of those threads corrupt each other's state (any client can do it, with 20 streams). With such
// a module loaded, the request of each HTTP/2 stream takes a turn before anything of it runs
// (Apache's create_request hook) and gives it back when its pool goes (after the log): a worker
// then runs what prefork's child runs, one request at a time, and HTTP/2 stays on.
//
// Turns are given in the order asked (a semaphore let one stream wait past Timeout while others
// kept taking it), and may be given back on another thread than the one that took them (the
// request's pool may go there). Subrequests and internal redirects run inside their main
// request's turn.
import CPeruserShim
import Glibc

final class RequestTurns {
    /// One stream waiting for its turn.
    private final class Waiter {
        var condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        var granted = false

        init(clock attributes: UnsafeMutablePointer<pthread_condattr_t>) {
            pthread_cond_init(condition, attributes)
        }

        deinit {
            pthread_cond_destroy(condition)
            condition.deallocate()
        }
    }

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let conditionAttributes = UnsafeMutablePointer<pthread_condattr_t>.allocate(capacity: 1)
    /// A request holds the turn.
    private var taken = false
    private var waiters: [Waiter] = []

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_condattr_init(conditionAttributes)
        pthread_condattr_setclock(conditionAttributes, CLOCK_MONOTONIC)
    }

    /// Waits at most `milliseconds` for the turn: true once it is the caller's.
    func take(within milliseconds: Int64) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if !taken && waiters.isEmpty {
            taken = true
            return true
        }
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let wait = max(0, milliseconds)
        deadline.tv_sec += Int(wait / 1000)
        deadline.tv_nsec += Int(wait % 1000) * 1_000_000
        if deadline.tv_nsec >= 1_000_000_000 {
            deadline.tv_sec += 1
            deadline.tv_nsec -= 1_000_000_000
        }
        let waiter = Waiter(clock: conditionAttributes)
        waiters.append(waiter)
        while !waiter.granted {
            if pthread_cond_timedwait(waiter.condition, mutex, &deadline) == ETIMEDOUT && !waiter.granted {
                waiters.removeAll { $0 === waiter }
                return false
            }
        }
        return true  // handed over by give(): `taken` stayed true
    }

    /// Gives the turn to the stream that asked first, or frees it.
    func give() {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        guard !waiters.isEmpty else {
            taken = false
            return
        }
        let next = waiters.removeFirst()
        next.granted = true
        pthread_cond_signal(next.condition)
    }
}

/// The worker's turns, when requests are serialized (requestsSerializedFor); nil otherwise.
nonisolated(unsafe) var requestTurns: RequestTurns?

/// Before child_init (mod_http2 starts its threads there).
func prepareRequestTurns() {
    guard requestsSerializedFor != nil, requestTurns == nil else { return }
    requestTurns = RequestTurns()
}

/// A request of an HTTP/2 stream is about to be created: waits for the worker's turn, at most
/// `timeoutMilliseconds`. 1: the turn is this request's (peruser_request_turn_ends gives it
/// back); 0: no turn is needed; -1: none came in time (the request is answered 503).
@_cdecl("peruser_request_turn_begins")
public func peruserRequestTurnBegins(_ timeoutMilliseconds: Int64) -> Int32 {
    guard let turns = requestTurns else { return 0 }
    return turns.take(within: timeoutMilliseconds) ? 1 : -1
}

@_cdecl("peruser_request_turn_ends")
public func peruserRequestTurnEnds() {
    requestTurns?.give()
}
