import FerryMigration
import FerrySystem
import FerryTracking
import Foundation
import Testing

/// The region digest on real mappings: the same value however it is computed, and a different one for any changed byte.
@Suite struct RegionDigestTests {
    /// A 64 MiB mapping whose first half is random and whose second half was never touched.
    static func halfRandomRegion() throws -> MemoryRange {
        let mapping = try AnonymousMapping(byteCount: 64 << 20)
        let range = mapping.release()
        var random = SplitMix64(seed: 11)
        let words = range.baseAddress.assumingMemoryBound(to: UInt64.self)
        for index in 0..<(range.byteCount / 16) { words[index] = random.next() }
        return range
    }

    @Test func threadsAndResidentPagesDoNotChangeTheDigest() throws {
        let range = try Self.halfRandomRegion()
        defer { munmap(range.baseAddress, range.byteCount) }
        // Before anything reads the untouched half (a read maps the shared zero page, which counts as present).
        let resident = try ResidentPages.runs(of: range)
        #expect(resident.pageCount == range.pageCount / 2, "only the written half holds memory")
        let full = RegionDigest.compute(range)
        for threads in [1, 2, 3, 4] {
            #expect(RegionDigest.compute(range, threads: threads) == full, "\(threads) threads")
            #expect(RegionDigest.compute(range, resident: resident, threads: threads) == full, "\(threads) threads, resident pages only")
        }
    }

    @Test func aChangedByteInAnySliceChangesTheDigest() throws {
        let range = try Self.halfRandomRegion()
        defer { munmap(range.baseAddress, range.byteCount) }
        let before = RegionDigest.compute(range, threads: 4)
        let bytes = range.baseAddress.assumingMemoryBound(to: UInt8.self)
        // One byte in each quarter (the slices of four threads), including the untouched half.
        for offset in [5, range.byteCount / 4 + 4097, range.byteCount / 2 + 12345, range.byteCount - 1] {
            bytes[offset] ^= 0x01
            #expect(RegionDigest.compute(range, threads: 4) != before, "byte \(offset)")
            #expect(RegionDigest.compute(range, threads: 1) == RegionDigest.compute(range, threads: 4))
            bytes[offset] ^= 0x01
        }
        #expect(RegionDigest.compute(range, threads: 4) == before)
    }

    @Test func swappedPagesChangeTheDigest() throws {
        let range = try Self.halfRandomRegion()
        defer { munmap(range.baseAddress, range.byteCount) }
        let before = RegionDigest.compute(range)
        let page = range.pageSize
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: page, alignment: 8)
        defer { scratch.deallocate() }
        scratch.copyMemory(from: range.baseAddress, byteCount: page)
        range.baseAddress.copyMemory(from: range.baseAddress + page, byteCount: page)
        (range.baseAddress + page).copyMemory(from: scratch, byteCount: page)
        #expect(RegionDigest.compute(range) != before, "a page's place counts, not only its bytes")
    }

    @Test func theIncrementalDigestMatchesAFullPass() throws {
        let range = try Self.halfRandomRegion()
        defer { munmap(range.baseAddress, range.byteCount) }
        var incremental = IncrementalDigest(pageCount: range.pageCount, pageSize: range.pageSize)
        incremental.update(range, first: 0, count: range.pageCount / 2)
        #expect(incremental.digest == RegionDigest.compute(range))
        memset(range.baseAddress, 0, range.pageSize * 3)
        incremental.zero(first: 0, count: 3)
        #expect(incremental.digest == RegionDigest.compute(range, threads: 2))
    }
}
