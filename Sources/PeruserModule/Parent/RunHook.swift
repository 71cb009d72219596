// The MPM's run hook (ap_mpm_run): one generation of the parent, from the scoreboard to the
// restart or the stop. CShim/mod_mpm_peruser.c registers it and passes its arguments through.
import CApache
import CPeruserShim
import Glibc

@_cdecl("peruser_run")
public func peruserRun(_ pconf: OpaquePointer?, _ plog: OpaquePointer?, _ server: UnsafeMutableRawPointer?) -> Int32 {
    let result = runGeneration(pconf, plog, server)
    // Apache unloads this module before the next generation loads it again: a handler left
    // here would point into unmapped code when a child (an image, at every restart) exits
    // in between.
    peruser_shim_watch_children(0)
    return result
}

private func runGeneration(_ pconf: OpaquePointer?, _ plog: OpaquePointer?, _ server: UnsafeMutableRawPointer?) -> Int32 {
    guard let mpm = ap_unixd_mpm_get_retained_data(), let retained = retainedLasting(),
          let server = server?.assumingMemoryBound(to: server_rec.self) else { return 1 }
    configurationPool = pconf
    if let start = imageStart { imageRun(start, pconf: pconf, server: server) }
    lasting = retained
    ap_log_pid(pconf, ap_pid_fname)
    let slots = Int32(configuration.limits.serverLimit)
    let wasGraceful = mpm.pointee.was_graceful != 0
    if !wasGraceful {
        retained.pointee.scoreboardSlots = slots
        guard ap_run_pre_mpm(server.pointee.process.pointee.pool, SB_SHARED) == OK else {
            setMPMState(AP_MPMQ_STOPPING)
            return 1
        }
        ap_scoreboard_image.pointee.global.pointee.running_generation = mpm.pointee.my_generation
    } else if slots != retained.pointee.scoreboardSlots {
        let kept = retained.pointee.scoreboardSlots
        let environments = configuration.environments.count
        let short = environments + configuration.limits.minMultiplexers > Int(kept)
        log(short ? PERUSER_LOG_ERR : PERUSER_LOG_WARNING,
            "peruser: ServerLimit is now \(slots) (\(environments) environments) but a graceful restart keeps the "
            + "running server's \(kept) slots\(short ? ", fewer than the environments and multiplexers need" : "")"
            + "; a full restart (apache2ctl restart) applies it")
    }
    ap_unixd_mpm_set_signals(pconf, 0)
    peruser_shim_watch_children(1)  // a child's exit interrupts the parent's poll, and is noted
    let generation = UInt32(bitPattern: mpm.pointee.my_generation)
    guard beginGeneration(retained, slots: retained.pointee.scoreboardSlots, generation: generation,
                          wasGraceful: wasGraceful) else {
        setMPMState(AP_MPMQ_STOPPING)
        return 1
    }
    startImages(generation: generation)
    log(PERUSER_LOG_NOTICE, "\(String(cString: ap_get_server_description())) configured -- resuming normal operations")
    if let module = requestsSerializedFor, !wasGraceful {
        log(PERUSER_LOG_NOTICE, "peruser: \(module) is loaded and is not thread-safe: each worker runs the requests of "
            + "HTTP/2 streams one at a time (mod_http2 would run a connection's streams at once on its own threads). "
            + "HTTP/2 stays on; a connection's streams wait for each other as HTTP/1.1 requests on one connection do")
    }
    log(PERUSER_LOG_INFO, "Server built: \(String(cString: ap_get_server_built()))")
    ap_log_command_line(plog, server)
    ap_log_mpm_common(server)

    setMPMState(AP_MPMQ_RUNNING)
    superviseUntilAsked()
    setMPMState(AP_MPMQ_STOPPING)
    endGeneration()

    if mpm.pointee.shutdown_pending != 0 {
        if mpm.pointee.is_ungraceful != 0 {
            stopChildren()
            log(PERUSER_LOG_NOTICE, "caught SIGTERM, shutting down")
        } else {
            ap_close_listeners()
            log(PERUSER_LOG_NOTICE, "caught SIGWINCH, shutting down gracefully")
            mpm.pointee.shutdown_pending = 0  // a second stop signal cuts the drain short
            stopChildrenGracefully(timeoutSeconds: ap_graceful_shutdown_timeout)
        }
        ap_remove_pid(pconf, ap_pid_fname)
        return DONE
    }
    if mpm.pointee.is_ungraceful != 0 {
        log(PERUSER_LOG_NOTICE, "SIGHUP received.  Attempting to restart")
        stopChildren()
    } else {
        // Children of this generation finish what they hold; the next generation's supervisor
        // retires them (multiplexers first, then workers drain).
        log(PERUSER_LOG_NOTICE, "Graceful restart requested, doing restart")
    }
    mpm.pointee.my_generation += 1
    ap_scoreboard_image.pointee.global.pointee.running_generation = mpm.pointee.my_generation
    return OK
}
