#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An anonymous private mapping that unmaps itself when its owner is done with it.
public struct AnonymousMapping: ~Copyable, Sendable {
    /// The mapped range.
    public let range: MemoryRange

    /// Whether the mapping was advised `MADV_HUGEPAGE` (asked for with `hugePages` and accepted by the kernel).
    /// Whether huge pages really back it depends on memory: `TransparentHugePages.backedBytes(in:)` says.
    public let hugePagesAdvised: Bool

    /// Maps `byteCount` bytes of zeroed memory (`mmap(MAP_PRIVATE | MAP_ANONYMOUS)`).
    ///
    /// - Parameters:
    ///   - byteCount: rounded up to whole pages.
    ///   - address: when given, the mapping must start exactly there (`MAP_FIXED_NOREPLACE`): if anything
    ///     is already mapped in the way, this fails with `EEXIST` rather than replacing it.
    ///   - populate: pre-fault every page (`MAP_POPULATE`; with `hugePages`, `MADV_POPULATE_WRITE` after the
    ///     advice, so the faults can take huge pages), so first touches later cost nothing.
    ///   - hugePages: ask for transparent huge pages (`madvise(MADV_HUGEPAGE)`) where the kernel allows them
    ///     (`TransparentHugePages.isAvailable`); elsewhere the mapping is made all the same, with base pages.
    ///     Without `address`, a mapping of at least one huge page starts on a huge-page boundary (over-mapped,
    ///     then trimmed), so every whole huge page inside it can be one; with `address`, only the huge pages
    ///     that lie wholly inside the range can be. Whether huge pages really back it depends on free memory:
    ///     `TransparentHugePages.backedBytes(in:)` says.
    /// - Throws: `SystemCallError` naming `mmap`, the address and the size.
    public init(byteCount: Int, at address: UInt? = nil, populate: Bool = false, hugePages: Bool = false)
        throws(SystemCallError)
    {
        let pageSize = Kernel.pageSize
        let length = (byteCount + pageSize - 1) / pageSize * pageSize
        let hugeSize = hugePages && TransparentHugePages.isAvailable ? TransparentHugePages.size ?? 0 : 0
        // Room to slide the start up to a huge-page boundary; the slack is unmapped below.
        let slack = address == nil && hugeSize > pageSize && length >= hugeSize ? hugeSize - pageSize : 0
        var flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        if address != nil { flags |= MAP_FIXED_NOREPLACE }
        if populate && hugeSize == 0 { flags |= MAP_POPULATE }
        let hint = address.flatMap { UnsafeMutableRawPointer(bitPattern: $0) }
        let subject = address.map { "0x\(String($0, radix: 16))+\(ByteCount(length))" } ?? "\(ByteCount(length))"
        guard let mapped = mmap(hint, length + slack, PROT_READ | PROT_WRITE, flags, -1, 0), mapped != MAP_FAILED else {
            throw SystemCallError("mmap", errno: .current, subject: subject)
        }
        var start = UInt(bitPattern: mapped)
        if let address, start != address {
            // A kernel older than 4.17 ignores MAP_FIXED_NOREPLACE and treats the address as a hint.
            munmap(mapped, length)
            throw SystemCallError("mmap", errno: .exists, subject: subject)
        }
        if slack > 0 {
            let aligned = (start + UInt(hugeSize) - 1) & ~(UInt(hugeSize) - 1)
            if aligned > start { munmap(mapped, Int(aligned - start)) }
            let tail = start + UInt(length + slack) - (aligned + UInt(length))
            if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: aligned + UInt(length)), Int(tail)) }
            start = aligned
        }
        let base = UnsafeMutableRawPointer(bitPattern: start)!
        // Advice only: if the kernel refuses it (THP disabled for this process), base pages back the mapping.
        hugePagesAdvised = hugeSize > 0 && madvise(base, length, MADV_HUGEPAGE) == 0
        if populate && hugeSize > 0 && madvise(base, length, MADV_POPULATE_WRITE) != 0 && Errno.current == .invalidArgument {
            // No MADV_POPULATE_WRITE before Linux 5.14: touch every page. Other failures (ENOMEM) are no error
            // here, as with MAP_POPULATE: the pages are faulted in on first use.
            for offset in stride(from: 0, to: length, by: pageSize) { base.storeBytes(of: 0, toByteOffset: offset, as: UInt8.self) }
        }
        range = MemoryRange(start: start, byteCount: length, pageSize: pageSize)
    }

    /// Gives the memory up without unmapping it (the caller now owns `range`).
    public consuming func release() -> MemoryRange {
        let range = self.range
        discard self
        return range
    }

    deinit {
        munmap(range.baseAddress, range.byteCount)
    }
}
