// The whole Peruser configuration of one pass, built once from the directives as written and
// read by the parent, the multiplexers and the workers (which inherit it when forked).

/// What building a configuration asks of the system: accounts and file-system facts.
public struct SystemFacts {
    public var accounts: AccountDirectory
    public var paths: (String) -> PathFacts?
    public var cgroups: (String) -> CgroupFacts?

    public init(accounts: AccountDirectory, paths: @escaping (String) -> PathFacts?,
                cgroups: @escaping (String) -> CgroupFacts?) {
        self.accounts = accounts
        self.paths = paths
        self.cgroups = cgroups
    }
}

/// A configuration error, worded for `apache2ctl configtest`: it names the directive, where it
/// is, and the problem.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}

/// An account named by MultiplexerUser or MultiplexerGroup.
public struct NamedAccount: Equatable {
    public var name: String
    public var id: UInt32
    public var location: String
}

/// Whom the multiplexers run as without MultiplexerUser/MultiplexerGroup: mod_unixd's User
/// and Group, with where they were set ("line N of F", or "the default").
public struct UnixdIdentity: Equatable {
    public var user: String
    public var uid: UInt32
    public var gid: UInt32
    public var userLocation: String
    public var groupLocation: String

    public init(user: String, uid: UInt32, gid: UInt32, userLocation: String, groupLocation: String) {
        self.user = user
        self.uid = uid
        self.gid = gid
        self.userLocation = userLocation
        self.groupLocation = groupLocation
    }
}

public struct Configuration {
    public fileprivate(set) var limits = ServerLimits()
    public fileprivate(set) var environments = EnvironmentTable()
    /// Where each environment comes from, for messages: "<Processor p> (line N of F)" or
    /// "AssignUserID u g (line N of F)".
    public fileprivate(set) var origins: [String] = []
    /// Each environment's limits: its `<Processor>`'s overrides applied to the global ones.
    public fileprivate(set) var workerLimits: [WorkerLimits] = []
    public fileprivate(set) var multiplexerChroot: String?
    public fileprivate(set) var multiplexerUser: NamedAccount?
    public fileprivate(set) var multiplexerGroup: NamedAccount?
    /// PeruserHandBack (On by default).
    public fileprivate(set) var handBack = true
    /// ProcessorImage: each environment's workers start from a process image that loaded only
    /// its own vhosts (isolated, the default), or all from the root parent (shared).
    public fileprivate(set) var isolatedImages = true
    /// ProcessorImageZygote: isolated images are forked from one zygote (On, the default), or
    /// each is an apache2 executed on its own, with an address layout, stack canary and pointer
    /// guard of its own (Off).
    public fileprivate(set) var imageZygote = true

    /// Whether environment `index`'s workers come from an image of their own: its
    /// `<Processor>`'s ProcessorImage, else the global one.
    public func isolatesImage(of index: Int) -> Bool {
        environments[index]?.confinement.isolatedImage ?? isolatedImages
    }
    /// Whether no environment's workers are forked from the root parent.
    public var everyEnvironmentIsolated: Bool {
        (0..<environments.count).allSatisfy(isolatesImage(of:))
    }
    /// The environments StatusEnvironment names: their workers see every worker's request line,
    /// vhost and client in the child table (and on the status page), as the main server's do.
    public fileprivate(set) var statusEnvironments: Set<Int> = []
    /// The environment each ServerEnvironment or AssignUserID names, by its index in the list
    /// of directives the configuration was built from.
    public fileprivate(set) var environmentOfDirective: [Int: Int] = [:]
    /// Defaults the configuration adjusted to what was written (a clamped spare count, a
    /// derived ServerLimit), said once at startup.
    public fileprivate(set) var notices: [String] = []

    /// The defaults alone: no environment.
    public init() {}

