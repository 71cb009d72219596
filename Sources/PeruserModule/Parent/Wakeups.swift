// What wakes the parent between its maintenance rounds: a multiplexer's demand, an image that
// speaks (ready) or hangs up, SIGCHLD (it interrupts the wait), or the round's timeout. Each is
// registered once in this generation's epoll: a round that polled every image control cost, with
// 300 tenants and a queue watched every 10 ms, about 2 % of the box's CPU.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// What a wake-up's tag names.
enum Wakeup: Equatable {
    case demand
    case image(ImageRole)

    var tag: UInt64 {
        switch self {
        case .demand: return .max
        case .image(.multiplexers): return .max - 1
        case .image(.environment(let index)): return UInt64(max(index, 0))
        }
    }

    init(tag: UInt64) {
        switch tag {
        case .max: self = .demand
        case .max - 1: self = .image(.multiplexers)
        default: self = .image(.environment(Int(clamping: tag)))
        }
    }
}

/// This generation's epoll; nil before its first use, and when it could not be made (then
/// `wakeupsFailed`, and every round looks at every image, as before).
nonisolated(unsafe) private var wakeups: Epoll?
nonisolated(unsafe) private var wakeupsFailed = false

/// The epoll, made at first use with the demand pipe in it.
private func generationWakeups() -> Epoll? {
    if let wakeups { return wakeups }
    guard !wakeupsFailed else { return nil }
    do throws(Errno) {
        let made = try Epoll()
        if let demand = lasting?.pointee.demand.0, demand >= 0 { try made.watch(demand, tag: Wakeup.demand.tag) }
        wakeups = made
        return made
    } catch {
        wakeupsFailed = true
        log(PERUSER_LOG_ERR, "peruser: cannot make the parent's epoll (\(error)); it looks at every image each round")
        return nil
    }
}

/// An image's control channel, from its start until `forgetImageControl`.
func watchImageControl(_ fd: Int32, of role: ImageRole) {
    guard let epoll = generationWakeups() else { return }
    do throws(Errno) {
        try epoll.watch(fd, tag: Wakeup.image(role).tag)
    } catch {
        // Its readiness would then be seen only when the parent asks it for a child.
        wakeupsFailed = true
        log(PERUSER_LOG_ERR, "peruser: cannot watch the control channel of \(role)'s image (\(error)); "
            + "the parent looks at every image each round")
    }
}

/// Before an image's control channel is closed.
func forgetImageControl(_ fd: Int32) {
    wakeups?.forget(fd)
}

/// The generation ends (its images' controls are closed already).
func closeWakeups() {
    wakeups?.close()
    wakeups = nil
    wakeupsFailed = false
}

/// In a worker forked from the root: the epoll is the root's own (a copy of its descriptor
/// could take the root's registrations away), closed without touching what it watches.
func dropInheritedWakeups() {
    wakeups?.close()
    wakeups = nil
}

/// Waits for a demand, an image, a child's exit, a signal, or the timeout. The images that
/// spoke or hung up; nil when the parent has no epoll and must look at every image.
@discardableResult
func waitForWork(_ timeout: Int32) -> [ImageRole]? {
    guard let epoll = generationWakeups(), !wakeupsFailed else {
        var entries = [pollfd(fd: lasting?.pointee.demand.0 ?? -1, events: Int16(POLLIN), revents: 0)]
        _ = poll(&entries, 1, timeout)
        return nil
    }
    let ready: [UInt64]
    do {
        ready = try epoll.wait(milliseconds: timeout)
    } catch {
        log(PERUSER_LOG_ERR, "peruser: epoll_wait failed in the parent: \(error)")
        _ = poll(nil, 0, timeout)  // no busy loop
        return nil
    }
    return ready.compactMap { tag in
        if case .image(let role) = Wakeup(tag: tag) { return role }
        return nil
    }
}
