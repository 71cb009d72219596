// The Peruser views of /server-status: the child table, ?peruser_stats, and ?auto lines.
// Pure functions of a snapshot; every name and every detail (request line, vhost, client: tenants
// and their clients write them) is escaped for HTML. The counts come from pages that
// tenants write, so sums saturate and percentages are clamped: a lie shows, it never traps.

public struct StatusSnapshot: Equatable {
    public struct Slot: Equatable {
        public var id: Int
        public var pid: Int32
        public var status: ChildStatus
        /// Apache's scoreboard state of the slot (SERVER_* of scoreboard.h).
        public var scoreboardState: Int
        public var type: ChildType
        /// Index into `environments`, or nil (multiplexer, unknown).
        public var environment: Int?
        /// A worker waiting on its client right now (a TLS handshake, a head, a body).
        public var awaitingClient: Bool
        /// A worker whose connection speaks HTTP/2.
        public var http2: Bool
        /// A worker's current (or last) client address, vhost and request line, from its detail
        /// page: empty where the viewer's view of the table holds zeros.
        public var client: String
        public var vhost: String
        public var request: String

        /// A process runs in this slot. The parent writes the pid once the fork has returned it,
        /// and by then the child may be serving: a slot whose child has already reported itself
        /// ready or active holds one too, its pid not yet known.
        public var hasProcess: Bool { pid > 0 || status == .ready || status == .active }

        /// A child that counts as alive: one that is not on its way out (standby).
        public var isAlive: Bool { hasProcess && status != .standby }

        public init(id: Int, pid: Int32, status: ChildStatus, scoreboardState: Int, type: ChildType, environment: Int?,
                    awaitingClient: Bool = false, http2: Bool = false, client: String = "", vhost: String = "",
                    request: String = "") {
            self.client = client
            self.vhost = vhost
            self.request = request
            self.awaitingClient = awaitingClient
            self.http2 = http2
            self.id = id
            self.pid = pid
            self.status = status
            self.scoreboardState = scoreboardState
            self.type = type
            self.environment = environment
        }
    }

    public struct Environment: Equatable {
        public var name: String
        public var user: String
        public var group: String
        public var maxProcessors: Int
        public var connections: UInt64
        public var requests: UInt64
        public var dropped: UInt64
        public var availability: Int
        public var waiting: Int
        /// Connections its workers gave up under pressure (ReaderShedding).
        public var shed: UInt64

        public init(name: String, user: String, group: String, maxProcessors: Int, connections: UInt64 = 0,
                    requests: UInt64 = 0, dropped: UInt64 = 0, availability: Int = 100, waiting: Int = 0,
                    shed: UInt64 = 0) {
            self.name = name
            self.user = user
            self.group = group
            self.maxProcessors = maxProcessors
            self.connections = connections
            self.requests = requests
            self.dropped = dropped
            self.availability = availability
            self.waiting = waiting
            self.shed = shed
        }
    }

    public var slots: [Slot]
    public var environments: [Environment]
    public var maxMultiplexers: Int
    /// The environment of the worker rendering the page (nil: none), and whether it has the
    /// full view (the main server's environment, StatusEnvironment): without it, the details
    /// of every other environment's workers show as `-`, whatever the table holds.
    public var viewer: Int?
    public var fullView: Bool

    public init(slots: [Slot], environments: [Environment], maxMultiplexers: Int, viewer: Int? = nil,
                fullView: Bool = false) {
        self.slots = slots
        self.environments = environments
        self.maxMultiplexers = maxMultiplexers
        self.viewer = viewer
        self.fullView = fullView
    }

    /// Whether the viewer may see the details of a worker of `environment`.
    public func showsDetails(of environment: Int?) -> Bool {
        guard let environment else { return false }
        return fullView || environment == viewer
    }

    /// Children alive (starting, ready or busy) and idle, of an environment (nil: multiplexers).
    public func count(environment: Int?) -> (alive: Int, idle: Int) {
        let all = counts()
        if let environment {
            return all.environments.indices.contains(environment) ? all.environments[environment] : (0, 0)
        }
        return all.multiplexers
    }

