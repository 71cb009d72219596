// A SOCK_SEQPACKET channel that carries one descriptor with each message (SCM_RIGHTS). Every
// hand-off, hand-back and renewed channel travels this way.
import CPeruserShim
import Glibc

struct Channel {
    let fd: Int32

    enum SendOutcome: Equatable {
        case sent
        /// The channel is full (never blocks): try again later.
        case full
        case failed(Errno)
    }

    enum ReceiveOutcome: Equatable {
        /// A message of `length` bytes with exactly one descriptor, now this process's.
        case message(length: Int, fd: Int32)
        /// Nothing queued (a non-blocking receive).
        case nothing
        /// No bytes and no descriptor: every sender is gone, or one sent an empty message
        /// (the caller tells them apart; see receiveSideShutDown).
        case empty
        /// Truncated, or not exactly one descriptor: whatever came with it is closed.
        case invalid
        case interrupted
        case failed(Errno)
    }

    /// Two connected ends, closed on exec.
    static func pair() throws(Errno) -> (FileDescriptor, FileDescriptor) {
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            throw .current
        }
        return (FileDescriptor(raw: ends[0]), FileDescriptor(raw: ends[1]))
    }

    /// A one-way channel: the receiving end can never send, so neither side can write where
    /// the other only reads.
    static func oneWay() throws(Errno) -> (send: FileDescriptor, receive: FileDescriptor) {
        let (send, receive) = try pair()
        shutdown(receive.raw, Int32(SHUT_WR))
        return (send, receive)
    }

    /// Sends `payload` with `descriptor`, never blocking. A seqpacket send is all or nothing.
    func send(fd descriptor: Int32, payload: UnsafeRawBufferPointer) -> SendOutcome {
        let space = peruser_cmsg_space(MemoryLayout<Int32>.size)
        // On the stack: this runs for every hand-off and hand-back.
        return withUnsafeTemporaryAllocation(byteCount: space, alignment: 8) { control -> SendOutcome in
            control.initializeMemory(as: UInt8.self, repeating: 0)
            var io = iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress), iov_len: payload.count)
            return withUnsafeMutablePointer(to: &io) { ioPointer -> SendOutcome in
                var header = msghdr()
                header.msg_iov = ioPointer
                header.msg_iovlen = 1
                header.msg_control = control.baseAddress
                header.msg_controllen = space
                guard let message = peruser_cmsg_first(&header) else { return .failed(Errno(EINVAL)) }
                message.pointee.cmsg_level = SOL_SOCKET
                message.pointee.cmsg_type = Int32(SCM_RIGHTS)
                message.pointee.cmsg_len = peruser_cmsg_len(MemoryLayout<Int32>.size)
                UnsafeMutableRawPointer(peruser_cmsg_data(message)).storeBytes(of: descriptor, as: Int32.self)
                do throws(Errno) {
                    let sent = try retryingInterrupts { sendmsg(fd, &header, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
                    return sent == payload.count ? .sent : .failed(Errno(EMSGSIZE))
                } catch {
                    return error.isWouldBlock ? .full : .failed(error)
                }
            }
        }
    }

    /// Sends `payload` alone, never blocking.
    func send(payload: UnsafeRawBufferPointer) -> SendOutcome {
        do throws(Errno) {
            let sent = try retryingInterrupts { Glibc.send(fd, payload.baseAddress, payload.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            return sent == payload.count ? .sent : .failed(Errno(EMSGSIZE))
        } catch {
            return error.isWouldBlock ? .full : .failed(error)
        }
    }

    /// Receives one message into `buffer`. Descriptors arrive close-on-exec; room is made for
    /// more than one, so that extras are received and closed rather than left in flight.
    /// With `descriptorOptional`, a message without one comes as `.message(length, fd: -1)`.
    func receive(into buffer: UnsafeMutableRawBufferPointer, blocking: Bool,
                 descriptorOptional: Bool = false) -> ReceiveOutcome {
        let space = peruser_cmsg_space(MemoryLayout<Int32>.size * 8)
        return withUnsafeTemporaryAllocation(byteCount: space, alignment: 8) { control -> ReceiveOutcome in
            var io = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
            return withUnsafeMutablePointer(to: &io) { ioPointer -> ReceiveOutcome in
                var header = msghdr()
                header.msg_iov = ioPointer
                header.msg_iovlen = 1
                header.msg_control = control.baseAddress
                header.msg_controllen = space
                let length = recvmsg(fd, &header, Int32(MSG_CMSG_CLOEXEC) | (blocking ? 0 : Int32(MSG_DONTWAIT)))
                if length < 0 {
                    let failure = Errno.current
                    if failure == .interrupted { return .interrupted }
                    return failure.isWouldBlock ? .nothing : .failed(failure)
                }
                if length == 0 && header.msg_controllen == 0 { return .empty }
                // The first descriptor is kept; any other is closed at once (no array per message:
                // this runs for every hand-off and hand-back).
                var first: Int32 = -1, count = 0
                var foreign = false
                var message = peruser_cmsg_first(&header)
                while let current = message {
                    let dataLength = Int(current.pointee.cmsg_len) - peruser_cmsg_len(0)
                    if current.pointee.cmsg_level == SOL_SOCKET && current.pointee.cmsg_type == Int32(SCM_RIGHTS),
                       dataLength >= 0, let data = peruser_cmsg_data(current) {
                        for index in 0..<(dataLength / MemoryLayout<Int32>.size) {
                            let descriptor = UnsafeRawPointer(data).loadUnaligned(
                                fromByteOffset: index * MemoryLayout<Int32>.size, as: Int32.self)
                            if count == 0 { first = descriptor } else { close(descriptor) }
                            count += 1
                        }
                    } else {
                        foreign = true
                    }
                    message = peruser_cmsg_next(&header, current)
                }
                let truncated = header.msg_flags & Int32(MSG_CTRUNC | MSG_TRUNC) != 0
                guard !foreign, !truncated, length > 0, count == 1 || (descriptorOptional && count == 0) else {
                    if first >= 0 { close(first) }
                    return .invalid
                }
                return .message(length: length, fd: first)
            }
        }
    }
}
