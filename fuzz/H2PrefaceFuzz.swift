// libFuzzer target for the h2c preface scanner and its HPACK decoder
// (Sources/PeruserCore/Routing/H2Preface.swift and HPACK.swift, compiled in with them by
// fuzz/h2preface.sh). A trap, an out-of-bounds read (AddressSanitizer) or a routed host with a
// byte Apache would refuse is a finding.

@_cdecl("LLVMFuzzerTestOneInput")
public func h2PrefaceFuzzInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // As sent, and behind a valid preface (most inputs would stop at its first byte).
    let input = UnsafeRawBufferPointer(start: data, count: size)
    var behind = H2Preface.preface
    behind.append(contentsOf: input)
    for result in [H2Preface.scan(input), behind.withUnsafeBytes { H2Preface.scan($0) }] {
        if case .request(let hint) = result {
            for value in [hint.host, hint.target].compactMap({ $0 }) {
                precondition(!value.isEmpty && value.utf8.count <= HPACK.longestString)
                precondition(value.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "routed a dirty value")
            }
        }
    }
    return 0
}
