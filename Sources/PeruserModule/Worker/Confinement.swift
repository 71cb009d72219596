// A worker's privilege drop: to its environment's user and group for good, in its jail, at its
// nice value, and proven before it serves anything.
import CPeruserShim
import Glibc
import PeruserCore

struct ConfinementError: Error, CustomStringConvertible {
    let description: String
}

func dropToEnvironment(_ index: Int) throws(ConfinementError) {
    guard let environment = configuration.environments[index] else {
        throw ConfinementError(description: "worker started for unknown environment \(index)")
    }
    let name = environment.name, uid = environment.identity.uid, gid = environment.identity.gid
    func failed(_ what: String) -> ConfinementError {
        ConfinementError(description: "worker for environment \(name) \(what): \(Errno.current)")
    }
    guard uid != 0 && gid != 0 else {
        throw ConfinementError(description: "environment \(name) resolves to root; refusing to serve")
    }
    if let nice = environment.confinement.nice,
       setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, Int32(nice)) != 0 {
        throw failed("could not set NiceValue \(nice)")
    }
    // Groups come from the host's /etc/group, so they are set before the chroot: as this
    // worker's image looked them up (prepareGroups), else with initgroups here.
    var group = gid
    let user = environment.identity.user
    let grouped: Int32
    if user.first == "#" {
        grouped = setgroups(1, &group)
    } else if let list = groupsForNextWorker {
        grouped = list.withUnsafeBufferPointer { setgroups($0.count, $0.baseAddress) }
    } else {
        grouped = initgroups(user, gid)
    }
    guard grouped == 0, setgid(gid) == 0 else {
        throw failed("could not switch to gid \(gid)")
    }
    if let jail = environment.confinement.chroot {
        tzset()  // the jail may have no /etc/localtime; keep the host's time zone in logs
        guard chdir(jail) == 0, chroot(jail) == 0, chdir("/") == 0 else { throw failed("could not chroot to \(jail)") }
    }
    guard setuid(uid) == 0 else { throw failed("could not switch to uid \(uid)") }
    var real: uid_t = 0, effective: uid_t = 0, saved: uid_t = 0
    var realGroup: gid_t = 0, effectiveGroup: gid_t = 0, savedGroup: gid_t = 0
    guard getresuid(&real, &effective, &saved) == 0, getresgid(&realGroup, &effectiveGroup, &savedGroup) == 0,
          [real, effective, saved] == [uid, uid, uid], [realGroup, effectiveGroup, savedGroup] == [gid, gid, gid],
          setuid(0) != 0, setgid(0) != 0 else {
        throw ConfinementError(description: "worker for environment \(name) still holds other ids after the switch "
                               + "to uid \(uid) gid \(gid); exiting")
    }
    guard peruser_prctl(PR_SET_NO_NEW_PRIVS, 1) == 0 else { throw failed("PR_SET_NO_NEW_PRIVS failed") }
}

// MARK: Supplementary groups, looked up before the fork

/// The lists of the environment this image forks workers for (GroupLists says when to look one
/// up again).
nonisolated(unsafe) var groupLists = GroupLists()
/// Set just before a worker is forked: the supplementary groups it sets (nil: it calls
/// initgroups itself).
nonisolated(unsafe) var groupsForNextWorker: [gid_t]?

/// Called by an environment's image before it forks a worker of `index` (not by the root, which
/// must not block on a directory service). A lookup that fails leaves the worker to call
/// initgroups, which reports the failure.
func prepareGroups(for index: Int) {
    groupsForNextWorker = nil
    guard let identity = configuration.environments[index]?.identity, identity.user.first != "#" else { return }
    let stamp = groupSourceStamp()  // before the lookup: a change during it is seen next time
    let now = monotonicMilliseconds()
    if let kept = groupLists.groups(for: index, stamp: stamp, now: now) {
        groupsForNextWorker = kept
        return
    }
    guard let found = groupList(of: identity.user, primary: identity.gid) else { return }
    groupLists.keep(found, for: index, stamp: stamp, now: now)
    groupsForNextWorker = found
}

private func groupSourceStamp() -> GroupSourceStamp? {
    var status = stat()
    guard stat("/etc/group", &status) == 0 else { return nil }
    return GroupSourceStamp(device: UInt64(status.st_dev), inode: UInt64(status.st_ino),
                            changedSeconds: Int64(status.st_ctim.tv_sec),
                            changedNanoseconds: Int64(status.st_ctim.tv_nsec), size: Int64(status.st_size))
}

/// getgrouplist, which initgroups uses: `primary` and every group that lists `user`.
private func groupList(of user: String, primary: gid_t) -> [gid_t]? {
    var room: Int32 = 64
    for _ in 0..<4 {
        var list = [gid_t](repeating: 0, count: Int(room))
        var count = room
        if getgrouplist(user, primary, &list, &count) >= 0 {
            return Array(list.prefix(Int(max(0, min(count, room)))))
        }
        guard count > room, count <= 65_536 else { return nil }
        room = count
    }
    return nil
}
