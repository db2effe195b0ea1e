import Foundation
import FerryWire

/// Unique dirty pages against window length, as a probe measured them (`DirtyRateProbe`): the pages a round
/// that lasted `window` seconds leaves for the next one to send.
///
/// The expected number of distinct pages a stationary workload writes in a window grows ever more slowly with
/// the window (each new page is a page not yet written), so the curve is concave, and a straight line between
/// two windows a decade apart falls well under it. Between two measured windows the curve is the working-set
/// law through both points, `W × (1 − e^(−s × w))` (W pages written at random at a rate of s × W per second:
/// exactly how `hotset` writes, and a fair shape for any workload whose rate falls with the window); where two
/// points are not concave (a rate that grows with the window) it is the straight line between them. Below the
/// shortest window the first segment's law continues down to nothing; above the longest, the last segment's.
/// Pages written in every window of the shortest length (`hotPages`: a header, a counter) are counted apart,
/// once per window whatever its length. Never more than `limit` (the region's pages).
public struct DirtyCurve: Codable, Sendable, Hashable {
    public struct Point: Codable, Sendable, Hashable {
        public var seconds: Double
        public var pages: Double
        public init(seconds: Double, pages: Double) {
            self.seconds = seconds
            self.pages = pages
        }
    }

    /// Ascending in window and in pages (a longer window holds at least the pages of a shorter one).
    public let points: [Point]
    public let limit: Double
    /// Pages written in every window (by every step, or nearly): they count once per window, however short.
    public let hotPages: Double
    /// The workload's steps per second, if known: in a window shorter than a step, the hot pages are written only
    /// with the probability of a step falling in it.
    public let stepsPerSecond: Double?

    /// Points with a positive window; their pages are made non-decreasing (medians of noisy samples may dip).
    public init(points: [Point], limit: Double, hotPages: Double = 0, stepsPerSecond: Double? = nil) {
        var sorted = points.filter { $0.seconds > 0 && $0.pages >= 0 }.sorted { $0.seconds < $1.seconds }
        for index in sorted.indices.dropFirst() { sorted[index].pages = Swift.max(sorted[index].pages, sorted[index - 1].pages) }
        self.points = sorted
        self.limit = limit
        self.hotPages = Swift.max(0, Swift.min(hotPages, sorted.first?.pages ?? 0))
        self.stepsPerSecond = stepsPerSecond
    }

    /// Distinct pages written in a window of `window` seconds.
    public func pages(in window: Double) -> Double {
        guard window > 0, !points.isEmpty else { return 0 }
        let hot = hotPages * Swift.min(1, stepsPerSecond.map { window * $0 } ?? 1)
        return Swift.min(limit, hot + coldPages(in: window))
    }

    /// The pages besides the hot ones: the working-set law (or a straight line) through the segment around `window`.
    func coldPages(in window: Double) -> Double {
        let cold = points.map { Point(seconds: $0.seconds, pages: Swift.max(0, $0.pages - hotPages)) }
        guard cold.count >= 2 else { return cold[0].pages * window / cold[0].seconds }
        // The segment whose law applies: the one holding the window, the first below it, the last above it.
        var index = 0
        while index < cold.count - 2 && window > cold[index + 1].seconds { index += 1 }
        let (a, b) = (cold[index], cold[index + 1])
        if let law = Self.workingSetLaw(a, b) { return law.pages * -expm1(-law.perPage * window) }
        // Not concave: straight lines (from nothing below the first window, along the segment beyond).
        if window <= a.seconds, index == 0 { return a.pages * window / a.seconds }
        return a.pages + (b.pages - a.pages) * (window - a.seconds) / (b.seconds - a.seconds)
    }

