// Apache's side of every process here: the MPM state, a child's pools, the scoreboard, the
// listeners. Direct calls into Apache's API (CApache); only macro and variadic pieces go
// through CShim/.
import CApache
import CPeruserShim
import Glibc

/// The configuration pool of this generation (the run hook's pconf); children's pools hang
/// below it.
nonisolated(unsafe) var configurationPool: OpaquePointer?
/// This child's pool (pchild): the modules' child cleanups run when it is destroyed.
nonisolated(unsafe) var childPool: OpaquePointer?

/// The MPM state Apache's keep-alive loop and ap_mpm_query read (AP_MPMQ_STARTING, ...).
func setMPMState(_ state: Int32) {
    ap_unixd_mpm_get_retained_data()?.pointee.mpm_state = state
}

/// A new pool below `parent`, tagged for debugging.
func makePool(below parent: OpaquePointer?, tag: StaticString) -> OpaquePointer? {
    var created: OpaquePointer?
    guard apr_pool_create_ex(&created, parent, nil, nil) == APR_SUCCESS, let pool = created else { return nil }
    tag.withUTF8Buffer { $0.withMemoryRebound(to: CChar.self) { apr_pool_tag(pool, $0.baseAddress) } }
    return pool
}

/// In a child right after fork: signals as a child wants them, and the child's pool.
func startChildProcess() {
    setMPMState(AP_MPMQ_STARTING)
    peruser_shim_after_fork()
    signal(SIGHUP, SIG_DFL)
    signal(SIGTERM, SIG_DFL)
    signal(SIGCHLD, SIG_DFL)
    signal(SIGINT, SIG_IGN)
    ap_fatal_signal_child_setup(ap_server_conf)
    var allocator: OpaquePointer?, pool: OpaquePointer?
    guard apr_allocator_create(&allocator) == APR_SUCCESS, let allocator,
          apr_pool_create_ex(&pool, configurationPool, nil, allocator) == APR_SUCCESS, let pool else {
        log(PERUSER_LOG_EMERG, "peruser: could not create the child's pool")
        exit(exitChildFatal)
    }
    apr_allocator_max_free_set(allocator, Int(ap_max_mem_free))
    apr_allocator_owner_set(allocator, pool)
    childPool = pool
    guard peruser_shim_child_main_thread(UnsafeMutableRawPointer(pool)) == 0 else {
        log(PERUSER_LOG_EMERG, "peruser: could not initialize the child's main thread")
        exit(exitChildFatal)
    }
}

/// Ends a child: its status page says standby, then the modules' child cleanups run.
func exitChild(_ code: Int32) -> Never {
    if let page = ownPage { sharedTable?.setStatus(page: page, .standby, now: monotonicMilliseconds()) }
    if let pool = childPool { apr_pool_destroy(pool) }
    exit(code)
}

/// The listening sockets' descriptors.
func listenerDescriptors() -> [Int32] {
    var descriptors: [Int32] = []
    var listener = ap_listeners
    while let current = listener {
        var fd: apr_os_sock_t = -1
        if apr_os_sock_get(&fd, current.pointee.sd) == APR_SUCCESS { descriptors.append(fd) }
        listener = current.pointee.next
    }
    return descriptors
}

/// A slot's scoreboard entry, from the parent: starting (with its pid, once forked) or dead.
func setScoreboardSlot(_ slot: Int, pid: pid_t, starting: Bool) {
    guard let lasting, slot >= 0 && slot < Int(lasting.pointee.scoreboardSlots),
          let parents = ap_scoreboard_image?.pointee.parent else { return }
    ap_update_child_status_from_indexes(Int32(slot), 0, starting ? SERVER_STARTING : SERVER_DEAD, nil)
    parents[slot].pid = pid
    if starting, let generation = ap_unixd_mpm_get_retained_data()?.pointee.my_generation {
        parents[slot].generation = generation
    }
}

/// mod_unixd's privilege drop (groups, chroot, user, in that order), with the multiplexers'
/// own account and jail in this child's copy of its configuration.
func dropMultiplexerPrivileges() -> Bool {
    if let jail = configuration.multiplexerChroot {
        ap_unixd_config.chroot_dir = UnsafePointer(apr_pstrdup(childPool, jail))
    }
    if let user = configuration.multiplexerUser {
        ap_unixd_config.user_name = UnsafePointer(apr_pstrdup(childPool, user.name))
        ap_unixd_config.user_id = user.id
    }
    if let group = configuration.multiplexerGroup {
        ap_unixd_config.group_id = group.id
    }
    return ap_run_drop_privileges(childPool, ap_server_conf) == 0
}
