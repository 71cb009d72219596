import XCTest
@testable import PeruserCore

final class GroupListsTests: XCTestCase {
    private let stamp = GroupSourceStamp(device: 2049, inode: 131_077, changedSeconds: 1_796_000_000,
                                         changedNanoseconds: 5, size: 12_521)

    func testAKeptListServesWhileTheDatabaseIsUnchangedAndYoung() {
        var lists = GroupLists()
        XCTAssertNil(lists.groups(for: 3, stamp: stamp, now: 1_000), "nothing kept yet")
        lists.keep([1001, 27], for: 3, stamp: stamp, now: 1_000)
        XCTAssertEqual(lists.groups(for: 3, stamp: stamp, now: 1_000), [1001, 27])
        XCTAssertEqual(lists.groups(for: 3, stamp: stamp, now: 60_999), [1001, 27])
        XCTAssertNil(lists.groups(for: 4, stamp: stamp, now: 1_000), "another environment's list is its own")
    }

    func testAnyChangeToTheFileMeansAnotherLookup() {
        var lists = GroupLists()
        lists.keep([1001, 27], for: 0, stamp: stamp, now: 0)
        let changes = [
            GroupSourceStamp(device: 2050, inode: 131_077, changedSeconds: 1_796_000_000, changedNanoseconds: 5, size: 12_521),
            GroupSourceStamp(device: 2049, inode: 131_078, changedSeconds: 1_796_000_000, changedNanoseconds: 5, size: 12_521),
            GroupSourceStamp(device: 2049, inode: 131_077, changedSeconds: 1_796_000_001, changedNanoseconds: 5, size: 12_521),
            GroupSourceStamp(device: 2049, inode: 131_077, changedSeconds: 1_796_000_000, changedNanoseconds: 6, size: 12_521),
            GroupSourceStamp(device: 2049, inode: 131_077, changedSeconds: 1_796_000_000, changedNanoseconds: 5, size: 12_520),
        ]
        for changed in changes {
            XCTAssertNil(lists.groups(for: 0, stamp: changed, now: 10), "\(changed)")
        }
    }

    func testAListIsLookedUpAgainAfterAMinuteForSourcesNoFileShows() {
        var lists = GroupLists()
        lists.keep([1001], for: 0, stamp: stamp, now: 5_000)
        XCTAssertNil(lists.groups(for: 0, stamp: stamp, now: 65_000))
        XCTAssertNil(lists.groups(for: 0, stamp: stamp, now: 4_999), "a clock that went back is no proof of youth")
    }

    func testWithoutAStampNothingIsKeptOrServed() {
        var lists = GroupLists()
        lists.keep([1001], for: 0, stamp: stamp, now: 0)
        XCTAssertNil(lists.groups(for: 0, stamp: nil, now: 1))
        lists.keep([1001, 50], for: 0, stamp: nil, now: 2)
        XCTAssertNil(lists.groups(for: 0, stamp: stamp, now: 3), "a lookup without a stamp drops the old list too")
    }
}
