// check_config and post_config: the configuration pass as Apache runs it.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// The loaded module that is not thread-safe, for which each worker runs requests on HTTP/2
/// streams one at a time (post_config; Worker/RequestTurns.swift).
nonisolated(unsafe) var requestsSerializedFor: String?

@_cdecl("peruser_refuse_other_mpms")
public func peruserRefuseOtherMPMs() {
    for (file, name) in [("prefork.c", "mpm_prefork"), ("event.c", "mpm_event"), ("worker.c", "mpm_worker")]
    where ap_find_linked_module(file) != nil {
        logStartup(PERUSER_LOG_CRIT, "\(name) is loaded too, and Apache loads one MPM. On Debian: rm "
                   + "/etc/apache2/mods-enabled/\(name).load /etc/apache2/mods-enabled/\(name).conf (a2dismod "
                   + "refuses while php8.2 declares it a dependency)")
    }
}

/// ONE_PROCESS or DEBUG was defined (-X): refused at check_config.
nonisolated(unsafe) var oneProcess = false

/// Apache's first pass over the configuration (configtest too): messages go to the console.
/// Never in a process image: the root parent already said everything about this configuration.
func isStartupPass() -> Bool {
    !startedByTheRoot && ap_unixd_mpm_get_retained_data()?.pointee.module_loads == 1
}

private func refuse(_ problem: String) -> Int32 {
    if isStartupPass() {
        logStartup(PERUSER_LOG_CRIT, problem)  // on the console: configtest shows it
    } else {
        log(PERUSER_LOG_CRIT, "peruser: \(problem)")
    }
    return 1
}

/// pre_config: whether this is a graceful restart of this MPM, detaching at the second load,
/// and the defaults before any directive is read.
@_cdecl("peruser_pre_config")
public func peruserPreConfig(_ pool: OpaquePointer?, _ storedNames: UnsafePointer<UnsafePointer<CChar>?>?,
                             _ count: Int32, _ settings: UnsafeMutablePointer<peruser_settings>?) -> Int32 {
    guard let mpm = ap_unixd_mpm_get_retained_data() else { return 1 }
    imageStart = ImageStart.fromEnvironment()
    zygoteStart = imageStart == nil ? ZygoteStart.fromEnvironment() : nil
    if mpm.pointee.module_loads == 0 {
        if let start = imageStart { closeInheritedDescriptors(keeping: start.descriptors) }
        if let start = zygoteStart { closeInheritedDescriptors(keeping: [start.control]) }
    }
    oneProcess = ap_exists_config_define("ONE_PROCESS") != 0 || ap_exists_config_define("DEBUG") != 0
    let foreground = oneProcess || startedByTheRoot || ap_exists_config_define("FOREGROUND") != 0
    mpm.pointee.mpm_state = AP_MPMQ_STARTING
    let key = "mpm_peruser_baton"
    let baton = ap_retained_data_get(key)
    if baton == nil || mpm.pointee.baton != baton {  // after another MPM: no graceful restart
        mpm.pointee.was_graceful = 0
        mpm.pointee.baton = baton ?? ap_retained_data_create(key, 1)
    }
    mpm.pointee.module_loads += 1
    if mpm.pointee.module_loads == 2 && !foreground {
        ap_fatal_signal_setup(ap_server_conf, pool)
        let detached = apr_proc_detach(ap_exists_config_define("NO_DETACH") != 0 ? APR_PROC_DETACH_FOREGROUND
                                                                                 : APR_PROC_DETACH_DAEMONIZE)
        guard detached == APR_SUCCESS else {
            log(PERUSER_LOG_CRIT, "apr_proc_detach failed: \(Errno(detached))")
            return 500  // HTTP_INTERNAL_SERVER_ERROR, as Apache's own MPMs answer
        }
    }
    ap_listen_pre_config()
    let table = Set((0..<Int(max(0, count))).compactMap { string(storedNames?[$0]) })
    let known = Set(Directives.stored)
    guard table == known else {
        return refuse("internal error: the C command table and Directives.swift disagree (only in C: "
                      + "\(table.subtracting(known).sorted()), only in Swift: \(known.subtracting(table).sorted())); "
                      + "rebuild the module")
    }
    configuration = Configuration()
    settings?.pointee = configuration.settings
    return 0
}

