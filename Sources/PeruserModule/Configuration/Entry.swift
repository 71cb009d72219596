// The @_cdecl entry points declared in CShim/peruser_swift.h, and the state behind them.
//
// Swift globals are per process and start fresh each time Apache reloads the module (it does on
// every restart), so this state belongs to one configuration pass and one generation. The parent
// is single-threaded; nothing here is touched concurrently.
import CPeruserShim
import Glibc
import PeruserCore

var environments = EnvironmentTable()
var serverLimits = ServerLimits()
var multiplexerChroot: String?

/// Copies `text` into a C buffer, truncating and always NUL-terminating.
func copyOut(_ text: String, _ buffer: UnsafeMutablePointer<CChar>?, _ capacity: Int) {
    guard let buffer, capacity > 0 else { return }
    var written = 0
    for byte in text.utf8 where written < capacity - 1 {
        buffer[written] = CChar(bitPattern: byte)
        written += 1
    }
    buffer[written] = 0
}

func string(_ pointer: UnsafePointer<CChar>?) -> String? {
    pointer.map { String(cString: $0) }
}

/// getpwnam/getgrnam; the parent is single-threaded, so the non-reentrant calls are safe.
struct SystemAccounts: AccountDirectory {
    func user(named name: String) -> (uid: UInt32, primaryGid: UInt32)? {
        guard let entry = getpwnam(name) else { return nil }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid)
    }

    func group(named name: String) -> UInt32? {
        guard let entry = getgrnam(name) else { return nil }
        return entry.pointee.gr_gid
    }
}

// MARK: - Configuration

@_cdecl("peruser_config_reset")
public func peruserConfigReset() {
    environments = EnvironmentTable()
    serverLimits = ServerLimits()
    multiplexerChroot = nil
}

@_cdecl("peruser_config_add_environment")
public func peruserConfigAddEnvironment(_ name: UnsafePointer<CChar>?, _ user: UnsafePointer<CChar>?,
                                        _ group: UnsafePointer<CChar>?, _ minProcessors: Int32,
                                        _ maxProcessors: Int32, _ minSpare: Int32, _ maxSpare: Int32,
                                        _ chroot: UnsafePointer<CChar>?,
                                        _ cgroups: UnsafePointer<UnsafePointer<CChar>?>?, _ cgroupCount: Int32,
                                        _ nice: Int32, _ hasNice: Int32,
                                        _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    let envName = string(name) ?? ""
    do {
        let identity = try resolveIdentity(user: string(user), group: string(group),
                                           environment: envName, directory: SystemAccounts())
        func given(_ value: Int32) -> Int? { value >= 0 ? Int(value) : nil }
        let overrides = WorkerLimitOverrides(minProcessors: given(minProcessors), maxProcessors: given(maxProcessors),
                                             minSpare: given(minSpare), maxSpare: given(maxSpare))
        var confinement = Confinement()
        if let path = string(chroot) {
            confinement.chroot = try checkChrootDirectory(path, directive: "Chroot", facts: SystemPaths.facts)
        }
        for i in 0..<Int(max(0, cgroupCount)) {
            guard let path = string(cgroups?[i]) else { continue }
            confinement.cgroups.append(try checkCgroupDirectory(path, already: confinement.cgroups,
                                                                facts: SystemPaths.cgroupFacts))
        }
        if hasNice != 0 {
            guard Confinement.niceRange.contains(Int(nice)) else {
                throw ConfigError.outOfRange(directive: "NiceValue", value: Int(nice), range: Confinement.niceRange)
            }
            confinement.nice = Int(nice)
        }
        let env = Environment(name: envName, identity: identity, overrides: overrides, confinement: confinement)
        return Int32(try environments.add(env))
    } catch {
        copyOut("\(error)", errorBuffer, errorCap)
        return -1
    }
}