    /// W and s of `W × (1 − e^(−s × w))` through `a` and `b`, if they are strictly concave (and not flat).
    static func workingSetLaw(_ a: Point, _ b: Point) -> (pages: Double, perPage: Double)? {
        guard a.pages > 0, b.pages > a.pages, b.seconds > a.seconds else { return nil }
        let ratio = b.pages / a.pages
        let span = b.seconds / a.seconds
        guard ratio < span * (1 - 1e-9) else { return nil }
        // (1 − e^(−x·span)) ÷ (1 − e^(−x)) falls from span (x → 0) to 1 (x → ∞): find x = s × a where it is `ratio`.
        func shape(_ x: Double) -> Double { expm1(-x * span) / expm1(-x) }
        var low = 1e-9
        var high = 1.0
        while shape(high) > ratio && high < 1e6 { high *= 2 }
        for _ in 0..<100 {
            let middle = (low + high) / 2
            if shape(middle) > ratio { low = middle } else { high = middle }
        }
        let x = (low + high) / 2
        let perPage = x / a.seconds
        return (a.pages / -expm1(-x), perPage)
    }
}

/// A forecast of a pre-copy migration from a probe and the source document's arithmetic (bytes × 8 ÷ rate,
/// round after round), following the engine's own stop rule (`MigrationSource.migrate`) step by step.
///
/// The model:
/// - **Round 0** (full copy) sends the region's data pages (zero pages as ranges) with their frames:
///   `bytes ÷ rate`, less the link's first burst (the `--max-bandwidth` token bucket starts full), plus a
///   round's fixed cost (collect, round end, the destination's acknowledgement).
/// - **Each dirty round** sends what was dirtied during the previous one: `curve.pages(in: previous round's
///   seconds)` pages, each as its own frame (scattered pages), at the link's rate plus the round cost.
/// - **The stop rule** is the engine's, with the same measured quantities: the bandwidth a round achieved
///   (updated after rounds of more than 64 pages), the predicted pause (pages × page size ÷ bandwidth), the
///   dirty rate (pages ÷ the previous round's seconds); another round is worth it while it shrinks the pause
///   by a quarter and at least `MigrationOptions.negligiblePause`; a target is a cap, over which `--on-stall`
///   decides (throttling slows the workload's pace, which the curve follows in time: a workload at a fraction f
///   of its pace dirties in w seconds what it dirtied in f × w).
/// - **The pause**: reaching a safe point and the final collect, sending the last pages (those dirty at the
///   last collect plus those written until the pause), strict verification (one digest pass on each side, at
///   the same time; twice as long when both sides share one machine's cores), the handoff on the shared mount.
/// - **Total**: the start (connection, key handshake, hello, the destination's set-up, the tracker armed), every
///   round, the record prepared before the pause, the pause; with audit verification, the source's digest after.
public enum MigrationPlan {
    /// What a full copy has to send, and the workload's pace.
    public struct Region: Codable, Sendable, Hashable {
        public var page_size: Int
        public var pages: Int
        /// Pages sent with their bytes by a full copy (resident, not all zero).
        public var data_pages: Int
        public var data_frames: Int
        public var zero_frames: Int
        /// Steps per second; nil when unknown (a throttle is then assumed to halve the pace each time).
        public var steps_per_second: Double?
        /// How the data pages compress (nil: as if they did not).
        public var compressibility: DirtyRateProbe.Compressibility?

        public init(
            page_size: Int, pages: Int, data_pages: Int, data_frames: Int, zero_frames: Int, steps_per_second: Double?,
            compressibility: DirtyRateProbe.Compressibility? = nil
        ) {
            self.page_size = page_size
            self.pages = pages
            self.data_pages = data_pages
            self.data_frames = data_frames
            self.zero_frames = zero_frames
            self.steps_per_second = steps_per_second
            self.compressibility = compressibility
        }

        public init(probe: DirtyRateProbe.Report) {
            self.init(
                page_size: probe.page_size, pages: probe.region_pages, data_pages: probe.data_pages,
                data_frames: probe.full_copy_data_frames, zero_frames: probe.full_copy_zero_frames, steps_per_second: probe.steps_per_second,
                compressibility: probe.compressibility)
        }

        public var bytes: Int { pages * page_size }
    }

    /// The migration network.
    public struct Link: Codable, Sendable, Hashable {
        /// The rate in bytes per second: of the stream (a `--max-bandwidth` cap), or of the link's Ethernet
        /// frames when `mtu` is set.
        public var bytes_per_second: Double
        /// The link counts whole Ethernet frames of this MTU (a NIC, a `tc` shaper): each carries MTU − 52 bytes
        /// of the stream (IP 20, TCP 20, timestamps 12) in MTU + 14 (Ethernet). Nil: the rate is the stream's.
        public var mtu: Int?
        /// The stream is sealed (AES-256-GCM records, the default).
        public var sealed: Bool

