// Forking a child into a slot: a multiplexer gets a control channel from the parent; a worker
// with cgroups waits at a gate until the parent has moved it into them.
import CPeruserShim
import Glibc
import PeruserCore

/// Forks a child into `slot` (`environment` nil: a multiplexer); with isolated images, a
/// multiplexer comes from the multiplexers' image (Image/Images.swift).
func spawn(slot: Int, environment: Int?) -> SpawnOutcome {
    setScoreboardSlot(slot, pid: 0, starting: true)
    var controlParent = FileDescriptor.none, controlChild = FileDescriptor.none
    var gateRead = FileDescriptor.none, gateWrite = FileDescriptor.none
    func giveUp(_ what: String, _ failure: Errno) -> SpawnOutcome {
        log(PERUSER_LOG_ERR, "peruser: \(what): \(failure)")
        setScoreboardSlot(slot, pid: 0, starting: false)
        controlParent.close()
        controlChild.close()
        gateRead.close()
        gateWrite.close()
        return .failed
    }
    if environment == nil {
        do throws(Errno) {
            (controlParent, controlChild) = try Channel.pair()
        } catch {
            return giveUp("cannot create a control channel", error)
        }
    }
    if environment == nil {
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
    let cgroups = environment.flatMap { configuration.environments[$0]?.confinement.cgroups } ?? []
    if !cgroups.isEmpty {
        do throws(Errno) {
            (gateRead, gateWrite) = try FileDescriptor.pipe()
        } catch {
            return giveUp("cannot create a start gate", error)
        }
    }
    let parentPid = getpid()
    let pid = fork()
    if pid < 0 { return giveUp("fork failed", .current) }
    if pid == 0 {
        controlParent.close()
        if gateRead.isOpen {
            gateWrite.close()
            var go: UInt8 = 0
            let got = try? retryingInterrupts { read(gateRead.raw, &go, 1) }
            // Not moved into its cgroups (the parent logged why): never serve.
            if got != 1 { _exit(exitChildSick) }
            gateRead.close()
        }
        startChildProcess()
        if let environment {
            workerMain(slot: slot, environment: environment, parentPid: parentPid)
        } else {
            multiplexerMain(slot: slot, control: controlChild.raw, parentPid: parentPid)
        }
    }
    if gateWrite.isOpen {
        gateRead.close()
        do throws(CgroupError) {
            try moveIntoCgroups(pid, cgroups)
            _ = write(gateWrite.raw, "g", 1)
        } catch {
            log(PERUSER_LOG_ERR, "peruser: cannot move a new worker of environment "
                + "\(environmentLabel(environment ?? -1)) (pid \(pid)) into cgroup \(error.directory); "
                + "the worker is not started (\(error.errno))")
        }
        gateWrite.close()  // without the byte, the worker exits at the gate
    }
    controlChild.close()
    if controlParent.isOpen {
        shutdown(controlParent.raw, Int32(SHUT_RD))  // the parent only sends on it
        lasting?.closeControl(slot)
        lasting?.setControl(slot, controlParent.raw)
    }
    setScoreboardSlot(slot, pid: pid, starting: true)
    return .started(pid)
}
