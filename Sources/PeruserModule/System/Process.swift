// Processes: signals, exits, the parent-death signal, cgroups.
import CPeruserShim
import Glibc

/// Signals a child the parent forked (pids come only from the parent's private records).
@discardableResult
func signalProcess(_ pid: Int32, _ signal: Int32) -> Bool {
    pid > 0 && kill(pid, signal) == 0
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
