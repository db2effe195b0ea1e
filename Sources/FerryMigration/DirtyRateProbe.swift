#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CShims
public import FerrySystem
public import FerryTracking
import Synchronization

/// How a running workload dirties its region, measured exactly with write tracking, and what a migration of
/// it would cost besides its bytes: the facts `MigrationPlan` forecasts from.
///
/// **Unique dirty pages against window length.** For each window length w, the region's time is cut into
/// consecutive windows of length w, and each sample is the number of distinct pages written in one of them:
/// a page written many times in a window counts once, as it is sent once by the round that follows. So a
/// workload that rewrites a working set reports a lower rate (pages per second) over longer windows (QEMU's
/// `calc-dirty-rate` documents the same effect); a rate is only meaningful with its window.
///
/// **Exact, with one tracker.** The tracker is armed once and collected at every window boundary of every
/// length (the union of all multiples of each length, up to the longest). Each collect returns exactly the
/// pages written since the previous one (the tracker's contract: nothing missed, re-protected before it
/// returns), so the pages of a window are the union of the collects inside it, kept as one bitmap per length.
/// Nested windows need no second tracker and no repeated measurement: the longest window is one sample, a
/// window of a tenth of it ten samples.
///
/// A probe arms its own tracker on the region, as a migration does: the two exclude each other (the agent
/// refuses a probe while a migration runs and a migration while a probe runs).
public enum DirtyRateProbe {
    /// The windows `ferry probe` measures unless told otherwise.
    public static let defaultWindows = [0.1, 1.0, 10.0]
    /// Bounds on a window: collects far apart enough to be cheap, a probe short enough to wait for.
    public static let shortestWindow = 0.01
    public static let longestWindow = 600.0
    /// At most this many collects in one probe (window boundaries of all lengths together).
    public static let maximumCollects = 20_000

    /// The samples of one window length.
    public struct Window: Codable, Sendable, Hashable {
        /// The window's length as asked for.
        public var seconds: Double
        /// Distinct pages written in each consecutive window of this length.
        public var unique_pages: [Int]
        /// Each sample's length as measured, collect to collect.
        public var sample_seconds: [Double]

        public init(seconds: Double, unique_pages: [Int], sample_seconds: [Double]) {
            self.seconds = seconds
            self.unique_pages = unique_pages
            self.sample_seconds = sample_seconds
        }
    }

    /// What a probe measured.
    /// How well and how fast the region's data pages compress with each codec `--compress` may use, measured
    /// on up to 256 of them spread over the region (one pass each, the faster of three).
    public struct Compressibility: Codable, Sendable, Hashable {
        public var sampled_pages: Int
        /// Compressed bytes ÷ page bytes, and input bytes compressed per second, per codec.
        public var lz4_ratio: Double
        public var lz4_bytes_per_second: Double
        public var zstd_ratio: Double
        public var zstd_bytes_per_second: Double

        public init(sampled_pages: Int, lz4_ratio: Double, lz4_bytes_per_second: Double, zstd_ratio: Double, zstd_bytes_per_second: Double) {
            self.sampled_pages = sampled_pages
            self.lz4_ratio = lz4_ratio
            self.lz4_bytes_per_second = lz4_bytes_per_second
            self.zstd_ratio = zstd_ratio
            self.zstd_bytes_per_second = zstd_bytes_per_second
        }
    }

