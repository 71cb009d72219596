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
    // Groups come from the host's /etc/group, so they are set before the chroot.
    var group = gid
    let user = environment.identity.user
    guard (user.first == "#" ? setgroups(1, &group) : initgroups(user, gid)) == 0, setgid(gid) == 0 else {
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