/// mpm-itk's `AssignUserID user group` in a vhost: the implicit environment of that pair
/// (created with the global limits, or reused), named `assign-USER-GROUP`. Its index, or -1
/// with a message.
@_cdecl("peruser_config_assign_user_id")
public func peruserConfigAssignUserId(_ user: UnsafePointer<CChar>?, _ group: UnsafePointer<CChar>?,
                                      _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    let userName = string(user) ?? "", groupName = string(group) ?? ""
    let name = implicitEnvironmentName(user: userName, group: groupName)
    do throws(ConfigError) {
        let identity = try resolveIdentity(user: userName, group: groupName, environment: name,
                                           directory: SystemAccounts())
        if let index = environments.index(named: name) {
            guard environments[index]?.identity == identity else { throw .duplicateEnvironment(name) }
            return Int32(index)
        }
        return Int32(try environments.add(Environment(name: name, identity: identity)))
    } catch {
        copyOut("AssignUserID \(userName) \(groupName): \(error.description)", errorBuffer, errorCap)
        return -1
    }
}

@_cdecl("peruser_config_find_environment")
public func peruserConfigFindEnvironment(_ name: UnsafePointer<CChar>?,
                                         _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    let envName = string(name) ?? ""
    if let index = environments.index(named: envName) { return Int32(index) }
    copyOut(ConfigError.unknownEnvironment(envName).description, errorBuffer, errorCap)
    return -1
}

@_cdecl("peruser_config_parse_count")
public func peruserConfigParseCount(_ directive: UnsafePointer<CChar>?, _ text: UnsafePointer<CChar>?,
                                    _ low: Int32, _ high: Int32, _ value: UnsafeMutablePointer<Int32>?,
                                    _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    do throws(ConfigError) {
        let parsed = try parseCount(string(text) ?? "", directive: string(directive) ?? "?",
                                    range: Int(low)...Int(max(low, high)))
        value?.pointee = Int32(parsed)
        return 0
    } catch {
        copyOut(error.description, errorBuffer, errorCap)
        return -1
    }
}

@_cdecl("peruser_config_environment_count")
public func peruserConfigEnvironmentCount() -> Int32 { Int32(environments.count) }

@_cdecl("peruser_config_environment_name")
public func peruserConfigEnvironmentName(_ index: Int32, _ buffer: UnsafeMutablePointer<CChar>?,
                                         _ capacity: Int) -> Int32 {
    guard let env = environments[Int(index)] else { return -1 }
    copyOut(env.name, buffer, capacity)
    return 0
}

/// The jail of an environment's workers: 1 with the path copied out, 0 for none, -1 unknown.
@_cdecl("peruser_config_environment_chroot")
public func peruserConfigEnvironmentChroot(_ index: Int32, _ buffer: UnsafeMutablePointer<CChar>?,
                                           _ capacity: Int) -> Int32 {
    guard let env = environments[Int(index)] else { return -1 }
    guard let path = env.confinement.chroot else { return 0 }
    guard path.utf8.count < capacity else { return -1 }
    copyOut(path, buffer, capacity)
    return 1
}

@_cdecl("peruser_config_environment_cgroup_count")
public func peruserConfigEnvironmentCgroupCount(_ index: Int32) -> Int32 {
    Int32(environments[Int(index)]?.confinement.cgroups.count ?? 0)
}

/// The `which`-th cgroup of an environment: 0 with the path copied out, -1 if there is none.
@_cdecl("peruser_config_environment_cgroup")
public func peruserConfigEnvironmentCgroup(_ index: Int32, _ which: Int32, _ buffer: UnsafeMutablePointer<CChar>?,
                                           _ capacity: Int) -> Int32 {
    guard let cgroups = environments[Int(index)]?.confinement.cgroups,
          cgroups.indices.contains(Int(which)), cgroups[Int(which)].utf8.count < capacity else { return -1 }
    copyOut(cgroups[Int(which)], buffer, capacity)
    return 0
}

/// 1 with the environment's NiceValue in `nice`, 0 if it has none.
@_cdecl("peruser_config_environment_nice")
public func peruserConfigEnvironmentNice(_ index: Int32, _ nice: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard let value = environments[Int(index)]?.confinement.nice else { return 0 }
    nice?.pointee = Int32(value)
    return 1
}

/// MultiplexerChroot: checked like Chroot. 0, or -1 with a message.
@_cdecl("peruser_config_set_multiplexer_chroot")
public func peruserConfigSetMultiplexerChroot(_ path: UnsafePointer<CChar>?,
                                              _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    do throws(IsolationError) {
        multiplexerChroot = try checkChrootDirectory(string(path) ?? "", directive: "MultiplexerChroot",
                                                     facts: SystemPaths.facts)
        return 0
    } catch {
        copyOut(error.description, errorBuffer, errorCap)
        return -1
    }
}