    public struct Report: Codable, Sendable {
        public var workload: String?
        public var tracker: String
        /// False when the tracker lost per-page precision during the probe and reported whole ranges (the
        /// mprotect backend past its split budget): the counts are then upper bounds.
        public var exact: Bool
        public var page_size: Int
        public var region_pages: Int
        /// The workload's steps per second during the probe (its safe points, for a program).
        public var steps_per_second: Double?
        /// Per window length, shortest first.
        public var windows: [Window]
        /// Pages written in every one of the shortest windows (at least three of them): pages every step
        /// writes (a header, a counter), which each round sends however short it is.
        public var hot_pages: Int
        /// Pages a full copy sends with their bytes: resident and not all zero.
        public var data_pages: Int
        /// Resident pages that are all zero (a full copy sends them as ranges, like pages never touched).
        public var zero_pages: Int
        /// `pageData` frames a full copy of the region as it is now sends (runs of data pages, at most
        /// `MigrationSource.pagesPerFrame` each), and its `zeroPages` frames.
        public var full_copy_data_frames: Int
        public var full_copy_zero_frames: Int
        /// Setting up the tracker (choosing the backend, opening it) and arming it on the region.
        public var arm_seconds: Double
        /// One digest pass over the region as it is now, on `digest_threads` threads (what strict verification
        /// costs each side in the pause, when the side has those cores to itself): the faster of two passes.
        public var digest_seconds: Double
        public var digest_threads: Int
        /// A synced file created and renamed on the shared mount, directory synced after each: what the
        /// handoff's rename and the destination's claim cost in the pause (the fastest of three; nil: no
        /// shared mount given).
        public var shared_mount_seconds: Double?
        /// A synced write on the shared mount (the ownership record prepared before the pause).
        public var shared_mount_write_seconds: Double?
        /// How the region's data compresses, measured on a sample of its pages (nil: no data pages).
        public var compressibility: Compressibility?

        public init(
            workload: String?, tracker: String, exact: Bool, page_size: Int, region_pages: Int, steps_per_second: Double?,
            windows: [Window], hot_pages: Int, data_pages: Int, zero_pages: Int, full_copy_data_frames: Int, full_copy_zero_frames: Int,
            arm_seconds: Double, digest_seconds: Double, digest_threads: Int, shared_mount_seconds: Double?,
            shared_mount_write_seconds: Double?
        ) {
            self.workload = workload
            self.tracker = tracker
            self.exact = exact
            self.page_size = page_size
            self.region_pages = region_pages
            self.steps_per_second = steps_per_second
            self.windows = windows
            self.hot_pages = hot_pages
            self.data_pages = data_pages
            self.zero_pages = zero_pages
            self.full_copy_data_frames = full_copy_data_frames
            self.full_copy_zero_frames = full_copy_zero_frames
            self.arm_seconds = arm_seconds
            self.digest_seconds = digest_seconds
            self.digest_threads = digest_threads
            self.shared_mount_seconds = shared_mount_seconds
            compressibility = nil
            self.shared_mount_write_seconds = shared_mount_write_seconds
        }
    }

    /// Why a probe could not run or did not finish.
    public struct ProbeError: Error, CustomStringConvertible, Sendable {
        public let message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    /// Checks window lengths (seconds) and returns them sorted; a message a person can act on if they do not do.
    public static func checked(_ windows: [Double]) -> Swift.Result<[Double], ProbeError> {
        guard !windows.isEmpty else { return .failure(ProbeError("give at least one window, like 100ms,1s,10s")) }
        guard windows.count <= 8 else { return .failure(ProbeError("at most 8 windows, not \(windows.count)")) }
        for window in windows where !(window >= shortestWindow && window <= longestWindow) {
            return .failure(ProbeError("a window of \(window) s is outside \(shortestWindow * 1000) ms ... \(Int(longestWindow)) s"))
        }
        let micros = windows.map(microseconds)
        guard Set(micros).count == micros.count else { return .failure(ProbeError("the windows \(windows) repeat one length")) }
        let collects = boundaries(micros).count
        guard collects <= maximumCollects else {
            return .failure(ProbeError("these windows need \(collects) collects (at most \(maximumCollects)): make the shortest window longer or the longest shorter"))
        }
        return .success(windows.sorted())
    }

    static func microseconds(_ seconds: Double) -> Int { Int((seconds * 1e6).rounded()) }

    /// Every boundary of every window length (microseconds from the start), ascending, each once.
    static func boundaries(_ windows: [Int]) -> [Int] {
        guard let longest = windows.max() else { return [] }
        var all = Set<Int>()
        for window in windows {
            var boundary = window
            while boundary <= longest && all.count <= maximumCollects {
                all.insert(boundary)
                boundary += window
            }
        }
        return all.sorted()
    }

