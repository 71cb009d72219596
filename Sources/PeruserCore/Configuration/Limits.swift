// The Peruser limits (directives, defaults and validation), as in the original's documentation.

/// Per-environment worker limits; `<Processor>` may override the global ones.
public struct WorkerLimits: Equatable {
    public var minProcessors: Int
    public var maxProcessors: Int
    public var minSpare: Int
    /// 0: no bound on idle workers other than maxProcessors.
    public var maxSpare: Int

    public init(minProcessors: Int = 0, maxProcessors: Int = 10, minSpare: Int = 2, maxSpare: Int = 0) {
        self.minProcessors = minProcessors
        self.maxProcessors = maxProcessors
        self.minSpare = minSpare
        self.maxSpare = maxSpare
    }

    public static let defaults = WorkerLimits()
}

/// Overrides given inside one `<Processor>` block (nil: the global value applies).
public struct WorkerLimitOverrides: Equatable {
    public var minProcessors: Int?
    public var maxProcessors: Int?
    public var minSpare: Int?
    public var maxSpare: Int?

    public init(minProcessors: Int? = nil, maxProcessors: Int? = nil, minSpare: Int? = nil, maxSpare: Int? = nil) {
        self.minProcessors = minProcessors
        self.maxProcessors = maxProcessors
        self.minSpare = minSpare
        self.maxSpare = maxSpare
    }

    public func applied(to global: WorkerLimits) -> WorkerLimits {
        WorkerLimits(minProcessors: minProcessors ?? global.minProcessors,
                     maxProcessors: maxProcessors ?? global.maxProcessors,
                     minSpare: minSpare ?? global.minSpare,
                     maxSpare: maxSpare ?? global.maxSpare)
    }
}

/// The global limits. Times are in seconds as configured; 0 disables where the spec says so.
public struct ServerLimits: Equatable {
    public var serverLimit = 256
    /// MaxClients as configured; nil: the same as ServerLimit (the spec says to set them equal).
    public var configuredMaxClients: Int?
    public var minMultiplexers = 3
    public var maxMultiplexers = 10
    public var multiplexerIdleTimeout = 0
    public var expireTimeout = 1800
    public var idleTimeout = 900
    public var processorWaitSeconds = 5
    public var processorWaitLevels = 10
    /// Seconds a multiplexer waits for a complete request head (MultiplexerHeadTimeout).
    public var headTimeout = 5
    /// Connections one multiplexer holds at most (MultiplexerMaxConnections).
    public var multiplexerMaxConnections = 512
    /// Percent of an environment's MaxProcessors one client may hold (MaxClientShare; 100: no limit).
    public var maxClientShare = 50
    /// Seconds a worker may wait on its client in one request while its environment has
    /// connections waiting (ReaderShedTimeout; 0: never shed).
    public var readerShedSeconds = 1
    public var workers = WorkerLimits.defaults
    /// The global limits the configuration wrote (MaxRequestWorkers counts as MaxClients);
    /// the others keep their defaults, which may be sized or clamped (`sized(environments:)`).
    public var written: Set<String> = []

    public init() {}

    public var maxClients: Int {
        get { configuredMaxClients ?? serverLimit }
        set { configuredMaxClients = newValue }
    }
}

public enum LimitError: Error, Equatable, CustomStringConvertible {
    case minAboveMax(minDirective: String, min: Int, maxDirective: String, max: Int, scope: String)
    case maxClientsAboveServerLimit(maxClients: Int, serverLimit: Int)
    case reservedSlotsExceedServerLimit(environments: Int, multiplexers: Int, serverLimit: Int)
    case minimumsExceedMaxClients(total: Int, maxClients: Int)
    case zeroMaximum(directive: String, scope: String)

    public var description: String {
        switch self {
        case .minAboveMax(let minDirective, let min, let maxDirective, let max, let scope):
            return "\(minDirective) \(min) is above \(maxDirective) \(max) \(scope)"
        case .maxClientsAboveServerLimit(let maxClients, let serverLimit):
            return "MaxClients \(maxClients) is above ServerLimit \(serverLimit); raise ServerLimit or lower MaxClients"
        case .reservedSlotsExceedServerLimit(let environments, let multiplexers, let serverLimit):
            return "\(environments) <Processor> environments (one reserved slot each) and MinMultiplexers "
                + "\(multiplexers) need more than ServerLimit \(serverLimit) slots"
        case .minimumsExceedMaxClients(let total, let maxClients):
            return "MinMultiplexers plus every environment's MinProcessors come to \(total) children, "
                + "above MaxClients \(maxClients)"
        case .zeroMaximum(let directive, let scope):
            return "\(directive) must be at least 1 \(scope)"
        }
    }
}

/// Checks one environment's effective limits.
public func validate(_ limits: WorkerLimits, scope: String) throws(LimitError) {
    guard limits.maxProcessors >= 1 else { throw .zeroMaximum(directive: "MaxProcessors", scope: scope) }
    guard limits.minProcessors <= limits.maxProcessors else {
        throw .minAboveMax(minDirective: "MinProcessors", min: limits.minProcessors,
                           maxDirective: "MaxProcessors", max: limits.maxProcessors, scope: scope)
    }
    guard limits.minSpare <= limits.maxProcessors else {
        throw .minAboveMax(minDirective: "MinSpareProcessors", min: limits.minSpare,
                           maxDirective: "MaxProcessors", max: limits.maxProcessors, scope: scope)
    }
    if limits.maxSpare > 0 && limits.minSpare > limits.maxSpare {
        throw .minAboveMax(minDirective: "MinSpareProcessors", min: limits.minSpare,
                           maxDirective: "MaxSpareProcessors", max: limits.maxSpare, scope: scope)
    }
}

