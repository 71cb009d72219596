// A worker waiting on its client: as long as httpd's timeouts allow while its environment has
// nobody else waiting; under pressure, only ReaderShedTimeout (ReaderShedding), after which
// the connection is given up (httpd answers 408 where a head was being read; a TLS handshake
// or a body read simply fails and the connection closes) and the worker takes a waiting one.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// How often a worker past its bound looks whether its environment is pressed.
let pressureLookMilliseconds: Int64 = 100

@_cdecl("peruser_worker_await_client")
public func peruserWorkerAwaitClient(_ fd: Int32, _ timeoutMicroseconds: Int64, _ waited: UnsafeMutablePointer<Int64>?,
                                     _ received: UInt64) -> Int32 {
    let bound = Int64(configuration.limits.readerShedSeconds) * 1000
    let start = monotonicMilliseconds()
    let deadline = timeoutMicroseconds < 0 ? Int64.max
        : start.saturatingAdding((timeoutMicroseconds + 999) / 1000)
    let before = max(0, waited?.pointee ?? 0)
    var now = start
    // Shown on the status page as reading (per environment) while it lasts.
    let page = ownPage.flatMap { page in sharedTable.map { $0.field(page: page, ChildTableLayout.awaitingOffset) } }
    page?.storeBytes(of: max(1, start), as: Int64.self)
    defer {
        page?.storeBytes(of: 0, as: Int64.self)
        waited?.pointee = before.saturatingAdding(now - start)
    }
    while true {
        let left = deadline - now
        guard left > 0 else { return 1 }
        let soFar = before.saturatingAdding(now - start)
        // Until the bound, one wait; past it, short ones with a look at the pressure between.
        let slice = bound == 0 ? left : min(left, soFar <= bound ? bound - soFar + 1 : pressureLookMilliseconds)
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&entry, 1, Int32(clamping: slice))
        now = monotonicMilliseconds()
        if ready > 0 { return 0 }
        if ready < 0 && errno != EINTR { return 0 }  // let the read report what is wrong
        guard let table = sharedTable else { continue }
        let pressed = ReaderShedding.pressed(pressedAt: table.pressedAt(workerEnvironment), now: now)
        let total = before.saturatingAdding(now - start)
        if ReaderShedding.shouldShed(waited: total, received: received, bound: bound, pressed: pressed) {
            if let field = table.environmentPageField(workerEnvironment, ChildTableLayout.shedOffset) {
                peruser_atomic_add_u64(field, 1)
            }
            log(PERUSER_LOG_INFO, "peruser: gave up a connection from \(peer(fd)): waited \(total) ms on it in this "
                + "request (\(received) bytes received) while connections wait for this environment (ReaderShedTimeout)")
            return 2
        }
    }
}

private func peer(_ fd: Int32) -> String {
    socketAddress(fd, peer: true).map { ClientAddress($0).description } ?? "a client that went away"
}
