// ap_mpm_query: what this MPM tells Apache and other modules about itself.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// The retained data of this MPM: parent memory that outlives the module's unload and reload
/// on each restart (see Parent/Generation.swift).
func retainedLasting() -> UnsafeMutablePointer<LastingState>? {
    let key = "mpm_peruser_lasting_v4"
    let found = ap_retained_data_get(key) ?? ap_retained_data_create(key, MemoryLayout<LastingState>.size)
    return found?.bindMemory(to: LastingState.self, capacity: 1)
}

@_cdecl("peruser_mpm_query")
public func peruserMPMQuery(_ code: Int32, _ result: UnsafeMutablePointer<Int32>?,
                            _ status: UnsafeMutablePointer<Int32>?) -> Int32 {
    // Asked at every request (core's AP_MPMQ_MPM_STATE): no copy of the whole configuration's
    // limits, only the field a case needs.
    let answer: Int32?
    switch code {
    case AP_MPMQ_MAX_DAEMON_USED: answer = peruserSlotsInUse()
    case AP_MPMQ_IS_THREADED: answer = AP_MPMQ_NOT_SUPPORTED
    case AP_MPMQ_IS_FORKED: answer = AP_MPMQ_DYNAMIC
    case AP_MPMQ_HARD_LIMIT_DAEMONS:
        let slots = retainedLasting()?.pointee.scoreboardSlots ?? 0
        answer = slots > 0 ? slots : Int32(configuration.limits.serverLimit)
    case AP_MPMQ_MAX_DAEMONS: answer = Int32(clamping: configuration.limits.maxClients)
    case AP_MPMQ_HARD_LIMIT_THREADS, AP_MPMQ_MAX_THREADS: answer = 1
    case AP_MPMQ_MIN_SPARE_DAEMONS: answer = Int32(configuration.limits.workers.minSpare)
    case AP_MPMQ_MAX_SPARE_DAEMONS: answer = Int32(configuration.limits.workers.maxSpare)
    case AP_MPMQ_MIN_SPARE_THREADS, AP_MPMQ_MAX_SPARE_THREADS: answer = 0
    case AP_MPMQ_MAX_REQUESTS_DAEMON: answer = ap_max_requests_per_child
    case AP_MPMQ_MPM_STATE:
        answer = http2SessionEnds() ? AP_MPMQ_STOPPING
            : (ap_unixd_mpm_get_retained_data()?.pointee.mpm_state ?? AP_MPMQ_STARTING)
    case AP_MPMQ_GENERATION: answer = ap_unixd_mpm_get_retained_data()?.pointee.my_generation ?? 0
    default: answer = nil
    }
    if let answer { result?.pointee = answer }
    status?.pointee = answer == nil ? APR_ENOTIMPL : APR_SUCCESS
    return OK
}

/// One past the highest slot in use.
func peruserSlotsInUse() -> Int32 {
    guard let state = parent else { return 0 }
    return Int32(((0..<state.capacity).last { state.records[$0].pid > 0 }).map { $0 + 1 } ?? 0)
}

/// A worker's HTTP/2 session is told the server is stopping while connections wait for its
/// environment (KeptAliveTurn.sessionEnds): an idle one at once, for mod_http2 versions that ask
/// while idle; one with streams running once it had its turn (mod_http2 asks at every turn of
/// its loop, sends GOAWAY, and finishes the streams it took). Only on the connection's thread:
/// mod_watchdog's threads ask too, and a watchdog told the server stops ends for good (a
/// singleton such as mod_heartbeat's, then silent until the worker exits).
func http2SessionEnds() -> Bool {
    // Core asks at every request: an HTTP/1.x connection costs one load here, no clock.
    let streams = Int(peruser_shim_http2_streams())
    guard streams >= 0, workerEnvironment >= 0, let table = sharedTable,
          let thread = connectionThread, pthread_equal(thread, pthread_self()) != 0 else { return false }
    return KeptAliveTurn.sessionEnds(streams: streams, takenAt: servedConnection?.takenAt, now: monotonicMilliseconds(),
                                     waitingInMultiplexers: table.waitingInMultiplexers(workerEnvironment))
}
