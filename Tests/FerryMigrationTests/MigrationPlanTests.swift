import FerryMigration
import FerrySystem
import FerryTracking
import Foundation
import Synchronization
import Testing

/// `MigrationPlan`'s arithmetic without processes: the full copy is the document's bytes × 8 ÷ rate with the
/// wire's framing, the rounds follow the probe's curve, and the stop rule is the engine's.
@Suite struct MigrationPlanTests {
    static let pageSize = 4096
    /// A region of `pages` pages, all holding data, in full frames.
    static func region(pages: Int, stepsPerSecond: Double? = nil) -> MigrationPlan.Region {
        MigrationPlan.Region(
            page_size: pageSize, pages: pages, data_pages: pages, data_frames: (pages + 1023) / 1024, zero_frames: 0,
            steps_per_second: stepsPerSecond)
    }
    static let costs = MigrationPlan.Costs(start: 0.02, round: 0.001, verify: 0.01, audit: 0.004, pause: 0.001, handoff: 0.005, prepare: 0.002)
    static let idle = DirtyCurve(points: [.init(seconds: 0.1, pages: 0), .init(seconds: 1, pages: 0)], limit: 4096)
    /// A workload writing `rate` pages per second, never the same page twice (no working set): pages ∝ window.
    static func streaming(_ rate: Double, limit: Double = 1e9) -> DirtyCurve {
        DirtyCurve(points: [.init(seconds: 0.1, pages: rate * 0.1), .init(seconds: 1, pages: rate), .init(seconds: 10, pages: rate * 10)], limit: limit)
    }

    @Test func anIdleRegionIsOneFullCopyAtTheLinkRateWithItsFraming() {
        let link = MigrationPlan.Link(bytes_per_second: 12.5e6)  // 100mbit
        let plan = MigrationPlan.forecast(region: Self.region(pages: 4096), curve: Self.idle, link: link, settings: .init(), costs: Self.costs)
        // 4096 pages in 4 frames of 17 bytes, the round's end (34 bytes), 65 sealed records of 20 bytes and the
        // 4 large frames' headers sealed apart.
        let plain = 4096.0 * 4096 + 4 * 17 + 34
        let sealed = plain + 20 * (65 + 4)
        #expect(plan.full_copy_bytes == sealed)
        #expect(abs(plan.full_copy_seconds - ((sealed - link.burstBytes) / 12.5e6 + 0.001)) < 1e-9)
        #expect(plan.rounds.count == 2 && plan.rounds[1].final && plan.rounds[1].pages == 0, "\(plan.rounds)")
        #expect(plan.converges && plan.stall == nil && plan.outcome == "completed")
        // The pause: safe point, an empty last round (its end in one sealed record), verification, handoff.
        let lastSend = (34.0 + 20) / 12.5e6 + 0.001
        #expect(abs(plan.downtime_ms - 1000 * (0.001 + lastSend + 0.01 + 0.005)) < 1e-9)
        #expect(abs(plan.total_seconds - (0.02 + plan.full_copy_seconds + 0.002 + plan.downtime_ms / 1000)) < 1e-9)
        // Audit: no verification in the pause, the source's digest after it.
        var audit = MigrationPlan.Settings()
        audit.verify = "audit"
        let audited = MigrationPlan.forecast(region: Self.region(pages: 4096), curve: Self.idle, link: link, settings: audit, costs: Self.costs)
        #expect(abs(audited.downtime_ms - (plan.downtime_ms - 10)) < 1e-9)
        #expect(abs(audited.total_seconds - (plan.total_seconds - 0.01 + 0.004)) < 1e-9)
        // Unsealed: no record overhead.
        let plainLink = MigrationPlan.Link(bytes_per_second: 12.5e6, sealed: false)
        #expect(MigrationPlan.forecast(region: Self.region(pages: 4096), curve: Self.idle, link: plainLink, settings: .init(), costs: Self.costs).full_copy_bytes == plain)
    }

