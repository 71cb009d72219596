// After a response on a kept-alive connection, no worker waits on a client for its next head:
// it looks for a moment, and unless the head comes whole, the connection goes back to the
// multiplexers (CShim/connection.c hands it back), which hold it at no cost to any worker.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// How long a worker looks for the next head: a client with its next request ready sends it
/// within a round trip, and a pipelined one is already there.
let nextHeadGraceMilliseconds: Int64 = 50
/// A head this long is httpd's to answer (431 or 414), wherever it is served.
let nextHeadScanLimit = 64 * 1024

/// Whether the head of the request being read (request_rec `request`, just created) comes whole
/// within the grace period, or the client closed or failed (httpd's to see). Reads ahead without
/// consuming (AP_MODE_SPECULATIVE), so on "no" nothing is lost.
@_cdecl("peruser_next_head_arrives")
public func peruserNextHeadArrives(_ request: UnsafeMutableRawPointer?) -> Int32 {
    // Lent: the multiplexer watches the socket itself and routes the next head, wherever it goes.
    if servedConnection?.lent == true { return 0 }
    guard let r = request?.assumingMemoryBound(to: request_rec.self), let c = r.pointee.connection,
          let pool = r.pointee.pool, let fd = servedConnection?.fd,
          let brigade = apr_brigade_create(pool, c.pointee.bucket_alloc) else { return 1 }
    defer { apr_brigade_destroy(brigade) }
    // A crossing connection (its last request was another environment's) is only served here
    // if its next head is already whole: else it goes back at once, and the multiplexers wait.
    let grace = servedConnection?.crossing == true ? 0 : nextHeadGraceMilliseconds
    let deadline = monotonicMilliseconds() + grace
    while true {
        guard ap_get_brigade(c.pointee.input_filters, brigade, AP_MODE_SPECULATIVE, APR_NONBLOCK_READ,
                             apr_off_t(nextHeadScanLimit)) == APR_SUCCESS else { return 1 }
        var data: UnsafeMutablePointer<CChar>?
        var length: apr_size_t = 0
        let flattened = apr_brigade_pflatten(brigade, &data, &length, pool)
        apr_brigade_cleanup(brigade)
        if flattened == APR_SUCCESS, let data, length > 0 {
            // Whole, or not a request httpd will wait for (malformed, too long): httpd's to answer.
            // The same scanner the multiplexers route with: blank lines first, HTTP/0.9, bare LF.
            if length >= nextHeadScanLimit { return 1 }
            if case .needMore = RequestHead.scan(UnsafeRawBufferPointer(start: data, count: length)) {} else { return 1 }
        }
        let left = deadline - monotonicMilliseconds()
        guard left > 0 else { return 0 }
        // POLLRDHUP (0x2000 on Linux; not in Swift's Glibc module): the client closed.
        var entry = pollfd(fd: fd, events: Int16(POLLIN) | 0x2000, revents: 0)
        if poll(&entry, 1, Int32(left)) > 0 && entry.revents & (0x2000 | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
            return 1
        }
    }
}

/// Whether the kept-alive HTTP/1.x connection being served has had this worker for its turn
/// while connections wait for the environment in the multiplexers (KeptAliveTurn): then it
/// gives the worker up before its next request.
@_cdecl("peruser_kept_alive_turn_is_over")
public func peruserKeptAliveTurnIsOver() -> Int32 {
    guard let connection = servedConnection, workerEnvironment >= 0, let table = sharedTable else { return 0 }
    return KeptAliveTurn.isOver(takenAt: connection.takenAt, now: monotonicMilliseconds(),
                                waitingInMultiplexers: table.waitingInMultiplexers(workerEnvironment)) ? 1 : 0
}