        public init(bytes_per_second: Double, mtu: Int? = nil, sealed: Bool = true) {
            self.bytes_per_second = bytes_per_second
            self.mtu = mtu
            self.sealed = sealed
        }

        /// Bytes of the stream per second.
        public var streamBytesPerSecond: Double {
            guard let mtu, mtu > 52 else { return bytes_per_second }
            return bytes_per_second * Double(mtu - 52) / Double(mtu + 14)
        }

        /// What the link lets through at once when a stream starts (`--max-bandwidth`'s token bucket, full
        /// at the start: a hundredth of a second at the rate, at least 64 KiB).
        public var burstBytes: Double { Swift.max(65536, streamBytesPerSecond / 100) }
    }

    /// The costs beyond bytes, in seconds.
    public struct Costs: Codable, Sendable, Hashable {
        /// Before the full copy's first byte: connecting, the key handshake, the hello, the destination's set-up,
        /// the tracker chosen and armed.
        public var start: Double
        /// Each round beyond its bytes: the collect, the round's end, the destination's acknowledgement.
        public var round: Double
        /// Strict verification in the pause: the source's digest pass (the destination's digest is ready, its pages
        /// hashed as they landed), and the messages.
        public var verify: Double
        /// Audit verification after the pause: the source's digest pass.
        public var audit: Double
        /// Reaching a safe point and the final collect.
        public var pause: Double
        /// The handoff in the pause: the record renamed, the destination's claim, its "running".
        public var handoff: Double
        /// The next ownership record written and synced before the pause.
        public var prepare: Double

        public init(start: Double, round: Double, verify: Double, audit: Double, pause: Double, handoff: Double, prepare: Double) {
            self.start = start
            self.round = round
            self.verify = verify
            self.audit = audit
            self.pause = pause
            self.handoff = handoff
            self.prepare = prepare
        }

        /// A connection, the key handshake, the hello and the destination's set-up (it maps the region and
        /// populates it alongside the stream, so the set-up does not grow with the region: 0.4-0.7 ms for 16 and
        /// 64 MiB). Measured on loopback on the 2-vCPU machine of the README, release build: 5-17 ms from the
        /// start to the full copy's first byte, with the record prepared before the pause; a debug build takes
        /// about twice as long.
        public static let handshakeSeconds = 0.008
        /// A round's own cost beyond its bytes at the link's rate (collect, round end, acknowledgement): about
        /// half a millisecond on loopback, the rate limiter's bucket refilling meanwhile.
        public static let roundSeconds = 0.0005
        /// Reaching a safe point (a paced workload reaches one within a step) and the final collect.
        public static let pauseSeconds = 0.001
        /// The handoff syncs the shared mount about twice as often as the probe's timing does (the rename, then
        /// the destination's claim, its check of the record, the old claims removed) ...
        public static let handoffSyncs = 2.0
        /// ... and adds its messages and the destination starting its loop (measured on loopback: the
        /// handoff and "running" took 2-22 ms, median 6, where the probe timed the shared mount at 0.8-1.4 ms).
        public static let handoffMessagesSeconds = 0.003
        /// Strict verification beyond the digest pass: the request, the source's resident-page scan, the reply
        /// (measured on loopback: 1.5-3 ms for 16 MiB whose digest pass takes 0.6 ms).
        public static let verifyMessagesSeconds = 0.002
        /// Without a measurement of the shared mount: a synced create, a rename and two directory syncs.
        public static let defaultSharedMountSeconds = 0.01

        /// The costs measured by `probe` (digest pass, tracker set-up, the shared mount's syncs) and the
        /// constants above.
        public static func measured(by probe: DirtyRateProbe.Report) -> Costs {
            Costs(
                start: handshakeSeconds + probe.arm_seconds,
                round: roundSeconds, verify: probe.digest_seconds + verifyMessagesSeconds, audit: probe.digest_seconds,
                pause: pauseSeconds, handoff: handoffSyncs * (probe.shared_mount_seconds ?? defaultSharedMountSeconds) + handoffMessagesSeconds,
                prepare: probe.shared_mount_write_seconds ?? defaultSharedMountSeconds / 2)
        }
    }

