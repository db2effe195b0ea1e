public import FerrySystem
public import FerryTracking
import Dispatch
import Foundation

/// A 64-bit digest of a memory region, computed the same way on both hosts, page by page.
///
/// Not cryptographic: it exists to catch a page that differs between the source's paused region and the
/// destination's reconstruction (a write no tracker saw, a lost frame). Each page is hashed with four
/// independent multiply-rotate lanes over its 8-byte words; the digest is the wrapping sum of every
/// page's hash mixed with its index. Because it is a sum over pages, a side may supply the hashes of
/// pages it knows to be zero without reading them, or keep per-page hashes as pages arrive.
public enum RegionDigest {
    public static let algorithm = "ferry-pagemix64"

    /// The hash of one page's bytes.
    @inline(__always)
    public static func pageHash(_ page: UnsafeRawPointer, byteCount: Int) -> UInt64 {
        let words = page.assumingMemoryBound(to: UInt64.self)
        let prime: UInt64 = 0x9E37_79B1_85EB_CA87
        var a: UInt64 = 0x9E37_79B9_7F4A_7C15
        var b: UInt64 = 0xC2B2_AE3D_27D4_EB4F
        var c: UInt64 = 0x1656_67B1_9E37_79F9
        var d: UInt64 = 0x85EB_CA77_C2B2_AE63
        var index = 0
        let count = byteCount / 8
        while index + 4 <= count {
            a = ((a ^ words[index]) &* prime).rotated(31)
            b = ((b ^ words[index + 1]) &* prime).rotated(31)
            c = ((c ^ words[index + 2]) &* prime).rotated(31)
            d = ((d ^ words[index + 3]) &* prime).rotated(31)
            index += 4
        }
        return mix(a ^ b.rotated(17) ^ c.rotated(29) ^ d.rotated(43))
    }

    /// The hash of an all-zero page of `byteCount` bytes.
    public static func zeroPageHash(byteCount: Int) -> UInt64 {
        let zeros = [UInt64](repeating: 0, count: byteCount / 8)
        return zeros.withUnsafeBytes { pageHash($0.baseAddress!, byteCount: byteCount) }
    }

    /// A page's contribution to the digest.
    @inline(__always)
    public static func contribution(page: Int, hash: UInt64) -> UInt64 {
        mix(hash ^ (UInt64(page) &* 0xFF51_AFD7_ED55_8CCD))
    }

    /// Threads a digest uses when a workload is paused (its cores are idle): every core this process may run on.
    public static var defaultThreads: Int { ProcessInfo.processInfo.activeProcessorCount }

    /// The digest of `range`, reading only the pages in `resident` (all pages when nil); every other page
    /// counts as zero without being read (it holds no memory, so it reads as zeros). Pages are split into
    /// `threads` contiguous slices hashed in parallel (the sum does not depend on the split); slices are at
    /// least 16 MiB, so a small region takes one thread.
    public static func compute(_ range: MemoryRange, resident: DirtyPages? = nil, threads: Int = 1) -> UInt64 {
        let runs = resident?.runs ?? [PageRun(first: 0, count: range.pageCount)]
        let minimumSlice = Swift.max(1, (16 << 20) / range.pageSize)
        let slices = Swift.max(1, Swift.min(threads, range.pageCount / minimumSlice))
        if slices == 1 { return compute(range, runs: runs, pages: 0..<range.pageCount) }
        let sums = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: slices)
        defer { sums.deallocate() }
        let pagesPerSlice = (range.pageCount + slices - 1) / slices
        nonisolated(unsafe) let output = sums
        DispatchQueue.concurrentPerform(iterations: slices) { slice in
            let lower = slice * pagesPerSlice
            output[slice] = compute(range, runs: runs, pages: lower..<Swift.min(range.pageCount, lower + pagesPerSlice))
        }
        return sums.reduce(0, &+)
    }

    /// The digest's share from the pages in `pages`, reading those of them inside `runs`.
    private static func compute(_ range: MemoryRange, runs: [PageRun], pages: Range<Int>) -> UInt64 {
        let zero = zeroPageHash(byteCount: range.pageSize)
        var digest: UInt64 = 0
        var cursor = pages.lowerBound
        for run in runs where run.end > pages.lowerBound && run.first < pages.upperBound {
            let first = Swift.max(run.first, pages.lowerBound)
            let end = Swift.min(run.end, pages.upperBound)
            while cursor < first { digest &+= contribution(page: cursor, hash: zero); cursor += 1 }
            for page in first..<end {
                digest &+= contribution(page: page, hash: pageHash(range.baseAddress + page * range.pageSize, byteCount: range.pageSize))
            }
            cursor = end
        }
        while cursor < pages.upperBound { digest &+= contribution(page: cursor, hash: zero); cursor += 1 }
        return digest
    }

    /// The digest as the 8 bytes sent on the wire (big-endian).
    public static func bytes(of digest: UInt64) -> [UInt8] { withUnsafeBytes(of: digest.bigEndian) { Array($0) } }

    /// The digest from its 8 wire bytes, nil for any other length.
    public static func value(of bytes: [UInt8]) -> UInt64? {
        guard bytes.count == 8 else { return nil }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    @inline(__always)
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 33)) &* 0xFF51_AFD7_ED55_8CCD
        z = (z ^ (z >> 33)) &* 0xC4CE_B9FE_1A85_EC53
        return z ^ (z >> 33)
    }
}

/// Per-page hashes of a region being rebuilt, kept as pages arrive, so the digest of the rebuilt region
/// is ready the moment the last page lands (what `audit` verification needs: the destination resumes
/// at once and its memory changes right after). 8 bytes per page: 0.2 % of the region.
public struct IncrementalDigest: Sendable {
    private var hashes: [UInt64]
    private let pageSize: Int

    /// Every page starts as zero.
    public init(pageCount: Int, pageSize: Int) {
        self.pageSize = pageSize
        hashes = [UInt64](repeating: RegionDigest.zeroPageHash(byteCount: pageSize), count: pageCount)
    }

    /// Records the pages `first..<first+count` as they now are in `range`.
    public mutating func update(_ range: MemoryRange, first: Int, count: Int) {
        for page in first..<(first + count) {
            hashes[page] = RegionDigest.pageHash(range.baseAddress + page * pageSize, byteCount: pageSize)
        }
    }

    /// Records the pages as zero.
    public mutating func zero(first: Int, count: Int) {
        let zero = RegionDigest.zeroPageHash(byteCount: pageSize)
        for page in first..<(first + count) { hashes[page] = zero }
    }

    public var digest: UInt64 {
        var digest: UInt64 = 0
        for (page, hash) in hashes.enumerated() { digest &+= RegionDigest.contribution(page: page, hash: hash) }
        return digest
    }
}

extension UInt64 {
    @inline(__always)
    fileprivate func rotated(_ count: UInt64) -> UInt64 { (self << count) | (self >> (64 - count)) }
}
