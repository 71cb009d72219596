import XCTest
@testable import PeruserCore

final class CannedResponseTests: XCTestCase {
    func testServiceUnavailableIsAWellFormedResponse() {
        let text = String(decoding: CannedResponse.serviceUnavailable.bytes, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"))
        XCTAssertTrue(text.contains("\r\nRetry-After: 5\r\n"))
        XCTAssertTrue(text.contains("\r\nConnection: close\r\n"))
        guard let split = text.range(of: "\r\n\r\n") else { return XCTFail("no end of head") }
        let body = text[split.upperBound...]
        XCTAssertTrue(text.contains("Content-Length: \(body.utf8.count)\r\n"))
    }

    func testRequestTimeoutIs408() {
        let text = String(decoding: CannedResponse.requestTimeout.bytes, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
    }
}