    /// How the migration is asked to run (`ferry migrate`'s options).
    public struct Settings: Codable, Sendable, Hashable {
        public var downtime_target: Double?
        /// `force`, `abort` or `throttle` (`StallPolicy`).
        public var on_stall: String
        /// `strict` or `audit` (`VerificationMode`).
        public var verify: String
        public var maximum_rounds: Int
        public var maximum_sent_ratio: Double
        /// `auto`, `none`, `zstd` or `lz4` (`CompressionChoice`).
        public var compress: String

        public init(
            downtimeTarget: Double? = nil, onStall: StallPolicy = .force, verification: VerificationMode = .strict, maximumRounds: Int = 30,
            compression: CompressionChoice = .auto
        ) {
            downtime_target = downtimeTarget
            on_stall = onStall.rawValue
            verify = verification.rawValue
            maximum_rounds = maximumRounds
            maximum_sent_ratio = 10
            compress = compression.rawValue
        }

        var policy: StallPolicy { StallPolicy(rawValue: on_stall) ?? .force }
    }

    /// One forecast round.
    public struct Round: Codable, Sendable, Hashable {
        public var round: Int
        /// How long the workload dirtied what this round sends (the previous round).
        public var window_seconds: Double
        public var pages: Double
        public var bytes: Double
        public var seconds: Double
        /// The engine's prediction when it collected this round's pages: pages × page size ÷ bandwidth.
        public var predicted_pause_ms: Double
        /// The workload's pace while this round is sent, as a fraction of its own (throttling), when not 1.
        public var pace_fraction: Double?
        public var final: Bool
    }

    /// What a migration is forecast to do.
    public struct Forecast: Codable, Sendable {
        /// `completed`, or `aborted` (`--on-stall abort` gave up; the workload stays on the source).
        public var outcome: String
        /// Whether pre-copy converges by itself: `stall` is nil, as in the report of a real migration.
        public var converges: Bool
        /// How non-convergence is handled (`force`, `abort`, `throttle`), as the report would say.
        public var stall: String?
        public var throttle_percent: Double?
        public var reason: String?
        public var rounds: [Round]
        public var full_copy_bytes: Double
        public var full_copy_seconds: Double
        /// The engine's own prediction at the stop: the last pages ÷ the bandwidth.
        public var predicted_pause_ms: Double
        /// The whole pause: safe point, last pages, verification, handoff.
        public var downtime_ms: Double
        public var final_send_ms: Double
        public var verify_ms: Double
        public var fixed_pause_ms: Double
        public var bytes_sent: Double
        public var total_seconds: Double
        public var costs: Costs
        /// The rounds the engine went on after while their predicted pause was over the cap (with no target,
        /// over `MigrationOptions.defaultStallCap`): stopping early in one of them is a stall, not convergence.
        public var rounds_over_cap: Int
        /// How close the engine came to stopping in one of those: the largest ratio of the next round's predicted
        /// pause to the current one (it goes on below 0.75). A link that dips by `1 − closest_ratio ÷ 0.75`
        /// during such a round, or a burst of writes, stops it there.
        public var closest_ratio: Double?

        /// Convergence forecast with less than `margin` to spare: a dip of the link by that fraction in one of the
        /// rounds over the cap would stop the engine early and make it a stall. The default, 40 %, is what a
        /// round's measured bandwidth swung by on loopback on a shared 2-vCPU machine (69-142 MB/s at a 1 Gbit/s
        /// cap, with the workload, sealing and the receiver on the same two cores).
        public func isMarginal(margin: Double = 0.4) -> Bool {
            guard converges, rounds_over_cap > 0, let closest_ratio else { return false }
            return 1 - closest_ratio / 0.75 < margin
        }
    }

    /// What to do, and why.
    public struct Recommendation: Codable, Sendable {
        /// `pre-copy`, `pre-copy --on-stall throttle`, or `post-copy`.
        public var mode: String
        public var reason: String
    }

    // MARK: Wire

