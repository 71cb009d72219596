// Config-time rules for Chroot, MultiplexerChroot and Cgroup. The module feeds them what
// lstat/statfs say about each path; the rules themselves touch no file system.

/// What lstat(2) says about one path.
public struct PathFacts: Equatable {
    public var isDirectory: Bool
    public var isSymbolicLink: Bool
    public var ownerUid: UInt32
    /// Permission bits (st_mode & 07777).
    public var mode: UInt32

    public init(isDirectory: Bool, isSymbolicLink: Bool = false, ownerUid: UInt32, mode: UInt32) {
        self.isDirectory = isDirectory
        self.isSymbolicLink = isSymbolicLink
        self.ownerUid = ownerUid
        self.mode = mode
    }
}

/// What the module found about a directory named by `Cgroup`.
public struct CgroupFacts: Equatable {
    public var isDirectory: Bool
    /// statfs reports cgroup (v1) or cgroup2.
    public var onCgroupFileSystem: Bool
    public var hasProcsFile: Bool

    public init(isDirectory: Bool, onCgroupFileSystem: Bool, hasProcsFile: Bool) {
        self.isDirectory = isDirectory
        self.onCgroupFileSystem = onCgroupFileSystem
        self.hasProcsFile = hasProcsFile
    }
}

public enum IsolationError: Error, Equatable, CustomStringConvertible {
    case notAbsolute(directive: String, path: String)
    case notNormalized(directive: String, path: String)
    case rootDirectory(directive: String)
    case missing(directive: String, path: String)
    case notADirectory(directive: String, path: String)
    case symbolicLink(directive: String, path: String)
    case notOwnedByRoot(directive: String, path: String, owner: UInt32)
    case writableByOthers(directive: String, path: String, mode: UInt32)
    case notACgroup(path: String)
    case noProcsFile(path: String)
    case duplicateCgroup(path: String)

    public var description: String {
        switch self {
        case .notAbsolute(let directive, let path):
            return "\(directive) \(path): the path must be absolute"
        case .notNormalized(let directive, let path):
            return "\(directive) \(path): write the path without '.', '..' or doubled '/'"
        case .rootDirectory(let directive):
            return "\(directive) /: a chroot to / confines nothing; name the jail's directory"
        case .missing(let directive, let path):
            return "\(directive): \(path) does not exist"
        case .notADirectory(let directive, let path):
            return "\(directive): \(path) is not a directory"
        case .symbolicLink(let directive, let path):
            return "\(directive): \(path) is a symbolic link; give the real path, so that nobody who "
                + "can change the link can move the jail"
        case .notOwnedByRoot(let directive, let path, let owner):
            return "\(directive): \(path) is owned by uid \(owner); the jail directory and every directory "
                + "above it must be owned by root, or its owner could plant files that the jail trusts"
        case .writableByOthers(let directive, let path, let mode):
            return "\(directive): \(path) has mode \(octal(mode)), writable by group or others; the jail "
                + "directory and every directory above it must not be (chmod go-w)"
        case .notACgroup(let path):
            return "Cgroup \(path) is not a directory on a cgroup file system (v2 under /sys/fs/cgroup or "
                + "/sys/fs/cgroup/unified, v1 under /sys/fs/cgroup/<controller>)"
        case .noProcsFile(let path):
            return "Cgroup \(path) has no cgroup.procs file, so workers cannot be moved into it"
        case .duplicateCgroup(let path):
            return "Cgroup \(path) is given twice"
        }
    }
}

private func octal(_ mode: UInt32) -> String {
    let digits = String(mode & 0o7777, radix: 8)
    return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}

/// "/srv/jail/a" -> ["/", "/srv", "/srv/jail", "/srv/jail/a"]; nil unless the path is absolute
/// and normalized (no ".", "..", or empty components; one trailing "/" is tolerated).
public func pathPrefixes(_ path: String) -> [String]? {
    guard path.first == "/" else { return nil }
    var parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
    if parts.last == "" && parts.count > 1 { parts = parts.dropLast() }
    if parts.count == 1 && parts.first == "" { return ["/"] }
    var prefixes = ["/"]
    var current = ""
    for part in parts {
        guard !part.isEmpty, part != ".", part != ".." else { return nil }
        current += "/" + part
        prefixes.append(current)
    }
    return prefixes
}

/// OpenSSH's ChrootDirectory rule: the directory and every directory above it exist, are real
/// directories (not links), are owned by root, and are writable by nobody else.
/// Returns the normalized path.
public func checkChrootDirectory(_ path: String, directive: String,
                                 facts: (String) -> PathFacts?) throws(IsolationError) -> String {
    guard path.first == "/" else { throw .notAbsolute(directive: directive, path: path) }
    guard let prefixes = pathPrefixes(path) else { throw .notNormalized(directive: directive, path: path) }
    guard prefixes.count > 1 else { throw .rootDirectory(directive: directive) }
    for prefix in prefixes {
        guard let info = facts(prefix) else { throw .missing(directive: directive, path: prefix) }
        if info.isSymbolicLink { throw .symbolicLink(directive: directive, path: prefix) }
        guard info.isDirectory else { throw .notADirectory(directive: directive, path: prefix) }
        guard info.ownerUid == 0 else { throw .notOwnedByRoot(directive: directive, path: prefix, owner: info.ownerUid) }
        guard info.mode & 0o022 == 0 else { throw .writableByOthers(directive: directive, path: prefix, mode: info.mode) }
    }
    return prefixes[prefixes.count - 1]
}

/// A `Cgroup` directory: absolute, normalized, a directory on a cgroup file system with a
/// cgroup.procs file (v1 and v2 both have one). Returns the normalized path.
public func checkCgroupDirectory(_ path: String, already: [String],
                                 facts: (String) -> CgroupFacts?) throws(IsolationError) -> String {
    guard path.first == "/" else { throw .notAbsolute(directive: "Cgroup", path: path) }
    guard let prefixes = pathPrefixes(path), let normalized = prefixes.last else {
        throw .notNormalized(directive: "Cgroup", path: path)
    }
    guard !already.contains(normalized) else { throw .duplicateCgroup(path: normalized) }
    guard let info = facts(normalized) else { throw .missing(directive: "Cgroup", path: normalized) }
    guard info.isDirectory, info.onCgroupFileSystem else { throw .notACgroup(path: normalized) }
    guard info.hasProcsFile else { throw .noProcsFile(path: normalized) }
    return normalized
}

/// Per-environment confinement, from the `<Processor>` block.
public struct Confinement: Equatable {
    /// The jail's directory (checked), or nil.
    public var chroot: String?
    /// cgroup directories (checked) each new worker is moved into before it serves.
    public var cgroups: [String]
    /// The workers' nice value, or nil to inherit the parent's.
    public var nice: Int?
    /// ProcessorImage inside the block (true: isolated), or nil for the global choice.
    public var isolatedImage: Bool?

    public init(chroot: String? = nil, cgroups: [String] = [], nice: Int? = nil) {
        self.chroot = chroot
        self.cgroups = cgroups
        self.nice = nice
    }

    public static let niceRange = -20...19
}
