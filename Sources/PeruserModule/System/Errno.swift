// An errno value as a Swift error, and the one place where EINTR is retried.
import Glibc

struct Errno: Error, Equatable, CustomStringConvertible {
    let code: Int32

    init(_ code: Int32) { self.code = code }

    /// The calling thread's errno, right after a failed call.
    static var current: Errno { Errno(errno) }

    static let wouldBlock = Errno(EAGAIN)
    static let interrupted = Errno(EINTR)
    static let brokenPipe = Errno(EPIPE)

    var isWouldBlock: Bool { code == EAGAIN || code == EWOULDBLOCK }

    var description: String { String(cString: strerror(code)) }
}

/// Runs a syscall that returns -1 with errno on failure, again while it is interrupted by a
/// signal. Its result, or the errno it failed with.
@discardableResult
func retryingInterrupts<T: BinaryInteger>(_ call: () -> T) throws(Errno) -> T {
    while true {
        let result = call()
        if result >= 0 { return result }
        let failure = Errno.current
        if failure != .interrupted { throw failure }
    }
}

/// Text of an errno value, for log lines.
func errnoText(_ code: Int32 = errno) -> String {
    Errno(code).description
}
