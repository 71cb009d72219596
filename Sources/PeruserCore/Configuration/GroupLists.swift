// Supplementary groups per environment, kept by the environment's image (ProcessorImage
// isolated), which forks its workers, so that a new worker sets them instead of calling
// initgroups: that reads all of /etc/group and loads the NSS modules again in every fresh
// process, about 0.6 ms with 676 groups, and more the more accounts the box has. The decision
// when to look up again is here; the lookup is the caller's.

/// What identifies the group database as last read: /etc/group's device, inode, change time and
/// size. A rewrite (usermod, gpasswd, an editor's rename) changes one of them.
public struct GroupSourceStamp: Equatable, Sendable {
    public let device: UInt64
    public let inode: UInt64
    public let changedSeconds: Int64
    public let changedNanoseconds: Int64
    public let size: Int64

    public init(device: UInt64, inode: UInt64, changedSeconds: Int64, changedNanoseconds: Int64, size: Int64) {
        self.device = device
        self.inode = inode
        self.changedSeconds = changedSeconds
        self.changedNanoseconds = changedNanoseconds
        self.size = size
    }
}

public struct GroupLists: Sendable {
    /// Groups may also come from other NSS sources (LDAP, sssd) whose changes no file shows:
    /// a list older than this is looked up again.
    public static let maximumAgeMilliseconds: Int64 = 60_000

    struct Entry: Sendable {
        let groups: [UInt32]
        let stamp: GroupSourceStamp
        let fetchedAt: Int64
    }

    private var entries: [Int: Entry] = [:]

    public init() {}

    /// The list kept for `environment`, if it was read from the database `stamp` names less than
    /// maximumAgeMilliseconds before `now`; nil: look it up again. No stamp (the file could not
    /// be examined): nil, always.
    public func groups(for environment: Int, stamp: GroupSourceStamp?, now: Int64) -> [UInt32]? {
        guard let stamp, let entry = entries[environment], entry.stamp == stamp,
              now >= entry.fetchedAt, now - entry.fetchedAt < Self.maximumAgeMilliseconds else { return nil }
        return entry.groups
    }

    /// Keeps what a lookup made at `now` found, while the database was as `stamp` names. A lookup
    /// without a stamp is not kept.
    public mutating func keep(_ groups: [UInt32], for environment: Int, stamp: GroupSourceStamp?, now: Int64) {
        guard let stamp else {
            entries[environment] = nil
            return
        }
        entries[environment] = Entry(groups: groups, stamp: stamp, fetchedAt: now)
    }
}