    /// Reads every directive in order, then checks the limits against each other. The first
    /// problem is thrown.
    public static func build(_ directives: [RawDirective], system: SystemFacts) throws(ConfigurationError) -> Configuration {
        var configuration = Configuration()
        var builder = Builder(directives: directives, system: system)
        for index in directives.indices where directives[index].section == nil {
            try builder.read(index, into: &configuration)
        }
        // After every <Processor>, so StatusEnvironment may come before or after the declarations.
        for index in directives.indices where directives[index].section == nil
            && directives[index].name == "StatusEnvironment" {
            try builder.readStatusEnvironment(index, into: &configuration)
        }
        let scoped = zip(configuration.environments.environments, configuration.origins).map {
            (scope: "in \($1)", overrides: $0.overrides)
        }
        let sizing = sized(configuration.limits, environments: scoped)
        configuration.limits = sizing.limits
        configuration.workerLimits = sizing.environments
        configuration.notices = sizing.notices
        do throws(LimitError) {
            for (environment, limits) in zip(configuration.environments.environments, configuration.workerLimits) {
                try validate(limits, scope: "in <Processor \(environment.name)>")
            }
            try validate(configuration.limits, environments: configuration.workerLimits)
        } catch {
            throw ConfigurationError(error.description)
        }
        return configuration
    }

    /// Whether the workers of `environment` see every worker's details (request line, vhost,
    /// client, ticket) in the child table: those of the main server's environment
    /// (`mainServerEnvironment`, its ServerEnvironment or AssignUserID, which vhosts without
    /// one inherit) and those StatusEnvironment names. Every other worker sees only its own
    /// environment's.
    public func hasFullView(_ environment: Int, mainServerEnvironment: Int?) -> Bool {
        guard environment >= 0 && environment < environments.count else { return false }
        return environment == mainServerEnvironment || statusEnvironments.contains(environment)
    }

    /// For a process image, which builds its configuration with `ParentResolvedAccounts`: looks
    /// up live the accounts the image itself runs as (its own environment's User and Group, or
    /// MultiplexerUser and MultiplexerGroup), with the checks the parent made. The other
    /// environments keep `ParentResolvedAccounts.unresolved`: an image forks only its own
    /// role's processes, and nothing else of it reads another environment's ids.
    public mutating func resolveOwnAccounts(for role: ImageRole, directory: AccountDirectory) throws(ConfigurationError) {
        switch role {
        case .environment(let index):
            guard let environment = environments[index] else {
                throw ConfigurationError("the parent started an image for environment #\(index), which this "
                                         + "configuration does not declare")
            }
            do throws(ConfigError) {
                let identity = try resolveIdentity(user: environment.identity.user, group: environment.identity.group,
                                                   environment: environment.name, directory: directory)
                environments.setIdentity(identity, of: index)
            } catch {
                throw ConfigurationError("<Processor \(environment.name)>: \(error.description)")
            }
        case .multiplexers:
            if let user = multiplexerUser {
                guard let uid = multiplexerAccountId(user.name, isGroup: false, in: directory), uid != 0 else {
                    throw ConfigurationError("MultiplexerUser \(user.name): no such user, or root (\(user.location))")
                }
                multiplexerUser?.id = uid
            }
            if let group = multiplexerGroup {
                guard let gid = multiplexerAccountId(group.name, isGroup: true, in: directory), gid != 0 else {
                    throw ConfigurationError("MultiplexerGroup \(group.name): no such group, or root (\(group.location))")
                }
                multiplexerGroup?.id = gid
            }
        }
    }

