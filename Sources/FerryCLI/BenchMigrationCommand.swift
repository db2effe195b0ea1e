#if canImport(Glibc)
import Glibc
#endif
import CFerryBaseline
import Foundation
import FerryMigration
import FerrySystem

/// `ferry bench migration`: a sweep of dirty rates, with total time, downtime and rounds for each, and charts.
struct BenchMigrationCommand: Command {
    static let path = ["bench", "migration"]
    static let summary = "Sweep the hotset workload's dirty rate and chart total time, downtime and rounds."
    static let discussion = """
        For each rate, a fresh pair of ferry processes migrates a hotset workload (region filled with random
        bytes) that has run for the warm-up time, with the flags a user gives by default (strict verification,
        no downtime cap) unless --verify or --downtime-target say otherwise. Reports the total time end to
        end (the destination's set-up included), downtime and its parts, rounds, and bytes sent per region byte; --svg draws downtime and total time against the dirty rate, and the
        pages left to send per round for the busiest rate that converged (the source document's figure 3.1-13).
        """
    static let options = [
        OptionSpec("region-size", "SIZE", "Region to migrate.", default: "1GiB"),
        OptionSpec("dirty-rates", "LIST", "Comma-separated steps per second (each dirties a page of the working set); max = flat out.", default: "0,1000,5000,20000,100000,max"),
        OptionSpec("modes", "LIST", "Comma-separated migration modes to sweep side by side: pre-copy, post-copy, hybrid.", default: "pre-copy"),
        OptionSpec("verify", "MODE", "strict or audit.", default: "strict"),
        OptionSpec("downtime-target", "DURATION", "A cap on the pause, as for 'ferry migrate' (none by default: the shortest pause the link allows)."),
        OptionSpec("warmup", "DURATION", "How long the workload runs before each migration.", default: "1s"),
        OptionSpec("json", "FILE", "Write the results as JSON to FILE (- for standard output)."),
        OptionSpec("svg", "FILE", "Draw the charts into FILE (an SVG image)."),
    ]

    struct Point: Encodable {
        let mode: String
        let dirty_rate: Double?
        let dirty_rate_label: String
        let verify: String
        let total_seconds: Double
        let downtime_ms: Double
        let downtime_parts: [String: Double]
        let rounds: Int
        let sent_ratio: Double
        let remaining_pages: [Int]
        let verified: Bool
        /// Post-copy: pages fetched on demand (faults the destination's workload waited on).
        let demand_pages: Int?
    }

