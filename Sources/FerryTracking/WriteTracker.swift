public import FerrySystem
import Synchronization

/// What every backend provides; `WriteTracker` adds the life cycle and the checks.
protocol TrackingMechanism: AnyObject, Sendable {
    var range: MemoryRange { get }
    var kernelWrites: KernelWriteBehavior { get }
    func arm() throws(SystemCallError)
    func collect() throws(SystemCallError) -> DirtyPages
    func prepareForKernelWrite(_ run: PageRun) throws(SystemCallError)
    func stop()
    /// Faults the backend resolved, where it counts them.
    var faultCount: UInt64? { get }
    /// Times the backend fell back to reporting the whole range.
    var fallbackCount: Int { get }
}

/// Tracks which pages of a memory range the process writes.
///
/// Guarantees, for every backend:
/// - **no missed write**: every page written after `arm()` or `collect()` returns is reported by the next
///   `collect()`, whichever thread wrote it (kernel writes: see `kernelWrites`);
/// - `collect()` re-protects the pages it reports **before** it returns, so a caller that copies those
///   pages after the call copies at least what was written before the call;
/// - a fault outside the range is not touched: it still crashes the process;
/// - `stop()` (or deinit) lifts every protection and closes everything the tracker opened.
///
/// A backend may report more pages than were written (never fewer) — after `vm.max_map_count` forced
/// the mprotect backend to un-protect the whole range, for instance. The caller keeps the range mapped
/// until the tracker is stopped.
///
/// On memory backed by transparent huge pages every backend stays exact per base page: arming protects
/// whole huge pages without splitting them, and the first write into one splits that huge page into base
/// pages (the kernel does, for the VMA split of `mprotect` and for a userfaultfd write-protect fault alike)
/// and reports the one base page written. A tracked range keeps its huge pages where it is not written.
public final class WriteTracker: Sendable {
    /// The mechanism in use.
    public let backend: TrackerBackend
    /// The tracked range.
    public let range: MemoryRange
    /// How kernel writes into the range (e.g. `read(2)`) behave with this backend in this process.
    public var kernelWrites: KernelWriteBehavior { mechanism.kernelWrites }

    private let mechanism: any TrackingMechanism
    private struct State {
        var armed = false
        var stopped = false
        var collects = 0
    }
    private let state = Mutex(State())

    /// Sets up tracking of `range` with the chosen backend. Nothing is protected until `arm()`.
    /// - Throws: `TrackingError.unavailable` or `.noBackendAvailable` when the choice does not work here,
    ///   `.systemCall` when setting up fails.
    public convenience init(range: MemoryRange, choice: TrackerChoice = .auto) throws(TrackingError) {
        try self.init(range: range, backend: choice.resolve().backend)
    }

    /// Sets up tracking of `range` with `backend`, without probing first.
    /// - Parameter mprotectSplitBudget: for the mprotect backend, how many pages per round may be
    ///   un-protected one by one before it falls back to the whole range (nil: an eighth of
    ///   `vm.max_map_count`; `Int.max`: only when the kernel refuses). Other backends ignore it.
    public init(range: MemoryRange, backend: TrackerBackend, mprotectSplitBudget: Int? = nil) throws(TrackingError) {
        precondition(range.byteCount > 0, "cannot track an empty range")
        self.backend = backend
        self.range = range
        do {
            switch backend {
            case .uffdAsync: mechanism = try UffdAsyncMechanism(range: range)
            case .uffdSync: mechanism = try UffdSyncMechanism(range: range)
            case .mprotect: mechanism = try MprotectMechanism(range: range, splitBudget: mprotectSplitBudget)
            }
        } catch {
            if backend == .mprotect, error.call == "mprotect tracker table" {
                throw .tooManyTrackedRanges(limit: 16)
            }
            throw .systemCall(error)
        }
    }

    deinit { mechanism.stop() }

    /// Write-protects the whole range: from now on every write is recorded.
    public func arm() throws(TrackingError) {
        try state.withLock { state throws(TrackingError) in
            guard !state.stopped else { throw .stopped }
            do throws(SystemCallError) { try mechanism.arm() } catch { throw .systemCall(error) }
            state.armed = true
        }
    }

    /// Returns the pages written since `arm()` or the previous `collect()`, re-protected.
    ///
    /// Read the contents of the reported pages only after this returns.
    public func collect() throws(TrackingError) -> DirtyPages {
        try state.withLock { state throws(TrackingError) -> DirtyPages in
            guard !state.stopped else { throw .stopped }
            guard state.armed else { throw .notArmed }
            state.collects += 1
            do throws(SystemCallError) { return try mechanism.collect() } catch { throw .systemCall(error) }
        }
    }

    /// Makes `run` writable for a system call that writes into it (`read(2)`, `recv(2)`) and marks it
    /// dirty. Needed only where `kernelWrites` is `.failsWithEFAULT`; elsewhere it does nothing.
    public func prepareForKernelWrite(_ run: PageRun) throws(TrackingError) {
        guard run.end <= range.pageCount else { throw .pageOutOfRange(run, pageCount: range.pageCount) }
        try state.withLock { state throws(TrackingError) in
            guard !state.stopped else { throw .stopped }
            guard state.armed else { return }
            do throws(SystemCallError) { try mechanism.prepareForKernelWrite(run) } catch { throw .systemCall(error) }
        }
    }

    /// Lifts every protection and releases the backend's resources. Safe to call more than once.
    public func stop() {
        state.withLock { state in
            guard !state.stopped else { return }
            state.stopped = true
            mechanism.stop()
        }
    }

    /// Counters for reports and benchmarks.
    public var statistics: TrackerStatistics {
        TrackerStatistics(
            collects: state.withLock { $0.collects }, faults: mechanism.faultCount,
            fallbacks: mechanism.fallbackCount)
    }
}

/// Counters of a tracker's work so far.
public struct TrackerStatistics: Hashable, Sendable {
    /// Calls to `collect()`.
    public let collects: Int
    /// Write faults resolved by the backend's handler; nil where the kernel resolves them (uffd-async).
    public let faults: UInt64?
    /// Times the backend reported the whole range because it lost per-page precision.
    public let fallbacks: Int
}
