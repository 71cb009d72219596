// libFuzzer target for what a multiplexer reads from whoever connects and from a worker it does
// not trust (compiled with Sources/PeruserCore/Routing/ by fuzz/mux-input.sh):
// - an HTTP/1.x head (RequestHead.scan, with and without a forwarded-client header), behind an
//   optional PROXY header (ProxyHeader.scan), arriving a few bytes at a time (TrickleScan);
// - a forwarded-client value (ClientAddress(parsing:), AddressRange(parsing:));
// - a hand-back message a worker wrote (HandoffMessage.decode).
// A trap, an out-of-bounds read (AddressSanitizer), a length beyond the input, or a routed
// value with a byte Apache would refuse is a finding.

@_cdecl("LLVMFuzzerTestOneInput")
public func multiplexerInputFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    checkHead(input)
    // Behind a request line, so that most inputs reach the header lines.
    var behind = Array("GET / HTTP/1.1\r\n".utf8)
    behind.append(contentsOf: input)
    behind.withUnsafeBytes { checkHead($0) }

    switch ProxyHeader.scan(input) {
    case .header(let length, _):
        precondition(length > 0 && length <= input.count, "PROXY header length \(length) of \(input.count)")
        checkHead(UnsafeRawBufferPointer(rebasing: input[length...]))
    case .notProxy, .needMore, .malformed:
        break
    }

    // The same bytes trickling in, one to seven at a time: the scan it asks for must see
    // every prefix it says is due, and the whole input once it is all there.
    var trickle = TrickleScan()
    var end = 0
    var step = 1
    while end < input.count {
        end = min(input.count, end + step)
        step = step % 7 + 1
        let prefix = UnsafeRawBufferPointer(rebasing: input[..<end])
        if trickle.worthScanning(prefix) {
            precondition(trickle.scanned == end)
            checkHead(prefix)
        }
    }

    let text = String(decoding: input.prefix(256), as: UTF8.self)
    _ = ClientAddress(parsing: text)
    _ = AddressRange(parsing: text)

    if let message = try? HandoffMessage.decode(input) {
        precondition(message.consumed.count == input.count - HandoffMessage.headerSize)
    }
    return 0
}

private func checkHead(_ bytes: UnsafeRawBufferPointer) {
    for forwarded in [nil, "x-forwarded-for"] {
        let hint: RouteHint
        switch RequestHead.scan(bytes, forwardedHeader: forwarded) {
        case .complete(let found, let length):
            precondition(length > 0 && length <= bytes.count, "head length \(length) of \(bytes.count)")
            hint = found
        case .needMore(let found):
            hint = found
        case .malformed:
            continue
        }
        if let target = hint.target {
            precondition(!target.isEmpty && target.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "dirty target")
        }
        for value in [hint.host, hint.forwarded].compactMap({ $0 }) {
            precondition(value.utf8.allSatisfy { $0 >= 0x20 && $0 != 0x7F }, "dirty header value")
        }
    }
}
