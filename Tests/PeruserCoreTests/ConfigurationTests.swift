import XCTest
@testable import PeruserCore

private struct Accounts: AccountDirectory {
    func user(named name: String) -> (uid: UInt32, primaryGid: UInt32)? {
        ["alice": (1001, 1001), "bob": (1002, 1002), "mux": (999, 999), "root": (0, 0)][name].map { ($0.0, $0.1) }
    }

    func group(named name: String) -> UInt32? {
        ["alice": 1001, "bob": 1002, "mux": 999, "root": 0][name]
    }
}

private let rootOwned: (String) -> PathFacts? = { _ in PathFacts(isDirectory: true, ownerUid: 0, mode: 0o755) }
private let system = SystemFacts(accounts: Accounts(), paths: rootOwned,
                                 cgroups: { _ in CgroupFacts(isDirectory: true, onCgroupFileSystem: true, hasProcsFile: true) })

/// Directives as the C command table stores them: one line each, `<Processor` sections followed
/// by their contents.
private func directives(_ text: String) -> [RawDirective] {
    var out: [RawDirective] = []
    var section: Int?
    for (number, line) in text.split(separator: "\n").enumerated() {
        let words = line.split(separator: " ").map(String.init)
        guard let name = words.first else { continue }
        if name == "</Processor>" {
            section = nil
            continue
        }
        if name.hasPrefix("<Processor") {
            out.append(RawDirective(name: "<Processor", arguments: [String(words[1].dropLast())], file: "t.conf",
                                    line: number + 1))
            section = out.count - 1
            continue
        }
        out.append(RawDirective(name: name, arguments: Array(words.dropFirst()), file: "t.conf", line: number + 1,
                                section: section))
    }
    return out
}

private func build(_ text: String) throws -> Configuration {
    try Configuration.build(directives(text), system: system)
}

private func problem(_ text: String) -> String {
    do {
        _ = try build(text)
        return "(accepted)"
    } catch {
        return "\(error)"
    }
}

final class ConfigurationTests: XCTestCase {
    func testDefaultsWithoutDirectives() throws {
        let configuration = try build("")
        XCTAssertEqual(configuration.limits, ServerLimits())
        XCTAssertEqual(configuration.environments.count, 0)
        XCTAssertTrue(configuration.handBack)
        XCTAssertNil(configuration.multiplexerUser)
    }

    func testEnvironmentsLimitsAndServerEnvironmentsInOneValue() throws {
        let configuration = try build("""
            MaxProcessors 6
            ProcessorWaitTimeout 7 4
            PeruserHandBack Off
            <Processor a>
            User alice
            Group alice
            MaxProcessors 3
            NiceValue 5
            Chroot /srv/jail
            </Processor>
            ServerEnvironment a
            AssignUserID bob bob
            AssignUserID bob bob
            MultiplexerUser mux
            MultiplexerGroup #999
            """)
        XCTAssertEqual(configuration.environments.count, 2)
        XCTAssertEqual(configuration.workerLimits.map(\.maxProcessors), [3, 6])
        XCTAssertEqual(configuration.environments[0]?.confinement, Confinement(chroot: "/srv/jail", nice: 5))
        XCTAssertEqual(configuration.limits.processorWaitSeconds, 7)
        XCTAssertEqual(configuration.limits.processorWaitLevels, 4)
        XCTAssertFalse(configuration.handBack)
        // Indices in the stored list: <Processor a> is 3, its five lines 4-8, then 9, 10, 11.
        XCTAssertEqual(configuration.environmentOfDirective, [9: 0, 10: 1, 11: 1])
        XCTAssertEqual(configuration.origins, ["<Processor a> (line 4 of t.conf)", "AssignUserID bob bob (line 12 of t.conf)"])
        XCTAssertEqual(configuration.multiplexerUser?.id, 999)
        XCTAssertEqual(configuration.multiplexerGroup?.id, 999)
    }

    func testImagesComeFromTheZygoteUnlessItIsTurnedOff() throws {
        XCTAssertTrue(try build("").imageZygote)
        XCTAssertFalse(try build("ProcessorImageZygote Off").imageZygote)
        XCTAssertTrue(try build("ProcessorImageZygote off\nProcessorImageZygote On").imageZygote)
    }

    func testMaxRequestWorkersIsMaxClients() throws {
        XCTAssertEqual(try build("MaxRequestWorkers 100").limits.maxClients, 100)
    }