    struct Report: Encodable {
        let region_bytes: Int
        /// One pass of the region digest over a populated region of this size, on one thread, in this process.
        let digest_seconds: Double
        /// The same pass on `digest_threads` threads (what a migration's strict verify uses).
        let digest_parallel_seconds: Double
        let digest_threads: Int
        /// A plain C read of the same region (a sum of its words), on one thread and on `digest_threads`:
        /// the floor a digest pass can reach; the ratios are digest / read pass on as many threads.
        let read_pass_seconds: Double
        let read_pass_parallel_seconds: Double
        let digest_read_ratio: Double
        let digest_parallel_read_ratio: Double
        let points: [Point]
    }

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let size = try arguments.bytes("region-size", default: 1 << 30)
        let verify = arguments.string("verify", default: "strict")
        guard ["strict", "audit"].contains(verify) else { throw UsageError("--verify \(verify): expected strict or audit") }
        let rates = arguments.string("dirty-rates", default: "0,1000,5000,20000,100000,max").split(separator: ",").map(String.init)
        for rate in rates where rate != "max" && Units.count(rate) == nil {
            throw UsageError("--dirty-rates: '\(rate)' is not a rate (write numbers like 5000 or 5k, or max)")
        }
        let target = arguments.string("downtime-target") == nil ? nil : try arguments.seconds("downtime-target", default: 0)
        let warmup = try arguments.seconds("warmup", default: 1)
        let modes = arguments.string("modes", default: "pre-copy").split(separator: ",").map(String.init)
        for mode in modes where MigrationMode(rawValue: mode) == nil {
            throw UsageError("--modes: '\(mode)' is not pre-copy, post-copy or hybrid")
        }
        #if DEBUG
        printError("note: this is a debug build; measure with 'swift run -c release ferry bench migration'")
        #endif
        printLine("Migration sweep: hotset in \(ByteCount(size)), verify \(verify), " + (target.map { "downtime cap \($0 * 1000) ms" } ?? "no downtime cap (the default)"))
        printLine("mode        dirty rate   total s   downtime ms   rounds   sent/region   verified   demand pages")
        var points: [Point] = []
        for rate in rates {
          for mode in modes {
            let pair = try LocalPair(workload: "hotset", regionSize: "\(size)", fill: "random", dirtyRate: rate)
            usleep(UInt32(warmup * 1e6))
            var settings: [String: any Sendable] = ["verify": verify, "mode": mode]
            if let target { settings["downtime_target"] = target }
            let result = try pair.migrate(settings) { _ in }
            pair.tearDown()
            guard let report = result["report"] as? [String: Any], report["outcome"] as? String == "completed",
                  let rounds = report["rounds"] as? [[String: Any]] else {
                printLine("\(mode.padding(to: 12))\(rate.padding(to: 12))failed: \(result["error"] ?? "unknown")")
                continue
            }
            func number(_ object: [String: Any], _ key: String) -> Double { object[key] as? Double ?? Double(object[key] as? Int ?? 0) }
            let postCopy = report["post_copy"] as? [String: Any]
            let point = Point(
                mode: mode, dirty_rate: rate == "max" ? nil : Units.count(rate), dirty_rate_label: rate, verify: verify,
                total_seconds: number(report, "total_seconds"),
                downtime_ms: number(report, "downtime_ms"),
                downtime_parts: (report["downtime_parts"] as? [String: Double]) ?? [:],
                rounds: rounds.count, sent_ratio: number(report, "bytes_sent") / Double(size),
                remaining_pages: rounds.filter { $0["phase"] == nil || $0["phase"] is NSNull }.map { Int(number($0, "dirty_pages")) },
                verified: report["verified"] as? Bool ?? false, demand_pages: postCopy.map { Int(number($0, "demand_pages")) })
            points.append(point)
            printLine(mode.padding(to: 12) + rate.padding(to: 12) + String(format: "%7.2f   %11.2f   %6d   %11.2f   %@   %@", point.total_seconds, point.downtime_ms,
                                                    point.rounds, point.sent_ratio, point.verified ? "yes     " : "NO      ", point.demand_pages.map { "\($0)" } ?? "–"))
          }
        }
        let threads = RegionDigest.defaultThreads
        let digest = try digestSeconds(size: size, threads: threads)
        printLine(String(format: "digest of %@ (one pass, medians of 5): one thread %.1f ms (C read pass %.1f ms, %.2fx), %d threads %.1f ms (C read pass %.1f ms, %.2fx)",
                         ByteCount(size).description, digest.one * 1000, digest.readOne * 1000, digest.one / digest.readOne,
                         threads, digest.parallel * 1000, digest.readParallel * 1000, digest.parallel / digest.readParallel))
        let report = Report(region_bytes: size, digest_seconds: digest.one, digest_parallel_seconds: digest.parallel, digest_threads: threads,
                            read_pass_seconds: digest.readOne, read_pass_parallel_seconds: digest.readParallel,
                            digest_read_ratio: digest.one / digest.readOne, digest_parallel_read_ratio: digest.parallel / digest.readParallel,
                            points: points)
        if let path = arguments.string("json") { try JSONReport.write(report, to: path) }
        if let path = arguments.string("svg") {
            try Data(Chart.sweep(points: points, regionBytes: size).utf8).write(to: URL(fileURLWithPath: path))
            printLine("charts written to \(path)")
        }
        return points.count == rates.count * modes.count && points.allSatisfy(\.verified) ? .success : .failure
    }
}

