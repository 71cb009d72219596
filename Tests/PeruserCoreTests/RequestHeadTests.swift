import XCTest
@testable import PeruserCore

final class RequestHeadTests: XCTestCase {
    private func scan(_ text: String) -> HeadScan {
        Array(text.utf8).withUnsafeBytes { RequestHead.scan($0) }
    }

    func testCompleteHeadGivesTargetHostAndLength() {
        let head = "GET /index.html HTTP/1.1\r\nUser-Agent: x\r\nHost: Alice.Test:8080\r\n\r\nBODY"
        XCTAssertEqual(scan(head), .complete(RouteHint(target: "/index.html", host: "Alice.Test:8080"),
                                              length: head.utf8.count - 4))
    }

    func testHostHeaderNameIsCaseInsensitiveAndValueTrimmed() {
        let head = "GET / HTTP/1.1\r\nhOsT: \t b.test \t\r\n\r\n"
        XCTAssertEqual(scan(head), .complete(RouteHint(target: "/", host: "b.test"), length: head.utf8.count))
    }

    func testForwardedHeaderLinesAreJoinedAsHttpdMergesThem() {
        let head = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for:  2.2.2.2 \r\n\r\n"
        let scanned = Array(head.utf8).withUnsafeBytes { RequestHead.scan($0, forwardedHeader: "x-forwarded-for") }
        XCTAssertEqual(scanned, .complete(RouteHint(target: "/", host: "a", forwarded: "1.1.1.1, 2.2.2.2"),
                                          length: head.utf8.count))
        // Not asked for: not collected.
        XCTAssertEqual(scan(head), .complete(RouteHint(target: "/", host: "a"), length: head.utf8.count))
    }

    func testFirstHostHeaderWins() {
        guard case .complete(let hint, _) = scan("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") else {
            return XCTFail("expected a complete head")
        }
        XCTAssertEqual(hint.host, "a")
    }

    func testBareLineFeedsAreAccepted() {
        let head = "GET / HTTP/1.0\nHost: a\n\n"
        XCTAssertEqual(scan(head), .complete(RouteHint(target: "/", host: "a"), length: head.utf8.count))
    }

    func testIncompleteHeadKeepsWhatWasFound() {
        XCTAssertEqual(scan("GET /x HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n"),
                       .needMore(RouteHint(target: "/x", host: "a.test")))
        XCTAssertEqual(scan("GET /x HT"), .needMore(RouteHint()))
        XCTAssertEqual(scan(""), .needMore(RouteHint()))
    }

    func testHTTP10WithoutHostIsCompleteWithoutHost() {
        XCTAssertEqual(scan("GET / HTTP/1.0\r\n\r\n"), .complete(RouteHint(target: "/", host: nil), length: 18))
    }

    func testHTTP09RequestLineIsTheWholeHead() {
        XCTAssertEqual(scan("GET /\r\n"), .complete(RouteHint(target: "/", host: nil), length: 7))
    }

    func testLeadingBlankLinesAreSkippedUpToApachesLimit() {
        let head = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
        XCTAssertEqual(scan(head), .complete(RouteHint(target: "/", host: "a"), length: head.utf8.count))
        XCTAssertEqual(scan(String(repeating: "\r\n", count: 11) + "GET / HTTP/1.1\r\n\r\n"), .malformed)
    }

    func testMalformedRequestLines() {
        XCTAssertEqual(scan("GARBAGE\r\n\r\n"), .malformed)
        XCTAssertEqual(scan("GET / FTP/1.0\r\n\r\n"), .malformed)
        XCTAssertEqual(scan("G{T / HTTP/1.1\r\n\r\n"), .malformed)
        XCTAssertEqual(scan("GET / HTTP/1.1 extra\r\n\r\n"), .malformed)
        XCTAssertEqual(scan("\u{1}\u{2}\u{3}"), .malformed)
    }

    func testRunsOfSpacesSeparateWordsAsOne() {
        XCTAssertEqual(scan("GET   /a  HTTP/1.1 \r\nHost: a\r\n\r\n"),
                       .complete(RouteHint(target: "/a", host: "a"), length: 32))
        XCTAssertEqual(scan(" GET /b\r\n"), .complete(RouteHint(target: "/b", host: nil), length: 9))
        XCTAssertEqual(scan("GET  \r\n\r\n"), .malformed)
        XCTAssertEqual(scan("GET / HTTP/1.1  x\r\n\r\n"), .malformed)
    }

    func testAbsoluteFormTargetIsReturnedWhole() {
        guard case .complete(let hint, _) = scan("GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n") else {
            return XCTFail("expected a complete head")
        }
        XCTAssertEqual(hint.target, "http://b.test/x")
        XCTAssertEqual(hint.host, "a.test")
    }

    func testHostWithControlCharactersIsIgnored() {
        guard case .complete(let hint, _) = scan("GET / HTTP/1.1\r\nHost: a\u{1}b\r\n\r\n") else {
            return XCTFail("expected a complete head")
        }
        XCTAssertNil(hint.host)
    }

    func testOtherHeadersThatStartLikeHostDoNotMatch() {
        guard case .complete(let hint, _) = scan("GET / HTTP/1.1\r\nHostile: x\r\nX-Host: y\r\n\r\n") else {
            return XCTFail("expected a complete head")
        }
        XCTAssertNil(hint.host)
    }

    func testABlankLineAtTheEndIsTold() {
        func ends(_ text: String) -> Bool { Array(text.utf8).withUnsafeBytes { RequestHead.endsWithBlankLine($0) } }
        XCTAssertTrue(ends("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
        XCTAssertTrue(ends("GET / HTTP/1.0\n\n"))
        XCTAssertTrue(ends("\n\r\n"))
        XCTAssertFalse(ends("GET / HTTP/1.1\r\nHost: a\r\n"))
        XCTAssertFalse(ends("GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"))
        XCTAssertFalse(ends("\r\n"))
        XCTAssertFalse(ends("\n"))
        XCTAssertFalse(ends(""))
    }
}
