// The status page, rendered in the worker that serves /server-status, from this generation's
// shared table (a hint: a tenant can make it lie, and only the display would suffer).
import CPeruserShim
import PeruserCore

func statusSnapshot(scoreboardStates: [Int]) -> StatusSnapshot? {
    guard let table = sharedTable else { return nil }
    let limits = configuration.workerLimits
    var slots: [StatusSnapshot.Slot] = []
    for index in 0..<table.slotCount {
        guard let s = table.slot(index) else { continue }
        let env = (s.type == .processor || s.type == .worker) && limits.indices.contains(s.environment)
            ? s.environment : nil
        slots.append(StatusSnapshot.Slot(id: index, pid: s.pid, status: s.status,
                                         scoreboardState: index < scoreboardStates.count ? scoreboardStates[index] : 0,
                                         type: s.type, environment: env))
    }
    var envs: [StatusSnapshot.Environment] = []
    for (index, env) in configuration.environments.environments.enumerated() {
        let c = table.environment(index)
        envs.append(StatusSnapshot.Environment(
            name: env.name, user: env.identity.user, group: env.identity.group,
            maxProcessors: limits[index].maxProcessors, connections: c?.totalHandedOff ?? 0,
            requests: c?.totalServed ?? 0, dropped: c?.totalDropped ?? 0,
            availability: Int(c?.availability ?? 100), waiting: Int(c?.waiting ?? 0)))
    }
    return StatusSnapshot(slots: slots, environments: envs, maxMultiplexers: configuration.limits.maxMultiplexers)
}

@_cdecl("peruser_status_render")
public func peruserStatusRender(_ view: Int32, _ states: UnsafePointer<Int32>?, _ slots: Int32,
                                _ context: UnsafeMutableRawPointer?) {
    let scoreboard = (0..<Int(max(0, slots))).map { Int(states?[$0] ?? 0) }
    guard let snapshot = statusSnapshot(scoreboardStates: scoreboard) else { return }
    let text: String
    switch view {
    case 1: text = StatusPage.statistics(snapshot)  // PERUSER_STATUS_VIEW_STATISTICS
    case 2: text = StatusPage.auto(snapshot)        // PERUSER_STATUS_VIEW_AUTO
    default: text = StatusPage.childTable(snapshot) // PERUSER_STATUS_VIEW_CHILDREN
    }
    var output = text
    output.withUTF8 { peruser_shim_emit(context, UnsafeRawPointer($0.baseAddress)?.assumingMemoryBound(to: CChar.self), $0.count) }
}