    /// A `pageData` frame's header and body, a `zeroPages` frame, a round's end (from the codec itself).
    static let pageFrameBytes = Double(FrameCodec.encode(.pageData(firstPage: 0, pageCount: 1)).count)
    static let zeroFrameBytes = Double(FrameCodec.encode(.zeroPages(firstPage: 0, pageCount: 1)).count)
    static let roundEndBytes = Double(FrameCodec.encode(.roundEnd(RoundSummary(round: 0, pages: 0, zeroPages: 0, bytes: 0, final: false))).count)
    /// A sealed record (`SealedRecord` in FerryTransport): 4 length bytes and a 16-byte tag around at most
    /// 256 KiB of plaintext.
    static let sealedRecordBytes = 20.0
    static let sealedRecordPlaintext = Double(256 << 10)
    /// The handshake, the hello (with the build's images), the digests and the commit: about 2 KiB.
    static let protocolBytes = 2048.0

    /// Bytes on the wire for `pages` data pages in `frames` page frames and `zeroFrames` zero ranges, with the
    /// round's end. A page frame larger than the gathered writes has its header sealed apart.
    static func wireBytes(pages: Double, frames: Double, zeroFrames: Double, pageSize: Int, sealed: Bool, share: Double = 1) -> Double {
        let plain = pages * Double(pageSize) * share + frames * pageFrameBytes + zeroFrames * zeroFrameBytes + roundEndBytes
        guard sealed else { return plain }
        let largeFrames = Swift.min(frames, (pages * Double(pageSize)) / Double(64 << 10))
        return plain + sealedRecordBytes * ((plain / sealedRecordPlaintext).rounded(.up) + largeFrames.rounded(.down))
    }

    // MARK: Forecast

    /// The share of a data page's bytes that goes on the wire: what `--compress` (`PageSender`'s policy) would
    /// choose over a link of `bytesPerSecond` given how the region compressed in the probe.
    public static func compressedShare(_ region: Region, bytesPerSecond: Double, settings: Settings) -> Double {
        guard let measured = region.compressibility, let choice = CompressionChoice(rawValue: settings.compress) else { return 1 }
        var policy = CompressionPolicy()
        let sample = measured.sampled_pages * region.page_size
        for (codec, ratio, rate) in [(PageEncoding.lz4, measured.lz4_ratio, measured.lz4_bytes_per_second),
                                     (.zstd, measured.zstd_ratio, measured.zstd_bytes_per_second)] {
            policy.compressed(codec, input: sample, output: Int(ratio * Double(sample)), seconds: Double(sample) / Swift.max(rate, 1))
        }
        let start = ContinuousClock.now
        policy.linkAcknowledged(0, at: start)
        policy.linkAcknowledged(Int(bytesPerSecond), at: start + .seconds(1))
        return policy.ratio(of: choice)
    }

