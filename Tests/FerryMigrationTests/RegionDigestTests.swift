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
        // Each thread scanning its own slice for resident pages gives the same digest.
        let fromMemory = try (1...4).map { try RegionDigest.computeFromMemory(range, threads: $0) }
        let full = RegionDigest.compute(range)
        #expect(fromMemory.allSatisfy { $0 == full }, "\(fromMemory) against \(full)")
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

    @Test func aFlippedBitAtAnySampledPlaceChangesTheDigest() throws {
        // 32 MiB: two 16 MiB slices on two threads. Random bytes in the first half, never touched in the second.
        let mapping = try AnonymousMapping(byteCount: 32 << 20)
        let range = mapping.release()
        defer { munmap(range.baseAddress, range.byteCount) }
        var random = SplitMix64(seed: 12)
        let words = range.baseAddress.assumingMemoryBound(to: UInt64.self)
        for index in 0..<(range.byteCount / 16) { words[index] = random.next() }
        let before = RegionDigest.compute(range, threads: 2)
        var incremental = IncrementalDigest(pageCount: range.pageCount, pageSize: range.pageSize)
        incremental.update(range, first: 0, count: range.pageCount / 2)
        #expect(incremental.digest == before)
        let bytes = range.baseAddress.assumingMemoryBound(to: UInt8.self)
        // 96 pages spread over both halves and both slices; in each, a byte at a lane, stripe, block or page
        // edge or in between, and a bit, both cycling.
        let offsets = [0, 1, 7, 8, 63, 64, 100, 1023, 1024, 2047, 2048, 2500, 3071, 3072, 4000, 4095]
        var seen: Set<UInt64> = [before]
        for sample in 0..<96 {
            let page = (sample * 7919) % range.pageCount
            let offset = page * range.pageSize + offsets[sample % offsets.count] % range.pageSize
            let bit = UInt8(1) << UInt8((sample * 3) % 8)
            bytes[offset] ^= bit
            let changed = RegionDigest.compute(range, threads: 2)
            #expect(changed != before, "page \(page), byte \(offset % range.pageSize), bit \(bit)")
            #expect(RegionDigest.compute(range, resident: try ResidentPages.runs(of: range), threads: 1) == changed)
            incremental.update(range, first: page, count: 1)
            #expect(incremental.digest == changed, "the incremental digest sees it too")
            seen.insert(changed)
            bytes[offset] ^= bit
            incremental.update(range, first: page, count: 1)
        }
        #expect(seen.count == 97, "every flip gives its own digest")
        #expect(RegionDigest.compute(range, threads: 2) == before)
        #expect(incremental.digest == before)
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