    /// Measures `range` for the longest of `windows` (seconds), while the workload runs.
    /// - Parameters:
    ///   - stepCount: the workload's step counter, for its pace during the probe.
    ///   - sharedDirectory: where the handoff's synced writes would go (timed with a scratch file, removed).
    ///   - interrupted: asked at least every 50 ms; a reason ends the probe with that error.
    /// - Throws: `ProbeError` (windows, interruption), `TrackingError`, `SystemCallError`.
    public static func measure(
        _ range: MemoryRange, windows requested: [Double], tracker choice: TrackerChoice = .auto, workload: String? = nil,
        stepCount: (() -> UInt64)? = nil, sharedDirectory: String? = nil, interrupted: () -> String? = { nil }
    ) throws -> Report {
        let windows = try checked(requested).get()
        let lengths = windows.map(microseconds)
        let clock = ContinuousClock()

        let armStart = clock.now
        let backend = try choice.resolve().backend
        let tracker = try WriteTracker(range: range, backend: backend)
        defer { tracker.stop() }
        try tracker.arm()
        let start = clock.now
        let armSeconds = (start - armStart).secondsValue
        let stepsAtStart = stepCount?()

        // One bitmap per window length: the pages written in its current window.
        let words = (range.pageCount + 63) / 64
        var bitmaps = [[UInt64]](repeating: [UInt64](repeating: 0, count: words), count: lengths.count)
        var counts = [Int](repeating: 0, count: lengths.count)
        var windowStarts = [ContinuousClock.Instant](repeating: start, count: lengths.count)
        var results = zip(windows, lengths).map { Window(seconds: $0.0, unique_pages: [], sample_seconds: []) }
        // The pages of every shortest window so far (their intersection).
        var hot: [UInt64]?
        var end = start
        for boundary in boundaries(lengths) {
            let deadline = start.advanced(by: .microseconds(boundary))
            while true {
                if let reason = interrupted() { throw ProbeError(reason) }
                let now = clock.now
                if now >= deadline { break }
                usleep(UInt32(Swift.min(deadline - now, .milliseconds(50)).microsecondsValue.rounded(.up)))
            }
            let dirty = try tracker.collect()
            end = clock.now
            for index in lengths.indices {
                var added = 0
                bitmaps[index].withUnsafeMutableBufferPointer { bits in
                    for run in dirty.runs {
                        for page in run.pages {
                            let bit: UInt64 = 1 << UInt64(page & 63)
                            if bits[page >> 6] & bit == 0 {
                                bits[page >> 6] |= bit
                                added += 1
                            }
                        }
                    }
                }
                counts[index] += added
                if boundary % lengths[index] == 0 {
                    if index == 0 {
                        if hot == nil { hot = bitmaps[0] } else { for word in 0..<words { hot![word] &= bitmaps[0][word] } }
                    }
                    results[index].unique_pages.append(counts[index])
                    results[index].sample_seconds.append((end - windowStarts[index]).secondsValue)
                    windowStarts[index] = end
                    counts[index] = 0
                    for word in 0..<words { bitmaps[index][word] = 0 }
                }
            }
        }
        let steps = stepsAtStart.flatMap { first in stepCount.map { Double($0() &- first) / Swift.max((end - start).secondsValue, 1e-6) } }
        let exact = tracker.statistics.fallbacks == 0
        let hotPages = results[0].unique_pages.count >= 3 ? (hot ?? []).reduce(0) { $0 + $1.nonzeroBitCount } : 0
        tracker.stop()

        // What a full copy of the region as it is now would send: the same grouping as the engine's round 0.
        let resident = try ResidentPages.runs(of: range)
        var dataPages = 0, zeroPages = 0, dataFrames = 0, zeroFrames = 0
        var cursor = 0
        for run in resident.runs {
            if run.first > cursor { zeroFrames += 1 }
            cursor = run.end
            MigrationSource.forEachFrame(of: run, in: range) { _, count, isZero in
                if isZero {
                    zeroFrames += 1
                    zeroPages += count
                } else {
                    dataFrames += 1
                    dataPages += count
                }
            }
        }
        if range.pageCount > cursor { zeroFrames += 1 }

        let threads = RegionDigest.defaultThreads
        var digestSeconds = Double.infinity
        for _ in 0..<2 {
            let digestStart = clock.now
            _ = RegionDigest.compute(range, resident: resident, threads: threads)
            digestSeconds = Swift.min(digestSeconds, (clock.now - digestStart).secondsValue)
        }
        // The fastest of three: one fsync may stall behind another process's writes for far longer than usual.
        let syncs = sharedDirectory.map { directory in (0..<3).compactMap { _ in timeSharedMount(directory) } } ?? []
        let sync = syncs.isEmpty ? nil : (handoff: syncs.map(\.handoff).min()!, write: syncs.map(\.write).min()!)

        var report = Report(
            workload: workload, tracker: backend.rawValue, exact: exact, page_size: range.pageSize, region_pages: range.pageCount,
            steps_per_second: steps, windows: results, hot_pages: hotPages, data_pages: dataPages, zero_pages: zeroPages,
            full_copy_data_frames: dataFrames, full_copy_zero_frames: zeroFrames, arm_seconds: armSeconds,
            digest_seconds: digestSeconds, digest_threads: threads, shared_mount_seconds: sync?.handoff,
            shared_mount_write_seconds: sync?.write)
        report.compressibility = Self.compressibility(of: range, resident: resident, dataPages: dataPages)
        return report
    }

