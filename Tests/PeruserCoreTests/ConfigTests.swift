import XCTest
@testable import PeruserCore

private struct FakeAccounts: AccountDirectory {
    var users: [String: (UInt32, UInt32)] = ["alice": (1001, 1001), "bob": (1002, 1002), "root": (0, 0)]
    var groups: [String: UInt32] = ["alice": 1001, "bob": 1002, "root": 0, "wheel": 0]

    func user(named name: String) -> (uid: UInt32, primaryGid: UInt32)? {
        users[name].map { (uid: $0.0, primaryGid: $0.1) }
    }

    func group(named name: String) -> UInt32? { groups[name] }
}

final class ConfigTests: XCTestCase {
    private func resolve(_ user: String?, _ group: String?) throws -> Identity {
        try resolveIdentity(user: user, group: group, environment: "env", directory: FakeAccounts())
    }

    private func expect(_ error: ConfigError, _ body: () throws -> Void) {
        XCTAssertThrowsError(try body()) { XCTAssertEqual($0 as? ConfigError, error) }
    }

    func testResolvesNamesAndNumericIds() throws {
        XCTAssertEqual(try resolve("alice", "bob"), Identity(user: "alice", uid: 1001, group: "bob", gid: 1002))
        XCTAssertEqual(try resolve("#4242", "#4243"), Identity(user: "#4242", uid: 4242, group: "#4243", gid: 4243))
    }

    func testMissingAndUnknownAccounts() {
        expect(.missingUser(environment: "env")) { _ = try self.resolve(nil, "alice") }
        expect(.missingGroup(environment: "env")) { _ = try self.resolve("alice", "") }
        expect(.unknownUser("mallory")) { _ = try self.resolve("mallory", "alice") }
        expect(.unknownGroup("nogroup-here")) { _ = try self.resolve("alice", "nogroup-here") }
        expect(.unknownUser("#12x")) { _ = try self.resolve("#12x", "alice") }
    }

    func testRootIsRefusedByNameAndByNumber() {
        expect(.rootUser("root")) { _ = try self.resolve("root", "alice") }
        expect(.rootUser("#0")) { _ = try self.resolve("#0", "alice") }
        expect(.rootGroup("wheel")) { _ = try self.resolve("alice", "wheel") }
        expect(.rootGroup("#0")) { _ = try self.resolve("alice", "#0") }
    }

    func testEnvironmentTableRejectsDuplicatesAndBadNames() throws {
        var table = EnvironmentTable()
        let identity = try resolve("alice", "alice")
        XCTAssertEqual(try table.add(Environment(name: "a", identity: identity)), 0)
        XCTAssertEqual(try table.add(Environment(name: "b.example-1_x", identity: identity)), 1)
        expect(.duplicateEnvironment("a")) { try table.add(Environment(name: "a", identity: identity)) }
        expect(.emptyName) { try table.add(Environment(name: "", identity: identity)) }
        expect(.invalidName("a<b>")) { try table.add(Environment(name: "a<b>", identity: identity)) }
        XCTAssertEqual(table.index(named: "b.example-1_x"), 1)
        XCTAssertNil(table.index(named: "c"))
        XCTAssertNil(table[5])
        XCTAssertNil(table[-1])
    }

    func testParseCount() {
        XCTAssertEqual(try parseCount("3", directive: "MinMultiplexers", range: 1...10), 3)
        expect(.notANumber(directive: "X", value: "3x")) { _ = try parseCount("3x", directive: "X", range: 0...9) }
        expect(.notANumber(directive: "X", value: "")) { _ = try parseCount("", directive: "X", range: 0...9) }
        expect(.outOfRange(directive: "X", value: -1, range: 0...9)) {
            _ = try parseCount("-1", directive: "X", range: 0...9)
        }
    }

    func testErrorMessagesNameTheProblem() {
        XCTAssertTrue(ConfigError.rootUser("root").description.contains("uid 0"))
        XCTAssertTrue(ConfigError.unknownEnvironment("zz").description.contains("<Processor zz>"))
        XCTAssertTrue(ConfigError.unknownUser("mallory").description.contains("'mallory' does not exist"))
    }
}

final class ImplicitEnvironmentTests: XCTestCase {
    func testAssignUserIDNamesAreValidEnvironmentNames() {
        XCTAssertEqual(implicitEnvironmentName(user: "alice", group: "www"), "assign-alice-www")
        XCTAssertEqual(implicitEnvironmentName(user: "#1001", group: "#1001"), "assign-_1001-_1001")
        XCTAssertEqual(implicitEnvironmentName(user: "bob smith$", group: "g"), "assign-bob_smith_-g")
        var table = EnvironmentTable()
        let identity = Identity(user: "#1001", uid: 1001, group: "#1001", gid: 1001)
        XCTAssertNoThrow(try table.add(Environment(name: implicitEnvironmentName(user: "#1001", group: "#1001"),
                                                   identity: identity)))
    }
}
