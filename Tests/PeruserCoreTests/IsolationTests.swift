import XCTest
@testable import PeruserCore

final class IsolationTests: XCTestCase {
    private let rootDir = PathFacts(isDirectory: true, ownerUid: 0, mode: 0o755)

    private func tree(_ overrides: [String: PathFacts?]) -> (String) -> PathFacts? {
        return { path in
            if let entry = overrides[path] { return entry }
            return ["/", "/srv", "/srv/jail", "/srv/jail/a"].contains(path) ? self.rootDir : nil
        }
    }

    private func chroot(_ path: String, _ overrides: [String: PathFacts?] = [:]) throws -> String {
        try checkChrootDirectory(path, directive: "Chroot", facts: tree(overrides))
    }

    private func expect(_ error: IsolationError, _ body: () throws -> Void) {
        XCTAssertThrowsError(try body()) { XCTAssertEqual($0 as? IsolationError, error) }
    }

    func testPrefixesOfNormalizedPathsOnly() {
        XCTAssertEqual(pathPrefixes("/srv/jail/a"), ["/", "/srv", "/srv/jail", "/srv/jail/a"])
        XCTAssertEqual(pathPrefixes("/srv/jail/"), ["/", "/srv", "/srv/jail"])
        XCTAssertEqual(pathPrefixes("/"), ["/"])
        XCTAssertNil(pathPrefixes("srv"))
        XCTAssertNil(pathPrefixes("/srv//jail"))
        XCTAssertNil(pathPrefixes("/srv/./jail"))
        XCTAssertNil(pathPrefixes("/srv/jail/../etc"))
    }

    func testRootOwnedJailIsAccepted() throws {
        XCTAssertEqual(try chroot("/srv/jail/a/"), "/srv/jail/a")
    }

    func testEveryComponentIsChecked() {
        expect(.notAbsolute(directive: "Chroot", path: "jail")) { _ = try self.chroot("jail") }
        expect(.notNormalized(directive: "Chroot", path: "/srv/../jail")) { _ = try self.chroot("/srv/../jail") }
        expect(.rootDirectory(directive: "Chroot")) { _ = try self.chroot("/") }
        expect(.missing(directive: "Chroot", path: "/srv/jail/b")) { _ = try self.chroot("/srv/jail/b") }
        expect(.notADirectory(directive: "Chroot", path: "/srv/jail/a")) {
            _ = try self.chroot("/srv/jail/a", ["/srv/jail/a": PathFacts(isDirectory: false, ownerUid: 0, mode: 0o644)])
        }
        // A parent owned by a tenant is as bad as the jail itself: it could rename the jail away.
        expect(.notOwnedByRoot(directive: "Chroot", path: "/srv", owner: 1001)) {
            _ = try self.chroot("/srv/jail/a", ["/srv": PathFacts(isDirectory: true, ownerUid: 1001, mode: 0o755)])
        }
        expect(.writableByOthers(directive: "Chroot", path: "/srv/jail", mode: 0o775)) {
            _ = try self.chroot("/srv/jail/a", ["/srv/jail": PathFacts(isDirectory: true, ownerUid: 0, mode: 0o775)])
        }
        expect(.writableByOthers(directive: "Chroot", path: "/srv/jail/a", mode: 0o1777)) {
            _ = try self.chroot("/srv/jail/a", ["/srv/jail/a": PathFacts(isDirectory: true, ownerUid: 0, mode: 0o1777)])
        }
        expect(.symbolicLink(directive: "Chroot", path: "/srv/jail")) {
            _ = try self.chroot("/srv/jail/a", ["/srv/jail": PathFacts(isDirectory: false, isSymbolicLink: true,
                                                                       ownerUid: 0, mode: 0o777)])
        }
    }

    func testMessagesNameTheDirectiveAndTheFix() {
        let text = IsolationError.writableByOthers(directive: "MultiplexerChroot", path: "/srv", mode: 0o775).description
        XCTAssertTrue(text.hasPrefix("MultiplexerChroot: /srv has mode 0775"), text)
        XCTAssertTrue(text.contains("chmod go-w"), text)
    }

    func testCgroupDirectories() throws {
        let good = CgroupFacts(isDirectory: true, onCgroupFileSystem: true, hasProcsFile: true)
        let facts: (String) -> CgroupFacts? = { path in
            switch path {
            case "/sys/fs/cgroup/pids/a": return good
            case "/tmp": return CgroupFacts(isDirectory: true, onCgroupFileSystem: false, hasProcsFile: false)
            case "/sys/fs/cgroup/pids/a/pids.max":
                return CgroupFacts(isDirectory: false, onCgroupFileSystem: true, hasProcsFile: false)
            case "/sys/fs/cgroup/odd": return CgroupFacts(isDirectory: true, onCgroupFileSystem: true, hasProcsFile: false)
            default: return nil
            }
        }
        XCTAssertEqual(try checkCgroupDirectory("/sys/fs/cgroup/pids/a/", already: [], facts: facts), "/sys/fs/cgroup/pids/a")
        expect(.duplicateCgroup(path: "/sys/fs/cgroup/pids/a")) {
            _ = try checkCgroupDirectory("/sys/fs/cgroup/pids/a", already: ["/sys/fs/cgroup/pids/a"], facts: facts)
        }
        expect(.notACgroup(path: "/tmp")) { _ = try checkCgroupDirectory("/tmp", already: [], facts: facts) }
        expect(.notACgroup(path: "/sys/fs/cgroup/pids/a/pids.max")) {
            _ = try checkCgroupDirectory("/sys/fs/cgroup/pids/a/pids.max", already: [], facts: facts)
        }
        expect(.noProcsFile(path: "/sys/fs/cgroup/odd")) { _ = try checkCgroupDirectory("/sys/fs/cgroup/odd", already: [], facts: facts) }
        expect(.missing(directive: "Cgroup", path: "/sys/fs/cgroup/pids/b")) {
            _ = try checkCgroupDirectory("/sys/fs/cgroup/pids/b", already: [], facts: facts)
        }
        expect(.notAbsolute(directive: "Cgroup", path: "pids/a")) { _ = try checkCgroupDirectory("pids/a", already: [], facts: facts) }
    }
}
