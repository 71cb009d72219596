// Server environments: the `<Processor name>` blocks of the configuration.
//
// Names are resolved to ids once, at configuration time, and the result lives only in the
// parent's private memory: nothing a worker can write ever decides whom the parent forks as.

public struct Identity: Equatable {
    public var user: String
    public var uid: UInt32
    public var group: String
    public var gid: UInt32

    public init(user: String, uid: UInt32, group: String, gid: UInt32) {
        self.user = user
        self.uid = uid
        self.group = group
        self.gid = gid
    }
}

public struct Environment: Equatable {
    public var name: String
    public var identity: Identity
    /// Limits given inside the block; the global ones apply where these are nil.
    public var overrides: WorkerLimitOverrides
    /// Chroot, Cgroup and NiceValue of the block.
    public var confinement: Confinement

    public init(name: String, identity: Identity, overrides: WorkerLimitOverrides = WorkerLimitOverrides(),
                confinement: Confinement = Confinement()) {
        self.name = name
        self.identity = identity
        self.overrides = overrides
        self.confinement = confinement
    }
}

/// Looks users and groups up; the module passes one backed by getpwnam/getgrnam, tests a table.
public protocol AccountDirectory {
    func user(named name: String) -> (uid: UInt32, primaryGid: UInt32)?
    func group(named name: String) -> UInt32?
}

/// The accounts of a process image's configuration. The root parent resolved and checked every
/// User and Group when it read the same configuration; an image that looked each one up again
/// would read /etc/passwd and /etc/group once per environment, per pass: with hundreds of
/// tenants, most of an image's start. Every name gets `unresolved`, and the image then looks up
/// only the accounts it runs as (`Configuration.resolveOwnAccounts`).
public struct ParentResolvedAccounts: AccountDirectory {
    /// (uid_t)-2: no process of this module ever runs as it.
    public static let unresolved: UInt32 = UInt32.max - 1

    public init() {}

    public func user(named name: String) -> (uid: UInt32, primaryGid: UInt32)? {
        (Self.unresolved, Self.unresolved)
    }

    public func group(named name: String) -> UInt32? { Self.unresolved }
}

public enum ConfigError: Error, Equatable, CustomStringConvertible {
    case emptyName
    case invalidName(String)
    case duplicateEnvironment(String)
    case missingUser(environment: String)
    case missingGroup(environment: String)
    case unknownUser(String)
    case unknownGroup(String)
    case rootUser(String)
    case rootGroup(String)
    case unknownEnvironment(String)
    case notANumber(directive: String, value: String)
    case outOfRange(directive: String, value: Int, range: ClosedRange<Int>)

    public var description: String {
        switch self {
        case .emptyName:
            return "<Processor> needs a name, as in <Processor alice>"
        case .invalidName(let name):
            return "environment name '\(name)' may hold only letters, digits, '-', '_' and '.'"
        case .duplicateEnvironment(let name):
            return "<Processor \(name)> is declared twice"
        case .missingUser(let env):
            return "<Processor \(env)> has no User directive"
        case .missingGroup(let env):
            return "<Processor \(env)> has no Group directive"
        case .unknownUser(let user):
            return "User '\(user)' does not exist on this system"
        case .unknownGroup(let group):
            return "Group '\(group)' does not exist on this system"
        case .rootUser(let user):
            return "User '\(user)' is root (uid 0); a server environment must not run as root"
        case .rootGroup(let group):
            return "Group '\(group)' is root (gid 0); a server environment must not run with gid 0"
        case .unknownEnvironment(let name):
            return "no <Processor \(name)> is declared before this line; declare the environment "
                + "before the virtual hosts that use it"
        case .notANumber(let directive, let value):
            return "\(directive) takes a whole number, not '\(value)'"
        case .outOfRange(let directive, let value, let range):
            return "\(directive) \(value) is out of range (\(range.lowerBound) to \(range.upperBound))"
        }
    }
}

/// Parses a directive's numeric argument strictly (no trailing garbage, no sign tricks).
public func parseCount(_ text: String, directive: String, range: ClosedRange<Int>) throws(ConfigError) -> Int {
    guard let value = Int(text) else { throw .notANumber(directive: directive, value: text) }
    guard range.contains(value) else { throw .outOfRange(directive: directive, value: value, range: range) }
    return value
}

/// Resolves `User`/`Group` of a `<Processor>` block. Accepts `#1234` numeric ids as Apache does.
public func resolveIdentity(user: String?, group: String?, environment: String,
                            directory: AccountDirectory) throws(ConfigError) -> Identity {
    guard let user, !user.isEmpty else { throw .missingUser(environment: environment) }
    guard let group, !group.isEmpty else { throw .missingGroup(environment: environment) }
    let uid: UInt32
    if let numeric = numericId(user) {
        uid = numeric
    } else if let found = directory.user(named: user) {
        uid = found.uid
    } else {
        throw .unknownUser(user)
    }
    let gid: UInt32
    if let numeric = numericId(group) {
        gid = numeric
    } else if let found = directory.group(named: group) {
        gid = found
    } else {
        throw .unknownGroup(group)
    }
    guard uid != 0 else { throw .rootUser(user) }
    guard gid != 0 else { throw .rootGroup(group) }
    return Identity(user: user, uid: uid, group: group, gid: gid)
}

private func numericId(_ text: String) -> UInt32? {
    guard text.first == "#" else { return nil }
    return UInt32(text.dropFirst())
}

/// Every environment of one configuration pass, in declaration order.
public struct EnvironmentTable {
    public private(set) var environments: [Environment] = []
    /// By name: every ServerEnvironment looks one up, so a scan would grow with tenants².
    private var indexByName: [String: Int] = [:]

    public init() {}

    public var count: Int { environments.count }

    public func index(named name: String) -> Int? {
        indexByName[name]
    }

    /// An image's own identity, looked up after building (`Configuration.resolveOwnAccounts`).
    mutating func setIdentity(_ identity: Identity, of index: Int) {
        guard environments.indices.contains(index) else { return }
        environments[index].identity = identity
    }

    /// Validates and appends an environment; returns its index.
    @discardableResult
    public mutating func add(_ environment: Environment) throws(ConfigError) -> Int {
        let name = environment.name
        guard !name.isEmpty else { throw .emptyName }
        guard name.utf8.allSatisfy(isNameByte) else { throw .invalidName(name) }
        guard index(named: name) == nil else { throw .duplicateEnvironment(name) }
        environments.append(environment)
        indexByName[name] = environments.count - 1
        return environments.count - 1
    }

    public subscript(index: Int) -> Environment? {
        environments.indices.contains(index) ? environments[index] : nil
    }
}

private func isNameByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
         UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
        return true
    default:
        return false
    }
}

/// The environment mpm-itk's `AssignUserID user group` stands for: `assign-USER-GROUP`, with any
/// character an environment name may not hold replaced by '_' (so `#1001` becomes `_1001`).
public func implicitEnvironmentName(user: String, group: String) -> String {
    let raw = "assign-\(user)-\(group)"
    return String(decoding: raw.utf8.map { isNameByte($0) ? $0 : UInt8(ascii: "_") }, as: UTF8.self)
}
