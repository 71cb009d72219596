// Socket facts the multiplexers and workers check before trusting a descriptor.
import CPeruserShim
import Glibc
import PeruserCore

/// Whether the receiving side of a Unix socket was shut down (a sender's shutdown(SHUT_WR)
/// reaches it as POLLRDHUP; 0x2000 on Linux, not in Swift's Glibc module).
func receiveSideShutDown(_ fd: Int32) -> Bool {
    var entry = pollfd(fd: fd, events: Int16(0x2000), revents: 0)
    return poll(&entry, 1, 0) == 1 && entry.revents & Int16(0x2000) != 0
}

/// The kernel's cookie of a socket (SO_COOKIE, 57 on Linux): unique per socket until reboot.
func socketCookie(_ fd: Int32) -> UInt64? {
    var cookie: UInt64 = 0
    var length = socklen_t(MemoryLayout<UInt64>.size)
    guard getsockopt(fd, SOL_SOCKET, 57, &cookie, &length) == 0, length == 8, cookie != 0 else { return nil }
    return cookie
}

/// Whether `fd` is a stream socket, connected or not (any more).
func isStreamSocket(_ fd: Int32) -> Bool {
    var type: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 && type == Int32(SOCK_STREAM.rawValue)
}

/// Whether `fd` is a connected TCP stream socket (IPv4 or IPv6): a stream socket with an
/// internet peer (none once it is not connected).
func isTCPStream(_ fd: Int32) -> Bool {
    isStreamSocket(fd) && socketAddress(fd, peer: true)?.isInternet == true
}

/// An IPv4 or IPv6 socket address in 32 bytes (a sockaddr_storage takes 128): a multiplexer
/// keeps a connection's two in its record, which it copies several times per request.
/// Hashable on every field, as the kernel's bytes were.
struct InternetAddress: Hashable {
    var family: sa_family_t
    /// Network byte order, as in the sockaddr.
    var port: UInt16
    var flowInfo: UInt32
    var scope: UInt32
    /// The address's bytes as two words (IPv4: in `low`'s first four bytes).
    var high: UInt64
    var low: UInt64

    /// Nil for anything but AF_INET and AF_INET6.
    init?(_ storage: sockaddr_storage) {
        var storage = storage
        family = storage.ss_family
        switch Int32(storage.ss_family) {
        case AF_INET:
            let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            port = address.sin_port
            (flowInfo, scope, high) = (0, 0, 0)
            low = UInt64(address.sin_addr.s_addr)
        case AF_INET6:
            let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            port = address.sin6_port
            flowInfo = address.sin6_flowinfo
            scope = address.sin6_scope_id
            (high, low) = withUnsafeBytes(of: address.sin6_addr) {
                ($0.loadUnaligned(as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            }
        default:
            return nil
        }
    }

    /// The kernel's form again.
    var storage: sockaddr_storage {
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { bytes in
            if Int32(family) == AF_INET6 {
                var address = sockaddr_in6()
                address.sin6_family = family
                address.sin6_port = port
                address.sin6_flowinfo = flowInfo
                address.sin6_scope_id = scope
                withUnsafeMutableBytes(of: &address.sin6_addr) {
                    $0.storeBytes(of: high, as: UInt64.self)
                    $0.storeBytes(of: low, toByteOffset: 8, as: UInt64.self)
                }
                bytes.storeBytes(of: address, as: sockaddr_in6.self)
            } else {
                var address = sockaddr_in()
                address.sin_family = family
                address.sin_port = port
                address.sin_addr.s_addr = UInt32(truncatingIfNeeded: low)
                bytes.storeBytes(of: address, as: sockaddr_in.self)
            }
        }
        return storage
    }

    /// Not the wildcard: a listener bound to it accepts connections with exactly this local
    /// address.
    var isSpecific: Bool { high != 0 || low != 0 }
}

extension sockaddr_storage {
    /// An IPv4 or IPv6 address.
    var isInternet: Bool { Int32(ss_family) == AF_INET || Int32(ss_family) == AF_INET6 }
}

/// A socket's peer (`peer`) or local address, or nil when the kernel has none (it went away).
func socketAddress(_ fd: Int32, peer: Bool) -> sockaddr_storage? {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let got = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            (peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length)) == 0
        }
    }
    return got ? storage : nil
}

/// A socket's peer or local address as an InternetAddress; nil when the kernel has none, or it
/// is neither IPv4 nor IPv6.
func internetAddress(_ fd: Int32, peer: Bool) -> InternetAddress? {
    socketAddress(fd, peer: peer).flatMap(InternetAddress.init)
}

extension ClientAddress {
    init(_ address: InternetAddress) {
        if Int32(address.family) == AF_INET6 {
            self.init(bytes: withUnsafeBytes(of: (address.high, address.low)) { Array($0) })
        } else {
            self.init(ipv4: UInt32(bigEndian: UInt32(truncatingIfNeeded: address.low)))
        }
    }

    /// A kernel socket address (AF_INET or AF_INET6); anything else is no client.
    init(_ storage: sockaddr_storage) {
        self = InternetAddress(storage).map(ClientAddress.init) ?? .none
    }
}