/// 1 with MultiplexerChroot copied out, 0 if none is set.
@_cdecl("peruser_config_multiplexer_chroot")
public func peruserConfigMultiplexerChroot(_ buffer: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    guard let path = multiplexerChroot, path.utf8.count < capacity else { return 0 }
    copyOut(path, buffer, capacity)
    return 1
}

@_cdecl("peruser_config_environment_identity")
public func peruserConfigEnvironmentIdentity(_ index: Int32, _ uid: UnsafeMutablePointer<UInt32>?,
                                             _ gid: UnsafeMutablePointer<UInt32>?,
                                             _ user: UnsafeMutablePointer<CChar>?, _ userCap: Int) -> Int32 {
    guard let env = environments[Int(index)] else { return -1 }
    uid?.pointee = env.identity.uid
    gid?.pointee = env.identity.gid
    copyOut(env.identity.user, user, userCap)
    return 0
}

// MARK: - Messages

@_cdecl("peruser_message_encode")
public func peruserMessageEncode(_ out: UnsafeMutablePointer<UInt8>?, _ capacity: Int, _ hops: Int32,
                                 _ ticket: UInt64, _ consumed: UnsafePointer<UInt8>?, _ length: Int) -> Int {
    guard let out, hops >= 0 else { return -1 }
    let source = UnsafeRawBufferPointer(start: length > 0 ? consumed : nil, count: consumed == nil ? 0 : length)
    let destination = UnsafeMutableRawBufferPointer(start: out, count: capacity)
    do {
        return try HandoffMessage.encode(hops: UInt16(clamping: hops), ticket: ticket, consumed: source,
                                         into: destination)
    } catch {
        return -1
    }
}

@_cdecl("peruser_message_decode")
public func peruserMessageDecode(_ message: UnsafePointer<UInt8>?, _ length: Int,
                                 _ hops: UnsafeMutablePointer<Int32>?, _ ticket: UnsafeMutablePointer<UInt64>?) -> Int {
    guard let message else { return -1 }
    do {
        let header = try HandoffMessage.decodeHeader(UnsafeRawBufferPointer(start: message, count: length))
        hops?.pointee = Int32(header.hops)
        ticket?.pointee = header.ticket
        return header.consumedCount
    } catch {
        return -1
    }
}

/// Rate limit of the C shim's noisy lines (per process; see LogLimiter).
var shimNoisyLines = LogLimiter()

@_cdecl("peruser_log_admit")
public func peruserLogAdmit(_ kind: Int32) -> Int {
    shimNoisyLines.admit(Int(kind), now: monotonicMilliseconds()) ?? -1
}

@_cdecl("peruser_message_header_size")
public func peruserMessageHeaderSize() -> Int { HandoffMessage.headerSize }

// MARK: - Limits

@_cdecl("peruser_config_set_limit")
public func peruserConfigSetLimit(_ directive: UnsafePointer<CChar>?, _ value: Int32,
                                  _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    let v = Int(value)
    switch (string(directive) ?? "").lowercased() {
    case "serverlimit": serverLimits.serverLimit = v
    case "maxclients", "maxrequestworkers": serverLimits.maxClients = v
    case "minprocessors": serverLimits.workers.minProcessors = v
    case "maxprocessors": serverLimits.workers.maxProcessors = v
    case "minspareprocessors": serverLimits.workers.minSpare = v
    case "maxspareprocessors": serverLimits.workers.maxSpare = v
    case "minmultiplexers": serverLimits.minMultiplexers = v
    case "maxmultiplexers": serverLimits.maxMultiplexers = v
    case "multiplexeridletimeout": serverLimits.multiplexerIdleTimeout = v
    case "expiretimeout": serverLimits.expireTimeout = v
    case "idletimeout": serverLimits.idleTimeout = v
    case "multiplexerheadtimeout": serverLimits.headTimeout = v
    case "multiplexermaxconnections": serverLimits.multiplexerMaxConnections = v
    default:
        copyOut("\(string(directive) ?? "?") is not a Peruser limit", errorBuffer, errorCap)
        return -1
    }
    return 0
}

@_cdecl("peruser_config_set_processor_wait")
public func peruserConfigSetProcessorWait(_ seconds: Int32, _ levels: Int32) {
    serverLimits.processorWaitSeconds = Int(seconds)
    serverLimits.processorWaitLevels = Int(levels)
}

