// swift-tools-version: 6.0
// The libFuzzer harness for Ferry's frame decoder: a package of its own, so that its flags
// (`-sanitize=fuzzer`, `-parse-as-library`) never touch the main package's `swift build` / `swift test`.
// Build and run it with `demo/fuzz.sh`.
import PackageDescription

// A path dependency is named after its directory (`ferry`, `main`, a worktree's name...): find that name.
let ferryDirectory = Context.packageDirectory.split(separator: "/").dropLast(2).last.map(String.init) ?? "ferry"

let package = Package(
    name: "FerryFuzz",
    dependencies: [.package(path: "../..")],
    targets: [
        // Starts libFuzzer's driver from the `main` SwiftPM gives the executable.
        .target(name: "CFuzzDriver"),
        .executableTarget(
            name: "FerryWireFuzzer",
            dependencies: ["CFuzzDriver", .product(name: "FerryWire", package: ferryDirectory)]
        ),
    ],
    swiftLanguageModes: [.v6]
)
