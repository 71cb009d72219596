// Starting a child in a slot: a multiplexer comes from the multiplexers' image with a control
// channel from the parent; a worker of a shared-image environment is forked here, and with
// cgroups waits at a gate until the parent has moved it into them.
import CPeruserShim
import Glibc
import PeruserCore

/// Starts a child in `slot` (`environment` nil: a multiplexer, from the multiplexers' image,
/// Image/Images.swift; else a worker forked from this parent).
func spawn(slot: Int, environment: Int?) -> SpawnOutcome {
    setScoreboardSlot(slot, pid: 0, starting: true)
    func giveUp(_ what: String, _ failure: Errno) -> SpawnOutcome {
        log(PERUSER_LOG_ERR, "peruser: \(what): \(failure)")
        setScoreboardSlot(slot, pid: 0, starting: false)
        return .failed
    }
    guard let environment else {
        var controlParent = FileDescriptor.none, controlChild = FileDescriptor.none
        do throws(Errno) {
            (controlParent, controlChild) = try Channel.pair()
        } catch {
            return giveUp("cannot create a control channel", error)
        }
        let outcome = spawnMultiplexerFromImage(slot: slot, control: controlChild.raw)
        controlChild.close()
        guard case .started(let pid) = outcome else {
            controlParent.close()
            setScoreboardSlot(slot, pid: 0, starting: false)
            return outcome
        }
        shutdown(controlParent.raw, Int32(SHUT_RD))  // the parent only sends on it
        lasting?.closeControl(slot)
        lasting?.setControl(slot, controlParent.raw)
        setScoreboardSlot(slot, pid: pid, starting: true)
        return outcome
    }
    let cgroups = configuration.environments[environment]?.confinement.cgroups ?? []
    var gate: StartGate
    do throws(Errno) {
        gate = try StartGate(cgroups: cgroups)
    } catch {
        return giveUp("cannot create a start gate", error)
    }
    // No group lookup here (prepareGroups): with LDAP or sssd it can block, and the parent
    // supervises every environment; the worker calls initgroups itself.
    let parentPid = getpid()
    let pid = fork()
    if pid < 0 {
        gate.close()
        return giveUp("fork failed", .current)
    }
    if pid == 0 {
        gate.waitInChild()
        startChildProcess()
        workerMain(slot: slot, environment: environment, parentPid: parentPid)
    }
    do throws(CgroupError) {
        try gate.release(pid, into: cgroups)
    } catch {
        log(PERUSER_LOG_ERR, "peruser: cannot move a new worker of environment "
            + "\(environmentLabel(environment)) (pid \(pid)) into cgroup \(error.directory); "
            + "the worker is not started (\(error.errno))")
    }
    setScoreboardSlot(slot, pid: pid, starting: true)
    return .started(pid)
}
