// swift-tools-version:6.0
// 6.0, not earlier: the sources use typed throws (`throws(ConfigError)`, `do throws(X)`).
// The Swift half of mod_mpm_peruser. `PeruserCore` is pure logic (no Apache, no syscalls) and is
// what the unit tests exercise; `PeruserModule` is the thin syscall layer plus the @_cdecl entry
// points the C shim calls. The static library product is linked into the Apache module by apxs/.
import PackageDescription

let apacheHeaders = ["-I/usr/include/apache2", "-I/usr/include/apr-1.0", "-DLINUX", "-D_REENTRANT"]
    .flatMap { ["-Xcc", $0] }

let releaseSpeed: [SwiftSetting] = [
    .unsafeFlags(["-cross-module-optimization", "-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "mod_mpm_peruser",
    products: [
        .library(name: "PeruserSwift", type: .static, targets: ["PeruserModule"]),
    ],
    targets: [
        // Release builds: PeruserCore's generics (the multiplexer's WaitQueue) and small
        // accessors (the child table's fields) are specialized and inlined into PeruserModule
        // (cross-module optimization); unspecialized, each connection looked up generic
        // metadata at run time. Exclusivity stays checked at compile time; the run-time checks
        // (a runtime call at each access to a global or a class property) are left out: every
        // process here is single-threaded, and the debug builds the unit tests run keep them.
        .target(name: "PeruserCore", swiftSettings: releaseSpeed),
        // Declarations of the C shim functions Swift calls; they are defined in CShim/ and
        // resolved when apxs links the module, so only the module target may import this.
        .systemLibrary(name: "CPeruserShim", path: "Sources/CPeruserShim"),
        // Apache's and APR's headers: the process side calls Apache's API directly. The paths
        // and defines are those `apxs -q INCLUDEDIR` and apxs's compile flags give on Debian.
        .systemLibrary(name: "CApache", path: "Sources/CApache"),
        .target(name: "PeruserModule", dependencies: ["PeruserCore", "CPeruserShim", "CApache"],
                swiftSettings: [.unsafeFlags(apacheHeaders)] + releaseSpeed),
        .testTarget(name: "PeruserCoreTests", dependencies: ["PeruserCore"]),
    ],
    // Swift 5 language mode, on purpose: the module is single-threaded by design. The parent is
    // one thread that forks the multiplexers and workers, each a process of its own that calls
    // into Swift from one thread, and nothing here starts a thread; so the global and static
    // mutable state (per process) is never shared between threads, which is what Swift 6's
    // strict concurrency checking would reject it for.
    swiftLanguageModes: [.v5]
)
