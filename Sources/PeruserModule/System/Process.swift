// Processes: signals, exits, the parent-death signal, cgroups, the scheduling policy.
import CPeruserShim
import Glibc
import PeruserCore

/// Signals a child the parent forked (pids come only from the parent's private records). A pid
/// that is no longer its child is left alone: once reaped, the system may give it to another
/// process.
@discardableResult
func signalProcess(_ pid: Int32, _ signal: Int32) -> Bool {
    isOwnChild(pid) && kill(pid, signal) == 0
}

/// Whether `pid` is this process's child, running or exited and not yet reaped (WNOWAIT: the
/// look reaps nothing). Only an answer of ECHILD says no: on any other failure it counts as a
/// child, so that no live child is ever forgotten.
func isOwnChild(_ pid: Int32) -> Bool {
    guard pid > 0 else { return false }
    var info = siginfo_t()
    while waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 {
        if errno != EINTR { return errno != ECHILD }
    }
    return true
}

/// How a child ended, from waitpid's status.
struct ExitStatus {
    let raw: Int32

    /// WIFEXITED and WEXITSTATUS, WIFSIGNALED and WTERMSIG (macros, so spelled out here).
    var exited: Bool { raw & 0x7f == 0 }
    var exitCode: Int32 { (raw >> 8) & 0xff }
    var killedBySignal: Int32? {
        let signal = raw & 0x7f
        return signal != 0 && signal != 0x7f ? signal : nil
    }

    var isClean: Bool { exited && exitCode == 0 }
}

/// The next child that has exited, without waiting.
func reapOne() -> (pid: Int32, status: ExitStatus)? {
    var status: Int32 = 0
    let pid = waitpid(-1, &status, WNOHANG)
    return pid > 0 ? (pid, ExitStatus(raw: status)) : nil
}

/// Children must not outlive a parent that dies without stopping them. Called after the
/// privilege change, which clears the parent-death signal.
func dieWithParent(_ parent: pid_t) {
    _ = peruser_prctl(PR_SET_PDEATHSIG, UInt(SIGTERM))
    if getppid() != parent { exit(0) }  // the parent died before the signal was armed
}

/// Where a new worker waits until its parent has moved it into its cgroups: a worker outside
/// them must never serve. Made before the fork (no gate without cgroups); the child waits,
/// the parent moves it and lets it go, or closes the gate and the child exits.
struct StartGate {
    private var waiting = FileDescriptor.none
    private var opening = FileDescriptor.none

    init(cgroups: [String]) throws(Errno) {
        if !cgroups.isEmpty { (waiting, opening) = try FileDescriptor.pipe() }
    }

    /// In the child: returns once let through; exits (APEXIT_CHILDSICK) otherwise.
    mutating func waitInChild() {
        guard waiting.isOpen else { return }
        opening.close()
        var go: UInt8 = 0
        let got = try? retryingInterrupts { read(waiting.raw, &go, 1) }
        if got != 1 { _exit(exitChildSick) }  // not moved into its cgroups (logged): never serve
        waiting.close()
    }

    /// In the parent: moves `pid` into `cgroups` and lets it through; with an error, the gate
    /// closes and the child exits.
    mutating func release(_ pid: pid_t, into cgroups: [String]) throws(CgroupError) {
        guard opening.isOpen else { return }
        waiting.close()
        defer { opening.close() }
        try moveIntoCgroups(pid, cgroups)
        _ = write(opening.raw, "g", 1)
    }

    mutating func close() {
        waiting.close()
        opening.close()
    }
}

/// Moves `pid` into each cgroup directory (writes its pid to cgroup.procs).
func moveIntoCgroups(_ pid: pid_t, _ directories: [String]) throws(CgroupError) {
    for directory in directories {
        let path = directory + "/cgroup.procs"
        let text = Array("\(pid)\n".utf8)
        var fd = FileDescriptor(raw: open(path, O_WRONLY | O_CLOEXEC))
        guard fd.isOpen else { throw CgroupError(directory: directory, errno: .current) }
        let written = text.withUnsafeBytes { write(fd.raw, $0.baseAddress, $0.count) }
        let failure = Errno.current
        let closed = Glibc.close(fd.raw) == 0
        fd = .none
        guard written == text.count, closed else { throw CgroupError(directory: directory, errno: failure) }
    }
}

struct CgroupError: Error {
    let directory: String
    let errno: Errno
}

/// Sets the calling process's scheduling policy.
func setSchedulingPolicy(_ policy: SchedulingPolicy) throws(Errno) {
    var parameters = sched_param()
    let value = policy == .batch ? PERUSER_SCHED_BATCH : PERUSER_SCHED_OTHER
    guard sched_setscheduler(0, value, &parameters) == 0 else { throw Errno.current }
}
