// swift-tools-version: 6.0
// Ferry: live migration of a running Linux process's memory region.
//
// Modules, in the one direction data flows:
//   CShims -> FerrySystem -> FerryTracking -> FerryRegion -> (wire, transport, auth) -> FerryMigration
//     -> Ferry (the C API, libFerry.so) and FerryWorkloads (the shipped workloads) -> FerryCLI -> ferry
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "Ferry",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ferry", targets: ["ferry"]),
        // The C API (`ferry.h`): `swift build -c release` leaves libFerry.so in `--show-bin-path`.
        .library(name: "Ferry", type: .dynamic, targets: ["Ferry"]),
        // The Swift API: link these to make your own program's region migratable.
        .library(name: "FerryMigration", targets: ["FerryMigration"]),
        .library(name: "FerryRegion", targets: ["FerryRegion"]),
        .library(name: "FerryTracking", targets: ["FerryTracking"]),
        // For the fuzz harness in demo/fuzz, a package of its own.
        .library(name: "FerryWire", targets: ["FerryWire"]),
    ],
    targets: [
        // Syscalls Swift cannot call, the fault handlers, newer uapi definitions, HMAC through libcrypto, zstd and lz4.
        .target(
            name: "CShims",
            path: "CShims",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("crypto"), .linkedLibrary("zstd"), .linkedLibrary("lz4")]
        ),
        // Errno, syscall helpers, owned file descriptors and mappings, kernel facts.
        .target(name: "FerrySystem", dependencies: ["CShims"], swiftSettings: strict),
        // Write tracking of a memory range: uffd-async, uffd-sync, mprotect.
        .target(name: "FerryTracking", dependencies: ["FerrySystem", "CShims"], swiftSettings: strict),
        // The migratable region at a fixed address, its header, the heap inside it, the workload interface.
        // Optimised in debug builds too: its heap serves every allocation of an embedded program (a whole Lua
        // interpreter in the tests), which unoptimised code slows down fifteen-fold.
        .target(
            name: "FerryRegion", dependencies: ["FerrySystem", "FerryTracking"],
            swiftSettings: strict + [.unsafeFlags(["-O"], .when(configuration: .debug))]),
        // The workloads Ferry ships (download, hotset): clients of the public region API like any program's.
        .target(name: "FerryWorkloads", dependencies: ["FerrySystem", "FerryRegion", "FerryTransport"], swiftSettings: strict),
        // Migration protocol frames and their codec: pure functions over bytes, no I/O.
        .target(name: "FerryWire", swiftSettings: strict),
        // Sockets for the migration stream: frames, pages sent from and received into the region, rate limits.
        .target(name: "FerryTransport", dependencies: ["CShims", "FerrySystem", "FerryWire"], swiftSettings: strict),
        // Peer authentication: the pre-shared key file and the HMAC-SHA-256 challenge-response.
        .target(
            name: "FerryAuth",
            dependencies: ["CShims", "FerrySystem", "FerryWire", "FerryTransport"],
            swiftSettings: strict
        ),
        // The migration itself: source and destination engines, stop policy, digest, ownership handoff, report.
        // FERRY_TEST_HOOKS (debug builds only): the fault-matrix and untracked-write hooks the tests drive through
        // the environment. Release builds, what libFerry.so and `ferry` ship as, do not contain them.
        .target(
            name: "FerryMigration",
            dependencies: ["FerrySystem", "FerryTracking", "FerryRegion", "FerryWire", "FerryTransport", "FerryAuth"],
            swiftSettings: strict + [.define("FERRY_TEST_HOOKS", .when(configuration: .debug))]
        ),
        // ferry.h, the C API's header; the functions are Swift (`Ferry`).
        .target(name: "CFerry"),
        // The C API over the embedding API of FerryMigration: `@_cdecl` functions, built as libFerry.so.
        .target(name: "Ferry", dependencies: ["CFerry", "FerryMigration", "FerryRegion", "FerrySystem"], swiftSettings: strict),
        // Plain C loops that measure each tracking mechanism: the benchmarks' baseline.
        .target(name: "CFerryBaseline", cSettings: [.define("_GNU_SOURCE")]),
        // Argument parsing and commands of the `ferry` executable.
        .target(
            name: "FerryCLI",
            dependencies: [
                "FerryMigration", "FerryWorkloads", "FerryAuth", "FerryTracking", "FerrySystem", "FerryRegion", "FerryTransport",
                "CFerryBaseline",
            ],
            swiftSettings: strict
        ),
        .executableTarget(name: "ferry", dependencies: ["FerryCLI"], swiftSettings: strict),

        // Helpers shared by the test targets: writer threads, temporary directories, running `ferry`.
        .target(name: "FerryTestSupport", dependencies: ["FerrySystem", "FerryRegion", "FerryWire", "FerryAuth", "FerryTransport"], path: "Tests/FerryTestSupport",
                swiftSettings: strict),
        .testTarget(name: "FerrySystemTests", dependencies: ["FerrySystem", "FerryTestSupport"], swiftSettings: strict),
        .testTarget(
            name: "FerryTrackingTests",
            dependencies: ["FerryTracking", "FerrySystem", "FerryTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(name: "FerryRegionTests", dependencies: ["FerryRegion", "FerryWorkloads", "FerryTestSupport"], swiftSettings: strict),
        .testTarget(
            name: "FerryWorkloadsTests", dependencies: ["FerryWorkloads", "FerryRegion", "FerrySystem", "FerryTestSupport"],
            swiftSettings: strict),
        .testTarget(name: "FerryWireTests", dependencies: ["FerryWire", "FerrySystem"], swiftSettings: strict),
        .testTarget(
            name: "FerryMigrationTests",
            dependencies: [
                "FerryMigration", "FerryWorkloads", "FerryRegion", "FerryTracking", "FerrySystem", "FerryTransport", "FerryWire",
                "FerryTestSupport",
            ],
            swiftSettings: strict),
        .testTarget(
            name: "FerryAuthTests",
            dependencies: ["FerryAuth", "FerryTransport", "FerryWire", "FerrySystem", "FerryTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(name: "FerryCLITests", dependencies: ["FerryCLI", "FerryTestSupport", "FerryWire", "FerryTransport", "FerrySystem"], swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