    /// Compresses a sample of the region's data pages (every n-th non-zero resident page, at most 256) with lz4
    /// and zstd level 1, as `PageSender` does; nil when there are none.
    static func compressibility(of range: MemoryRange, resident: DirtyPages, dataPages: Int) -> Compressibility? {
        guard dataPages > 0 else { return nil }
        let every = Swift.max(1, dataPages / 256)
        let sample = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * range.pageSize, alignment: 64)
        defer { sample.deallocate() }
        var taken = 0, seen = 0
        for page in resident where taken < 256 && !MigrationSource.isZero(range, page: page) {
            if seen % every == 0 {
                memcpy(sample.baseAddress! + taken * range.pageSize, range.baseAddress + page * range.pageSize, range.pageSize)
                taken += 1
            }
            seen += 1
        }
        guard taken > 0 else { return nil }
        let input = UnsafeRawBufferPointer(rebasing: sample[..<(taken * range.pageSize)])
        let capacity = Int(ZSTD_compressBound(input.count))
        let output = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
        defer { output.deallocate() }
        let context = ZSTD_createCCtx()
        defer { ZSTD_freeCCtx(context) }
        func measure(_ compress: () -> Int) -> (ratio: Double, rate: Double) {
            var best = Double.infinity, size = input.count
            for _ in 0..<3 {
                let start = ContinuousClock.now
                size = compress()
                best = Swift.min(best, (ContinuousClock.now - start).secondsValue)
            }
            return (Double(size > 0 ? size : input.count) / Double(input.count), Double(input.count) / Swift.max(best, 1e-9))
        }
        let lz4 = measure {
            Int(LZ4_compress_default(
                input.baseAddress!.assumingMemoryBound(to: CChar.self), output.assumingMemoryBound(to: CChar.self), CInt(input.count), CInt(capacity)))
        }
        let zstd = measure {
            let result = ZSTD_compressCCtx(context, output, capacity, input.baseAddress, input.count, 1)
            return ZSTD_isError(result) != 0 ? 0 : Int(result)
        }
        return Compressibility(
            sampled_pages: taken, lz4_ratio: lz4.ratio, lz4_bytes_per_second: lz4.rate, zstd_ratio: zstd.ratio, zstd_bytes_per_second: zstd.rate)
    }