    /// Workers of each environment waiting on their client: a TLS handshake, a head inside TLS,
    /// a request body (what ReaderShedTimeout bounds under pressure).
    public func readers() -> [Int] {
        var counts = Array(repeating: 0, count: environments.count)
        for slot in slots where slot.isAlive && slot.awaitingClient && slot.status == .active {
            if let e = slot.environment, counts.indices.contains(e) { counts[e] += 1 }
        }
        return counts
    }

    /// Workers of each environment holding an HTTP/2 connection (a browser's, often idle).
    public func http2Connections() -> [Int] {
        var counts = Array(repeating: 0, count: environments.count)
        for slot in slots where slot.isAlive && slot.http2 && slot.type != .multiplexer {
            if let e = slot.environment, counts.indices.contains(e) { counts[e] += 1 }
        }
        return counts
    }

    /// The same for the multiplexers and every environment, in one pass over the slots.
    public func counts() -> (multiplexers: (alive: Int, idle: Int), environments: [(alive: Int, idle: Int)]) {
        var muxes = (alive: 0, idle: 0)
        var envs = Array(repeating: (alive: 0, idle: 0), count: environments.count)
        for slot in slots where slot.isAlive {
            let idle = slot.status == .ready ? 1 : 0
            if slot.type == .multiplexer {
                muxes.alive += 1
                muxes.idle += idle
            } else if slot.type == .processor || slot.type == .worker, let e = slot.environment, envs.indices.contains(e) {
                envs[e].alive += 1
                envs[e].idle += idle
            }
        }
        return (muxes, envs)
    }
}

public enum StatusPage {
    /// Names of Apache's scoreboard states (scoreboard.h SERVER_*), as the original showed them.
    public static func scoreboardName(_ state: Int) -> String {
        switch state {
        case 0: return "DEAD"
        case 1: return "STARTING"
        case 2: return "READY"
        case 3: return "BUSY_READ"
        case 4: return "BUSY_WRITE"
        case 5: return "BUSY_KEEPALIVE"
        case 6: return "BUSY_LOG"
        case 7: return "BUSY_DNS"
        case 8: return "CLOSING"
        case 9: return "GRACEFUL"
        case 10: return "IDLE_KILL"
        default: return "UNKNOWN"
        }
    }

    /// A percentage as shown: 0...100 whatever the snapshot holds.
    static func percent(_ value: Int) -> Int { min(max(value, 0), 100) }