extension BenchMigrationCommand {
    /// Median seconds of one digest pass over `size` bytes of random data, on one thread and on `threads`, and of
    /// a plain C read pass over the same region on as many threads (CFerryBaseline), alternating, five of each.
    static func digestSeconds(size: Int, threads: Int) throws -> (one: Double, parallel: Double, readOne: Double, readParallel: Double) {
        let mapping = try AnonymousMapping(byteCount: size, populate: true)
        var random = SplitMix64(seed: 3)
        let words = mapping.range.baseAddress.assumingMemoryBound(to: UInt64.self)
        for index in 0..<(size / 8) { words[index] = random.next() }
        var digest: [Int: [Double]] = [:]
        var read: [Int: [Double]] = [:]
        for _ in 0..<5 {
            for count in Set([1, threads]).sorted() {
                let seconds = CFerryBaseline_read_pass_seconds(mapping.range.baseAddress, size, Int32(count))
                guard seconds >= 0 else { throw CommandFailure(status: .failure, message: "the C read pass on \(count) threads failed: \(Errno.current)") }
                read[count, default: []].append(seconds)
                let start = ContinuousClock.now
                _ = RegionDigest.compute(mapping.range, threads: count)
                digest[count, default: []].append((ContinuousClock.now - start).secondsValue)
            }
        }
        return (Statistics.median(digest[1]!), Statistics.median(digest[threads]!), Statistics.median(read[1]!), Statistics.median(read[threads]!))
    }
}

/// Small SVG line charts, written by hand (no dependencies).
enum Chart {
    struct Series {
        let name: String
        let color: String
        let points: [(x: Double, y: Double)]
    }

    /// One panel: axes with ticks, a line per series, a legend.
    static func panel(title: String, xLabel: String, yLabel: String, xTicks: [(Double, String)], series: [Series],
                      origin: (x: Double, y: Double), size: (width: Double, height: Double)) -> String {
        let all = series.flatMap(\.points)
        let xMax = max(all.map(\.x).max() ?? 1, xTicks.map(\.0).max() ?? 1)
        let yMax = niceCeiling(all.map(\.y).max() ?? 1)
        let left = origin.x + 60, bottom = origin.y + size.height - 40, width = size.width - 80, height = size.height - 70
        func px(_ x: Double) -> Double { left + x / max(xMax, 1e-9) * width }
        func py(_ y: Double) -> Double { bottom - y / max(yMax, 1e-9) * height }
        var svg = "<text x=\"\(left)\" y=\"\(origin.y + 18)\" font-size=\"14\" font-weight=\"bold\">\(title)</text>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(bottom)\" x2=\"\(left + width)\" y2=\"\(bottom)\" stroke=\"black\"/>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(bottom)\" x2=\"\(left)\" y2=\"\(bottom - height)\" stroke=\"black\"/>\n"
        for (x, label) in xTicks {
            svg += "<line x1=\"\(px(x))\" y1=\"\(bottom)\" x2=\"\(px(x))\" y2=\"\(bottom + 4)\" stroke=\"black\"/>"
            svg += "<text x=\"\(px(x))\" y=\"\(bottom + 16)\" font-size=\"10\" text-anchor=\"middle\">\(label)</text>\n"
        }
        for step in 0...4 {
            let y = yMax * Double(step) / 4
            svg += "<line x1=\"\(left - 4)\" y1=\"\(py(y))\" x2=\"\(left + width)\" y2=\"\(py(y))\" stroke=\"#ddd\"/>"
            svg += "<text x=\"\(left - 6)\" y=\"\(py(y) + 4)\" font-size=\"10\" text-anchor=\"end\">\(format(y))</text>\n"
        }
        svg += "<text x=\"\(left + width / 2)\" y=\"\(bottom + 32)\" font-size=\"11\" text-anchor=\"middle\">\(xLabel)</text>\n"
        svg += "<text x=\"\(origin.x + 14)\" y=\"\(bottom - height / 2)\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 \(origin.x + 14) \(bottom - height / 2))\">\(yLabel)</text>\n"
        for (index, line) in series.enumerated() {
            let path = line.points.map { "\(px($0.x)),\(py($0.y))" }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"2\" points=\"\(path)\"/>\n"
            for point in line.points { svg += "<circle cx=\"\(px(point.x))\" cy=\"\(py(point.y))\" r=\"3\" fill=\"\(line.color)\"/>" }
            svg += "\n<text x=\"\(left + width - 150)\" y=\"\(origin.y + 36 + Double(index) * 14)\" font-size=\"11\" fill=\"\(line.color)\">\(line.name)</text>\n"
        }
        return svg
    }

