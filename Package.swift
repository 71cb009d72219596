// swift-tools-version:5.9
// The Swift half of mod_mpm_peruser. `PeruserCore` is pure logic (no Apache, no syscalls) and is
// what the unit tests exercise; `PeruserModule` is the thin syscall layer plus the @_cdecl entry
// points the C shim calls. The static library product is linked into the Apache module by apxs/.
import PackageDescription

let package = Package(
    name: "mod_mpm_peruser",
    products: [
        .library(name: "PeruserSwift", type: .static, targets: ["PeruserModule"]),
    ],
    targets: [
        .target(name: "PeruserCore"),
        // Declarations of the C shim functions Swift calls; they are defined in CShim/ and
        // resolved when apxs links the module, so only the module target may import this.
        .systemLibrary(name: "CPeruserShim", path: "Sources/CPeruserShim"),
        .target(name: "PeruserModule", dependencies: ["PeruserCore", "CPeruserShim"]),
        .testTarget(name: "PeruserCoreTests", dependencies: ["PeruserCore"]),
    ]
)