/// Checks the global limits against each other and against the environments declared.
public func validate(_ limits: ServerLimits, environments: [WorkerLimits]) throws(LimitError) {
    guard limits.maxClients <= limits.serverLimit else {
        throw .maxClientsAboveServerLimit(maxClients: limits.maxClients, serverLimit: limits.serverLimit)
    }
    guard limits.maxMultiplexers >= 1 else { throw .zeroMaximum(directive: "MaxMultiplexers", scope: "(global)") }
    guard limits.minMultiplexers <= limits.maxMultiplexers else {
        throw .minAboveMax(minDirective: "MinMultiplexers", min: limits.minMultiplexers,
                           maxDirective: "MaxMultiplexers", max: limits.maxMultiplexers, scope: "(global)")
    }
    try validate(limits.workers, scope: "(global)")
    guard environments.count + max(1, limits.minMultiplexers) <= limits.serverLimit else {
        throw .reservedSlotsExceedServerLimit(environments: environments.count,
                                              multiplexers: limits.minMultiplexers, serverLimit: limits.serverLimit)
    }
    let minimums = limits.minMultiplexers + environments.reduce(0) { $0 + $1.minProcessors }
    guard minimums <= limits.maxClients else {
        throw .minimumsExceedMaxClients(total: minimums, maxClients: limits.maxClients)
    }
}

/// The slot count when ServerLimit is not written: the documented 256 while it holds every
/// environment in use at once (a busy worker and MinSpareProcessors each, or MinProcessors)
/// and twice the environments and multiplexers (one reserved slot each and as many general
/// ones), else the larger of those, rounded up to a multiple of 256 so that adding a few
/// tenants keeps the same value (a new ServerLimit needs a full restart). Also room for a
/// written MaxClients and every environment's MinProcessors beside the reserved slots.
public func derivedServerLimit(_ limits: ServerLimits, environments: [WorkerLimits]) -> Int {
    let reserved = environments.count + limits.maxMultiplexers
    let minimums = environments.reduce(0) { $0 + $1.minProcessors } + limits.minMultiplexers
    // Every environment in use at once: a busy worker and its spares (or MinProcessors), within
    // MaxProcessors. Fewer slots than that put a server whose tenants all had a request lately
    // at MaxClients, where each new connection to a tenant without an idle worker waits for
    // another tenant's spare to be retired.
    let allInUse = environments.reduce(0) {
        $0 + min(max($1.maxProcessors, 1), max($1.minProcessors, 1 + max($1.minSpare, 0)))
    } + limits.maxMultiplexers
    var needed = max(2 * reserved, minimums + environments.count, allInUse)
    if let maxClients = limits.configuredMaxClients { needed = max(needed, maxClients + environments.count) }
    let rounded = (needed + 255) / 256 * 256
    return min(max(256, rounded), mostServerLimit)
}

/// Limits the user did not write give way to those the user did: an environment whose
/// MaxProcessors (or MaxSpareProcessors) is below the default MinSpareProcessors keeps that
/// many spares at most, and ServerLimit (with MaxClients, when neither is written) follows the
/// environments declared. Each adjustment of a user's environment is said in `notices`.
public func sized(_ limits: ServerLimits, environments: [(scope: String, overrides: WorkerLimitOverrides)])
    -> (limits: ServerLimits, environments: [WorkerLimits], notices: [String]) {
    var global = limits
    var notices: [String] = []
    let spareWritten = limits.written.contains("MinSpareProcessors")
    func clampSpare(_ effective: inout WorkerLimits, scope: String) {
        let ceiling = effective.maxSpare > 0 ? min(effective.maxProcessors, effective.maxSpare) : effective.maxProcessors
        guard effective.minSpare > ceiling else { return }
        let which = effective.maxSpare > 0 && effective.maxSpare < effective.maxProcessors
            ? "MaxSpareProcessors \(effective.maxSpare)" : "MaxProcessors \(effective.maxProcessors)"
        notices.append("MinSpareProcessors is \(ceiling) \(scope), not the default \(effective.minSpare): "
                       + "\(which) is written there")
        effective.minSpare = ceiling
    }
    if !spareWritten { clampSpare(&global.workers, scope: "(global)") }
    var effective: [WorkerLimits] = []
    for environment in environments {
        var applied = environment.overrides.applied(to: global.workers)
        if !spareWritten && environment.overrides.minSpare == nil {
            clampSpare(&applied, scope: environment.scope)
        }
        effective.append(applied)
    }
    if !limits.written.contains("ServerLimit") {
        global.serverLimit = derivedServerLimit(global, environments: effective)
        if global.serverLimit != limits.serverLimit {
            notices.append("ServerLimit is \(global.serverLimit), sized for \(effective.count) environments and "
                           + "MaxMultiplexers \(global.maxMultiplexers) (every environment in use at once with its "
                           + "spares, and at least one reserved slot each and as many general ones) since ServerLimit "
                           + "is not written; write it to choose (a change takes a full restart)")
        }
    }
    return (global, effective, notices)
}
