#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import FerrySystem
import Synchronization

/// Pre-faults a region's pages writable on a thread of its own, front to back, while a stream fills the
/// region behind it: the destination's set-up overlaps the transfer instead of preceding it.
///
/// Guarantees: pages below `populatedBytes` are present; `wait(untilPopulated:)` returns once the pages it
/// asks for are, or at once when populating stopped (cancelled, failed, done): a writer never waits for
/// nothing. Populating never changes a page's contents, so it may race with writers anywhere in the region.
/// `cancel()` stops it between chunks and returns when the thread let go of the region; `stop()` does not wait.
public final class RegionPopulator: Sendable {
    /// What the populator did, for the report.
    public struct Summary: Sendable {
        /// Bytes pre-faulted from the front.
        public var populatedBytes: Int
        /// Seconds the thread spent populating.
        public var seconds: Double
        /// Seconds writers spent waiting for it (the stream catching up with the set-up).
        public var waitedSeconds: Double
        /// Whether it reached the end of the region.
        public var complete: Bool
        /// Why it stopped early, when it failed.
        public var error: RegionError?
    }

    private struct State {
        /// The next chunk a thread takes.
        var nextChunk = 0
        /// Which chunks are done; `populated` is the front of it.
        var done: [Bool]
        var populated = 0
        var running: Int
        var cancelRequested = false
        var seconds = 0.0
        var waited = 0.0
        var error: RegionError?
        var stopped: Bool { running == 0 }
    }

    private let range: MemoryRange
    /// Keeps the memory mapped while a thread still populates it.
    private let owner: MigratableRegion?
    private let chunkBytes: Int
    private let state: Mutex<State>
    private let finished = DispatchSemaphore(value: 0)
    private let started = ContinuousClock.now

    /// Starts populating `region` at once on `threads` threads, `chunkBytes` at a time (rounded to pages;
    /// small chunks let a writer start sooner and `cancel` return sooner). Each thread takes the next chunk
    /// from the front, so the populated front advances in order (nil threads: one per core). More than one thread pays on a VM, where
    /// the host's own faults behind a first touch run in parallel.
    public convenience init(region: MigratableRegion, threads: Int? = nil, chunkBytes: Int = 4 << 20) {
        self.init(range: region.range, owner: region, threads: threads, chunkBytes: chunkBytes)
    }

    /// Populates memory that `owner` keeps mapped; without an owner, the caller must keep it mapped until
    /// `cancel()` returned.
    init(range: MemoryRange, owner: MigratableRegion?, threads: Int? = nil, chunkBytes: Int = 4 << 20) {
        self.range = range
        self.owner = owner
        let pageSize = range.pageSize
        let chunk = Swift.max(pageSize, chunkBytes / pageSize * pageSize)
        self.chunkBytes = chunk
        let threads = Swift.max(1, threads ?? ProcessInfo.processInfo.activeProcessorCount)
        state = Mutex(State(done: [Bool](repeating: false, count: (range.byteCount + chunk - 1) / chunk), running: threads))
        for index in 0..<threads {
            let thread = Thread { [self] in run() }
            thread.name = "ferry-populate-\(index)"
            thread.start()
        }
    }

    /// Bytes from the front of the region already present.
    public var populatedBytes: Int { state.withLock { $0.populated } }

    /// Blocks until the first `end` bytes of the region are present, or populating stopped.
    public func wait(untilPopulated end: Int) {
        guard !state.withLock({ $0.populated >= end || $0.stopped }) else { return }
        let started = ContinuousClock.now
        while !state.withLock({ $0.populated >= end || $0.stopped }) { usleep(100) }
        let waited = (ContinuousClock.now - started).secondsValue
        state.withLock { $0.waited += waited }
    }

    /// Stops after the chunk in progress and returns what was done, once the thread is finished.
    @discardableResult
    public func cancel() -> Summary {
        state.withLock { $0.cancelRequested = true }
        finished.wait()
        finished.signal()  // later calls return at once
        return summary
    }

    /// Asks the thread to stop after the chunk in progress and returns at once with what was done so far
    /// (the thread keeps the region until that chunk is done).
    @discardableResult
    public func stop() -> Summary {
        state.withLock { $0.cancelRequested = true }
        return summary
    }

    /// What was done so far.
    public var summary: Summary {
        state.withLock {
            Summary(populatedBytes: $0.populated, seconds: $0.seconds, waitedSeconds: $0.waited,
                    complete: $0.populated >= range.byteCount, error: $0.error)
        }
    }

    /// One thread's loop: take the next chunk, populate it, mark it done and advance the front.
    private func run() {
        let total = range.byteCount
        while let chunk = state.withLock({ state -> Int? in
            guard !state.cancelRequested, state.error == nil, state.nextChunk < state.done.count else { return nil }
            defer { state.nextChunk += 1 }
            return state.nextChunk
        }) {
            let offset = chunk * chunkBytes
            let count = Swift.min(chunkBytes, total - offset)
            do {
                try MigratableRegion.populate(RegionBytes(range), offset: offset, count: count)
            } catch {
                state.withLock { $0.error = error }
                break
            }
            state.withLock { state in
                state.done[chunk] = true
                var front = state.populated / chunkBytes
                while front < state.done.count, state.done[front] { front += 1 }
                state.populated = Swift.min(total, front * chunkBytes)
            }
        }
        let last = state.withLock { state -> Bool in
            state.running -= 1
            if state.running == 0 { state.seconds = (ContinuousClock.now - started).secondsValue }
            return state.running == 0
        }
        if last { finished.signal() }
    }
}
