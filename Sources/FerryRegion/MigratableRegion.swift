#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
public import FerrySystem

/// Where a region lives and how big it is. Source and destination use the same layout.
public struct RegionLayout: Hashable, Sendable, CustomStringConvertible {
    /// The default base address: high in the 47-bit user address space, far from the heap, the
    /// libraries (which the kernel places just below the stack) and the stack.
    public static let defaultBase: UInt = 0x7e00_0000_0000

    /// First byte's address; a multiple of `pageSize`.
    public var base: UInt
    /// Size in bytes; a positive multiple of `pageSize`.
    public var byteCount: Int
    /// The page size the region is measured in (this host's, `Kernel.pageSize`).
    public var pageSize: Int

    public init(base: UInt = RegionLayout.defaultBase, byteCount: Int, pageSize: Int = Kernel.pageSize) {
        self.base = base
        self.byteCount = byteCount
        self.pageSize = pageSize
    }

    /// The range the layout describes.
    public var range: MemoryRange { MemoryRange(start: base, byteCount: byteCount, pageSize: pageSize) }

    /// Checks that the layout can be mapped on this host.
    /// - Throws: `RegionError.invalidLayout` saying which field is wrong.
    public func validate() throws(RegionError) {
        guard pageSize == Kernel.pageSize else {
            throw .invalidLayout("page size \(pageSize) differs from this host's \(Kernel.pageSize)")
        }
        guard byteCount > 0, byteCount % pageSize == 0 else {
            throw .invalidLayout("size \(byteCount) is not a positive multiple of the \(pageSize)-byte page")
        }
        guard base != 0, base % UInt(pageSize) == 0 else {
            throw .invalidLayout("base 0x\(String(base, radix: 16)) is not a non-zero multiple of the page size")
        }
        guard base.addingReportingOverflow(UInt(byteCount)).overflow == false else {
            throw .invalidLayout("base + size overflows the address space")
        }
    }

    public var description: String { "0x\(String(base, radix: 16))+\(ByteCount(byteCount))" }
}

/// The migratable memory region: one anonymous private mapping at exactly `layout.base`, which the
/// destination maps at the same address so that absolute pointers stored inside stay valid.
///
/// The region owns its mapping and unmaps it when released. Its contents are not synchronised: the
/// workload that lives in it is stepped by one thread at a time, and the migration engine reads pages
/// only through the write tracker's protocol.
public final class MigratableRegion: Sendable {
    /// Where the region is mapped.
    public let layout: RegionLayout
    /// The mapped range (same as `layout.range`).
    public let range: MemoryRange
    /// Seconds spent pre-faulting the pages (`reserve(layout:populate: true)`); nil when not populated.
    public let populateSeconds: Double?

    private let mapping: AnonymousMapping

    private convenience init(layout: RegionLayout, populate: Bool, hugePages: Bool) throws(RegionError) {
        try layout.validate()
        let mapping: AnonymousMapping
        do {
            mapping = try AnonymousMapping(byteCount: layout.byteCount, at: layout.base, hugePages: hugePages)
        } catch {
            if error.errno == .exists { throw .addressInUse(base: layout.base, size: layout.byteCount) }
            throw .mapFailed(error)
        }
        var seconds: Double?
        if populate {
            let started = ContinuousClock.now
            try Self.populate(RegionBytes(mapping.range), offset: 0, count: mapping.range.byteCount)
            seconds = (ContinuousClock.now - started).secondsValue
        }
        self.init(layout: layout, adopting: mapping, populateSeconds: seconds)
    }

    /// Wraps a mapping that already starts at `layout.base` and is exactly `layout.byteCount` long.
    init(layout: RegionLayout, adopting mapping: consuming AnonymousMapping, populateSeconds: Double?) {
        precondition(mapping.range.start == layout.base && mapping.range.byteCount == layout.byteCount, "the mapping is not the layout's")
        self.layout = layout
        self.range = mapping.range
        self.mapping = mapping
        self.populateSeconds = populateSeconds
    }

    /// Maps a fresh, zeroed region for a workload to be created in (the source's side); with `hugePages`,
    /// backed by transparent huge pages where the kernel allows them (`TransparentHugePages.isAvailable`).
    ///
    /// A region larger than the memory this host can give it (`Kernel.availableMemory()`, less a 64 MiB
    /// margin) is refused before anything is mapped: it would only grow until the OOM killer ends the process.
    /// - Throws: `RegionError.insufficientMemory` with the figures, `.addressInUse` when anything is mapped in
    ///   the way, `.invalidLayout`, `.mapFailed`.
    public static func create(layout: RegionLayout, hugePages: Bool = false) throws(RegionError) -> MigratableRegion {
        try checkMemory(for: layout.byteCount)
        return try MigratableRegion(layout: layout, populate: false, hugePages: hugePages)
    }

