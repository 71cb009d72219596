// Shared mappings: named memfds (so each shows by name in /proc/PID/maps) that children inherit.
import CPeruserShim
import Glibc

struct SharedMapping {
    let base: UnsafeMutableRawPointer
    let size: Int
    /// The memfd, when the caller asked to keep it (to map views of it later).
    var fd: FileDescriptor

    /// A zeroed, read-write, shared mapping of `size` bytes named `name`.
    static func create(_ name: String, size: Int, keepDescriptor: Bool = false) throws(Errno) -> SharedMapping {
        var fd = FileDescriptor(raw: memfd_create(name, PERUSER_MFD_CLOEXEC))
        guard fd.isOpen else { throw .current }
        guard ftruncate(fd.raw, off_t(size)) == 0 else {
            let failure = Errno.current
            fd.close()
            throw failure
        }
        let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.raw, 0)
        let failure = Errno.current
        if !keepDescriptor || mapped == MAP_FAILED { fd.close() }
        guard let mapped, mapped != MAP_FAILED else { throw failure }
        return SharedMapping(base: mapped, size: size, fd: fd)
    }
}

func unmap(_ base: UnsafeMutableRawPointer?, _ size: Int) {
    if let base, size > 0 { munmap(base, size) }
}

/// Replaces a writable mapping of the child table by a read-only one (from a read-only
/// descriptor, so mprotect cannot make it writable again) with only the pages at
/// `writablePages` (offsets) writable. The addresses stay the same, so views of the table stay
/// valid.
func confineMapping(base: UnsafeMutableRawPointer, size: Int, fd: Int32, writablePages: [Int], pageSize: Int) throws(Errno) {
    var readOnly = FileDescriptor(raw: open("/proc/self/fd/\(fd)", O_RDONLY | O_CLOEXEC))
    guard readOnly.isOpen else { throw .current }
    defer { readOnly.close() }
    guard mmap(base, size, PROT_READ, MAP_SHARED | MAP_FIXED, readOnly.raw, 0) != MAP_FAILED else { throw .current }
    for offset in writablePages {
        guard offset >= 0, offset + pageSize <= size,
              mmap(base + offset, pageSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, off_t(offset))
                != MAP_FAILED else { throw .current }
    }
}

/// Replaces each range (offsets into the mapping at `base`, page-aligned) by an anonymous,
/// private, read-only, zero-filled mapping at the same address: what was there reads as zeros,
/// and no descriptor of this process can map it back.
func hideRanges(base: UnsafeMutableRawPointer, size: Int, _ ranges: [Range<Int>]) throws(Errno) {
    for range in ranges where !range.isEmpty {
        guard range.lowerBound >= 0, range.upperBound <= size else { throw Errno(EINVAL) }
        guard mmap(base + range.lowerBound, range.count, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                != MAP_FAILED else { throw .current }
    }
}

/// Gives back the memory of each range (offsets into the shared mapping at `base`,
/// page-aligned): the memfd's pages there are freed (a hole punched, for every process mapping
/// it) and read as zeros from then on.
func releasePages(base: UnsafeMutableRawPointer, _ ranges: [Range<Int>]) throws(Errno) {
    for range in ranges where !range.isEmpty {
        guard madvise(base + range.lowerBound, range.count, MADV_REMOVE) == 0 else { throw .current }
    }
}
