// Peruser's directives: their names, ranges and defaults, declared once.
//
// The C command table stores each directive as written (RawDirective) and checks only where it
// may appear, which is Apache's business; everything else about a directive is here, and
// Configuration.build reads the stored list in one pass. The module compares this list with
// the C command table when it loads, so the two cannot drift apart.

/// One directive as the configuration gave it: nothing is checked yet.
public struct RawDirective: Equatable {
    /// As in the command table: "MaxProcessors", "<Processor", "ServerEnvironment", ...
    public var name: String
    /// Its words. "<Processor" has one, the environment's name; a directive inside a
    /// `<Processor>` has its first word and, if the line had more, the rest as a second.
    public var arguments: [String]
    public var file: String
    public var line: Int
    /// The index, in the same list, of the `<Processor` this directive is inside.
    public var section: Int?

    public init(name: String, arguments: [String], file: String = "", line: Int = 0, section: Int? = nil) {
        self.name = name
        self.arguments = arguments
        self.file = file
        self.line = line
        self.section = section
    }

    public var location: String { "line \(line) of \(file)" }
}

/// A global limit: a whole number in `range`, stored into ServerLimits.
public struct LimitDirective {
    public let name: String
    public let range: ClosedRange<Int>
    let store: (inout ServerLimits, Int) -> Void
}

/// Slots the parent can keep records for: ServerLimit's ceiling.
public let mostServerLimit = 20_000
/// A ceiling for counts and times that have no natural one (seconds: 231 days).
let mostCount = 20_000_000

public enum Directives {
    /// Limits of the server config. Defaults are ServerLimits()'s and WorkerLimits.defaults.
    public static let limits: [LimitDirective] = [
        LimitDirective(name: "ServerLimit", range: 1...mostServerLimit) { $0.serverLimit = $1 },
        LimitDirective(name: "MaxClients", range: 1...mostCount) { $0.maxClients = $1 },
        LimitDirective(name: "MaxRequestWorkers", range: 1...mostCount) { $0.maxClients = $1 },
        LimitDirective(name: "MinProcessors", range: 0...mostServerLimit) { $0.workers.minProcessors = $1 },
        LimitDirective(name: "MaxProcessors", range: 1...mostServerLimit) { $0.workers.maxProcessors = $1 },
        LimitDirective(name: "MinSpareProcessors", range: 0...mostServerLimit) { $0.workers.minSpare = $1 },
        LimitDirective(name: "MaxSpareProcessors", range: 0...mostServerLimit) { $0.workers.maxSpare = $1 },
        LimitDirective(name: "MinMultiplexers", range: 1...mostServerLimit) { $0.minMultiplexers = $1 },
        LimitDirective(name: "MaxMultiplexers", range: 1...mostServerLimit) { $0.maxMultiplexers = $1 },
        LimitDirective(name: "MultiplexerIdleTimeout", range: 0...mostCount) { $0.multiplexerIdleTimeout = $1 },
        LimitDirective(name: "ExpireTimeout", range: 0...mostCount) { $0.expireTimeout = $1 },
        LimitDirective(name: "IdleTimeout", range: 0...mostCount) { $0.idleTimeout = $1 },
        LimitDirective(name: "MultiplexerHeadTimeout", range: 1...mostCount) { $0.headTimeout = $1 },
        LimitDirective(name: "MultiplexerMaxConnections", range: 1...mostCount) { $0.multiplexerMaxConnections = $1 },
        LimitDirective(name: "MaxClientShare", range: 1...100) { $0.maxClientShare = $1 },
        LimitDirective(name: "ReaderShedTimeout", range: 0...3600) { $0.readerShedSeconds = $1 },
    ]

    /// `<Processor>`'s own limits (each overrides the global one of the same name).
    public static let processorLimits: [(name: String, range: ClosedRange<Int>,
                                          store: (inout WorkerLimitOverrides, Int) -> Void)] = [
        ("MinProcessors", 0...mostServerLimit, { $0.minProcessors = $1 }),
        ("MaxProcessors", 1...mostServerLimit, { $0.maxProcessors = $1 }),
        ("MinSpareProcessors", 0...mostServerLimit, { $0.minSpare = $1 }),
        ("MaxSpareProcessors", 0...mostServerLimit, { $0.maxSpare = $1 }),
    ]

    public static let processorWaitSeconds = 0...3600
    public static let processorWaitLevels = 1...100
    /// Cgroup directories per `<Processor>`: one per v1 hierarchy is plenty.
    public static let mostCgroups = 16

    /// Directives the C command table stores for Configuration.build (the others there,
    /// mpm-itk's and Apache's own, are answered in C). Compared with the table at load.
    public static let stored: [String] = limits.map(\.name) + [
        "ProcessorWaitTimeout", "<Processor", "ServerEnvironment", "AssignUserID", "PeruserHandBack", "ProcessorImage",
        "ProcessorImageZygote", "MultiplexerUser", "MultiplexerGroup", "MultiplexerChroot", "StatusEnvironment",
    ]

    /// What may appear inside `<Processor>`.
    public static let insideProcessor = ["User", "Group", "Chroot", "Cgroup", "NiceValue", "ProcessorImage"]
        + processorLimits.map(\.name)
}
