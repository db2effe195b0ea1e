#if canImport(Glibc)
import Glibc
#endif
import CFerryBaseline
import FerrySystem
import FerryTracking

/// `ferry bench tracking`: the cost of each write-tracking backend against plain C in the same run.
struct BenchTrackingCommand: Command {
    static let path = ["bench", "tracking"]
    static let summary = "Measure each write-tracking backend against a plain C loop in the same run."
    static let discussion = """
        For each backend: the median cost of the first write to a tracked page, written by Swift through
        Ferry's tracker (fault_ns) and by a plain C loop that sets up the same mechanism itself
        (baseline_ns), their ratio; the untracked write cost; and the time to collect and re-protect a
        region with a quarter of its pages dirty (every 4th page), scaled to 1 GiB, in steady state (the
        second collect of the same pattern). Build it in release
        mode: swift run -c release ferry bench tracking
        """
    static let options = [
        OptionSpec("region-size", "SIZE", "Region for the collect measurement.", default: "1GiB"),
        OptionSpec("fault-pages", "N", "Pages written per fault measurement.", default: "4096"),
        OptionSpec("runs", "N", "Repetitions; medians are reported.", default: "5"),
        OptionSpec("tracker", "NAME", "Measure only this backend (uffd-async, uffd-sync, mprotect).", default: "all"),
        OptionSpec("json", "FILE", "Also write the results as JSON to FILE (- for standard output)."),
    ]

    struct BackendResult: Encodable {
        let name: String
        let available: Bool
        let reason: String
        let fault_ns: Double?
        let baseline_ns: Double?
        let ratio: Double?
        let collect_ms_per_gib: Double?
        let collect_baseline_ms_per_gib: Double?
        let collect_pages_reported: Int?
        let collect_fallbacks: Int?
    }

    struct Report: Encodable {
        let untracked_ns: Double
        let untracked_baseline_ns: Double
        let region_bytes: Int
        let fault_pages: Int
        let runs: Int
        let kernel: String
        let backends: [BackendResult]
    }

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let regionBytes = try arguments.bytes("region-size", default: 1 << 30)
        let faultPages = try arguments.integer("fault-pages", default: 4096, range: 64...(1 << 22))
        let runs = try arguments.integer("runs", default: 5, range: 1...1000)
        let backends: [TrackerBackend]
        switch arguments.string("tracker", default: "all") {
        case "all": backends = TrackerBackend.preferred
        case let name:
            guard let backend = TrackerBackend(rawValue: name) else {
                throw UsageError("--tracker \(name): expected uffd-async, uffd-sync, mprotect or all")
            }
            backends = [backend]
        }
        #if DEBUG
        printError("note: this is a debug build; measure with 'swift run -c release ferry bench tracking'")
        #endif
        let pageSize = Kernel.pageSize
        let regionPages = regionBytes / pageSize
        printLine("Tracking benchmark: \(runs) runs, \(faultPages) pages per fault measurement, collect over \(ByteCount(regionBytes)) (Linux \(Kernel.release))")

        var untracked: [Double] = []
        var untrackedBaseline: [Double] = []
        for _ in 0..<runs {
            untracked.append(try swiftFirstWriteNanoseconds(backend: nil, pages: faultPages))
            untrackedBaseline.append(CFerryBaseline_first_write_ns(CFerryBaselineUntracked, faultPages))
        }

        var results: [BackendResult] = []
        for backend in backends {
            let probe = backend.probe()
            guard probe.isAvailable else {
                results.append(BackendResult(
                    name: backend.rawValue, available: false, reason: probe.reason, fault_ns: nil, baseline_ns: nil,
                    ratio: nil, collect_ms_per_gib: nil, collect_baseline_ms_per_gib: nil,
                    collect_pages_reported: nil, collect_fallbacks: nil))
                printLine("  \(backend): not available (\(probe.reason))")
                continue
            }
            var ours: [Double] = []
            var baseline: [Double] = []
            var collects: [Double] = []
            var collectBaselines: [Double] = []
            var reported = 0
            var fallbacks = 0
            for run in 1...runs {
                // Interleaved, so drift in the machine's load hits both sides alike.
                ours.append(try swiftFirstWriteNanoseconds(backend: backend, pages: faultPages))
                let c = CFerryBaseline_first_write_ns(mechanism(backend), faultPages)
                guard c >= 0 else {
                    throw CommandFailure(status: .unavailable, message: "the C baseline for \(backend) failed: \(Errno.current)")
                }
                baseline.append(c)
                let collect = try collectMilliseconds(backend: backend, regionPages: regionPages)
                collects.append(collect.milliseconds * Double(1 << 30) / Double(regionBytes))
                reported = collect.pagesReported
                fallbacks = collect.fallbacks
                if backend == .uffdAsync {
                    let scan = CFerryBaseline_pagemap_scan_ms(regionPages, 4)
                    if scan >= 0 { collectBaselines.append(scan * Double(1 << 30) / Double(regionBytes)) }
                }
                printError("  \(backend) run \(run)/\(runs): fault \(ours.last!.formatted(decimals: 0)) ns (C \(c.formatted(decimals: 0)) ns), collect \(collects.last!.formatted(decimals: 2)) ms/GiB")
            }
            let fault = Statistics.median(ours)
            let base = Statistics.median(baseline)
            results.append(BackendResult(
                name: backend.rawValue, available: true, reason: probe.reason, fault_ns: fault, baseline_ns: base,
                ratio: fault / base, collect_ms_per_gib: Statistics.median(collects),
                collect_baseline_ms_per_gib: collectBaselines.isEmpty ? nil : Statistics.median(collectBaselines),
                collect_pages_reported: reported, collect_fallbacks: fallbacks))
        }

