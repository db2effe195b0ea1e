#if canImport(Glibc)
import Glibc
#endif
import Foundation
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
        OptionSpec("fill", "MODE", "none, zero or random.", default: "random"),
        OptionSpec("tracker", "NAME", "auto, uffd-async, uffd-sync or mprotect.", default: "auto"),
        OptionSpec("downtime-target", "DURATION", "Predicted pause at which iterating stops.", default: "50ms"),
        OptionSpec("warmup", "DURATION", "How long the workload runs before the migration.", default: "1s"),
        OptionSpec("report", "FILE", "Write the migration report as JSON to FILE."),
    ]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let workload = arguments.string("workload", default: "hotset")
        let size = arguments.string("region-size", default: "256MiB")
        let rate = arguments.string("dirty-rate", default: "2000")
        let fill = arguments.string("fill", default: "random")
        let warmup = try arguments.seconds("warmup", default: 1)
        _ = try arguments.bytes("region-size", default: 0)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ferry-demo-\(getpid())").path
        let shared = directory + "/shared"
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let sourceControl = directory + "/source.sock"
        let destinationControl = directory + "/destination.sock"
        let port = try Listener(on: Endpoint(host: "127.0.0.1", port: 0)).endpoint.port
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]

        printLine("demo: shared directory \(shared); destination listens on 127.0.0.1:\(port)")
        let destination = try spawn(executable, ["receive", "--listen", "127.0.0.1:\(port)", "--shared-dir", shared,
                                                 "--control", destinationControl, "--dirty-rate", rate, "--once"], log: directory + "/destination.log")
        let source = try spawn(executable, ["run", "--workload", workload, "--region-size", size, "--fill", fill,
                                            "--shared-dir", shared, "--control", sourceControl, "--dirty-rate", rate], log: directory + "/source.log")
        defer {
            for process in [source, destination] where process.isRunning { process.terminate() }
        }
        for path in [sourceControl, destinationControl] {
            guard waitForSocket(path, processes: [source, destination]) else {
                let logs = ["source", "destination"].map { name in
                    "\(name): " + ((try? String(contentsOfFile: directory + "/\(name).log", encoding: .utf8)) ?? "")
                }.joined(separator: "\n")
                throw CommandFailure(status: .failure, message: "a ferry process did not start:\n\(logs)")
            }
        }
        printLine("demo: source pid \(source.processIdentifier) runs \(workload) in \(size) at \(rate) pages/s; warming up \(warmup) s")
        usleep(UInt32(warmup * 1e6))

        var request: ControlChannel.Message = [
            "command": "migrate", "to": "127.0.0.1:\(port)", "tracker": arguments.string("tracker", default: "auto"),
            "downtime_target": try arguments.seconds("downtime-target", default: 0.05),
        ]
        request["max_rounds"] = 30
        printLine("round      pages   zero pages        bytes   seconds      MB/s   dirty pages/s")
        let result = try ControlChannel.request(request, at: sourceControl) { progress in
            func number(_ key: String) -> Double { progress[key] as? Double ?? Double(progress[key] as? Int ?? 0) }
            let label = "\(progress["round"] as? Int ?? 0)\((progress["final"] as? Bool ?? false) ? " (final)" : "")"
            printLine(label.padding(to: 10) + String(format: "%6.0f %12.0f %12.0f %9.3f %9.1f %15.0f", number("pages"), number("zero_pages"),
                                                       number("bytes"), number("seconds"), number("bandwidth_mbps"), number("dirty_rate")))
        }
        let report = result["report"] as? [String: Any] ?? [:]
        let completed = report["outcome"] as? String == "completed"
        var verified = false
        if completed {
            let verify = try ControlChannel.request(["command": "verify"], at: destinationControl) { _ in }
            verified = verify["ok"] as? Bool ?? false
            printLine("demo: verify on the destination: " + (verify["summary"] as? String ?? (verify["error"] as? String ?? "")))
            let status = try ControlChannel.request(["command": "status"], at: destinationControl) { _ in }
            printLine("demo: destination pid \(destination.processIdentifier) runs \(status["workload"] ?? "?") at step \(status["step"] ?? "?"), generation \(status["generation"] ?? "?")")
            _ = try? ControlChannel.request(["command": "stop"], at: destinationControl) { _ in }
        } else {
            printError("demo: migration \(report["outcome"] ?? "failed"): \(result["error"] ?? "")")
            _ = try? ControlChannel.request(["command": "stop"], at: sourceControl) { _ in }
            _ = try? ControlChannel.request(["command": "stop"], at: destinationControl) { _ in }
        }
        for process in [source, destination] { waitForExit(process, seconds: 10) }
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

    static func spawn(_ executable: String, _ arguments: [String], log: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    static func waitForSocket(_ path: String, processes: [Process]) -> Bool {
        for _ in 0..<600 {
            if FileManager.default.fileExists(atPath: path) { return true }
            if processes.contains(where: { !$0.isRunning }) { return false }
            usleep(50_000)
        }
        return false
    }

    static func waitForExit(_ process: Process, seconds: Double) {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while process.isRunning && ContinuousClock.now < deadline { usleep(20_000) }
        if process.isRunning { process.terminate() }
    }
}