    func testAnUnwrittenSpareCountGivesWayToAWrittenMaximum() throws {
        let configuration = try build("<Processor a>\nUser alice\nGroup alice\nMaxProcessors 1\n</Processor>\n"
                                      + "<Processor b>\nUser bob\nGroup bob\nMaxSpareProcessors 1\n</Processor>")
        XCTAssertEqual(configuration.workerLimits.map(\.minSpare), [1, 1])
        XCTAssertEqual(configuration.workerLimits.map(\.maxProcessors), [1, 10])
        XCTAssertEqual(configuration.notices, [
            "MinSpareProcessors is 1 in <Processor a> (line 1 of t.conf), not the default 2: MaxProcessors 1 is written there",
            "MinSpareProcessors is 1 in <Processor b> (line 6 of t.conf), not the default 2: MaxSpareProcessors 1 is written there",
        ])
        // The global maximum too; and with nothing to adjust, nothing is said.
        XCTAssertEqual(try build("MaxProcessors 1").limits.workers.minSpare, 1)
        XCTAssertEqual(try build("MaxProcessors 3").notices, [])
    }

    func testTwoWrittenValuesThatDisagreeStayAnError() {
        XCTAssertTrue(problem("MinSpareProcessors 2\n<Processor a>\nUser alice\nGroup alice\nMaxProcessors 1\n</Processor>")
            .contains("MinSpareProcessors 2 is above MaxProcessors 1 in <Processor a>"))
        XCTAssertTrue(problem("<Processor a>\nUser alice\nGroup alice\nMinSpareProcessors 3\nMaxProcessors 2\n</Processor>")
            .contains("MinSpareProcessors 3 is above MaxProcessors 2 in <Processor a>"))
        XCTAssertTrue(problem("MinSpareProcessors 4\nMaxProcessors 3").contains("MinSpareProcessors 4 is above MaxProcessors 3 (global)"))
    }

    func testServerLimitFollowsTheEnvironmentsUnlessWritten() throws {
        func environments(_ count: Int) -> String {
            (0..<count).map { "<Processor t\($0)>\nUser alice\nGroup alice\n</Processor>" }.joined(separator: "\n")
        }
        // Each environment in use at once holds a busy worker and MinSpareProcessors 2.
        XCTAssertEqual(try build(environments(80)).limits.serverLimit, 256)
        XCTAssertEqual(try build(environments(80)).notices, [])
        XCTAssertEqual(try build(environments(100)).limits.serverLimit, 512)
        let many = try build(environments(300))
        XCTAssertEqual(many.limits.serverLimit, 1024)
        XCTAssertEqual(many.limits.maxClients, 1024)
        XCTAssertTrue(many.notices.contains { $0.hasPrefix("ServerLimit is 1024, sized for 300 environments") })
        XCTAssertEqual(try build(environments(1000)).limits.serverLimit, 3072)
        // Adding a few tenants keeps the value (a new one needs a full restart).
        XCTAssertEqual(try build(environments(310)).limits.serverLimit, 1024)
        // Without spares, twice the environments and multiplexers (a reserved and a general slot each).
        XCTAssertEqual(try build("MinSpareProcessors 0\n" + environments(300)).limits.serverLimit, 768)
        XCTAssertEqual(try build("MinSpareProcessors 0\n" + environments(1000)).limits.serverLimit, 2048)
        // An environment's own MaxProcessors bounds what it can hold.
        let one = (0..<300).map { "<Processor t\($0)>\nUser alice\nGroup alice\nMaxProcessors 1\n</Processor>" }
        XCTAssertEqual(try build(one.joined(separator: "\n")).limits.serverLimit, 768)
        // A written MaxClients gets its general slots beside the reserved ones.
        XCTAssertEqual(try build("MaxClients 600\n" + environments(10)).limits.serverLimit, 768)
        // A written ServerLimit is kept, and a too small one says which value to write.
        XCTAssertTrue(problem("ServerLimit 256\n" + environments(300))
            .contains("300 <Processor> environments (one reserved slot each) and MinMultiplexers 3 need more than ServerLimit 256"))
    }

