#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An anonymous private mapping that unmaps itself when its owner is done with it.
public struct AnonymousMapping: ~Copyable, Sendable {
    /// The mapped range.
    public let range: MemoryRange

    /// Maps `byteCount` bytes of zeroed memory (`mmap(MAP_PRIVATE | MAP_ANONYMOUS)`).
    ///
    /// - Parameters:
    ///   - byteCount: rounded up to whole pages.
    ///   - address: when given, the mapping must start exactly there (`MAP_FIXED_NOREPLACE`): if anything
    ///     is already mapped in the way, this fails with `EEXIST` rather than replacing it.
    ///   - populate: pre-fault every page (`MAP_POPULATE`), so first touches later cost nothing.
    /// - Throws: `SystemCallError` naming `mmap`, the address and the size.
    public init(byteCount: Int, at address: UInt? = nil, populate: Bool = false) throws(SystemCallError) {
        let pageSize = Kernel.pageSize
        let length = (byteCount + pageSize - 1) / pageSize * pageSize
        var flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        if address != nil { flags |= MAP_FIXED_NOREPLACE }
        if populate { flags |= MAP_POPULATE }
        let hint = address.flatMap { UnsafeMutableRawPointer(bitPattern: $0) }
        let subject = address.map { "0x\(String($0, radix: 16))+\(ByteCount(length))" } ?? "\(ByteCount(length))"
        guard let mapped = mmap(hint, length, PROT_READ | PROT_WRITE, flags, -1, 0), mapped != MAP_FAILED else {
            throw SystemCallError("mmap", errno: .current, subject: subject)
        }
        let start = UInt(bitPattern: mapped)
        if let address, start != address {
            // A kernel older than 4.17 ignores MAP_FIXED_NOREPLACE and treats the address as a hint.
            munmap(mapped, length)
            throw SystemCallError("mmap", errno: .exists, subject: subject)
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
