// The @_cdecl entry points declared in CShim/peruser_swift.h, and the state behind them.
//
// Swift globals are per process and start fresh each time Apache reloads the module (it does on
// every restart), so this state belongs to one configuration pass and one generation. The parent
// is single-threaded; nothing here is touched concurrently.
import Glibc
import PeruserCore

var environments = EnvironmentTable()
var supervisor = Supervisor(quota: ChildQuota(multiplexers: 0, workers: []), slotCount: 0)

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
}

@_cdecl("peruser_config_add_environment")
public func peruserConfigAddEnvironment(_ name: UnsafePointer<CChar>?, _ user: UnsafePointer<CChar>?,
                                        _ group: UnsafePointer<CChar>?, _ minProcessors: Int32,
                                        _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    let envName = string(name) ?? ""
    do throws(ConfigError) {
        let identity = try resolveIdentity(user: string(user), group: string(group),
                                           environment: envName, directory: SystemAccounts())
        let env = Environment(name: envName, identity: identity,
                              minProcessors: minProcessors >= 0 ? Int(minProcessors) : nil)
        return Int32(try environments.add(env))
    } catch {
        copyOut(error.description, errorBuffer, errorCap)
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

// MARK: - Supervision

@_cdecl("peruser_supervisor_begin")
public func peruserSupervisorBegin(_ multiplexers: Int32, _ globalMinProcessors: Int32, _ slotCount: Int32,
                                   _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    let quota = ChildQuota(multiplexers: Int(multiplexers), environments: environments.environments,
                           globalMinProcessors: Int(globalMinProcessors))
    guard quota.total <= Int(slotCount) else {
        copyOut("\(quota.multiplexers) multiplexers and \(quota.total - quota.multiplexers) workers "
                + "do not fit in ServerLimit \(slotCount)", errorBuffer, errorCap)
        return -1
    }
    supervisor = Supervisor(quota: quota, slotCount: Int(slotCount))
    return 0
}

@_cdecl("peruser_supervisor_next_spawn")
public func peruserSupervisorNextSpawn(_ now: Int64, _ slot: UnsafeMutablePointer<Int32>?,
                                       _ environment: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard let order = supervisor.nextSpawn(now: now) else { return 0 }
    slot?.pointee = Int32(order.slot)
    switch order.role {
    case .multiplexer:
        environment?.pointee = -1
        return 1
    case .worker(let env):
        environment?.pointee = Int32(env)
        return 2
    }
}

@_cdecl("peruser_supervisor_started")
public func peruserSupervisorStarted(_ slot: Int32, _ environment: Int32, _ pid: Int32, _ now: Int64) {
    let role: ChildRole = environment < 0 ? .multiplexer : .worker(environment: Int(environment))
    supervisor.started(SpawnOrder(slot: Int(slot), role: role), pid: pid, now: now)
}

@_cdecl("peruser_supervisor_exited")
public func peruserSupervisorExited(_ pid: Int32, _ now: Int64,
                                    _ environment: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard let (slot, child) = supervisor.exited(pid: pid, now: now) else { return -1 }
    switch child.role {
    case .multiplexer: environment?.pointee = -1
    case .worker(let env): environment?.pointee = Int32(env)
    }
    return Int32(slot)
}

@_cdecl("peruser_supervisor_pids")
public func peruserSupervisorPids(_ out: UnsafeMutablePointer<Int32>?, _ capacity: Int32) -> Int32 {
    let pids = supervisor.livePids
    if let out {
        for (i, pid) in pids.prefix(Int(max(0, capacity))).enumerated() { out[i] = pid }
    }
    return Int32(pids.count)
}

@_cdecl("peruser_supervisor_slots_in_use")
public func peruserSupervisorSlotsInUse() -> Int32 { Int32(supervisor.slotsInUse) }

// MARK: - Messages

@_cdecl("peruser_message_encode")
public func peruserMessageEncode(_ out: UnsafeMutablePointer<UInt8>?, _ capacity: Int, _ hops: Int32,
                                 _ consumed: UnsafePointer<UInt8>?, _ length: Int) -> Int {
    guard let out, hops >= 0 else { return -1 }
    let source = UnsafeRawBufferPointer(start: length > 0 ? consumed : nil, count: consumed == nil ? 0 : length)
    let destination = UnsafeMutableRawBufferPointer(start: out, count: capacity)
    do {
        return try HandoffMessage.encode(hops: UInt16(clamping: hops), consumed: source, into: destination)
    } catch {
        return -1
    }
}

@_cdecl("peruser_message_decode")
public func peruserMessageDecode(_ message: UnsafePointer<UInt8>?, _ length: Int,
                                 _ hops: UnsafeMutablePointer<Int32>?) -> Int {
    guard let message else { return -1 }
    do {
        let header = try HandoffMessage.decodeHeader(UnsafeRawBufferPointer(start: message, count: length))
        hops?.pointee = Int32(header.hops)
        return header.consumedCount
    } catch {
        return -1
    }
}

// MARK: - Multiplexer

@_cdecl("peruser_multiplexer_run")
public func peruserMultiplexerRun(_ listeners: UnsafePointer<Int32>?, _ listenerCount: Int32,
                                  _ handback: Int32, _ channels: UnsafePointer<Int32>?,
                                  _ channelCount: Int32, _ headTimeoutMs: Int32) -> Int32 {
    let listenFds = (0..<Int(max(0, listenerCount))).compactMap { listeners?[$0] }
    let channelFds = (0..<Int(max(0, channelCount))).compactMap { channels?[$0] }
    guard var multiplexer = Multiplexer(listeners: listenFds, handback: handback, channels: channelFds,
                                        headTimeout: Int64(headTimeoutMs)) else {
        return 1
    }
    return multiplexer.run()
}
