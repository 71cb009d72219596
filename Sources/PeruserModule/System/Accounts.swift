// Accounts and file-system facts, as configuration building asks for them.
import Glibc
import PeruserCore

/// getpwnam/getgrnam; the parent is single-threaded, so the non-reentrant calls are safe.
struct SystemAccounts: AccountDirectory {
    func user(named name: String) -> (uid: UInt32, primaryGid: UInt32)? {
        guard let entry = getpwnam(name) else { return nil }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid)
    }

    func group(named name: String) -> UInt32? {
        guard let entry = getgrnam(name) else { return nil }
        return entry.pointee.gr_gid
    }
}

extension SystemFacts {
    static let live = SystemFacts(accounts: SystemAccounts(), paths: SystemPaths.facts, cgroups: SystemPaths.cgroupFacts)

    /// For a process image: the root parent checked every account, Chroot and Cgroup directory
    /// of this configuration when it started. An image checks no directory again (the
    /// multiplexers' image must not fail on a tenant's directory) and looks up only its own
    /// accounts; a worker that cannot enter its own jail or cgroups is refused at its start, as
    /// with the shared image.
    static let checkedByTheParent = SystemFacts(
        accounts: ParentResolvedAccounts(),
        paths: { _ in PathFacts(isDirectory: true, ownerUid: 0, mode: 0o755) },
        cgroups: { _ in CgroupFacts(isDirectory: true, onCgroupFileSystem: true, hasProcsFile: true) })
}