    /// The source document: 1 GB over 1 Gbit/s is 8 s "in theory, more with protocol overhead"; 80 s at 100 Mbit/s.
    @Test func aGigabyteTakesEightSecondsAtOneGigabitAndEightyAtOneHundredMegabits() {
        let pages = 1_000_000_000 / Self.pageSize
        for (rate, theory) in [(125e6, 8.0), (12.5e6, 80.0)] {
            let plan = MigrationPlan.forecast(
                region: Self.region(pages: pages), curve: Self.idle, link: .init(bytes_per_second: rate), settings: .init(), costs: Self.costs)
            let ratio = plan.full_copy_seconds / theory
            #expect(ratio > 0.995 && ratio < 1.005, "full copy \(plan.full_copy_seconds) s against \(theory) s")
            // On a link that counts Ethernet frames (MTU 1500), the stream gets 1448 of every 1514 bytes: 1.046.
            let framed = MigrationPlan.forecast(
                region: Self.region(pages: pages), curve: Self.idle, link: .init(bytes_per_second: rate, mtu: 1500), settings: .init(), costs: Self.costs)
            #expect(abs(framed.full_copy_seconds / plan.full_copy_seconds - 1514.0 / 1448) < 0.001)
        }
    }

    @Test func theCurveFollowsAWorkingSetExactlyBetweenAndBeyondItsWindows() {
        // W pages written at random, s × W per second: W (1 − e^(−s w)), plus 2 pages every step writes.
        let workingSet = 4093.0
        let perPage = 2000.0 / workingSet
        func law(_ window: Double) -> Double { 2 + workingSet * -expm1(-perPage * window) }
        let curve = DirtyCurve(
            points: [0.1, 1, 10].map { .init(seconds: $0, pages: law($0)) }, limit: 4096, hotPages: 2, stepsPerSecond: 2000)
        for window in [0.003, 0.03, 0.1, 0.35, 1, 1.345, 3, 7, 10, 25] {
            #expect(abs(curve.pages(in: window) - law(window)) < 1e-6 * law(window), "\(window) s: \(curve.pages(in: window)) against \(law(window))")
        }
        // A straight line between windows a decade apart would be 15 % short at 1.345 s.
        let straight = law(1) + (law(10) - law(1)) * 0.345 / 9
        #expect(straight < 0.9 * curve.pages(in: 1.345))
        // Hot pages count once per window, but not in a window shorter than a step.
        #expect(curve.pages(in: 0.0001) < 1)
        #expect(curve.pages(in: 0) == 0)
    }

    @Test func aCurveThatIsNotConcaveIsInterpolatedStraightAndNeverPassesTheRegion() {
        // Faster over longer windows (a workload speeding up): straight segments, rate kept below the first window.
        let curve = DirtyCurve(points: [.init(seconds: 1, pages: 100), .init(seconds: 2, pages: 300), .init(seconds: 4, pages: 900)], limit: 1000)
        #expect(curve.pages(in: 0.5) == 50)
        #expect(curve.pages(in: 1.5) == 200)
        #expect(curve.pages(in: 3) == 600)
        #expect(abs(curve.pages(in: 4.1) - 930) < 1e-9)
        #expect(curve.pages(in: 60) == 1000, "at most the region")
        // Noisy medians that dip are made non-decreasing.
        let dipping = DirtyCurve(points: [.init(seconds: 0.1, pages: 200), .init(seconds: 1, pages: 150)], limit: 1000)
        #expect(dipping.points.map(\.pages) == [200, 200])
        var previous = 0.0
        for window in stride(from: 0.01, through: 20, by: 0.01) {
            let pages = dipping.pages(in: window)
            #expect(pages >= previous)
            previous = pages
        }
    }