    /// Forecasts a pre-copy migration of `region`, dirtied as `curve` says, over `link`.
    public static func forecast(region: Region, curve: DirtyCurve, link: Link, settings: Settings, costs: Costs) -> Forecast {
        let share = compressedShare(region, bytesPerSecond: link.streamBytesPerSecond, settings: settings)
        // A dirty page's bytes on the wire (the engine's stop rule predicts the same way).
        let pageSize = Double(region.page_size) * share
        let rate = Swift.max(link.streamBytesPerSecond, 1)
        let policy = settings.policy
        let cap = settings.downtime_target ?? (policy == .force ? Double.infinity : MigrationOptions.defaultStallCap)
        var rounds: [Round] = []
        var stall: String?
        var throttlePercent: Double?

        // Round 0: the full copy. The first dirty window runs from arming (before the resident scan) to the
        // first collect.
        let fullBytes = wireBytes(
            pages: Double(region.data_pages), frames: Double(region.data_frames), zeroFrames: Double(region.zero_frames),
            pageSize: region.page_size, sealed: link.sealed, share: share)
        let fullSeconds = Swift.max(0, fullBytes - link.burstBytes) / rate + costs.round
        rounds.append(Round(round: 0, window_seconds: 0, pages: Double(region.data_pages), bytes: fullBytes, seconds: fullSeconds, predicted_pause_ms: 0, pace_fraction: nil, final: false))
        var elapsed = costs.start + fullSeconds
        var totalSent = fullBytes
        var bandwidth = fullBytes / Swift.max(fullSeconds, 1e-6)
        var window = fullSeconds
        var pace = 1.0  // fraction of the workload's own pace
        var originalPace: Double?
        var round = 1
        var stalledRounds = 0
        var previousDirty = Double.infinity
        var closestRatio: Double?
        var roundsOverCap = 0

        func forecast(outcome: String, reason: String?, predicted: Double, downtime: Double, finalSend: Double, verify: Double) -> Forecast {
            Forecast(
                outcome: outcome, converges: stall == nil && outcome == "completed", stall: stall, throttle_percent: throttlePercent, reason: reason,
                rounds: rounds, full_copy_bytes: fullBytes, full_copy_seconds: fullSeconds, predicted_pause_ms: predicted * 1000,
                downtime_ms: downtime * 1000, final_send_ms: finalSend * 1000, verify_ms: verify * 1000,
                fixed_pause_ms: outcome == "completed" ? (costs.pause + costs.handoff) * 1000 : 0,
                bytes_sent: totalSent + protocolBytes, total_seconds: elapsed, costs: costs, rounds_over_cap: roundsOverCap,
                closest_ratio: closestRatio)
        }

        while true {
            // The workload's own time during the window: slowed by throttling, it dirties in w what it did in pace × w.
            let dirtyWindow = window * pace
            let dirty = curve.pages(in: dirtyWindow)
            let dirtyRate = dirty / Swift.max(window, 1e-6)
            let predicted = dirty * pageSize / Swift.max(bandwidth, 1)
            let stepsPerSecond = (region.steps_per_second ?? 0) * pace
            let exhausted = round >= settings.maximum_rounds || totalSent >= settings.maximum_sent_ratio * Double(region.bytes)
            let shrinking = dirty <= 0.9 * previousDirty
            stalledRounds = predicted > cap && !shrinking ? stalledRounds + 1 : 0
            previousDirty = dirty
            let stalled = exhausted || stalledRounds >= 2
            let nextPages = Swift.min(dirty, dirtyRate * Swift.max(predicted, 0.001))
            let nextPredicted = nextPages * pageSize / Swift.max(bandwidth, 1)
            let worthAnotherRound = shrinking && predicted > MigrationOptions.negligiblePause
                && nextPredicted < 0.75 * predicted && predicted - nextPredicted >= MigrationOptions.negligiblePause
            if stalled && predicted > cap {
                switch policy {
                case .postCopy:
                    // The engine switches to post-copy here: a pause of a few milliseconds, the rest follows.
                    stall = "post-copy"
                    return forecast(outcome: "post-copy", reason: "switches to post-copy after round \(round)", predicted: predicted, downtime: 0, finalSend: 0, verify: 0)
                case .abort:
                    stall = "abort"
                    let why = String(
                        format: "%.0f pages still dirty after %d rounds; the workload dirties %.1f MB/s against a link of %.1f MB/s, a pause of %.0f ms against a target of %.0f ms",
                        dirty, round, dirtyRate * Double(region.page_size) / 1e6, bandwidth / 1e6, predicted * 1000, cap * 1000)
                    return forecast(outcome: "aborted", reason: why, predicted: predicted, downtime: 0, finalSend: 0, verify: 0)
                case .throttle where !exhausted:
                    let affordable = 0.5 * cap * bandwidth / pageSize
                    if stepsPerSecond > 0 {
                        let newPace = Swift.max(1, Swift.min(stepsPerSecond * 0.5, affordable / Swift.max(predicted, 1e-3)))
                        let original = originalPace ?? stepsPerSecond
                        throttlePercent = Swift.max(throttlePercent ?? 0, 100 * (1 - newPace / Swift.max(original, 1)))
                        if originalPace == nil { originalPace = stepsPerSecond }
                        pace = newPace / Swift.max(region.steps_per_second ?? newPace, 1e-9)
                    } else {
                        // The pace is unknown: the engine at least halves it each time.
                        pace *= 0.5
                        throttlePercent = 100 * (1 - pace)
                    }
                    stall = "throttle"
                    stalledRounds = 0
                case .force, .throttle:
                    stall = stall ?? "force"
                }
            }
            if (!worthAnotherRound && predicted <= cap) || exhausted || (stalled && policy == .force) {
                if settings.downtime_target == nil, predicted > MigrationOptions.defaultStallCap, nextPredicted >= 0.75 * predicted {
                    stall = stall ?? "force"
                }
                // The record is prepared while the workload runs; what it writes meanwhile goes in the last round too.
                elapsed += costs.prepare
                // The last round sends the union of the pages dirty at the last collect and those written until the
                // pause: the pages of one window from the last collect's window to the pause.
                let last = curve.pages(in: dirtyWindow + (costs.prepare + costs.pause) * pace)
                let lastBytes = wireBytes(pages: last, frames: last, zeroFrames: 0, pageSize: region.page_size, sealed: link.sealed, share: share)
                let finalSend = lastBytes / rate + costs.round
                let verify = settings.verify == VerificationMode.strict.rawValue ? costs.verify : 0
                let downtime = costs.pause + finalSend + verify + costs.handoff
                rounds.append(Round(
                    round: round, window_seconds: window, pages: last, bytes: lastBytes, seconds: finalSend,
                    predicted_pause_ms: predicted * 1000, pace_fraction: pace < 1 ? pace : nil, final: true))
                totalSent += lastBytes
                elapsed += downtime
                if settings.verify == VerificationMode.audit.rawValue { elapsed += costs.audit }
                return forecast(outcome: "completed", reason: nil, predicted: predicted, downtime: downtime, finalSend: finalSend, verify: verify)
            }
            if predicted > (settings.downtime_target ?? MigrationOptions.defaultStallCap) {
                roundsOverCap += 1
                closestRatio = Swift.max(closestRatio ?? 0, nextPredicted / predicted)
            }
            let bytes = wireBytes(pages: dirty, frames: dirty, zeroFrames: 0, pageSize: region.page_size, sealed: link.sealed, share: share)
            let seconds = bytes / rate + costs.round
            rounds.append(Round(
                round: round, window_seconds: window, pages: dirty, bytes: bytes, seconds: seconds,
                predicted_pause_ms: predicted * 1000, pace_fraction: pace < 1 ? pace : nil, final: false))
            totalSent += bytes
            elapsed += seconds
            if bytes > 64 * Double(region.page_size) { bandwidth = bytes / seconds }
            window = seconds
            round += 1
        }
    }