    /// A tenant must never share the multiplexers' uid or gid: its code could signal or trace
    /// them and stop all routing. Environments that share a uid are one trust domain: returned
    /// as warnings.
    public func checkIdentities(unixd: UnixdIdentity) throws(ConfigurationError) -> [String] {
        let muxUid = multiplexerUser?.id ?? unixd.uid
        let muxGid = multiplexerGroup?.id ?? unixd.gid
        let userDirective = multiplexerUser.map { "MultiplexerUser \($0.name) (\($0.location))" }
            ?? "User \(unixd.user) (\(unixd.userLocation))"
        let groupDirective = multiplexerGroup.map { "MultiplexerGroup \($0.name) (\($0.location))" }
            ?? "Group (\(unixd.groupLocation))"
        var warnings: [String] = []
        var firstWithUid: [UInt32: String] = [:]
        for (index, environment) in environments.environments.enumerated() {
            let uid = environment.identity.uid, gid = environment.identity.gid
            // An image knows other environments' names only; the parent checked their ids.
            if uid == ParentResolvedAccounts.unresolved { continue }
            if uid == muxUid || gid == muxGid {
                let byUid = uid == muxUid
                throw ConfigurationError(
                    "\(origins[index]) runs as \(byUid ? "uid" : "gid") \(byUid ? uid : gid), which the multiplexers "
                    + "run as too (\(byUid ? userDirective : groupDirective)): its code could signal or trace the "
                    + "multiplexers and stop every site. Give the tenant a user and group of its own, or run the "
                    + "multiplexers under an account no tenant uses: MultiplexerUser peruser-mux and "
                    + "MultiplexerGroup peruser-mux (the Debian package creates that account and sets both)")
            }
            if let other = firstWithUid[uid] {
                warnings.append("environments \(other) and \(environment.name) both run as uid \(uid): they are one "
                                + "trust domain (each can signal, trace and read the other's workers)")
            } else {
                firstWithUid[uid] = environment.name
            }
        }
        return warnings
    }
}

/// The id MultiplexerUser or MultiplexerGroup names: `#N`, or an account looked up.
private func multiplexerAccountId(_ name: String, isGroup: Bool, in directory: AccountDirectory) -> UInt32? {
    if name.first == "#" { return UInt32(name.dropFirst()).flatMap { $0 == UInt32.max ? nil : $0 } }
    return isGroup ? directory.group(named: name) : directory.user(named: name)?.uid
}

/// One pass over the directives.
private struct Builder {
    let directives: [RawDirective]
    let system: SystemFacts
    /// Where each environment was declared (its directive's index), for "declared before".
    var declaredAt: [Int] = []
    var processorWaitGiven = false

    init(directives: [RawDirective], system: SystemFacts) {
        self.directives = directives
        self.system = system
    }

