#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryRegion
import FerrySystem

/// `ferry bench move`: what a user waits for with no tuning flags, against its parts and QEMU, same run.
struct BenchMoveCommand: Command {
    static let path = ["bench", "move"]
    static let summary = "Measure a whole move with default flags (set-up included) beside populate alone, stream alone, a standby destination and QEMU."
    static let discussion = """
        Each run, on fresh pairs of ferry processes over loopback, with a hotset workload in a region of random
        bytes: populate alone (this process pre-faults a fresh region of the size, as a destination does),
        stream alone (an idle region into a destination reserved beforehand: no set-up, no dirty rounds), the
        default move (busy workload, no flags: strict verification), the same with --verify audit, and the
        standby move (busy workload into 'ferry receive --reserve'). Totals are end to end, the destination's
        set-up included. With --qemu SCRIPT, QEMU's own default migration of a guest with as much random RAM
        runs in the same run (bench/qemu-migration.sh). Medians of the runs; build in release mode.
        """
    static let options = [
        OptionSpec("region-size", "SIZE", "Region to move.", default: "1GiB"),
        OptionSpec("dirty-rate", "RATE", "The busy workload's steps per second (each dirties a page of its working set).", default: "5000"),
        OptionSpec("runs", "N", "Repetitions; medians are reported.", default: "3"),
        OptionSpec("warmup", "DURATION", "How long the workload runs before each move.", default: "1s"),
        OptionSpec("huge-pages", "on|off", "Regions backed by transparent huge pages (both processes, and populate alone).", default: "off"),
        OptionSpec("qemu", "SCRIPT", "Also run QEMU's default migration with this script (bench/qemu-migration.sh), same size."),
        OptionSpec("json", "FILE", "Also write the results as JSON to FILE (- for standard output)."),
    ]

    /// One migration's figures, from its report.
    struct Move: Encodable {
        let total_seconds: Double
        let setup_seconds: Double
        let downtime_ms: Double
        let verify_ms: Double
        let predicted_downtime_ms: Double
        let rounds: Int
    }

    struct Run: Encodable {
        let populate_seconds: Double
        let stream: Move
        let move: Move
        let audit: Move
        let standby: Move
        let qemu_seconds: Double?
    }

