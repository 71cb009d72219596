// An epoll instance, close-on-exec: what to watch is registered once, and a wait costs what is
// ready, not what is watched (a poll over hundreds of image controls cost per round).
import CPeruserShim
import Glibc

struct Epoll {
    private(set) var descriptor: FileDescriptor

    init() throws(Errno) {
        let raw = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard raw >= 0 else { throw .current }
        descriptor = FileDescriptor(raw: raw)
    }

    /// Watches `fd` for input; `tag` comes back from `wait` when it has some. `exclusive`
    /// (EPOLLEXCLUSIVE): of several epolls on one file, only one wakes per event.
    func watch(_ fd: Int32, tag: UInt64, exclusive: Bool = false) throws(Errno) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | (exclusive ? EPOLLEXCLUSIVE.rawValue : 0)
        event.data.u64 = tag
        guard epoll_ctl(descriptor.raw, EPOLL_CTL_ADD, fd, &event) == 0 else { throw .current }
    }

    /// Stops watching `fd`; call before closing it, since a copy of it elsewhere (a fork) would
    /// keep its registration alive.
    func forget(_ fd: Int32) {
        _ = epoll_ctl(descriptor.raw, EPOLL_CTL_DEL, fd, nil)
    }

    /// The tags of watched descriptors with input (or hung up) within `milliseconds` (-1: no
    /// limit), at most `capacity`; none on timeout or a signal.
    func wait(milliseconds: Int32, capacity: Int = 32) throws(Errno) -> [UInt64] {
        let outcome: Result<[UInt64], Errno> = withUnsafeTemporaryAllocation(of: epoll_event.self,
                                                                             capacity: capacity) { events in
            let count = epoll_wait(descriptor.raw, events.baseAddress, Int32(events.count), milliseconds)
            if count < 0 {
                let failure = Errno.current
                return failure.code == EINTR ? .success([]) : .failure(failure)
            }
            return .success((0..<Int(count)).map { events[$0].data.u64 })
        }
        return try outcome.get()
    }

    /// Whether any watched descriptor has input (or hung up) within `milliseconds` (-1: no
    /// limit); false on timeout or a signal. Allocates nothing: a worker sleeps on its channel
    /// this way before each connection.
    func waitForAny(milliseconds: Int32) throws(Errno) -> Bool {
        var event = epoll_event()
        let count = epoll_wait(descriptor.raw, &event, 1, milliseconds)
        if count < 0 {
            let failure = Errno.current
            guard failure.code == EINTR else { throw failure }
        }
        return count > 0
    }

    mutating func close() { descriptor.close() }
}
