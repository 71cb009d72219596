@testable import PeruserCore
import XCTest

final class DescriptorTableTests: XCTestCase {
    struct Record: Equatable {
        var name: String
        var count = 0
    }

    func testStoresReadsChangesInPlaceAndRemoves() {
        var table = DescriptorTable<Record>()
        XCTAssertTrue(table.isEmpty)
        table[5] = Record(name: "five")
        table[700] = Record(name: "seven hundred")  // grows past the first size
        XCTAssertEqual(table.count, 2)
        table[5]?.count += 1
        table[5]?.count += 1
        XCTAssertEqual(table[5], Record(name: "five", count: 2))
        XCTAssertNil(table[6])
        XCTAssertNil(table[100_000])
        table[6]?.count = 9  // nothing stored there: stays nothing
        XCTAssertNil(table[6])
        XCTAssertEqual(table.count, 2)
        XCTAssertEqual(table.remove(5)?.name, "five")
        XCTAssertNil(table.remove(5))
        XCTAssertEqual(table.descriptors, [700])
        table[700] = nil
        XCTAssertTrue(table.isEmpty)
    }

    func testNegativeDescriptorsAreNeverStored() {
        var table = DescriptorTable<Record>()
        table[-1] = Record(name: "bad")
        table[-1]?.count = 3
        XCTAssertNil(table[-1])
        XCTAssertTrue(table.isEmpty)
        XCTAssertNil(table.remove(-1))
    }

    func testSettingThroughTheOptionalAddsAndRemoves() {
        var table = DescriptorTable<Record>()
        func set(_ fd: Int32, _ record: Record?) { table[fd] = record }
        set(3, Record(name: "three"))
        set(4, Record(name: "four"))
        set(9, Record(name: "nine"))
        set(4, nil)
        XCTAssertEqual(Set(table.descriptors), [3, 9])
        XCTAssertTrue(table.contains { $0.name == "nine" })
        XCTAssertFalse(table.contains { $0.name == "four" })
        // Replaced, not added twice.
        set(3, Record(name: "three again"))
        XCTAssertEqual(table.count, 2)
        XCTAssertEqual(table[3]?.name, "three again")
    }

    func testWalkingACopyWhileTheTableChanges() {
        var table = DescriptorTable<Record>()
        for fd in Int32(0)..<10 { table[fd] = Record(name: "\(fd)") }
        var seen: [Int32] = []
        for fd in table.descriptors {
            guard table[fd] != nil else { continue }
            seen.append(fd)
            table.remove(fd + 1)  // the next one goes before it is reached
        }
        XCTAssertEqual(seen.count, table.count)
        XCTAssertEqual(Set(seen), Set(table.descriptors))
        XCTAssertTrue(seen.allSatisfy { table[$0] != nil })
    }
}