    public static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for ch in text.unicodeScalars {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(ch)
            }
        }
        return out
    }

    /// Environments with no worker alive, grouped by availability (highest first): one row each
    /// on the pages, so hundreds of quiet tenants take a line, not a screen.
    static func quiet(_ s: StatusSnapshot, alive: [(alive: Int, idle: Int)]) -> [(availability: Int, names: [String], indices: [Int])] {
        var groups: [Int: [Int]] = [:]
        for e in s.environments.indices where alive[e].alive == 0 {
            groups[percent(s.environments[e].availability), default: []].append(e)
        }
        return groups.keys.sorted(by: >).map { availability in
            let indices = groups[availability] ?? []
            return (availability, indices.map { s.environments[$0].name }.sorted(), indices)
        }
    }

    static func environmentList(_ names: [String]) -> String {
        "\(names.count) environment\(names.count == 1 ? "" : "s") with no worker: "
            + names.map(escape).joined(separator: ", ")
    }

    /// One row per child, as in the original's documentation; a free slot reserved for an
    /// environment that has workers shows as its PROCESSOR on standby. Environments with no
    /// worker take one row per availability, and the free general slots one row.
    public static func childTable(_ s: StatusSnapshot) -> String {
        let counts = s.counts()
        var html = ""
        html.reserveCapacity(400 + s.slots.count * 40)
        html += "<h2>Peruser status</h2>\n<table border=\"0\">\n"
            + "<tr><th>ID</th><th>PID</th><th>STATUS</th><th>SB STATUS</th><th>Type</th>"
            + "<th>Processor</th><th>Pss</th><th>AVAIL</th><th>Client</th><th>VHost</th><th>Request</th></tr>\n"
        var freeSlots = 0
        for slot in s.slots {
            var type = slot.type
            var env = slot.environment
            var status = slot.status
            if !slot.hasProcess {
                guard slot.id < s.environments.count, counts.environments[slot.id].alive > 0 else {
                    if slot.id >= s.environments.count { freeSlots += 1 }
                    continue
                }
                status = .standby
                type = .processor
                env = slot.id
            }
            let processor: String
            let pss: String
            let avail: Int
            if type == .multiplexer {
                let c = counts.multiplexers
                processor = "Multiplexer"
                pss = "\(c.alive)/\(c.idle)/\(s.maxMultiplexers)"
                avail = 100
            } else if let e = env, s.environments.indices.contains(e), type != .unknown {
                let c = counts.environments[e]
                processor = escape(s.environments[e].name)
                pss = "\(c.alive)/\(c.idle)/\(s.environments[e].maxProcessors)"
                avail = percent(s.environments[e].availability)
            } else {
                processor = "(null)"
                pss = "0/0/0"
                avail = 0
            }
            // A worker's details: `-` for another environment's (hidden from this viewer); none
            // for a multiplexer, a free slot or a reserved one.
            var details = ["", "", ""]
            if slot.hasProcess && (type == .processor || type == .worker) {
                details = s.showsDetails(of: env) ? [escape(slot.client), escape(slot.vhost), escape(slot.request)]
                    : ["-", "-", "-"]
            }
            for piece in ["<tr><td>", String(slot.id), "</td><td>", String(max(slot.pid, 0)), "</td><td>",
                          status.name, "</td><td>", scoreboardName(slot.scoreboardState), "</td><td>", type.name,
                          "</td><td>", processor, "</td><td>", pss, "</td><td>", String(avail), "%</td><td>",
                          details[0], "</td><td>", details[1], "</td><td>", details[2], "</td></tr>\n"] {
                html.append(piece)
            }
        }
        for group in quiet(s, alive: counts.environments) {
            html += "<tr><td>-</td><td>0</td><td>STANDBY</td><td>DEAD</td><td>PROCESSOR</td><td>"
                + environmentList(group.names) + "</td><td>0/0/-</td><td>\(group.availability)%</td>"
                + "<td></td><td></td><td></td></tr>\n"
        }
        if freeSlots > 0 {
            html += "<tr><td>-</td><td>0</td><td>STANDBY</td><td>DEAD</td><td>UNKNOWN</td><td>\(freeSlots) free "
                + "slot\(freeSlots == 1 ? "" : "s")</td><td>0/0/0</td><td>0%</td><td></td><td></td><td></td></tr>\n"
        }
        return html + "</table>\n"
    }

    /// Environments ordered by most children alive (then by name).
    public static func ordered(_ s: StatusSnapshot) -> [(index: Int, alive: Int, idle: Int)] {
        ordered(s, counts: s.counts().environments)
    }

    static func ordered(_ s: StatusSnapshot, counts: [(alive: Int, idle: Int)]) -> [(index: Int, alive: Int, idle: Int)] {
        return s.environments.indices.map { e -> (index: Int, alive: Int, idle: Int) in
            (e, counts[e].alive, counts[e].idle)
        }.sorted { a, b in
            a.alive != b.alive ? a.alive > b.alive : s.environments[a.index].name < s.environments[b.index].name
        }
    }

    /// ?peruser_stats: one row per environment with workers, one per availability for those
    /// without (their counts summed), and totals.
    public static func statistics(_ s: StatusSnapshot) -> String {
        var html = "<h2>Peruser statistics</h2>\n<table border=\"0\">\n"
            + "<tr><th>Environment</th><th>User</th><th>Group</th><th>Pss</th><th>Connections</th>"
            + "<th>Requests</th><th>Dropped</th><th>AVAIL</th><th>Reading</th><th>Shed</th><th>H2</th></tr>\n"
        let readers = s.readers(), http2 = s.http2Connections()
        var alive = 0, idle = 0, maxTotal = 0, reading = 0, http2Total = 0
        var connections: UInt64 = 0, requests: UInt64 = 0, dropped: UInt64 = 0, shed: UInt64 = 0
        let counts = s.counts().environments
        for row in ordered(s, counts: counts) where row.alive > 0 {
            let env = s.environments[row.index]
            html += "<tr><td>\(escape(env.name))</td><td>\(escape(env.user))</td><td>\(escape(env.group))</td>"
                + "<td>\(row.alive)/\(row.idle)/\(env.maxProcessors)</td><td>\(env.connections)</td>"
                + "<td>\(env.requests)</td><td>\(env.dropped)</td><td>\(percent(env.availability))%</td>"
                + "<td>\(readers[row.index])</td><td>\(env.shed)</td><td>\(http2[row.index])</td></tr>\n"
            reading += readers[row.index]
            http2Total += http2[row.index]
            alive += row.alive
            idle += row.idle
            maxTotal = maxTotal.saturatingAdding(env.maxProcessors)
            connections = connections.saturatingAdding(env.connections)
            requests = requests.saturatingAdding(env.requests)
            dropped = dropped.saturatingAdding(env.dropped)
            shed = shed.saturatingAdding(env.shed)
        }
        // Environments with no worker: one row per availability, their counters summed.
        for group in quiet(s, alive: counts) {
            var sums = (connections: UInt64(0), requests: UInt64(0), dropped: UInt64(0), shed: UInt64(0), max: 0)
            for e in group.indices {
                let env = s.environments[e]
                sums.connections = sums.connections.saturatingAdding(env.connections)
                sums.requests = sums.requests.saturatingAdding(env.requests)
                sums.dropped = sums.dropped.saturatingAdding(env.dropped)
                sums.shed = sums.shed.saturatingAdding(env.shed)
                sums.max = sums.max.saturatingAdding(env.maxProcessors)
            }
            html += "<tr><td>\(environmentList(group.names))</td><td></td><td></td><td>0/0/\(sums.max)</td>"
                + "<td>\(sums.connections)</td><td>\(sums.requests)</td><td>\(sums.dropped)</td>"
                + "<td>\(group.availability)%</td><td>0</td><td>\(sums.shed)</td><td>0</td></tr>\n"
            maxTotal = maxTotal.saturatingAdding(sums.max)
            connections = connections.saturatingAdding(sums.connections)
            requests = requests.saturatingAdding(sums.requests)
            dropped = dropped.saturatingAdding(sums.dropped)
            shed = shed.saturatingAdding(sums.shed)
        }
        html += "<tr><th>Total</th><th></th><th></th><th>\(alive)/\(idle)/\(maxTotal)</th><th>\(connections)</th>"
            + "<th>\(requests)</th><th>\(dropped)</th><th></th><th>\(reading)</th><th>\(shed)</th><th>\(http2Total)</th></tr>\n"
            + "</table>\n"
        return html
    }

    /// ?auto: one `PeruserEnvironment:` line per environment (documented in the README) and a
    /// `PeruserMultiplexers:` line; key=value pairs after the name, so scrapers split on spaces.
    public static func auto(_ s: StatusSnapshot) -> String {
        let m = s.count(environment: nil)
        let readers = s.readers(), http2 = s.http2Connections()
        var text = "PeruserMultiplexers: alive=\(m.alive) idle=\(m.idle) max=\(s.maxMultiplexers)\n"
        for row in ordered(s) {
            let env = s.environments[row.index]
            text += "PeruserEnvironment: \(env.name) alive=\(row.alive) idle=\(row.idle) max=\(env.maxProcessors) "
                + "connections=\(env.connections) requests=\(env.requests) dropped=\(env.dropped) "
                + "availability=\(percent(env.availability)) waiting=\(max(env.waiting, 0)) reading=\(readers[row.index]) shed=\(env.shed) "
                + "h2=\(http2[row.index])\n"
        }
        return text
    }
}