    /// Pre-copy when it converges by itself; else throttling when it completes within the cap and slows the
    /// workload by at most `maximumThrottlePercent`; else post-copy (whose time this plan does not forecast).
    /// - Parameters:
    ///   - precopy: the forecast with `--on-stall force`.
    ///   - throttled: the forecast with `--on-stall throttle`.
    public static func recommend(precopy: Forecast, throttled: Forecast, maximumThrottlePercent: Double) -> Recommendation {
        if precopy.converges {
            return Recommendation(
                mode: "pre-copy",
                reason: String(format: "it converges by itself: %d dirty rounds, a pause of %.0f ms", precopy.rounds.count - 2, precopy.downtime_ms))
        }
        let slowdown = throttled.throttle_percent ?? 0
        if throttled.outcome == "completed", slowdown <= maximumThrottlePercent {
            return Recommendation(
                mode: "pre-copy --on-stall throttle",
                reason: String(format: "pre-copy alone does not converge (it would pause %.0f ms); slowing the workload by %@ (at most %.0f %% accepted) brings the pause to %.0f ms",
                               precopy.downtime_ms, percent(slowdown), maximumThrottlePercent, throttled.downtime_ms))
        }
        return Recommendation(
            mode: "post-copy",
            reason: String(format: "pre-copy does not converge (--on-stall force would pause %.0f ms) and throttling would slow the workload by %@ (more than the %.0f %% accepted); post-copy moves the workload at once and its pages follow (ferry migrate --mode hybrid: pre-copy until it stalls, or --mode post-copy); this plan does not forecast post-copy's time",
                           precopy.downtime_ms, percent(slowdown), maximumThrottlePercent))
    }

    /// `45 %`; `99.95 %` above 99 (a throttle of 99.95 % is not one of 100 %: the workload still runs, slowly).
    public static func percent(_ value: Double) -> String {
        String(format: value > 99 && value < 100 ? "%.2f %%" : "%.0f %%", value)
    }
}