    /// The engine's rule: another round while it shrinks the predicted pause by a quarter. A workload dirtying
    /// half as fast as the link drains converges round by round, each round half the previous.
    @Test func aWorkloadSlowerThanTheLinkConvergesRoundByRound() {
        let rate = 12.5e6
        let pagesPerSecond = 0.5 * rate / Double(Self.pageSize)
        let plan = MigrationPlan.forecast(
            region: Self.region(pages: 16384), curve: Self.streaming(pagesPerSecond), link: .init(bytes_per_second: rate), settings: .init(), costs: Self.costs)
        #expect(plan.converges && plan.stall == nil)
        let dirty = plan.rounds.filter { $0.round > 0 && !$0.final }
        #expect(dirty.count >= 5, "\(plan.rounds.map(\.pages))")
        for (a, b) in zip(dirty, dirty.dropFirst()) {
            // Each round sends what the previous one's seconds let the workload write: about half, until a round's
            // own millisecond weighs.
            #expect(abs(b.pages - pagesPerSecond * a.seconds) < 1e-6 * b.pages)
            #expect(b.predicted_pause_ms < a.predicted_pause_ms)
            if a.pages > 100 { #expect(b.pages < 0.55 * a.pages, "\(a.pages) then \(b.pages)") }
        }
        #expect(plan.downtime_ms < 30, "\(plan.downtime_ms) ms")
        #expect(plan.bytes_sent > 1.9 * 16384 * 4096 && plan.bytes_sent < 2.1 * 16384 * 4096, "about twice the region: 1 + 1/2 + 1/4 + …")
        #expect(!plan.isMarginal(margin: 0.2) && plan.isMarginal(), "each round leaves half its pages dirty: \(plan.closest_ratio ?? 0)")

        // At 0.7 of the link it still converges, but with little to spare: a dip of the link by 7 % in a round whose
        // pause is over 50 ms stops the engine there, and the forecast says so (at 0.5: 33 %, marginal too by
        // the default 40 %, not by 20 %).
        let close = MigrationPlan.forecast(
            region: Self.region(pages: 16384), curve: Self.streaming(0.7 * rate / Double(Self.pageSize)), link: .init(bytes_per_second: rate),
            settings: .init(), costs: Self.costs)
        #expect(close.converges && close.isMarginal(), "\(close.closest_ratio ?? 0), \(close.rounds_over_cap) rounds over the cap")
        // 0.7 × the framing, in the rounds whose pause is still over 50 ms.
        #expect(abs((close.closest_ratio ?? 0) - 0.7 * 4113.0 / 4096) < 0.01, "\(close.closest_ratio ?? 0)")
    }

    /// Dirtying faster than the link: no round shrinks anything; without a target it stops at once and calls
    /// it a stall (force); with a target, abort gives up and throttle slows the workload until it fits.
    @Test func aWorkloadFasterThanTheLinkDoesNotConvergeAndEachPolicyDoesWhatItSays() {
        let rate = 12.5e6
        let workload = Self.region(pages: 4096, stepsPerSecond: 20000)
        // Every page of 16 MiB dirty within a fifth of a second.
        let curve = DirtyCurve(points: [.init(seconds: 0.1, pages: 1900), .init(seconds: 1, pages: 4096), .init(seconds: 10, pages: 4096)], limit: 4096)
        let link = MigrationPlan.Link(bytes_per_second: rate)
        let forced = MigrationPlan.forecast(region: workload, curve: curve, link: link, settings: .init(), costs: Self.costs)
        #expect(!forced.converges && forced.stall == "force" && forced.outcome == "completed")
        #expect(forced.rounds.count == 2, "no dirty round helps: \(forced.rounds.map(\.pages))")
        #expect(forced.downtime_ms > 1300, "the whole region again in the pause: \(forced.downtime_ms) ms")

        let capped = MigrationPlan.Settings(downtimeTarget: 0.05, onStall: .abort)
        let aborted = MigrationPlan.forecast(region: workload, curve: curve, link: link, settings: capped, costs: Self.costs)
        #expect(aborted.outcome == "aborted" && aborted.stall == "abort" && !aborted.converges)
        #expect(aborted.reason?.contains("pages still dirty after") == true, "\(aborted.reason ?? "")")

        let throttling = MigrationPlan.Settings(downtimeTarget: 0.05, onStall: .throttle)
        let throttled = MigrationPlan.forecast(region: workload, curve: curve, link: link, settings: throttling, costs: Self.costs)
        #expect(throttled.outcome == "completed" && throttled.stall == "throttle" && !throttled.converges)
        #expect((throttled.throttle_percent ?? 0) > 90, "\(throttled.throttle_percent ?? 0) %")
        #expect(throttled.predicted_pause_ms <= 50, "within the cap: \(throttled.predicted_pause_ms) ms")
        #expect(throttled.rounds.contains { $0.pace_fraction != nil })

        // The recommendation: throttling this much is more than the 50 % accepted, so post-copy.
        let advice = MigrationPlan.recommend(precopy: forced, throttled: throttled, maximumThrottlePercent: 50)
        #expect(advice.mode == "post-copy" && advice.reason.contains("not forecast"), "\(advice)")
        #expect(MigrationPlan.recommend(precopy: forced, throttled: throttled, maximumThrottlePercent: 100).mode == "pre-copy --on-stall throttle")
        let converging = MigrationPlan.forecast(region: workload, curve: Self.idle, link: link, settings: .init(), costs: Self.costs)
        #expect(MigrationPlan.recommend(precopy: converging, throttled: throttled, maximumThrottlePercent: 50).mode == "pre-copy")
    }

    /// Between a quarter less per round and not shrinking at all: the engine stops after the full copy, since one
    /// more round would not shorten the pause by a quarter; over 50 ms without a target, that is a stall too.
    @Test func aWorkloadAtFourFifthsOfTheLinkStopsAfterTheFullCopy() {
        let rate = 12.5e6
        let plan = MigrationPlan.forecast(
            region: Self.region(pages: 16384), curve: Self.streaming(0.8 * rate / Double(Self.pageSize)), link: .init(bytes_per_second: rate),
            settings: .init(), costs: Self.costs)
        #expect(plan.rounds.count == 2 && plan.stall == "force" && !plan.converges, "\(plan.rounds.map(\.pages))")
        // With a loose cap the same pause is within it: converged, no stall.
        let loose = MigrationPlan.forecast(
            region: Self.region(pages: 16384), curve: Self.streaming(0.8 * rate / Double(Self.pageSize)), link: .init(bytes_per_second: rate),
            settings: .init(downtimeTarget: 10), costs: Self.costs)
        #expect(loose.converges && loose.stall == nil)
    }
}

/// `DirtyRateProbe.measure` on a real mapping with a real tracker and a writer thread: exact unique pages.
@Suite struct DirtyRateProbeTests {
    /// Writes pages of a range from a thread of its own until stopped.
    final class PageWriter: Sendable {
        let stopped = Atomic<Bool>(false)
        let writes = Atomic<Int>(0)
        let done = Atomic<Bool>(false)

