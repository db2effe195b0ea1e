#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A page-aligned range of the process's address space, as a plain value that can cross threads.
///
/// It does not own the memory; whoever mapped it must keep it mapped while the range is in use.
public struct MemoryRange: Hashable, Sendable, CustomStringConvertible {
    /// First byte's address.
    public let start: UInt
    /// Length in bytes, a multiple of `pageSize`.
    public let byteCount: Int
    /// The page size the range is measured in.
    public let pageSize: Int

    /// - Precondition: `start` and `byteCount` are multiples of `pageSize`, which is a power of two.
    public init(start: UInt, byteCount: Int, pageSize: Int = Kernel.pageSize) {
        precondition(pageSize > 0 && pageSize & (pageSize - 1) == 0, "page size must be a power of two")
        precondition(start % UInt(pageSize) == 0 && byteCount % pageSize == 0, "range must be page-aligned")
        self.start = start
        self.byteCount = byteCount
        self.pageSize = pageSize
    }

    /// Number of pages in the range.
    public var pageCount: Int { byteCount / pageSize }
    /// log2 of the page size.
    public var pageShift: Int { pageSize.trailingZeroBitCount }
    /// One past the last byte's address.
    public var end: UInt { start + UInt(byteCount) }
    /// The address of page `index` (0-based within the range).
    public func address(ofPage index: Int) -> UInt { start + UInt(index) << UInt(pageShift) }
    /// The page index holding `address`, or nil if it lies outside the range.
    public func pageIndex(of address: UInt) -> Int? {
        address >= start && address < end ? Int((address - start) >> UInt(pageShift)) : nil
    }

    /// A pointer to the first byte. Use it only while the memory is mapped.
    public var baseAddress: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: start)! }

    public var description: String {
        "0x\(String(start, radix: 16))+\(ByteCount(byteCount))"
    }
}

/// A byte count that prints the way people read sizes: `4 KiB`, `256 MiB`, `1.5 GiB`.
public struct ByteCount: Hashable, Sendable, CustomStringConvertible {
    public let bytes: Int
    public init(_ bytes: Int) { self.bytes = bytes }

    public var description: String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? "\(Int(rounded)) \(units[unit])" : "\(rounded) \(units[unit])"
    }
}