        let report = Report(
            untracked_ns: Statistics.median(untracked), untracked_baseline_ns: Statistics.median(untrackedBaseline),
            region_bytes: regionBytes, fault_pages: faultPages, runs: runs, kernel: Kernel.release, backends: results)
        printLine(table(report))
        if let path = arguments.string("json") { try JSONReport.write(report, to: path) }
        return .success
    }

    static func table(_ report: Report) -> String {
        var lines = [
            "",
            "untracked write: \(report.untracked_ns.formatted(decimals: 1)) ns (C loop: \(report.untracked_baseline_ns.formatted(decimals: 1)) ns)",
            "",
            "backend      first write   C baseline   ratio   collect+re-protect, 1/4 dirty   C PAGEMAP_SCAN",
        ]
        for result in report.backends {
            guard result.available, let fault = result.fault_ns, let base = result.baseline_ns, let ratio = result.ratio,
                  let collect = result.collect_ms_per_gib else {
                lines.append(result.name.padding(to: 13) + "not available: \(result.reason)")
                continue
            }
            let scan = result.collect_baseline_ms_per_gib.map { "\($0.formatted(decimals: 2)) ms/GiB" } ?? "-"
            var line = result.name.padding(to: 13)
            line += "\(fault.formatted(decimals: 0)) ns".padding(to: 14)
            line += "\(base.formatted(decimals: 0)) ns".padding(to: 13)
            line += ratio.formatted(decimals: 2).padding(to: 8)
            var collectText = "\(collect.formatted(decimals: 2)) ms/GiB"
            if let fallbacks = result.collect_fallbacks, fallbacks > 0 { collectText += " (whole-range fallback)" }
            line += collectText.padding(to: 32) + scan
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    static func mechanism(_ backend: TrackerBackend) -> CFerryBaselineMechanism {
        switch backend {
        case .uffdAsync: CFerryBaselineUffdAsync
        case .uffdSync: CFerryBaselineUffdSync
        case .mprotect: CFerryBaselineMprotect
        }
    }

    /// Maps `pages` populated pages, arms `backend` over them (none: untracked), and times a Swift loop
    /// writing one byte per page. Returns nanoseconds per write.
    static func swiftFirstWriteNanoseconds(backend: TrackerBackend?, pages: Int) throws -> Double {
        let mapping = try AnonymousMapping(byteCount: pages * Kernel.pageSize)
        let range = mapping.range
        memset(range.baseAddress, 1, range.byteCount)
        // No split budget: every write must take the fault being measured, as in the C loop.
        let tracker = try backend.map { try WriteTracker(range: range, backend: $0, mprotectSplitBudget: .max) }
        defer { tracker?.stop() }
        try tracker?.arm()
        let base = range.baseAddress
        let pageSize = range.pageSize
        let start = ContinuousClock.now
        for page in 0..<pages { base.storeBytes(of: 2, toByteOffset: page &* pageSize, as: UInt8.self) }
        let elapsed = ContinuousClock.now - start
        return elapsed.nanosecondsValue / Double(pages)
    }

    /// Times one collect over a region of `regionPages` with every 4th page written since arming.
    static func collectMilliseconds(backend: TrackerBackend, regionPages: Int) throws -> (milliseconds: Double, pagesReported: Int, fallbacks: Int) {
        let mapping = try AnonymousMapping(byteCount: regionPages * Kernel.pageSize)
        let range = mapping.range
        memset(range.baseAddress, 1, range.byteCount)
        let tracker = try WriteTracker(range: range, backend: backend)
        defer { tracker.stop() }
        try tracker.arm()
        // Steady state, as in a migration's rounds: one collect first (it sizes the buffers, whose first
        // touch is expensive on this kind of VM), then the same pages written again and collected, timed.
        for pass in 0..<2 {
            for page in stride(from: 0, to: regionPages, by: 4) {
                range.baseAddress.storeBytes(of: 3, toByteOffset: page * range.pageSize, as: UInt8.self)
            }
            if pass == 0 { _ = try tracker.collect() }
        }
        let start = ContinuousClock.now
        let dirty = try tracker.collect()
        let elapsed = ContinuousClock.now - start
        return (elapsed.nanosecondsValue / 1e6, dirty.pageCount, tracker.statistics.fallbacks)
    }
}

