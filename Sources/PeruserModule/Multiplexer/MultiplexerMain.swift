// A multiplexer's life: keep only the sending ends of the hand-off channels and the receiving
// ends of the hand-back channels, drop to the multiplexers' own account, then run the event
// loop (Multiplexer.swift) until asked to stop.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

func multiplexerMain(slot: Int, control: Int32, parentPid: pid_t) -> Never {
    for index in channels.indices {
        channels[index].handoffReceive.close()
        channels[index].handbackSend.close()
    }
    if let lasting {
        if lasting.pointee.demand.0 >= 0 { close(lasting.pointee.demand.0) }
        lasting.pointee.demand.0 = -1
        for fd in [lasting.pointee.tableFD, lasting.pointee.multiplexerSecretFD, lasting.pointee.multiplexerStateFD]
        where fd >= 0 { close(fd) }
        lasting.pointee.tableFD = -1
        lasting.pointee.multiplexerSecretFD = -1
        lasting.pointee.multiplexerStateFD = -1
        lasting.closeEveryControl()
    }
    ap_reopen_scoreboard(childPool, nil, 0)
    if configuration.multiplexerChroot != nil { tzset() }
    guard dropMultiplexerPrivileges() else { exitChild(exitChildFatal) }
    // mod_unixd makes the process dumpable again when CoreDumpDirectory is set; a dumpable
    // multiplexer could be traced by any process of its uid. Never.
    _ = peruser_prctl(PR_SET_DUMPABLE, 0)
    guard getuid() != 0 && geteuid() != 0 else {
        log(PERUSER_LOG_EMERG, "peruser: a multiplexer must not run as root; set User and Group")
        exitChild(exitChildFatal)
    }
    _ = peruser_prctl(PR_SET_NO_NEW_PRIVS, 1)
    dieWithParent(parentPid)
    // A multiplexer holds many connections at once: as many descriptors as the system allows.
    var limit = rlimit()
    let files = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    if getrlimit(files, &limit) == 0 && limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        setrlimit(files, &limit)
    }
    routePool = makePool(below: childPool, tag: "route")
    routeCache = [:]  // this generation's vhosts
    anyServerPath = serverPathConfigured()
    setMPMState(AP_MPMQ_RUNNING)
    ap_update_child_status_from_indexes(Int32(slot), 0, SERVER_READY, nil)
    let generation = parent?.policy.generation ?? imageStart?.generation ?? 0
    guard let secret = lasting?.pointee.multiplexerSecret,
          let key = HandbackKey(UnsafeRawBufferPointer(start: secret, count: Int(getpagesize()))) else {
        log(PERUSER_LOG_ERR, "multiplexer: started without its secret")
        exitChild(1)
    }
    var handbacks: [HandbackChannel] = []
    // Workers hand back every kept-alive connection whose next head does not come at once, so
    // an environment's channel carries as many connections as it has clients. What bounds a
    // flood is real: only connections handed to that environment carry a valid ticket, and a
    // copy of one already held is dropped. One environment may take half of what a
    // multiplexer holds.
    let most = max(16, configuration.limits.multiplexerMaxConnections / 2)
    for (environment, ends) in channels.enumerated() {
        handbacks.append(HandbackChannel(fd: ends.handbackReceive.raw, generation: generation,
                                         environment: environment, most: most))
    }
    for (environment, fd) in (lasting?.previousHandbacks ?? []).enumerated() where fd >= 0 {
        handbacks.append(HandbackChannel(fd: fd, generation: lasting?.pointee.previousGeneration ?? 0,
                                         environment: environment, most: most))
    }
    guard var multiplexer = Multiplexer(slot: slot, listeners: imageStart?.listeners ?? listenerDescriptors(),
                                        handoffs: channels.map(\.handoffSend.raw), handbacks: handbacks,
                                        generation: generation, key: key,
                                        demand: lasting?.pointee.demand.1 ?? -1, control: control) else {
        exitChild(1)
    }
    exitChild(multiplexer.run())
}
