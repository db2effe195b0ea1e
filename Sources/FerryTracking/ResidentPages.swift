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
            for index in 0..<read where entries[index] & (3 << 62) != 0 {  // bit 63 present, bit 62 swapped
                pages.append(PageRun(unchecked: page + index, count: 1))
            }
            page += read
        }
        return pages
    }
}
