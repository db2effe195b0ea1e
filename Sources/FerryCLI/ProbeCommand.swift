import Foundation
import FerryMigration
import FerrySystem
import FerryTracking

/// `ferry probe`: how fast a running workload dirties its region, per window length, measured exactly.
struct ProbeCommand: Command {
    static let path = ["probe"]
    static let summary = "Measure a running workload's dirty-page rate and working set with write tracking."
    static let discussion = """
        Tracks the region's writes for the longest window while the workload runs (it is not paused) and counts, for
        each window length, the distinct pages written in each consecutive window of that length: a page written
        many times in a window counts once, as a migration round sends it once. A workload that rewrites a working
        set therefore shows a lower rate over longer windows; the longest window's pages are its working set over
        that time. Also measures what a migration's plan needs: the pages a full copy sends, one digest pass over
        the region, the shared mount's syncs.
        A probe and a migration exclude each other (both track the region's writes): each is refused while the
        other runs.
        """
    static let options = [
        OptionSpec("control", "SOCKET", "Control socket of the process running the workload.", default: "required"),
        OptionSpec("windows", "LIST", "Window lengths, comma-separated, from 10ms to 10min; the probe lasts the longest.", default: "100ms,1s,10s"),
        OptionSpec("tracker", "NAME", "auto, uffd-async, uffd-sync or mprotect.", default: "auto"),
        OptionSpec("json", nil, "Print the measurement as JSON (what 'ferry plan --probe FILE' reads)."),
    ]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let control = try arguments.required("control")
        let windows = try ProbeRequest.windows(arguments)
        let tracker = try ProbeRequest.tracker(arguments)
        if !arguments.has("json") {
            printError("ferry probe: tracking the workload's writes for \(ProbeRequest.duration(windows.max() ?? 0)) (windows \(windows.map(ProbeRequest.duration).joined(separator: ", ")))")
        }
        let output = ProbeOutput(try ProbeRequest.run(control: control, windows: windows, tracker: tracker))
        if arguments.has("json") {
            printLine(try JSONLines.encode(output))
        } else {
            for line in output.table() { printLine(line) }
        }
        if !output.probe.exact {
            printError("ferry probe: the \(output.probe.tracker) tracker lost per-page precision during the probe (it reported whole ranges): the counts are upper bounds; try --tracker uffd-async")
        }
        return .success
    }
}

/// Asking a ferry process for a probe: shared by `ferry probe` and `ferry plan`.
enum ProbeRequest {
    /// `--windows 100ms,1s,10s`, checked and sorted.
    static func windows(_ arguments: ParsedArguments) throws(UsageError) -> [Double] {
        let text = arguments.string("windows", default: "100ms,1s,10s")
        var windows: [Double] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let seconds = Units.seconds(String(part)), seconds > 0 else {
                throw UsageError("--windows \(text): '\(part)' is not a duration (write the list like 100ms,1s,10s)")
            }
            windows.append(seconds)
        }
        switch DirtyRateProbe.checked(windows) {
        case .success(let sorted): return sorted
        case .failure(let error): throw UsageError("--windows \(text): \(error.message)")
        }
    }

    static func tracker(_ arguments: ParsedArguments) throws(UsageError) -> String {
        let name = arguments.string("tracker", default: "auto")
        guard TrackerChoice(name) != nil else { throw UsageError("--tracker \(name): expected auto, uffd-async, uffd-sync or mprotect") }
        return name
    }

    /// Sends the `probe` request and returns the measurement.
    static func run(control: String, windows: [Double], tracker: String) throws -> DirtyRateProbe.Report {
        let result = try ControlChannel.request(["command": "probe", "windows": windows, "tracker": tracker], at: control) { _ in }
        guard result["ok"] as? Bool == true, let probe = result["probe"] as? [String: Any] else {
            throw CommandFailure(status: .failure, message: result["error"] as? String ?? "the probe failed without saying why")
        }
        let data = try JSONSerialization.data(withJSONObject: probe)
        return try JSONDecoder().decode(DirtyRateProbe.Report.self, from: data)
    }

    /// `100 ms`, `1 s`, `2.5 s`.
    static func duration(_ seconds: Double) -> String {
        if seconds < 1 { return "\((seconds * 1000).formatted(decimals: seconds * 1000 == (seconds * 1000).rounded() ? 0 : 1)) ms" }
        return "\(seconds.formatted(decimals: seconds == seconds.rounded() ? 0 : 2)) s"
    }
}

