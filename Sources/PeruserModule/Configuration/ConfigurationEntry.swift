// The configuration of this pass: built once from the directives the C command table stored,
// then read by the parent and, inherited at fork, by every multiplexer and worker.
//
// Swift globals are per process and start fresh each time Apache reloads the module (it does on
// every restart). The module is single-threaded (it forks); nothing here is touched concurrently.
import CPeruserShim
import Glibc
import PeruserCore

nonisolated(unsafe) var configuration = Configuration()

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

/// An environment's name for the log.
func environmentLabel(_ index: Int) -> String {
    configuration.environments[index]?.name ?? "#\(index)"
}

@_cdecl("peruser_directives_check")
public func peruserDirectivesCheck(_ names: UnsafePointer<UnsafePointer<CChar>?>?, _ count: Int32,
                                   _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    let table = Set((0..<Int(max(0, count))).compactMap { string(names?[$0]) })
    let known = Set(Directives.stored)
    guard table == known, Int(PERUSER_MOST_SLOTS) == mostServerLimit else {
        copyOut("internal error: the C command table and Directives.swift disagree (only in C: "
                + "\(table.subtracting(known).sorted()), only in Swift: \(known.subtracting(table).sorted())); "
                + "rebuild the module", errorBuffer, errorCap)
        return -1
    }
    return 0
}

@_cdecl("peruser_configure")
public func peruserConfigure(_ directives: UnsafePointer<peruser_directive>?, _ count: Int32,
                             _ unixd: UnsafePointer<peruser_unixd_identity>?, _ startup: Int32,
                             _ environmentOf: UnsafeMutablePointer<Int32>?,
                             _ settings: UnsafeMutablePointer<peruser_settings>?,
                             _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorCap: Int) -> Int32 {
    var raw: [RawDirective] = []
    for index in 0..<Int(max(0, count)) {
        guard let entry = directives?[index] else { break }
        let arguments = [string(entry.arguments.0), string(entry.arguments.1)].compactMap { $0 }
        raw.append(RawDirective(name: string(entry.name) ?? "", arguments: arguments, file: string(entry.file) ?? "?",
                                line: Int(entry.line), section: entry.section >= 0 ? Int(entry.section) : nil))
    }
    do throws(ConfigurationError) {
        let built = try Configuration.build(raw, system: .live)
        if let unixd = unixd?.pointee {
            let warnings = try built.checkIdentities(unixd: UnixdIdentity(
                user: string(unixd.user) ?? "?", uid: unixd.uid, gid: unixd.gid,
                userLocation: string(unixd.user_location) ?? "the default",
                groupLocation: string(unixd.group_location) ?? "the default"))
            if startup != 0 {
                for warning in warnings { logStartup(PERUSER_LOG_WARNING, warning) }
            }
        }
        configuration = built
    } catch {
        copyOut(error.description, errorBuffer, errorCap)
        return -1
    }
    for index in raw.indices {
        environmentOf?[index] = Int32(configuration.environmentOfDirective[index] ?? -1)
    }
    let limits = configuration.limits
    settings?.pointee = peruser_settings(server_limit: Int32(limits.serverLimit),
                                         max_clients: Int32(clamping: limits.maxClients),
                                         min_spare: Int32(limits.workers.minSpare),
                                         max_spare: Int32(limits.workers.maxSpare),
                                         hand_back: configuration.handBack ? 1 : 0)
    return 0
}

/// Rate limit of the C shim's noisy lines (per process; see LogLimiter).
nonisolated(unsafe) var shimNoisyLines = LogLimiter()

@_cdecl("peruser_log_admit")
public func peruserLogAdmit(_ kind: Int32) -> Int {
    shimNoisyLines.admit(Int(kind), now: monotonicMilliseconds()) ?? -1
}