        /// Writes `pages` in turn, sleeping `pause` µs after each, after waiting `delay` µs; once through the list if
        /// `once`, else round and round.
        init(range: MemoryRange, pages: [Int], pause: UInt32, once: Bool, delay: UInt32 = 0) {
            let thread = Thread { [self] in
                usleep(delay)
                var index = 0
                while !stopped.load(ordering: .relaxed) {
                    if once && index == pages.count { break }
                    let page = pages[index % pages.count]
                    (range.baseAddress + page * range.pageSize).storeBytes(of: UInt64(index), as: UInt64.self)
                    writes.add(1, ordering: .relaxed)
                    index += 1
                    usleep(pause)
                }
                done.store(true, ordering: .releasing)
            }
            thread.start()
        }

        func stop() {
            stopped.store(true, ordering: .relaxed)
            while !done.load(ordering: .acquiring) { usleep(1000) }
        }
    }

    static func withMapping<R>(pages: Int, _ body: (MemoryRange) throws -> R) throws -> R {
        let mapping = try AnonymousMapping(byteCount: pages * Kernel.pageSize)
        let range = mapping.release()
        defer { munmap(range.baseAddress, range.byteCount) }
        return try body(range)
    }

    /// 40 pages rewritten every few milliseconds: every window, short or long, holds exactly those 40 pages once,
    /// so the rate per second falls with the window, and the 40 are hot.
    @Test func aRewrittenWorkingSetCountsOncePerWindow() throws {
        try Self.withMapping(pages: 256) { range in
            let writer = PageWriter(range: range, pages: Array(0..<40), pause: 100, once: false)
            defer { writer.stop() }
            usleep(20_000)
            let report = try DirtyRateProbe.measure(range, windows: [0.4, 0.1])
            #expect(report.windows.map(\.seconds) == [0.1, 0.4], "sorted")
            let short = report.windows[0].unique_pages
            let long = report.windows[1].unique_pages
            #expect(short.count == 4 && long.count == 1)
            #expect(short.allSatisfy { $0 <= 40 } && long == [40], "short \(short), long \(long)")
            #expect(short.filter { $0 == 40 }.count >= 3, "a window misses a page only if the writer stalled for most of it: \(short)")
            #expect(report.exact && report.region_pages == 256 && report.page_size == Kernel.pageSize)
            #expect(report.hot_pages <= 40 && report.hot_pages >= (short.allSatisfy { $0 == 40 } ? 40 : 0))
            // Written pages hold data now (the writer stores non-zero counters, except its very first write).
            #expect(report.data_pages >= 39 && report.data_pages <= 40, "\(report.data_pages)")
        }
    }