    func testEveryProblemNamesTheDirectiveAndTheLine() {
        let env = "<Processor a>\nUser alice\nGroup alice\n</Processor>\n"
        let cases: [(String, String)] = [
            ("MinMultiplexers zero", "line 1 of t.conf: MinMultiplexers takes a whole number, not 'zero'"),
            ("ServerLimit 20001", "line 1 of t.conf: ServerLimit 20001 is out of range (1 to 20000)"),
            ("ProcessorWaitTimeout 5 0", "line 1 of t.conf: ProcessorWaitTimeout levels 0 is out of range (1 to 100)"),
            ("ServerEnvironment a\n" + env, "line 1 of t.conf: ServerEnvironment a: no <Processor a> is declared before this line; declare the environment before the virtual hosts that use it"),
            ("StatusEnvironment nosuch\n" + env,
             "line 1 of t.conf: StatusEnvironment nosuch: no <Processor nosuch> is declared"),
            ("AssignUserID bob bob\nStatusEnvironment assign-bob-bob",
             "line 2 of t.conf: StatusEnvironment assign-bob-bob: no <Processor assign-bob-bob> is declared"),
            ("PeruserHandBack maybe", "line 1 of t.conf: PeruserHandBack must be On or Off"),
            ("ProcessorImageZygote maybe", "line 1 of t.conf: ProcessorImageZygote must be On or Off"),
            ("MultiplexerUser nobody-here", "line 1 of t.conf: MultiplexerUser nobody-here: no such user on this system"),
            ("MultiplexerGroup root", "line 1 of t.conf: MultiplexerGroup root: the multiplexers must not run as root"),
            ("<Processor a>\nGroup alice\n</Processor>", "<Processor a> (line 1 of t.conf): <Processor a> has no User directive"),
            ("<Processor a>\nUser alice\nUser bob\n</Processor>", "User is given twice in <Processor a> (line 3 of t.conf)"),
            ("<Processor a>\nUser alice\nDocumentRoot /x\n</Processor>", "DocumentRoot is not allowed inside <Processor a> (line 3 of t.conf)"),
            ("<Processor a>\nUser alice x\n</Processor>", "User inside <Processor a> takes one argument (line 2 of t.conf)"),
            ("<Processor a>\nNiceValue 40\n</Processor>", "NiceValue 40 is out of range (-20 to 19) (line 2 of t.conf)"),
            ("<Processor a>\nMaxSpareProcessors x\n</Processor>", "MaxSpareProcessors takes a whole number, not 'x' (line 2 of t.conf)"),
            (env + env, "<Processor a> is declared twice"),
            ("AssignUserID root alice", "line 1 of t.conf: AssignUserID root alice: User 'root' is root (uid 0)"),
            ("MinProcessors 11", "MinProcessors 11 is above MaxProcessors 10 (global)"),
            ("<Processor a>\nUser alice\nGroup alice\nMinProcessors 4\nMaxProcessors 3\n</Processor>",
             "MinProcessors 4 is above MaxProcessors 3 in <Processor a>"),
        ]
        for (text, expected) in cases {
            XCTAssertTrue(problem(text).hasPrefix(expected) || problem(text).contains(expected),
                          "\(text): \(problem(text))")
        }
    }

    func testCgroupsAreCountedAndCheckedOnce() {
        let many = (0...16).map { "Cgroup /sys/fs/cgroup/g\($0)" }.joined(separator: "\n")
        XCTAssertTrue(problem("<Processor a>\nUser alice\nGroup alice\n\(many)\n</Processor>")
            .contains("names more than 16 Cgroup directories"))
        XCTAssertTrue(problem("<Processor a>\nUser alice\nGroup alice\nCgroup /sys/fs/cgroup/x\nCgroup /sys/fs/cgroup/x\n</Processor>")
            .contains("is given twice"))
    }

    func testMultiplexersMustNotShareATenantsIdentity() throws {
        let unixd = UnixdIdentity(user: "www-data", uid: 33, gid: 33, userLocation: "line 1 of a", groupLocation: "the default")
        let tenants = try build("<Processor a>\nUser alice\nGroup alice\n</Processor>\n<Processor b>\nUser alice\nGroup bob\n</Processor>")
        XCTAssertEqual(try tenants.checkIdentities(unixd: unixd),
                       ["environments a and b both run as uid 1001: they are one trust domain (each can signal, "
                        + "trace and read the other's workers)"])
        let sharing = try build("<Processor a>\nUser alice\nGroup alice\n</Processor>\nMultiplexerUser alice")
        XCTAssertThrowsError(try sharing.checkIdentities(unixd: unixd)) { error in
            XCTAssertTrue("\(error)".hasPrefix("<Processor a> (line 1 of t.conf) runs as uid 1001, which the multiplexers "
                                               + "run as too (MultiplexerUser alice (line 5 of t.conf))"), "\(error)")
        }
        let byGroup = try build("<Processor a>\nUser alice\nGroup #33\n</Processor>")
        XCTAssertThrowsError(try byGroup.checkIdentities(unixd: unixd)) { error in
            XCTAssertTrue("\(error)".contains("runs as gid 33, which the multiplexers run as too (Group (the default))"))
        }
    }