    mutating func read(_ index: Int, into configuration: inout Configuration) throws(ConfigurationError) {
        let directive = directives[index]
        let arguments = directive.arguments
        func fail(_ message: String) -> ConfigurationError {
            ConfigurationError("\(directive.location): \(message)")
        }
        /// An On|Off directive's one argument (either case).
        func flag(_ name: String) throws(ConfigurationError) -> Bool {
            switch arguments.first?.lowercased() {
            case "on": return true
            case "off": return false
            default: throw fail("\(name) must be On or Off")
            }
        }
        func count(_ text: String, _ name: String, _ range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
            do throws(ConfigError) {
                return try parseCount(text, directive: name, range: range)
            } catch {
                throw fail(error.description)
            }
        }
        if let limit = Directives.limits.first(where: { $0.name == directive.name }) {
            guard arguments.count == 1 else { throw fail("\(directive.name) takes one argument") }
            limit.store(&configuration.limits, try count(arguments[0], limit.name, limit.range))
            configuration.limits.written.insert(limit.name == "MaxRequestWorkers" ? "MaxClients" : limit.name)
            return
        }
        switch directive.name {
        case "ProcessorWaitTimeout":
            guard (1...2).contains(arguments.count) else { throw fail("ProcessorWaitTimeout takes one or two arguments") }
            configuration.limits.processorWaitSeconds = try count(arguments[0], "ProcessorWaitTimeout",
                                                                  Directives.processorWaitSeconds)
            configuration.limits.processorWaitLevels = arguments.count == 2
                ? try count(arguments[1], "ProcessorWaitTimeout levels", Directives.processorWaitLevels) : 10
        case "<Processor":
            try readProcessor(index, into: &configuration)
        case "ServerEnvironment":
            let name = arguments.first ?? ""
            guard let environment = configuration.environments.index(named: name),
                  declaredAt[environment] < index else {
                throw fail("ServerEnvironment \(name): " + ConfigError.unknownEnvironment(name).description)
            }
            configuration.environmentOfDirective[index] = environment
        case "AssignUserID":
            guard arguments.count == 2 else { throw fail("AssignUserID takes a user and a group") }
            let (user, group) = (arguments[0], arguments[1])
            let name = implicitEnvironmentName(user: user, group: group)
            do throws(ConfigError) {
                let identity = try resolveIdentity(user: user, group: group, environment: name,
                                                   directory: system.accounts)
                if let existing = configuration.environments.index(named: name) {
                    guard configuration.environments[existing]?.identity == identity else {
                        throw ConfigError.duplicateEnvironment(name)
                    }
                    configuration.environmentOfDirective[index] = existing
                } else {
                    let environment = try configuration.environments.add(Environment(name: name, identity: identity))
                    configuration.origins.append("AssignUserID \(user) \(group) (\(directive.location))")
                    declaredAt.append(index)
                    configuration.environmentOfDirective[index] = environment
                }
            } catch {
                throw fail("AssignUserID \(user) \(group): \(error.description)")
            }
        case "StatusEnvironment":
            guard arguments.count == 1, !arguments[0].isEmpty else { throw fail("StatusEnvironment takes names") }
            // Read after every directive (readStatusEnvironment).
        case "PeruserHandBack":
            configuration.handBack = try flag("PeruserHandBack")
        case "ProcessorImageZygote":
            configuration.imageZygote = try flag("ProcessorImageZygote")
        case "ProcessorImage":
            guard arguments.count == 1 else { throw fail("ProcessorImage takes one argument: isolated or shared") }
            switch arguments[0].lowercased() {
            case "isolated": configuration.isolatedImages = true
            case "shared": configuration.isolatedImages = false
            default: throw fail("ProcessorImage must be isolated or shared, not \(arguments[0])")
            }
        case "MultiplexerUser", "MultiplexerGroup":
            let isGroup = directive.name == "MultiplexerGroup"
            let name = arguments.first ?? ""
            guard let id = multiplexerAccountId(name, isGroup: isGroup, in: system.accounts) else {
                throw fail("\(directive.name) \(name): no such \(isGroup ? "group" : "user") on this system "
                           + "(the Debian package creates peruser-mux; elsewhere: useradd --system --user-group "
                           + "--no-create-home --shell /usr/sbin/nologin peruser-mux)")
            }
            guard id != 0 else { throw fail("\(directive.name) \(name): the multiplexers must not run as root") }
            let account = NamedAccount(name: name, id: id, location: directive.location)
            if isGroup { configuration.multiplexerGroup = account } else { configuration.multiplexerUser = account }
        case "MultiplexerChroot":
            do throws(IsolationError) {
                configuration.multiplexerChroot = try checkChrootDirectory(arguments.first ?? "",
                                                                           directive: "MultiplexerChroot",
                                                                           facts: system.paths)
            } catch {
                throw fail(error.description)
            }
        default:
            throw fail("\(directive.name) is not a Peruser directive")
        }
    }

    /// `StatusEnvironment name`: one stored directive per name (the command table iterates).
    func readStatusEnvironment(_ index: Int, into configuration: inout Configuration) throws(ConfigurationError) {
        let directive = directives[index]
        let name = directive.arguments.first ?? ""
        guard let environment = configuration.environments.index(named: name),
              configuration.origins.indices.contains(environment),
              configuration.origins[environment].hasPrefix("<Processor ") else {
            throw ConfigurationError("\(directive.location): StatusEnvironment \(name): no <Processor \(name)> is "
                                     + "declared (StatusEnvironment names the <Processor> environments whose workers "
                                     + "see every tenant's requests on the status page)")
        }
        configuration.statusEnvironments.insert(environment)
    }