@_cdecl("peruser_config_limit")
public func peruserConfigLimit(_ directive: UnsafePointer<CChar>?) -> Int32 {
    let l = serverLimits
    switch (string(directive) ?? "").lowercased() {
    case "serverlimit": return Int32(l.serverLimit)
    case "maxclients", "maxrequestworkers": return Int32(l.maxClients)
    case "minprocessors": return Int32(l.workers.minProcessors)
    case "maxprocessors": return Int32(l.workers.maxProcessors)
    case "minspareprocessors": return Int32(l.workers.minSpare)
    case "maxspareprocessors": return Int32(l.workers.maxSpare)
    case "minmultiplexers": return Int32(l.minMultiplexers)
    case "maxmultiplexers": return Int32(l.maxMultiplexers)
    case "multiplexeridletimeout": return Int32(l.multiplexerIdleTimeout)
    case "expiretimeout": return Int32(l.expireTimeout)
    case "idletimeout": return Int32(l.idleTimeout)
    case "processorwaittimeout": return Int32(l.processorWaitSeconds)
    case "processorwaitlevels": return Int32(l.processorWaitLevels)
    case "multiplexerheadtimeout": return Int32(l.headTimeout)
    case "multiplexermaxconnections": return Int32(l.multiplexerMaxConnections)
    default: return -1
    }
}

/// Each environment's effective limits, in environment order.
func effectiveWorkerLimits() -> [WorkerLimits] {
    environments.environments.map { $0.overrides.applied(to: serverLimits.workers) }
}

@_cdecl("peruser_config_validate")
public func peruserConfigValidate(_ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    do throws(LimitError) {
        for (env, limits) in zip(environments.environments, effectiveWorkerLimits()) {
            try validate(limits, scope: "in <Processor \(env.name)>")
        }
        try validate(serverLimits, environments: effectiveWorkerLimits())
        return 0
    } catch {
        copyOut(error.description, errorBuffer, errorCap)
        return -1
    }
}

// MARK: - Multiplexer

@_cdecl("peruser_multiplexer_run")
public func peruserMultiplexerRun(_ slot: Int32, _ listeners: UnsafePointer<Int32>?, _ listenerCount: Int32,
                                  _ handoffs: UnsafePointer<Int32>?, _ handbackEnds: UnsafePointer<Int32>?,
                                  _ channelCount: Int32, _ generation: UInt32,
                                  _ previousHandbacks: UnsafePointer<Int32>?, _ previousCount: Int32,
                                  _ previousGeneration: UInt32, _ demand: Int32,
                                  _ secret: UnsafeRawPointer?, _ secretSize: Int, _ control: Int32) -> Int32 {
    let listenFds = (0..<Int(max(0, listenerCount))).compactMap { listeners?[$0] }
    let channelFds = (0..<Int(max(0, channelCount))).compactMap { handoffs?[$0] }
    guard let secret, let key = HandbackKey(UnsafeRawBufferPointer(start: secret, count: secretSize)),
          channelFds.count == Int(max(0, channelCount)) else {
        log(PERUSER_LOG_ERR, "multiplexer: started without its channels or secret")
        return 1
    }
    let limits = effectiveWorkerLimits()
    var handbacks: [HandbackChannel] = []
    for env in 0..<channelFds.count {
        guard let fd = handbackEnds?[env] else { continue }
        // A worker holds one connection at a time: twice an environment's workers is room
        // enough for its honest hand-backs, and a bound on a flood.
        let most = max(16, 2 * (limits.indices.contains(env) ? limits[env].maxProcessors : 1))
        handbacks.append(HandbackChannel(fd: fd, generation: generation, environment: env, most: most))
    }
    for env in 0..<Int(max(0, previousCount)) {
        guard let fd = previousHandbacks?[env], fd >= 0 else { continue }
        handbacks.append(HandbackChannel(fd: fd, generation: previousGeneration, environment: env, most: 16))
    }
    guard var multiplexer = Multiplexer(slot: Int(slot), listeners: listenFds, channels: channelFds,
                                        handbacks: handbacks, generation: generation, key: key,
                                        demand: demand, control: control) else {
        return 1
    }
    return multiplexer.run()
}