    /// The sweep's two panels side by side (downtime and total time against the rate; pages left per round).
    static func sweep(points: [BenchMigrationCommand.Point], regionBytes: Int) -> String {
        // Rates on an even axis by position, labelled with their values (they span orders of magnitude).
        var labels: [String] = []
        for point in points where !labels.contains(point.dirty_rate_label) { labels.append(point.dirty_rate_label) }
        let ticks = labels.enumerated().map { (Double($0.offset), $0.element) }
        let modes = points.reduce(into: [String]()) { if !$0.contains($1.mode) { $0.append($1.mode) } }
        let colors = ["pre-copy": "#1f77b4", "post-copy": "#d62728", "hybrid": "#9467bd"]
        func series(_ value: (BenchMigrationCommand.Point) -> Double, _ what: String) -> [Series] {
            modes.map { mode in
                Series(name: "\(what), \(mode)", color: colors[mode] ?? "#7f7f7f",
                       points: points.filter { $0.mode == mode }.map { (Double(labels.firstIndex(of: $0.dirty_rate_label) ?? 0), value($0)) })
            }
        }
        let downtime = series(\.downtime_ms, "downtime (ms)")
        let total = series({ $0.total_seconds * 1000 }, "total time (ms)")
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1500\" height=\"360\" font-family=\"sans-serif\">\n<rect width=\"1500\" height=\"360\" fill=\"white\"/>\n"
        svg += panel(title: "Total time, \(ByteCount(regionBytes)), end to end", xLabel: "dirty rate (steps/s)", yLabel: "milliseconds",
                     xTicks: ticks, series: total, origin: (0, 0), size: (500, 360))
        svg += panel(title: "Downtime (\(points.first?.verify ?? "") verification)", xLabel: "dirty rate (steps/s)", yLabel: "milliseconds",
                     xTicks: ticks, series: downtime, origin: (500, 0), size: (500, 360))
        if let busiest = points.last(where: { $0.mode == "pre-copy" && $0.rounds > 2 }) ?? points.last {
            let pages = Series(name: "pages to send (rate \(busiest.dirty_rate_label))", color: "#2ca02c",
                               points: busiest.remaining_pages.enumerated().map { (Double($0.offset), Double($0.element)) })
            let roundTicks = busiest.remaining_pages.indices.map { (Double($0), $0 == 0 ? "full" : "\($0)") }
            svg += panel(title: "Pages to send per round (figure 3.1-13)", xLabel: "round", yLabel: "pages", xTicks: roundTicks,
                         series: [pages], origin: (1000, 0), size: (500, 360))
        }
        return svg + "</svg>\n"
    }

    static func niceCeiling(_ value: Double) -> Double {
        guard value > 0 else { return 1 }
        let magnitude = pow(10, floor(log10(value)))
        for factor in [1.0, 2, 2.5, 5, 10] where factor * magnitude >= value { return factor * magnitude }
        return 10 * magnitude
    }

    static func format(_ value: Double) -> String {
        let (scaled, suffix) = value >= 1000 ? (value / 1000, "k") : (value, "")
        return (scaled == scaled.rounded() ? String(format: "%.0f", scaled) : String(format: "%.1f", scaled)) + suffix
    }
}