    /// StatusEnvironment names <Processor> environments, before or after their declaration, and
    /// accumulates; with the main server's environment they have the full view, no other does.
    func testAnImageLooksUpOnlyTheAccountsItRunsAs() throws {
        func configuration(bUser: String = "bob", bGroup: String = "bob") -> String {
            """
            <Processor a>
            User alice
            Group alice
            </Processor>
            <Processor b>
            User \(bUser)
            Group \(bGroup)
            </Processor>
            ServerEnvironment b
            MultiplexerUser mux
            MultiplexerGroup mux
            """
        }
        let text = configuration()
        let trusting = SystemFacts(accounts: ParentResolvedAccounts(), paths: system.paths, cgroups: system.cgroups)
        let unresolved = ParentResolvedAccounts.unresolved
        var image = try Configuration.build(directives(text), system: trusting)
        XCTAssertEqual(image.environments[0]?.identity.uid, unresolved)
        // Two environments with the same placeholder are no shared trust domain.
        let unixd = UnixdIdentity(user: "www-data", uid: 33, gid: 33, userLocation: "", groupLocation: "")
        XCTAssertEqual(try image.checkIdentities(unixd: unixd), [])
        try image.resolveOwnAccounts(for: .environment(1), directory: Accounts())
        XCTAssertEqual(image.environments[1]?.identity, Identity(user: "bob", uid: 1002, group: "bob", gid: 1002))
        XCTAssertEqual(image.environments[0]?.identity.uid, unresolved)
        XCTAssertEqual(image.environments[0]?.identity.user, "alice")
        XCTAssertEqual(image.multiplexerUser?.id, unresolved)

        var multiplexers = try Configuration.build(directives(text), system: trusting)
        try multiplexers.resolveOwnAccounts(for: .multiplexers, directory: Accounts())
        XCTAssertEqual(multiplexers.multiplexerUser?.id, 999)
        XCTAssertEqual(multiplexers.multiplexerGroup?.id, 999)

        // The image checks its own accounts as the parent did: gone, or root since, it refuses.
        var gone = try Configuration.build(directives(configuration(bUser: "carol", bGroup: "carol")),
                                           system: trusting)
        XCTAssertThrowsError(try gone.resolveOwnAccounts(for: .environment(1), directory: Accounts()))
        var rooted = try Configuration.build(directives(configuration(bUser: "root")),
                                             system: trusting)
        XCTAssertThrowsError(try rooted.resolveOwnAccounts(for: .environment(1), directory: Accounts()))
        XCTAssertThrowsError(try image.resolveOwnAccounts(for: .environment(7), directory: Accounts()))
    }

    func testStatusEnvironmentsAndTheMainServersHaveTheFullView() throws {
        let three = "<Processor a>\nUser alice\nGroup alice\n</Processor>\n<Processor b>\nUser bob\nGroup bob\n"
            + "</Processor>\n<Processor c>\nUser bob\nGroup bob\n</Processor>\n"
        let none = try build(three)
        XCTAssertEqual(none.statusEnvironments, [])
        XCTAssertEqual((0..<3).map { none.hasFullView($0, mainServerEnvironment: nil) }, [false, false, false])
        XCTAssertEqual((0..<3).map { none.hasFullView($0, mainServerEnvironment: 1) }, [false, true, false])
        let named = try build("StatusEnvironment c\n" + three + "StatusEnvironment a\n")
        XCTAssertEqual(named.statusEnvironments, [0, 2])
        XCTAssertEqual((0..<3).map { named.hasFullView($0, mainServerEnvironment: nil) }, [true, false, true])
        XCTAssertFalse(named.hasFullView(-1, mainServerEnvironment: -1))
        XCTAssertFalse(named.hasFullView(3, mainServerEnvironment: 3))
    }

    func testEveryStoredDirectiveIsRead() throws {
        // A directive the table stores but the builder does not know would be refused.
        for name in Directives.stored where !["<Processor", "ServerEnvironment", "AssignUserID"].contains(name) {
            XCTAssertFalse(problem("\(name) x").contains("is not a Peruser directive"), name)
        }
    }
}