    /// Times what the pause does on the shared mount with a scratch file: a synced create and a directory sync
    /// (the destination's claim), a rename and a directory sync (the commit); and a synced write alone (the
    /// record prepared before the pause). Nil when the directory is not writable.
    static func timeSharedMount(_ directory: String) -> (handoff: Double, write: Double)? {
        let clock = ContinuousClock()
        let path = directory + "/.ferry-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let renamed = path + ".renamed"
        defer {
            unlink(path)
            unlink(renamed)
        }
        let start = clock.now
        let text = Array("ferry probe: timing the shared mount\n".utf8)
        // The probe times what the handoff does; any failure means the directory is not usable for it.
        do {
            let fd = try SharedFile.call("create", path) { open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
            defer { close(fd) }
            try SharedFile.writeAll(fd, text, path: path)
            try SharedFile.call("fsync", path) { fsync(fd) }
        } catch { return nil }
        let synced = clock.now
        do {
            try SharedFile.syncDirectory(directory)
            try SharedFile.rename(path, over: renamed)
            try SharedFile.syncDirectory(directory)
        } catch { return nil }
        let end = clock.now
        return ((end - start).secondsValue, (synced - start).secondsValue)
    }
}

/// Agents whose region a probe tracks right now, with when that probe ends: a migration must not arm its own
/// tracker on the same region meanwhile.
private let probesInProgress = Mutex<[ObjectIdentifier: ContinuousClock.Instant]>([:])

extension MigrationAgent {
    /// The `probe` reply: measures the running workload's dirty pages for the windows of `request["windows"]`
    /// (seconds; `DirtyRateProbe.defaultWindows` if absent) with `request["tracker"]`, while it runs. Refused
    /// unless the workload runs here and no migration or other probe tracks it.
    public func probe(_ request: ControlChannel.Message) -> ControlChannel.Message {
        func failure(_ error: String) -> ControlChannel.Message { ["event": "result", "ok": false, "error": error] }
        var windows = DirtyRateProbe.defaultWindows
        if let given = request["windows"] {
            guard let list = given as? [Any] else { return failure("'windows' must be a list of seconds") }
            let seconds = list.compactMap { ($0 as? NSNumber)?.doubleValue ?? ($0 as? Double) }
            guard seconds.count == list.count else { return failure("'windows' must be a list of seconds") }
            windows = seconds
        }
        switch DirtyRateProbe.checked(windows) {
        case .failure(let error): return failure(error.message)
        case .success(let sorted): windows = sorted
        }
        var tracker = TrackerChoice.auto
        if let name = request["tracker"] as? String {
            guard let choice = TrackerChoice(name) else { return failure("unknown tracker '\(name)'") }
            tracker = choice
        }
        let me = ObjectIdentifier(self)
        let ends = ContinuousClock.now.advanced(by: .seconds(windows.last!))
        // Under the agent's lock: a migration takes the workload (role `migrating`) under the same lock, then
        // looks here, so exactly one of the two goes ahead.
        let claimed = state.withLock { state -> Swift.Result<WorkloadHost, DirtyRateProbe.ProbeError> in
            guard let host = state.host, state.role == .running else {
                return .failure(DirtyRateProbe.ProbeError(
                    state.role == .migrating
                        ? "a migration of this workload is under way, and it tracks the region's writes itself; probe once it is over"
                        : "no workload runs in this process (\(state.role.rawValue)); nothing to probe"))
            }
            let inserted = probesInProgress.withLock { probes -> Bool in
                guard probes[me] == nil else { return false }
                probes[me] = ends
                return true
            }
            guard inserted else { return .failure(DirtyRateProbe.ProbeError("another probe of this workload is under way; wait for it")) }
            return .success(host)
        }
        let host: WorkloadHost
        switch claimed {
        case .failure(let error): return failure(error.message)
        case .success(let claimedHost): host = claimedHost
        }
        defer { _ = probesInProgress.withLock { $0.removeValue(forKey: me) } }
        do {
            let result = try DirtyRateProbe.measure(
                host.workload.region.range, windows: windows, tracker: tracker, workload: host.workload.workloadName,
                stepCount: { host.stepCount }, sharedDirectory: sharedDirectory,
                interrupted: { [self] in
                    let role = self.role
                    if role != .running { return "the probe stopped: the workload is no longer running here (\(role.rawValue))" }
                    if host.isStopped { return "the probe stopped: the workload loop ended (\(host.lastError ?? "stopped"))" }
                    return nil
                })
            let encoded = ((try? JSONSerialization.jsonObject(with: JSONEncoder().encode(result))) as? [String: any Sendable]) ?? [:]
            return ["event": "result", "ok": true, "probe": encoded]
        } catch {
            return failure("\(error)")
        }
    }

    /// Why a migration must not start now: a probe tracks the region (nil: none does). Called by `migrate`
    /// after it took the workload, so a probe starting meanwhile sees the role `migrating` and refuses.
    func probeInProgressRefusal() -> String? {
        guard let ends = probesInProgress.withLock({ $0[ObjectIdentifier(self)] }) else { return nil }
        let left = Swift.max(0, (ends - ContinuousClock.now).secondsValue)
        return String(format: "a dirty-rate probe ('ferry probe') tracks this workload's writes for another %.1f s, and a migration needs the region's write tracking to itself; migrate once the probe is done", left)
    }
}