    /// Pages written once each, in order: each window's pages are new ones, so a long window holds exactly the
    /// pages of the short windows inside it (the union of the collects, nothing missed, nothing twice), and all
    /// windows together hold every page written.
    @Test func nestedWindowsAreTheUnionOfTheShorterOnes() throws {
        try Self.withMapping(pages: 512) { range in
            // The writer starts once the probe has armed its tracker (well within 150 ms) and ends long before it does.
            let pages = Array(100..<400)
            let writer = PageWriter(range: range, pages: pages, pause: 500, once: true, delay: 150_000)
            defer { writer.stop() }
            let report = try DirtyRateProbe.measure(range, windows: [0.05, 0.2, 0.8])
            writer.stop()
            let written = writer.writes.load(ordering: .relaxed)
            let (short, middle, long) = (report.windows[0].unique_pages, report.windows[1].unique_pages, report.windows[2].unique_pages)
            #expect(written == 300)
            #expect(short.count == 16 && middle.count == 4 && long.count == 1)
            for (index, pages) in middle.enumerated() {
                #expect(pages == short[(4 * index)..<(4 * index + 4)].reduce(0, +), "window \(index): \(pages) against \(short)")
            }
            #expect(long[0] == middle.reduce(0, +))
            // Every page written, once.
            #expect(long[0] == written, "probe \(long[0]), written \(written)")
            #expect(report.hot_pages == 0)
        }
    }

    @Test func windowsAreChecked() {
        for bad in [[], [0.001], [700.0], [0.1, 0.1], Array(repeating: 1.0, count: 9).enumerated().map { Double($0.offset + 1) }, [0.01, 300]] {
            if case .success = DirtyRateProbe.checked(bad) { Issue.record("\(bad) accepted") }
        }
        if case .success(let sorted) = DirtyRateProbe.checked([10, 0.1, 1]) { #expect(sorted == [0.1, 1, 10]) } else { Issue.record("default refused") }
    }
}
