#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryMigration
import FerrySystem
import FerryTransport

/// `ferry demo`: the whole story on one machine with two real processes.
struct DemoCommand: Command {
    static let path = ["demo"]
    static let summary = "Run a live workload in one process, migrate it to another over TCP, verify it there."
    static let discussion = """
        Starts 'ferry receive' and 'ferry run' as two real processes sharing a temporary directory (the shared
        mount), lets the workload write memory, migrates it over loopback while it runs, checks its invariants
        on the destination, prints the report and exits 0 only if the migration completed and verified.
        """
    static let options = [
        OptionSpec("workload", "NAME", "hotset or download.", default: "hotset"),
        OptionSpec("region-size", "SIZE", "Size of the region.", default: "256MiB"),
        OptionSpec("dirty-rate", "PAGES/S", "Pace of the workload.", default: "2000"),
        OptionSpec("fill", "MODE", "none, zero, random or text.", default: "random"),
        OptionSpec("compress", "CODEC", "auto, none, zstd or lz4 (see 'ferry migrate --help').", default: "auto"),
        OptionSpec("tracker", "NAME", "auto, uffd-async, uffd-sync or mprotect.", default: "auto"),
        OptionSpec("downtime-target", "DURATION", "A cap on the pause (as for 'ferry migrate'); without it, the shortest pause the link allows."),
        OptionSpec("warmup", "DURATION", "How long the workload runs before the migration.", default: "1s"),
        OptionSpec("verify", "MODE", "strict or audit (see 'ferry migrate --help').", default: "strict"),
        OptionSpec("mode", "MODE", "pre-copy, post-copy or hybrid (see 'ferry migrate --help').", default: "pre-copy"),
        OptionSpec("report", "FILE", "Write the migration report as JSON to FILE."),
    ]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let workload = arguments.string("workload", default: "hotset")
        let size = arguments.string("region-size", default: "256MiB")
        let rate = arguments.string("dirty-rate", default: "2000")
        let fill = arguments.string("fill", default: "random")
        let warmup = try arguments.seconds("warmup", default: 1)
        let mode = arguments.string("mode", default: "pre-copy")
        guard MigrationMode(rawValue: mode) != nil else { throw UsageError("--mode \(mode): expected pre-copy, post-copy or hybrid") }
        let compress = arguments.string("compress", default: "auto")
        guard CompressionChoice(rawValue: compress) != nil else { throw UsageError("--compress \(compress): expected auto, none, zstd or lz4") }
        _ = try arguments.bytes("region-size", default: 0)
        let pair = try LocalPair(workload: workload, regionSize: size, fill: fill, dirtyRate: rate)
        defer { pair.tearDown() }
        let (source, destination, destinationControl) = (pair.source, pair.destination, pair.destinationControl)
        printLine("demo: shared directory \(pair.shared); destination pid \(destination.processIdentifier) listens on 127.0.0.1:\(pair.port)")
        printLine("demo: source pid \(source.processIdentifier) runs \(workload) in \(size) at \(rate) steps/s; warming up \(warmup) s")
        usleep(UInt32(warmup * 1e6))

        printLine(progressHeader)
        var request: ControlChannel.Message = [
            "tracker": arguments.string("tracker", default: "auto"), "max_rounds": 30, "verify": arguments.string("verify", default: "strict"),
            "mode": mode, "compress": compress,
        ]
        if arguments.string("downtime-target") != nil { request["downtime_target"] = try arguments.seconds("downtime-target", default: 0) }
        let printer = ProgressPrinter()
        let result = try pair.migrate(request) { printer.show($0) }
        let report = result["report"] as? [String: Any] ?? [:]
        let completed = report["outcome"] as? String == "completed" && report["verified"] as? Bool == true
        var verified = false
        if completed {
            let verify = try ControlChannel.request(["command": "verify"], at: destinationControl) { _ in }
            verified = verify["ok"] as? Bool ?? false
            printLine("demo: verify on the destination: " + (verify["summary"] as? String ?? (verify["error"] as? String ?? "")))
            let status = try ControlChannel.request(["command": "status"], at: destinationControl) { _ in }
            printLine("demo: destination pid \(destination.processIdentifier) runs \(status["workload"] ?? "?") at step \(status["step"] ?? "?"), generation \(status["generation"] ?? "?")")
        } else {
            printError("demo: migration \(report["outcome"] ?? "failed"): \(result["error"] ?? "")")
        }
        pair.tearDown()
        var full = report
        full["destination_verify"] = verified
        let data = try JSONSerialization.data(withJSONObject: full, options: [.prettyPrinted, .sortedKeys])
        printLine(String(decoding: data, as: UTF8.self))
        if let path = arguments.string("report") { try data.write(to: URL(fileURLWithPath: path)) }
        if completed, verified {
            printLine(String(format: "demo: migrated and verified; downtime %.1f ms, total %.2f s", report["downtime_ms"] as? Double ?? 0, report["total_seconds"] as? Double ?? 0))
            return .success
        }
        return .failure
    }
}
