#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
internal import CShims
import FerrySystem
import Synchronization

/// `uffd-async`: userfaultfd `WP_ASYNC` write-protection; `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`
/// reports the written pages and re-protects them in one atomic step per page-table entry.
final class UffdAsyncMechanism: TrackingMechanism {
    static let features = UInt64(UFFD_FEATURE_WP_ASYNC) | UInt64(UFFD_FEATURE_WP_UNPOPULATED)
    /// Output vector entries per PAGEMAP_SCAN call; the scan continues from `walk_end` when it fills.
    static let vectorLength = 4096

    let range: MemoryRange
    let kernelWrites = KernelWriteBehavior.tracked
    private let uffd: Userfaultfd
    private let pagemap: CInt
    private struct State {
        var closed = false
        var reregistrations = 0
    }
    private let state = Mutex(State())
    /// PAGEMAP_SCAN's output vector, used under `state`'s lock only.
    private let vector: PageRegionVector
    /// Where a scan builds its runs before they become a `DirtyPages` (kept between collects).
    private let runBuffer = RunBuffer()

    static func probe() throws(SystemCallError) {
        try withScratchPages { range throws(SystemCallError) in
            let mechanism = try UffdAsyncMechanism(range: range)
            defer { mechanism.stop() }
            try mechanism.arm()
            range.baseAddress.storeBytes(of: 7, toByteOffset: range.pageSize, as: UInt8.self)
            let dirty = try mechanism.collect()
            guard dirty.runs == [PageRun(first: 1, count: 1)] else {
                throw SystemCallError("ioctl(PAGEMAP_SCAN)", errno: .notSupported, subject: "probe reported \(dirty.runs)")
            }
        }
    }

    init(range: MemoryRange) throws(SystemCallError) {
        self.range = range
        let uffd = try Userfaultfd(features: Self.features, userModeOnly: true)
        do {
            try uffd.registerWriteProtect(range)
            // Opened here, not inherited: after fork an inherited pagemap fd scans the parent.
            pagemap = try OwnedDescriptor(opening: "/proc/self/pagemap", flags: O_RDONLY).release()
        } catch {
            uffd.close()
            throw error
        }
        self.uffd = uffd
        vector = PageRegionVector(capacity: Self.vectorLength)
    }

    deinit { stop() }

    func arm() throws(SystemCallError) {
        try state.withLock { state throws(SystemCallError) in
            guard !state.closed else { return }
            try uffd.writeProtect(start: range.start, byteCount: range.byteCount, enabled: true)
        }
    }

    func collect() throws(SystemCallError) -> DirtyPages {
        try state.withLock { state throws(SystemCallError) -> DirtyPages in
            guard !state.closed else { return DirtyPages() }
            do throws(SystemCallError) {
                return try scan()
            } catch where error.errno == .notPermitted {
                // Part of the range lost its registration (mremap, a closed or foreign uffd): register
                // again and report the whole range, which is then armed afresh.
                try uffd.registerWriteProtect(range)
                try uffd.writeProtect(start: range.start, byteCount: range.byteCount, enabled: true)
                state.reregistrations += 1
                return .all(pageCount: range.pageCount)
            }
        }
    }

    /// One pass of PAGEMAP_SCAN over the range; contents of the reported pages may be read once it returns.
    ///
    /// The scan stops early only when the output vector fills. Its `walk_end` can then lag behind the
    /// regions it reported (seen on 6.18: it keeps the value from an internal buffer flush), so the next
    /// call starts after whichever is further; a vector that did not fill means the walk reached the end.
    private func scan() throws(SystemCallError) -> DirtyPages {
        let vector = vector.pointer
        let runs = runBuffer
        var count = 0  // runs in `runs`, sorted and merged
        var pageCount = 0
        var outOfOrder: [PageRun] = []  // only if the kernel ever reports backwards
        var cursor = UInt64(range.start)
        let end = UInt64(range.end)
        let shift = UInt64(range.pageShift)
        let base = UInt64(range.start)
        while cursor < end {
            var argument = pm_scan_arg(
                size: UInt64(MemoryLayout<pm_scan_arg>.size),
                flags: UInt64(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC),
                start: cursor, end: end, walk_end: 0,
                vec: UInt64(UInt(bitPattern: vector)), vec_len: UInt64(Self.vectorLength), max_pages: 0,
                category_inverted: 0, category_mask: UInt64(PAGE_IS_WRITTEN), category_anyof_mask: 0,
                return_mask: UInt64(PAGE_IS_WRITTEN))
            let filled = Int(try systemCall("ioctl(PAGEMAP_SCAN)", subject: "\(range)") {
                CShims_ioctl(pagemap, CShims_PAGEMAP_SCAN, &argument)
            })
            if count + filled > runs.capacity { runs.grow(to: Swift.max(runs.capacity * 2, count + filled)) }
            let buffer = runs.pointer
            var reportedEnd = cursor
            for index in 0..<filled {
                let region = vector[index]
                // Unmapped holes are skipped silently by the kernel: keep to our bounds ourselves.
                let first = Swift.max(region.start, base)
                let last = Swift.min(region.end, end)
                guard first < last else { continue }
                reportedEnd = Swift.max(reportedEnd, last)
                let page = Int((first - base) &>> shift)
                let pages = Int((last - first) &>> shift)
                if count > 0 {
                    let previous = buffer[count &- 1]
                    if page < previous.first {
                        outOfOrder.append(PageRun(unchecked: page, count: pages))
                        continue
                    }
                    if page <= previous.first &+ previous.count {
                        let runEnd = Swift.max(previous.first &+ previous.count, page &+ pages)
                        pageCount &+= runEnd &- (previous.first &+ previous.count)
                        buffer[count &- 1].count = runEnd &- previous.first
                        continue
                    }
                }
                buffer[count] = PageRun(unchecked: page, count: pages)
                count &+= 1
                pageCount &+= pages
            }
            guard filled == Self.vectorLength else { break }
            let next = Swift.max(argument.walk_end, reportedEnd)
            guard next > cursor else { break }
            cursor = next
        }
        let sorted = DirtyPages(trustedRuns: Array(UnsafeBufferPointer(start: runs.pointer, count: count)), pageCount: pageCount)
        return outOfOrder.isEmpty ? sorted : DirtyPages(unorderedRuns: sorted.runs + outOfOrder)
    }

    func prepareForKernelWrite(_ run: PageRun) throws(SystemCallError) {}

    func stop() {
        state.withLock { state in
            guard !state.closed else { return }
            state.closed = true
            // Closing the uffd drops every protection at once.
            uffd.close()
            _ = close(pagemap)
        }
    }

    var faultCount: UInt64? { nil }
    var fallbackCount: Int { state.withLock { $0.reregistrations } }
}

/// The output buffer of PAGEMAP_SCAN. `@unchecked Sendable`: only used under its owner's lock.
private final class PageRegionVector: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<page_region>
    init(capacity: Int) { pointer = .allocate(capacity: capacity) }
    deinit { pointer.deallocate() }
}


/// A growable buffer of runs. `@unchecked Sendable`: only used under its owner's lock.
private final class RunBuffer: @unchecked Sendable {
    private(set) var pointer = UnsafeMutablePointer<PageRun>.allocate(capacity: 1024)
    private(set) var capacity = 1024

    func grow(to newCapacity: Int) {
        let bigger = UnsafeMutablePointer<PageRun>.allocate(capacity: newCapacity)
        bigger.moveInitialize(from: pointer, count: capacity)
        pointer.deallocate()
        pointer = bigger
        capacity = newCapacity
    }

    deinit { pointer.deallocate() }
}