/// JSON for standard output, encoded as `JSONReport` encodes files, and written with `printLine` (a reader that
/// went away, `| head`, ends the write, not the process).
enum JSONLines {
    static func encode(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}

/// A probe's measurement and the summary people read: per window, the median sample.
struct ProbeOutput: Codable {
    struct WindowSummary: Codable {
        /// The window length asked for.
        var seconds: Double
        /// The samples' median length as measured.
        var measured_seconds: Double
        var samples: Int
        /// Median distinct pages per window, and the extremes.
        var unique_pages: Double
        var min_pages: Int
        var max_pages: Int
        var pages_per_second: Double
        var mb_per_second: Double
    }

    var probe: DirtyRateProbe.Report
    var windows: [WindowSummary]
    /// Distinct pages written in the longest window.
    var working_set_pages: Int
    var working_set_bytes: Int

    init(_ probe: DirtyRateProbe.Report) {
        self.probe = probe
        windows = probe.windows.map { window in
            let pages = Statistics.median(window.unique_pages.map(Double.init))
            let measured = Statistics.median(window.sample_seconds)
            let perSecond = pages / Swift.max(measured, 1e-9)
            return WindowSummary(
                seconds: window.seconds, measured_seconds: measured, samples: window.unique_pages.count, unique_pages: pages,
                min_pages: window.unique_pages.min() ?? 0, max_pages: window.unique_pages.max() ?? 0, pages_per_second: perSecond,
                mb_per_second: perSecond * Double(probe.page_size) / 1e6)
        }
        working_set_pages = probe.windows.last?.unique_pages.max() ?? 0
        working_set_bytes = working_set_pages * probe.page_size
    }

    /// Unique dirty pages against window length, for `MigrationPlan`.
    var curve: DirtyCurve {
        DirtyCurve(
            points: windows.map { .init(seconds: $0.measured_seconds, pages: $0.unique_pages) }, limit: Double(probe.region_pages),
            hotPages: Double(probe.hot_pages), stepsPerSecond: probe.steps_per_second)
    }

    func table() -> [String] {
        let steps = probe.steps_per_second.map { ", \($0.formatted(decimals: 0)) steps/s" } ?? ""
        var lines = ["\(probe.workload ?? "workload"), \(ByteCount(probe.region_pages * probe.page_size)) region, tracker \(probe.tracker)\(steps)"]
        lines.append("window".padding(to: 10) + "samples".padding(to: 10) + "unique pages (median, min-max)".padding(to: 33) + "pages/s".padding(to: 12) + "MB/s")
        for window in windows {
            let range = window.samples > 1 ? " (\(window.min_pages)-\(window.max_pages))" : ""
            lines.append(
                ProbeRequest.duration(window.seconds).padding(to: 10) + "\(window.samples)".padding(to: 10)
                    + "\(window.unique_pages.formatted(decimals: window.unique_pages == window.unique_pages.rounded() ? 0 : 1))\(range)".padding(to: 33)
                    + window.pages_per_second.formatted(decimals: 1).padding(to: 12) + window.mb_per_second.formatted(decimals: 2))
        }
        let longest = probe.windows.last.map { ProbeRequest.duration($0.seconds) } ?? "-"
        lines.append("working set: \(working_set_pages) pages (\(ByteCount(working_set_bytes))) written in \(longest); \(probe.hot_pages) pages written in every \(ProbeRequest.duration(probe.windows.first?.seconds ?? 0))")
        lines.append("full copy: \(probe.data_pages) pages hold data (\(ByteCount(probe.data_pages * probe.page_size))), \(probe.zero_pages) resident pages are zero")
        let sync = probe.shared_mount_seconds.map { String(format: ", shared mount handoff syncs %.1f ms", $0 * 1000) } ?? ""
        lines.append(String(format: "fixed costs: tracker set-up and arm %.1f ms, one digest pass %.1f ms (%d threads)%@", probe.arm_seconds * 1000, probe.digest_seconds * 1000, probe.digest_threads, sync))
        if let compressed = probe.compressibility {
            lines.append(String(format: "compressibility (%d pages sampled): lz4 to %.0f %% at %.0f MB/s, zstd to %.0f %% at %.0f MB/s",
                                compressed.sampled_pages, compressed.lz4_ratio * 100, compressed.lz4_bytes_per_second / 1e6,
                                compressed.zstd_ratio * 100, compressed.zstd_bytes_per_second / 1e6))
        }
        return lines
    }
}
