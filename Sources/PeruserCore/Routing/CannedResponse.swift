// Responses the multiplexer writes itself, without Apache's request machinery.

public enum CannedResponse {
    case serviceUnavailable
    case requestTimeout

    public var bytes: [UInt8] {
        let status: String
        let body: String
        var extra = ""
        switch self {
        case .serviceUnavailable:
            status = "503 Service Unavailable"
            body = "The server cannot serve this site right now. Please try again later.\n"
            extra = "Retry-After: 5\r\n"
        case .requestTimeout:
            status = "408 Request Timeout"
            body = "The request was not received in time.\n"
        }
        let head = "HTTP/1.1 \(status)\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: \(body.utf8.count)\r\n\(extra)Connection: close\r\n\r\n"
        return Array((head + body).utf8)
    }
}
