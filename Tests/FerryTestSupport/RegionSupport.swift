#if canImport(Glibc)
import Glibc
#endif
public import FerryRegion
public import FerrySystem
import Foundation

/// A layout at its own base (tests run in parallel in one process): `defaultBase + slot GiB`.
public func testLayout(slot: Int, pages: Int) -> RegionLayout {
    RegionLayout(base: RegionLayout.defaultBase + UInt(slot) << 30, byteCount: pages * Kernel.pageSize)
}

/// Runs `body` with a fresh directory under /tmp, removed afterwards.
public func withTemporaryDirectory<R>(_ body: (String) throws -> R) throws -> R {
    var template = Array("/tmp/ferry-region-test-XXXXXX".utf8CString)
    let path = try template.withUnsafeMutableBufferPointer { buffer -> String in
        guard let result = mkdtemp(buffer.baseAddress!) else {
            throw SystemCallError("mkdtemp", errno: .current, subject: "/tmp")
        }
        return String(cString: result)
    }
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

/// Which pages of `range` are resident (`mincore`).
public func residentPages(_ range: MemoryRange) -> [Bool] {
    var vector = [UInt8](repeating: 0, count: range.pageCount)
    let result = mincore(range.baseAddress, range.byteCount, &vector)
    precondition(result == 0, "mincore failed: \(Errno.current)")
    return vector.map { $0 & 1 != 0 }
}

/// A copy of the region's bytes, as the migration engine would have sent them.
public func snapshot(_ region: MigratableRegion) -> [UInt8] {
    Array(UnsafeRawBufferPointer(start: region.baseAddress, count: region.range.byteCount))
}

/// Maps the region again at the same base on the "destination", puts `bytes` in place.
public func restore(_ bytes: [UInt8], layout: RegionLayout) throws -> MigratableRegion {
    let region = try MigratableRegion.reserve(layout: layout, populate: true)
    bytes.withUnsafeBytes { region.baseAddress.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    return region
}

/// Writes `value` at `offset` in the region (corrupting it on purpose).
public func poke<T: FixedWidthInteger>(_ region: MigratableRegion, _ offset: Int, _ value: T) {
    region.baseAddress.storeBytes(of: value, toByteOffset: offset, as: T.self)
}

public func peek<T: FixedWidthInteger>(_ region: MigratableRegion, _ offset: Int, as: T.Type = T.self) -> T {
    region.baseAddress.loadUnaligned(fromByteOffset: offset, as: T.self)
}
