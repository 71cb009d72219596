// A file descriptor this process owns: closing it is explicit, and closing twice is harmless.
import CPeruserShim
import Glibc

struct FileDescriptor: Equatable {
    private(set) var raw: Int32

    static let none = FileDescriptor(raw: -1)

    init(raw: Int32) { self.raw = raw }

    var isOpen: Bool { raw >= 0 }

    mutating func close() {
        if raw >= 0 { _ = Glibc.close(raw) }
        raw = -1
    }

    func setNonBlocking() {
        let flags = fcntl(raw, F_GETFL)
        if flags >= 0 { _ = fcntl(raw, F_SETFL, flags | O_NONBLOCK) }
    }

    /// A pipe whose ends are closed on exec; `nonBlocking` for both ends.
    static func pipe(nonBlocking: Bool = false) throws(Errno) -> (read: FileDescriptor, write: FileDescriptor) {
        var ends: [Int32] = [-1, -1]
        guard pipe2(&ends, O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0)) == 0 else { throw .current }
        return (FileDescriptor(raw: ends[0]), FileDescriptor(raw: ends[1]))
    }
}

func setNonBlocking(_ fd: Int32) {
    FileDescriptor(raw: fd).setNonBlocking()
}
