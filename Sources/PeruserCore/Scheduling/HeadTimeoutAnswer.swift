// What a multiplexer does with a connection whose request head did not complete within
// MultiplexerHeadTimeout. As httpd does at its own timeout: 408 once a whole request line
// came, a silent close before one. A ClientHello that never completed is never answered in
// plain text: it goes to the address's first vhost, whose mod_ssl deals with it; nor is an h2c
// connection preface with no request after it (its first vhost's mod_http2 speaks to it).

public enum HeadTimeoutAnswer: Equatable {
    /// Route it as if it carried no host (the address's first vhost).
    case routeToDefault
    /// Answer 408 Request Timeout.
    case requestTimeout
    /// Close without a word.
    case closeSilently

    /// - `tls`: it opened with a TLS handshake record.
    /// - `http2Preface`: it opened with the h2c connection preface and SETTINGS.
    /// - `requestLineDone`: a whole request line was seen (in bytes peeked, not consumed).
    /// - `consumed`: the bytes of the head read from the socket so far.
    public static func decide(tls: Bool, http2Preface: Bool = false, requestLineDone: Bool,
                              consumed: [UInt8]) -> HeadTimeoutAnswer {
        if tls || http2Preface { return .routeToDefault }
        if requestLineDone || consumed.contains(UInt8(ascii: "\n")) { return .requestTimeout }
        return .closeSilently
    }
}