    /// Memory kept free beside a region, for the process itself.
    public static let memoryMargin = 64 << 20

    /// Throws `.insufficientMemory` unless this host has `byteCount` plus `memoryMargin` available.
    public static func checkMemory(for byteCount: Int) throws(RegionError) {
        guard let available = Kernel.availableMemory() else { return }
        guard byteCount <= available - memoryMargin else {
            throw .insufficientMemory(required: byteCount, available: available)
        }
    }

    /// Maps the region at the same address on the destination, before any page arrives.
    ///
    /// - Parameter populate: pre-fault every page writable (`madvise(MADV_POPULATE_WRITE)`) before returning,
    ///   so the incoming stream writes into memory that is already there; the time it took is
    ///   `populateSeconds`. A destination that streams while it populates passes `false` and runs a
    ///   `RegionPopulator` instead.
    /// - Parameter hugePages: back it with transparent huge pages where the kernel allows them.
    /// - Throws: `RegionError.addressInUse`, `.invalidLayout`, `.mapFailed`, `.populateFailed`.
    public static func reserve(layout: RegionLayout, populate: Bool, hugePages: Bool = false) throws(RegionError) -> MigratableRegion {
        try MigratableRegion(layout: layout, populate: populate, hugePages: hugePages)
    }

    /// Whether the region was advised to be backed by transparent huge pages (asked for, and the kernel
    /// allows them). Tracking stays exact per base page either way: a written huge page is split.
    public var hugePagesAdvised: Bool { mapping.hugePagesAdvised }

    /// A pointer to the first byte; valid while the region lives.
    public var baseAddress: UnsafeMutableRawPointer { range.baseAddress }

    /// A view of the header at offset 0.
    public var header: RegionHeader { RegionHeader(range: range) }

    /// Reads and validates the header: magic, layout version, workload name, page size and region size.
    /// - Throws: `RegionError.notARegion`, `.unsupportedLayoutVersion` or `.malformedHeader`.
    public func readHeader() throws(RegionError) -> RegionHeaderInfo {
        try header.read()
    }

    /// Bounds-checked access to the region's bytes.
    public var bytes: RegionBytes { RegionBytes(range) }

    /// Fills `count` bytes at `offset` (page-aligned) as `fill` says.
    public func fill(_ fill: RegionFill, offset: Int, count: Int, seed: UInt64) throws(RegionError) {
        guard count > 0 else { return }
        switch fill {
        case .none:
            return
        case .zero:
            try Self.populate(bytes, offset: offset, count: count)
        case .random:
            var random = RegionRandom(state: RegionRandom.mix(seed, 0xF111))
            bytes.withBytes(at: offset, count: count) { buffer in
                let words = buffer.count / 8
                for index in 0..<words {
                    buffer.storeBytes(of: random.next(), toByteOffset: index * 8, as: UInt64.self)
                }
            }
        case .text:
            var text = RegionText(seed: seed)
            bytes.withBytes(at: offset, count: count) { buffer in
                for index in 0..<buffer.count / 8 {
                    buffer.storeBytes(of: text.next().littleEndian, toByteOffset: index * 8, as: UInt64.self)
                }
            }
        }
    }

    /// Pre-faults pages writable: `madvise(MADV_POPULATE_WRITE)` (Linux 5.14), or one write per page
    /// on kernels that do not know it.
    static func populate(_ bytes: RegionBytes, offset: Int, count: Int) throws(RegionError) {
        let pointer = bytes.base + offset
        do {
            _ = try systemCall("madvise(MADV_POPULATE_WRITE)", subject: "0x\(String(bytes.address(at: offset), radix: 16))+\(ByteCount(count))") {
                madvise(pointer, count, MADV_POPULATE_WRITE)
            }
        } catch {
            guard error.errno == .invalidArgument else { throw .populateFailed(error) }
            let pageSize = Kernel.pageSize
            for page in stride(from: offset, to: offset + count, by: pageSize) {
                // A read-modify-write of one byte faults the page in writable without changing it.
                bytes.store(bytes.load(UInt8.self, at: page), at: page)
            }
        }
    }
}