    /// `<Processor name>` and the directives inside it.
    mutating func readProcessor(_ index: Int, into configuration: inout Configuration) throws(ConfigurationError) {
        let section = directives[index]
        let name = section.arguments.first ?? ""
        let origin = "<Processor \(name)> (\(section.location))"
        var user: String?, group: String?
        var overrides = WorkerLimitOverrides()
        var confinement = Confinement()
        var chrootPath: String?
        var cgroupPaths: [String] = []
        for child in directives.indices where directives[child].section == index {
            let directive = directives[child]
            let at = "(\(directive.location))"
            guard directive.arguments.count == 1, let value = directive.arguments.first, !value.isEmpty else {
                throw ConfigurationError("\(directive.name) inside <Processor \(name)> takes one argument \(at)")
            }
            func once(_ slot: inout String?) throws(ConfigurationError) {
                guard slot == nil else {
                    throw ConfigurationError("\(directive.name) is given twice in <Processor \(name)> \(at)")
                }
                slot = value
            }
            switch directive.name.lowercased() {
            case "user": try once(&user)
            case "group": try once(&group)
            case "chroot": try once(&chrootPath)
            case "cgroup":
                guard cgroupPaths.count < Directives.mostCgroups else {
                    throw ConfigurationError("<Processor \(name)> names more than \(Directives.mostCgroups) Cgroup "
                                             + "directories \(at)")
                }
                cgroupPaths.append(value)
            case "processorimage":
                guard confinement.isolatedImage == nil else {
                    throw ConfigurationError("ProcessorImage is given twice in <Processor \(name)> \(at)")
                }
                switch value.lowercased() {
                case "isolated": confinement.isolatedImage = true
                case "shared": confinement.isolatedImage = false
                default: throw ConfigurationError("ProcessorImage must be isolated or shared, not \(value) \(at)")
                }
            case "nicevalue":
                guard confinement.nice == nil else {
                    throw ConfigurationError("NiceValue is given twice in <Processor \(name)> \(at)")
                }
                do throws(ConfigError) {
                    confinement.nice = try parseCount(value, directive: "NiceValue", range: Confinement.niceRange)
                } catch {
                    throw ConfigurationError("\(error.description) \(at)")
                }
            default:
                guard let limit = Directives.processorLimits.first(where: {
                    $0.name.lowercased() == directive.name.lowercased()
                }) else {
                    throw ConfigurationError("\(directive.name) is not allowed inside <Processor \(name)> \(at); "
                                             + "allowed are User, Group, MinProcessors, MaxProcessors, "
                                             + "MinSpareProcessors, MaxSpareProcessors, Chroot, Cgroup, NiceValue "
                                             + "and ProcessorImage")
                }
                do throws(ConfigError) {
                    limit.store(&overrides, try parseCount(value, directive: limit.name, range: limit.range))
                } catch {
                    throw ConfigurationError("\(error.description) \(at)")
                }
            }
        }
        do {
            let identity = try resolveIdentity(user: user, group: group, environment: name, directory: system.accounts)
            if let chrootPath {
                confinement.chroot = try checkChrootDirectory(chrootPath, directive: "Chroot", facts: system.paths)
            }
            for path in cgroupPaths {
                confinement.cgroups.append(try checkCgroupDirectory(path, already: confinement.cgroups,
                                                                    facts: system.cgroups))
            }
            try configuration.environments.add(Environment(name: name, identity: identity, overrides: overrides,
                                                           confinement: confinement))
        } catch {
            throw ConfigurationError("\(origin): \(error)")
        }
        configuration.origins.append(origin)
        declaredAt.append(index)
    }
}
