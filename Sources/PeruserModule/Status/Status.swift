// The status page, rendered in the worker that serves /server-status, from this generation's
// shared table (a hint: a tenant can make it lie, and only the display would suffer).
import CApache
import CPeruserShim
import PeruserCore

func statusSnapshot(scoreboardStates: [Int]) -> StatusSnapshot? {
    guard let table = sharedTable else { return nil }
    let limits = configuration.workerLimits
    let viewer = workerEnvironment >= 0 ? workerEnvironment : nil
    let fullView = viewer.map(hasFullView) ?? false
    var slots: [StatusSnapshot.Slot] = []
    for index in 0..<table.slotCount {
        guard let s = table.slot(index) else { continue }
        let env = (s.type == .processor || s.type == .worker) && limits.indices.contains(s.environment)
            ? s.environment : nil
        // What this worker's view holds of another environment's details is zeros anyway
        // (confineTableView); whatever it holds is dropped here all the same.
        let shown = env != nil && (fullView || env == viewer)
        // The parent may not have written this worker's own pid yet (it learns it from the fork).
        let pid = s.pid == 0 && index == workerSlot ? getpid() : s.pid
        slots.append(StatusSnapshot.Slot(id: index, pid: pid, status: s.status,
                                         scoreboardState: index < scoreboardStates.count ? scoreboardStates[index] : 0,
                                         type: s.type, environment: env, awaitingClient: s.awaitingClient,
                                         http2: s.http2, client: shown && !s.client.isNone ? s.client.description : "",
                                         vhost: shown ? s.vhost : "", request: shown ? s.request : ""))
    }
    var envs: [StatusSnapshot.Environment] = []
    for (index, env) in configuration.environments.environments.enumerated() {
        let c = table.environment(index)
        envs.append(StatusSnapshot.Environment(
            name: env.name, user: env.identity.user, group: env.identity.group,
            maxProcessors: limits[index].maxProcessors, connections: c?.totalHandedOff ?? 0,
            requests: c?.totalServed ?? 0, dropped: c?.totalDropped ?? 0,
            availability: Int(c?.availability ?? 100), waiting: Int(c?.waiting ?? 0), shed: c?.totalShed ?? 0))
    }
    return StatusSnapshot(slots: slots, environments: envs, maxMultiplexers: configuration.limits.maxMultiplexers,
                          viewer: viewer, fullView: fullView)
}

/// Whether this generation's workers of `environment` keep every worker's details (request
/// line, vhost, client, ticket) in their view of the child table: the main server's
/// environment and StatusEnvironment's.
func hasFullView(_ environment: Int) -> Bool {
    let main = ap_server_conf.map { Int(peruser_shim_server_environment($0)) }
    return configuration.hasFullView(environment, mainServerEnvironment: main.flatMap { $0 >= 0 ? $0 : nil })
}

/// mod_status's extension hook: Peruser's table under mod_status's own, ?peruser_stats for the
/// environments, and Peruser lines in ?auto.
@_cdecl("peruser_status")
public func peruserStatus(_ request: UnsafeMutableRawPointer?, _ short: Int32, _ statistics: Int32) {
    guard let request = request?.assumingMemoryBound(to: request_rec.self) else { return }
    let slots = Int(max(0, min(retainedLasting()?.pointee.scoreboardSlots ?? 0, Int32(mostServerLimit))))
    let scoreboard = (0..<slots).map { Int(ap_get_scoreboard_worker_from_indexes(Int32($0), 0)?.pointee.status ?? 0) }
    guard let snapshot = statusSnapshot(scoreboardStates: scoreboard) else { return }
    var text = short != 0 ? StatusPage.auto(snapshot)
        : statistics != 0 ? StatusPage.statistics(snapshot) : StatusPage.childTable(snapshot)
    text.withUTF8 { _ = ap_rwrite($0.baseAddress, Int32($0.count), request) }
}
