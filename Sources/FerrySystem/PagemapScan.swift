#if canImport(Glibc)
import Glibc
#endif
import CShims

/// One way to walk a range with the `PAGEMAP_SCAN` ioctl (Linux 6.7+) on /proc/self/pagemap: the runs of pages
/// whose categories match, clipped to the range, in order, each reported once (the walk continues after a full
/// output vector from whichever is further, the kernel's `walk_end` or the last region it reported, since
/// `walk_end` was seen lagging on 6.18).
public enum PagemapScan {
    /// Calls `body` with the start and end addresses of each run of pages in `range` whose categories, with
    /// the bits of `inverted` flipped, include all of `categoryMask`.
    /// - Throws: `SystemCallError` naming `ioctl(PAGEMAP_SCAN)` (`ENOTTY` or `EINVAL` before Linux 6.7).
    public static func forEachRun(
        in range: MemoryRange, pagemap fd: CInt, categoryMask: UInt64, inverted: UInt64 = 0,
        _ body: (_ start: UInt64, _ end: UInt64) -> Void
    ) throws(SystemCallError) {
        let capacity = 512
        let vector = UnsafeMutablePointer<page_region>.allocate(capacity: capacity)
        defer { vector.deallocate() }
        var cursor = UInt64(range.start)
        let end = UInt64(range.end)
        while cursor < end {
            var argument = pm_scan_arg(
                size: UInt64(MemoryLayout<pm_scan_arg>.size), flags: 0, start: cursor, end: end, walk_end: 0,
                vec: UInt64(UInt(bitPattern: vector)), vec_len: UInt64(capacity), max_pages: 0,
                category_inverted: inverted, category_mask: categoryMask, category_anyof_mask: 0, return_mask: categoryMask)
            let filled = Int(try systemCall("ioctl(PAGEMAP_SCAN)", subject: "\(range)") {
                CShims_ioctl(fd, CShims_PAGEMAP_SCAN, &argument)
            })
            var reportedEnd = cursor
            for index in 0..<filled {
                let first = Swift.max(vector[index].start, cursor)
                let last = Swift.min(vector[index].end, end)
                if first < last { body(first, last) }
                reportedEnd = Swift.max(reportedEnd, last)
            }
            // A vector that did not fill means the walk reached the end.
            guard filled == capacity else { break }
            let next = Swift.max(argument.walk_end, reportedEnd)
            guard next > cursor else { break }
            cursor = next
        }
    }
}