/// check_config: builds this pass's configuration from the stored directives, in order, checks
/// it against mod_unixd's identity and logs what is wrong (warnings at the first start only).
@_cdecl("peruser_configure")
public func peruserConfigure(_ directives: UnsafeMutablePointer<peruser_directive>?, _ count: Int32,
                             _ settings: UnsafeMutablePointer<peruser_settings>?) -> Int32 {
    let startup = isStartupPass()
    if oneProcess {
        return refuse("ONE_PROCESS/DEBUG mode is not supported: a root process must never serve connections")
    }
    if let jail = ap_unixd_config.chroot_dir {
        return refuse("ChrootDir \(String(cString: jail)) is not supported by this MPM (it would confine only the "
                      + "multiplexers); use Chroot inside <Processor> for workers and MultiplexerChroot for multiplexers")
    }
    var raw: [RawDirective] = []
    for index in 0..<Int(max(0, count)) {
        guard let entry = directives?[index] else { break }
        let arguments = [string(entry.arguments.0), string(entry.arguments.1)].compactMap { $0 }
        raw.append(RawDirective(name: string(entry.name) ?? "", arguments: arguments, file: string(entry.file) ?? "?",
                                line: Int(entry.line), section: entry.section >= 0 ? Int(entry.section) : nil))
    }
    do throws(ConfigurationError) {
        var built = try Configuration.build(raw, system: startedByTheRoot ? .checkedByTheParent : .live)
        if let start = imageStart { try built.resolveOwnAccounts(for: start.role, directory: SystemAccounts()) }
        let unixd = UnixdIdentity(user: string(ap_unixd_config.user_name) ?? "?", uid: ap_unixd_config.user_id,
                                  gid: ap_unixd_config.group_id, userLocation: location(of: "User"),
                                  groupLocation: location(of: "Group"))
        let warnings = try built.checkIdentities(unixd: unixd)
        if startup {
            for warning in warnings { logStartup(PERUSER_LOG_WARNING, warning) }
            for notice in built.notices { logStartup(PERUSER_LOG_NOTICE, notice) }
        }
        configuration = built
    } catch {
        return refuse(error.description)
    }
    for index in raw.indices {
        directives?[index].environment = Int32(configuration.environmentOfDirective[index] ?? -1)
    }
    settings?.pointee = configuration.settings
    // Not in the zygote: there their first-pass post_config runs (mod_php's starts nothing,
    // it only notes in the process pool that it ran), and an image forked from the zygote
    // needs that note for its own second pass to start PHP.
    if !startedByTheRoot && configuration.everyEnvironmentIsolated {
        for engine in ImageConfiguration.enginesTheRootLeavesUnstarted where peruser_shim_drop_post_config(engine) > 0 {
            log(PERUSER_LOG_DEBUG, "peruser: the root parent leaves \(engine) unstarted: every environment's workers "
                + "come from its own process image, which starts it")
        }
    }
    proxyTrust = readProxyTrust(startup: startup)
    if startup { warnAboutVirtualHostsWithoutEnvironment() }
    return 0
}

extension Configuration {
    /// What the C shim reads of the configuration.
    var settings: peruser_settings {
        peruser_settings(hand_back: handBack ? 1 : 0)
    }
}

/// Where the first `name` directive (mod_unixd's User or Group) is, outside <Processor>.
private func location(of name: String) -> String {
    var directive = ap_conftree
    while let current = directive {
        if let found = current.pointee.directive, strcasecmp(found, name) == 0 {
            return "line \(current.pointee.line_num) of \(string(current.pointee.filename) ?? "?")"
        }
        directive = current.pointee.next
    }
    return "the default"
}

private func warnAboutVirtualHostsWithoutEnvironment() {
    var server = ap_server_conf?.pointee.next
    while let vhost = server {
        if peruser_shim_server_environment(vhost) < 0 {
            let described = String(cString: peruser_shim_vhost_description(UnsafeMutableRawPointer(vhost.pointee.process.pointee.pconf), vhost))
            logStartup(PERUSER_LOG_WARNING, "virtual host \(described) has no ServerEnvironment (and the main server "
                       + "has none to inherit); its requests will be answered with 503")
        }
        server = vhost.pointee.next
    }
}

/// A loaded module that must never run two requests at once in one process, or nil. PHP says so
/// by its build: a thread-safe (ZTS) PHP exports TSRM's tsrm_startup, Debian's does not.
private func threadUnsafeModule() -> String? {
    var module = ap_top_module
    while let current = module {
        let name = string(current.pointee.name) ?? ""
        if name.hasPrefix("mod_php") && dlsym(nil, "tsrm_startup") == nil {
            return "mod_php (built without thread safety, as Debian's is)"
        }
        if name == "mod_perl.c" { return "mod_perl" }
        if name == "mod_python.c" { return "mod_python" }
        module = current.pointee.next
    }
    return nil
}

/// mod_http2 runs the streams of one connection at once on threads of its own inside the
/// worker (up to H2MaxWorkers, at least 4 when unset, since this MPM answers 1 to
/// AP_MPMQ_MAX_THREADS), and treats every MPM but prefork as able to. With a module that is not
/// thread-safe that corrupts memory (any client can do it), so each worker then gives the
/// requests of HTTP/2 streams one turn at a time (RequestTurns).
@_cdecl("peruser_post_config")
public func peruserPostConfig(_ pool: OpaquePointer?, _ main: UnsafeMutableRawPointer?) {
    // The zygote forks images from here, at the end of its first pass; only they return.
    if let start = zygoteStart { zygoteRun(start) }
    requestsSerializedFor = nil
    guard let unsafe = threadUnsafeModule(), ap_find_linked_module("mod_http2.c") != nil else { return }
    requestsSerializedFor = unsafe
}
