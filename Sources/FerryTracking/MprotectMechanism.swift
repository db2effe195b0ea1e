#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
internal import CShims
import FerrySystem
import Synchronization

/// `mprotect`: the range is made read-only; the `SIGSEGV` handler in `CShims` makes a written page
/// writable and sets its dirty bit. The collector takes the bits, then re-protects before returning.
///
/// Un-protecting single pages splits the mapping into many VMAs; when the kernel refuses another split
/// (`vm.max_map_count`), the handler makes the whole range writable and flags it, and the next collect
/// reports every page and re-protects the range in one call (which merges the VMAs again).
final class MprotectMechanism: TrackingMechanism {
    /// Above this many runs, one `mprotect` re-protects the whole range (cheaper, and it defragments).
    static let wholeRangeThreshold = 64

    let range: MemoryRange
    let kernelWrites = KernelWriteBehavior.failsWithEFAULT
    private let bitmap: DirtyBitmap
    private let slot: CInt
    private struct State {
        var armed = false
        var stopped = false
        var overflows = 0
    }
    private let state = Mutex(State())

    static func probe() throws(SystemCallError) {
        try withScratchPages { range throws(SystemCallError) in
            let mechanism = try MprotectMechanism(range: range, splitBudget: 4)
            defer { mechanism.stop() }
            try mechanism.arm()
            range.baseAddress.storeBytes(of: 7, toByteOffset: range.pageSize, as: UInt8.self)
            let dirty = try mechanism.collect()
            guard dirty.runs == [PageRun(first: 1, count: 1)] else {
                throw SystemCallError("mprotect", errno: .notSupported, subject: "probe reported \(dirty.runs)")
            }
        }
    }

    /// Pages un-protected one by one per round before falling back to the whole range: an eighth of
    /// `vm.max_map_count` (8,191 at the default 65,530), leaving the rest of the process room for its own maps.
    static var defaultSplitBudget: Int { (Kernel.integer(at: "/proc/sys/vm/max_map_count") ?? 65_530) / 8 }

    init(range: MemoryRange, splitBudget: Int? = nil) throws(SystemCallError) {
        self.range = range
        _ = try systemCall("sigaction(SIGSEGV)") { CShims_segv_install() }
        bitmap = DirtyBitmap(pageCount: range.pageCount)
        let budget = UInt64(Swift.max(splitBudget ?? Self.defaultSplitBudget, 0))
        slot = CShims_segv_add(range.start, range.byteCount, UInt32(range.pageShift), bitmap.words, budget)
        guard slot >= 0 else {
            throw SystemCallError("mprotect tracker table", errno: .noMemory, subject: "at most \(CSHIMS_SEGV_SLOTS) ranges")
        }
    }

    deinit { stop() }

    func arm() throws(SystemCallError) {
        try state.withLock { state throws(SystemCallError) in
            // Armed before protecting, so no fault can find the range unarmed.
            CShims_segv_set_armed(slot, true)
            state.armed = true
            try protect(start: range.start, byteCount: range.byteCount, writable: false)
        }
    }

    func collect() throws(SystemCallError) -> DirtyPages {
        try state.withLock { state throws(SystemCallError) -> DirtyPages in
            let overflowed = CShims_segv_take_overflow(slot)
            var dirty = bitmap.take()
            // Pages un-protected from here on count against the next round's budget. Resetting before
            // re-protecting can only let a few more splits through, never lose a report.
            CShims_segv_reset_budget(slot)
            if overflowed {
                state.overflows += 1
                dirty = .all(pageCount: range.pageCount)
            }
            if overflowed || dirty.runs.count > Self.wholeRangeThreshold {
                try protect(start: range.start, byteCount: range.byteCount, writable: false)
                return dirty
            }
            do throws(SystemCallError) {
                for run in dirty.runs {
                    try protect(start: range.address(ofPage: run.first), byteCount: run.count * range.pageSize, writable: false)
                }
            } catch where error.errno == .noMemory {
                // Re-protecting a run inside a writable VMA needs a split too: protect the whole range.
                try protect(start: range.start, byteCount: range.byteCount, writable: false)
            }
            return dirty
        }
    }

    func prepareForKernelWrite(_ run: PageRun) throws(SystemCallError) {
        try state.withLock { _ throws(SystemCallError) in
            do throws(SystemCallError) {
                try protect(start: range.address(ofPage: run.first), byteCount: run.count * range.pageSize, writable: true)
                bitmap.set(run)  // after un-protecting, as the handler does
            } catch where error.errno == .noMemory {
                try protect(start: range.start, byteCount: range.byteCount, writable: true)
                bitmap.set(PageRun(first: 0, count: range.pageCount))
            }
        }
    }

    func stop() {
        state.withLock { state in
            guard !state.stopped else { return }
            state.stopped = true
            // Writable before disarming, so no fault can find the range protected but unarmed.
            _ = mprotect(range.baseAddress, range.byteCount, PROT_READ | PROT_WRITE)
            CShims_segv_remove(slot)
        }
    }

    var faultCount: UInt64? { CShims_segv_fault_count(slot) }
    var fallbackCount: Int { state.withLock { $0.overflows } }

    private func protect(start: UInt, byteCount: Int, writable: Bool) throws(SystemCallError) {
        let protection = writable ? PROT_READ | PROT_WRITE : PROT_READ
        _ = try systemCall(writable ? "mprotect(PROT_READ|PROT_WRITE)" : "mprotect(PROT_READ)",
                           subject: "0x\(String(start, radix: 16))+\(ByteCount(byteCount))") {
            mprotect(UnsafeMutableRawPointer(bitPattern: start), byteCount, protection)
        }
    }
}
