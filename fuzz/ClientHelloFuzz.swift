// libFuzzer target for the ClientHello parser (Sources/PeruserCore/Routing/ClientHello.swift, compiled
// in with it by fuzz/clienthello.sh). A trap, an out-of-bounds read (AddressSanitizer) or a
// dirty host name is a finding.

@_cdecl("LLVMFuzzerTestOneInput")
public func clientHelloFuzzInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let result = ClientHello.scan(UnsafeRawBufferPointer(start: data, count: size))
    if case .hello(let name?) = result {
        for byte in name.utf8 {
            let clean = (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
            precondition(clean, "server name with byte \(byte)")
        }
        precondition(!name.isEmpty && name.utf8.count <= 253)
    }
    return 0
}
