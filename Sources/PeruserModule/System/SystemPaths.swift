// The file-system facts the isolation rules (PeruserCore/Configuration/Isolation.swift) decide on.
import CPeruserShim
import Glibc
import PeruserCore

enum SystemPaths {
    private static let cgroupV1Magic: Int = 0x0027_e0eb
    private static let cgroupV2Magic: Int = 0x6367_7270

    /// lstat(2): does not follow a final symbolic link, so the rule can refuse one.
    static func facts(_ path: String) -> PathFacts? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        let type = info.st_mode & S_IFMT
        return PathFacts(isDirectory: type == S_IFDIR, isSymbolicLink: type == S_IFLNK,
                         ownerUid: info.st_uid, mode: UInt32(info.st_mode & 0o7777))
    }

    static func cgroupFacts(_ path: String) -> CgroupFacts? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        var fileSystem = statfs()
        let onCgroup = statfs(path, &fileSystem) == 0
            && (fileSystem.f_type == cgroupV1Magic || fileSystem.f_type == cgroupV2Magic)
        var procs = stat()
        let hasProcs = stat(path + "/cgroup.procs", &procs) == 0 && (procs.st_mode & S_IFMT) == S_IFREG
        return CgroupFacts(isDirectory: (info.st_mode & S_IFMT) == S_IFDIR, onCgroupFileSystem: onCgroup,
                           hasProcsFile: hasProcs)
    }
}