    struct Report: Encodable {
        let region_bytes: Int
        let dirty_rate: String
        let runs: [Run]
        let populate_seconds: Double
        let stream_seconds: Double
        let move_seconds: Double
        let move_pause_ms: Double
        let move_verify_ms: Double
        let audit_pause_ms: Double
        let standby_seconds: Double
        let standby_setup_ms: Double
        let qemu_seconds: Double?
        /// The bars of the issue, each as measured: true when it holds on the medians.
        let bars: [String: Bool]
    }

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let size = try arguments.bytes("region-size", default: 1 << 30)
        let rate = arguments.string("dirty-rate", default: "5000")
        let runs = try arguments.integer("runs", default: 3, range: 1...100)
        let warmup = try arguments.seconds("warmup", default: 1)
        let qemu = arguments.string("qemu")
        let hugePages = arguments.string("huge-pages", default: "off")
        guard ["on", "off"].contains(hugePages) else { throw UsageError("--huge-pages \(hugePages): expected on or off") }
        let host = ["--huge-pages", hugePages]
        #if DEBUG
        printError("note: this is a debug build; measure with 'swift run -c release ferry bench move'")
        #endif
        printLine("Move benchmark: hotset in \(ByteCount(size)) of random bytes at \(rate) steps/s, default flags, huge pages \(hugePages), \(runs) runs")
        var results: [Run] = []
        for index in 1...runs {
            let populate = try populateSeconds(size: size, hugePages: hugePages == "on")
            let reserve = ["--reserve", "\(size)"]
            let stream = try move(size: size, rate: "0", warmup: 0, host: host, receiveOptions: reserve)
            let busy = try move(size: size, rate: rate, warmup: warmup, host: host)
            let audit = try move(size: size, rate: rate, warmup: warmup, settings: ["verify": "audit"], host: host)
            let standby = try move(size: size, rate: rate, warmup: warmup, host: host, receiveOptions: reserve)
            let qemuSeconds = try qemu.map { try qemuMigrationSeconds(script: $0, size: size) }
            results.append(Run(populate_seconds: populate, stream: stream, move: busy, audit: audit, standby: standby, qemu_seconds: qemuSeconds))
            printLine(String(format: "  run %d/%d: populate %.2f s, stream %.2f s, move %.2f s (pause %.1f ms, verify %.1f ms), audit pause %.1f ms, standby %.2f s (set-up %.1f ms)%@",
                             index, runs, populate, stream.total_seconds, busy.total_seconds, busy.downtime_ms, busy.verify_ms, audit.downtime_ms,
                             standby.total_seconds, standby.setup_seconds * 1000, qemuSeconds.map { String(format: ", QEMU %.2f s", $0) } ?? ""))
        }
        func median(_ value: (Run) -> Double) -> Double { Statistics.median(results.map(value)) }
        let qemuMedian = qemu == nil ? nil : median { $0.qemu_seconds ?? 0 }
        let populate = median(\.populate_seconds), stream = median(\.stream.total_seconds)
        let total = median(\.move.total_seconds), pause = median(\.move.downtime_ms), verify = median(\.move.verify_ms)
        let auditPause = median(\.audit.downtime_ms), standby = median(\.standby.total_seconds), standbySetup = median(\.standby.setup_seconds) * 1000
        var bars: [String: Bool] = [
            "audit pause <= 10 ms": auditPause <= 10,
            "strict pause <= verify + 10 ms": pause <= verify + 10,
            "total <= 1.1 x max(populate, stream)": total <= 1.1 * max(populate, stream),
            "standby set-up <= 10 ms": standbySetup <= 10,
            "standby total <= 1.1 x stream": standby <= 1.1 * stream,
        ]
        if let qemuMedian { bars["total <= QEMU"] = total <= qemuMedian }
        let report = Report(
            region_bytes: size, dirty_rate: rate, runs: results, populate_seconds: populate, stream_seconds: stream, move_seconds: total,
            move_pause_ms: pause, move_verify_ms: verify, audit_pause_ms: auditPause, standby_seconds: standby,
            standby_setup_ms: standbySetup, qemu_seconds: qemuMedian, bars: bars)
        printLine(String(format: """

            populate alone         %.2f s   (a fresh %@ pre-faulted, %d threads)
            stream alone           %.2f s   (idle region into a reserved destination)
            move, default flags    %.2f s   end to end; pause %.1f ms, of which strict verify %.1f ms
            move, --verify audit   pause %.1f ms
            standby move           %.2f s   (ferry receive --reserve); set-up %.1f ms
            """, populate, ByteCount(size).description, ProcessInfo.processInfo.activeProcessorCount, stream, total, pause, verify,
            auditPause, standby, standbySetup))
        if let qemuMedian { printLine(String(format: "QEMU default migration %.2f s   (%@)", qemuMedian, qemu!)) }
        printLine("")
        for (bar, holds) in bars.sorted(by: { $0.key < $1.key }) { printLine("  \(holds ? "holds" : "FAILS")  \(bar)") }
        if let path = arguments.string("json") { try JSONReport.write(report, to: path) }
        return .success
    }

    /// Seconds to pre-fault a fresh region of `size` the way a destination does (a `RegionPopulator`).
    static func populateSeconds(size: Int, hugePages: Bool) throws -> Double {
        let region = try MigratableRegion.reserve(layout: RegionLayout(base: 0x7c00_0000_0000, byteCount: size), populate: false, hugePages: hugePages)
        let started = ContinuousClock.now
        let populator = RegionPopulator(region: region)
        populator.wait(untilPopulated: size)
        let summary = populator.cancel()
        guard summary.complete else {
            throw CommandFailure(status: .failure, message: "populating \(ByteCount(size)) failed: \(summary.error.map { "\($0)" } ?? "stopped early")")
        }
        return (ContinuousClock.now - started).secondsValue
    }

    /// One move between a fresh pair; throws unless it completed verified.
    static func move(size: Int, rate: String, warmup: Double, settings: [String: any Sendable] = [:], host: [String], receiveOptions: [String] = []) throws -> Move {
        let pair = try LocalPair(workload: "hotset", regionSize: "\(size)", fill: "random", dirtyRate: rate, hostOptions: host, receiveOptions: receiveOptions)
        defer { pair.tearDown() }
        usleep(UInt32(warmup * 1e6))
        let result = try pair.migrate(settings) { _ in }
        guard let report = result["report"] as? [String: Any], report["outcome"] as? String == "completed",
              report["verified"] as? Bool == true, let rounds = report["rounds"] as? [[String: Any]] else {
            throw CommandFailure(status: .failure, message: "the move at \(rate) steps/s did not complete verified: \(result["error"] ?? "unknown")")
        }
        func number(_ object: [String: Any]?, _ key: String) -> Double { object?[key] as? Double ?? Double(object?[key] as? Int ?? 0) }
        return Move(
            total_seconds: number(report, "total_seconds"), setup_seconds: number(report, "setup_seconds"),
            downtime_ms: number(report, "downtime_ms"), verify_ms: number(report["downtime_parts"] as? [String: Any], "verify_ms"),
            predicted_downtime_ms: number(report, "predicted_downtime_ms"), rounds: rounds.count)
    }

    /// QEMU's default migration of a guest with `size` of random RAM: its own total time, in seconds.
    static func qemuMigrationSeconds(script: String, size: Int) throws -> Double {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: script)
        process.arguments = ["--size", "\(size >> 20)MiB", "--json"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let line = String(decoding: data, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
        guard process.terminationStatus == 0,
              let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let milliseconds = object["total_time_ms"] as? Double ?? (object["total_time_ms"] as? Int).map(Double.init) else {
            throw CommandFailure(status: .failure, message: "\(script) failed (status \(process.terminationStatus)): \(line)")
        }
        return milliseconds / 1000
    }
}
