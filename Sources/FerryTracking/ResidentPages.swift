#if canImport(Glibc)
import Glibc
#endif
public import FerrySystem

/// Which pages of a range hold memory at all (present in RAM or swapped out), read from /proc/self/pagemap.
///
/// A page that was never touched (or was dropped with MADV_DONTNEED) reads as zeros without being stored
/// anywhere: a migration can send it as a zero range without reading it.
public enum ResidentPages {
    /// The runs of resident pages of `range`.
    /// - Throws: `SystemCallError` naming `open` or `pread` on /proc/self/pagemap.
    public static func runs(of range: MemoryRange) throws(SystemCallError) -> DirtyPages {
        let fd = try systemCall("open", subject: "/proc/self/pagemap") { open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        let chunk = 65536  // entries per read: 512 KiB
        let entries = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: chunk)
        defer { entries.deallocate() }
        var pages = DirtyPages()
        var page = 0
        let firstEntry = Int(range.start >> UInt(range.pageShift))
        while page < range.pageCount {
            let count = Swift.min(chunk, range.pageCount - page)
            let offset = off_t((firstEntry + page) * 8)
            let got = try systemCall("pread", subject: "/proc/self/pagemap") { pread(fd, entries.baseAddress, count * 8, offset) }
            let read = got / 8
            guard read > 0 else { break }
            for index in 0..<read where isResident(entries[index]) {
                pages.append(PageRun(unchecked: page + index, count: 1))
            }
            page += read
        }
        return pages
    }

    /// Bit 63 is "present"; bit 62 "swapped", but the kernel also sets it for the uffd-wp markers that
    /// write-protect never-touched pages (a swap-type entry whose type field, bits 0-4, reads 31, which no
    /// swap file can have): those pages hold no memory and read as zeros.
    @inline(__always)
    static func isResident(_ entry: UInt64) -> Bool {
        if entry & (1 << 63) != 0 { return true }
        return entry & (1 << 62) != 0 && entry & 0x1F != 0x1F
    }
}
