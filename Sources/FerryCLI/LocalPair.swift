#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryMigration
import FerryTransport
import FerrySystem

/// A source (`ferry run`) and a destination (`ferry receive --once`) as two real processes on this
/// machine, sharing a temporary directory: what `ferry demo` and `ferry bench` migrate between.
final class LocalPair {
    let directory: String
    var shared: String { directory + "/shared" }
    var sourceControl: String { directory + "/source.sock" }
    var destinationControl: String { directory + "/destination.sock" }
    let port: UInt16
    let source: Process
    let destination: Process

    /// Starts both processes and waits until their control sockets answer.
    /// - Parameters: the `ferry run` settings (workload, size, fill, pace in steps per second or `max`), and
    ///   more options for both (`hostOptions`, e.g. `--huge-pages off`) and for `ferry receive` (e.g. `--reserve SIZE`).
    init(workload: String, regionSize: String, fill: String, dirtyRate: String, hostOptions: [String] = [], receiveOptions: [String] = []) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ferry-pair-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: directory + "/shared", withIntermediateDirectories: true)
        port = try Listener(on: Endpoint(host: "127.0.0.1", port: 0)).endpoint.port
        let executable = Self.executable
        destination = try Self.spawn(executable, ["receive", "--listen", "127.0.0.1:\(port)", "--shared-dir", directory + "/shared",
                                                  "--control", directory + "/destination.sock", "--once"] + hostOptions + receiveOptions,
                                     log: directory + "/destination.log")
        source = try Self.spawn(executable, ["run", "--workload", workload, "--region-size", regionSize, "--fill", fill,
                                             "--shared-dir", directory + "/shared", "--control", directory + "/source.sock",
                                             "--dirty-rate", dirtyRate] + hostOptions, log: directory + "/source.log")
        for path in [sourceControl, destinationControl] where !waitForSocket(path) {
            let logs = ["source", "destination"].map { name in
                "\(name): " + ((try? String(contentsOfFile: directory + "/\(name).log", encoding: .utf8)) ?? "")
            }.joined(separator: "\n")
            tearDown()
            throw CommandFailure(status: .failure, message: "a ferry process did not start:\n\(logs)")
        }
    }

    deinit { tearDown() }

    /// This very binary, to start the two processes with.
    static var executable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// Asks the source to migrate to the destination; `progress` sees each round. Returns the control result.
    func migrate(_ settings: ControlChannel.Message, progress: (ControlChannel.Message) -> Void) throws -> ControlChannel.Message {
        var request = settings
        request["command"] = "migrate"
        request["to"] = "127.0.0.1:\(port)"
        return try ControlChannel.request(request, at: sourceControl, onReply: progress)
    }

    /// Stops whatever still runs (politely first), waits for both processes, removes the directory.
    func tearDown() {
        for control in [sourceControl, destinationControl] where FileManager.default.fileExists(atPath: control) {
            _ = try? ControlChannel.request(["command": "stop"], at: control) { _ in }
        }
        for process in [source, destination] {
            let deadline = ContinuousClock.now + .seconds(10)
            while process.isRunning && ContinuousClock.now < deadline { usleep(20_000) }
            if process.isRunning { process.terminate(); process.waitUntilExit() }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    private static func spawn(_ executable: String, _ arguments: [String], log: String) throws -> Process {
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

    private func waitForSocket(_ path: String) -> Bool {
        for _ in 0..<1200 {
            if FileManager.default.fileExists(atPath: path) { return true }
            if !source.isRunning || !destination.isRunning { return false }
            usleep(50_000)
        }
        return false
    }
}

/// One line of migration progress, as `ferry migrate` and `ferry demo` print it.
func progressLine(_ progress: ControlChannel.Message) -> String {
    func number(_ key: String) -> Double { progress[key] as? Double ?? Double(progress[key] as? Int ?? 0) }
    let phase = progress["phase"] as? String ?? ""
    let label = "\(progress["round"] as? Int ?? 0)" + (phase == "switch" ? " (switch)" : phase == "background" ? " (post)" : (progress["final"] as? Bool ?? false) ? " (final)" : "")
    return label.padding(to: 10) + String(
        format: "%6.0f %12.0f %12.0f %9.3f %9.1f %15.0f %17.1f ms", number("pages"), number("zero_pages"), number("bytes"),
        number("seconds"), number("bandwidth_mbps"), number("dirty_rate"), number("predicted_downtime_ms"))
}

/// Prints a migration's progress as `ferry migrate` and `ferry demo` show it: each finished round as a line, and
/// on a terminal the round in progress as one line rewritten in place (bytes and pages done, rate, time left,
/// pages left, predicted pause). Not on a terminal, only the finished rounds.
final class ProgressPrinter {
    private let onTerminal = isatty(STDOUT_FILENO) == 1
    private var showingLive = false

    func show(_ message: ControlChannel.Message) {
        if message["event"] as? String == "live" {
            guard onTerminal else { return }
            write("\r\u{1B}[K" + liveLine(message))
            showingLive = true
            return
        }
        if showingLive {
            write("\r\u{1B}[K")
            showingLive = false
        }
        printLine(progressLine(message))
    }

    private func write(_ text: String) {
        _ = text.withCString { Glibc.write(STDOUT_FILENO, $0, strlen($0)) }
    }

    private func liveLine(_ message: ControlChannel.Message) -> String {
        func number(_ key: String) -> Double { message[key] as? Double ?? Double(message[key] as? Int ?? 0) }
        let done = Int(number("pages_done")), total = Int(number("pages_total"))
        let percent = total > 0 ? 100 * Double(done) / Double(total) : 100
        return String(format: "round %d: %@ sent, %d of %d pages (%.0f %%), %.1f MB/s, %.1f s left, %d pages left, predicted pause %.1f ms",
                      Int(number("round")), ByteCount(Int(number("bytes"))).description, done, total, percent, number("rate_mbps"),
                      number("eta_seconds"), total - done, number("predicted_downtime_ms"))
    }
}

let progressHeader = "round      pages   zero pages        bytes   seconds      MB/s   dirty pages/s   predicted downtime"
