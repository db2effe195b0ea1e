public import FerrySystem
public import FerryTracking
import CShims
import Dispatch
import Foundation

/// A 64-bit digest of a memory region, computed the same way on both hosts, page by page.
///
/// Not cryptographic: it exists to catch a page that differs between the source's paused region and the
/// destination's reconstruction (a write no tracker saw, a lost frame). Each page is hashed in C (CShims'
/// digest.c) on eight fixed 64-bit lanes, XXH3-style, with AVX2 or SSE2 where the CPU has them and the same
/// bits on every CPU; the digest is the wrapping sum of every page's hash mixed with its index. Because it
/// is a sum over pages, a side may supply the hashes of pages it knows to be zero without reading them, or
/// keep per-page hashes as pages arrive.
public enum RegionDigest {
    /// Sent beside every digest: two builds that hash differently name different algorithms.
    public static let algorithm = "ferry-pagemix64-v2"

    /// The hash of one page's bytes (`byteCount` a positive multiple of 1 KiB, as every page size is).
    public static func pageHash(_ page: UnsafeRawPointer, byteCount: Int) -> UInt64 {
        checkPageSize(byteCount)
        return CShims_digest_page(page, byteCount)
    }

    /// The hash of an all-zero page of `byteCount` bytes.
    public static func zeroPageHash(byteCount: Int) -> UInt64 {
        let zeros = [UInt64](repeating: 0, count: byteCount / 8)
        return zeros.withUnsafeBytes { pageHash($0.baseAddress!, byteCount: byteCount) }
    }

    /// A page's contribution to the digest.
    public static func contribution(page: Int, hash: UInt64) -> UInt64 {
        CShims_digest_contribution(UInt64(page), hash)
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

    /// The digest of the region as it is in memory now, each thread finding which pages of its slice hold memory
    /// (`ResidentPages`) and hashing those: the scan is split across the threads like the hashing. Equal to
    /// `compute(range, resident: ResidentPages.runs(of: range), threads:)`.
    public static func computeFromMemory(_ range: MemoryRange, threads: Int) throws -> UInt64 {
        let minimumSlice = Swift.max(1, (16 << 20) / range.pageSize)
        let slices = Swift.max(1, Swift.min(threads, range.pageCount / minimumSlice))
        let pagesPerSlice = (range.pageCount + slices - 1) / slices
        let results = UnsafeMutableBufferPointer<Result<UInt64, any Error>>.allocate(capacity: slices)
        defer { results.deallocate() }
        nonisolated(unsafe) let output = results
        DispatchQueue.concurrentPerform(iterations: slices) { slice in
            let lower = slice * pagesPerSlice
            let upper = Swift.min(range.pageCount, lower + pagesPerSlice)
            let part = MemoryRange(start: range.address(ofPage: lower), byteCount: (upper - lower) * range.pageSize, pageSize: range.pageSize)
            (output.baseAddress! + slice).initialize(to: Result { () throws -> UInt64 in
                let runs = try ResidentPages.runs(of: part).runs.map { PageRun(first: $0.first + lower, count: $0.count) }
                return compute(range, runs: runs, pages: lower..<upper)
            })
        }
        var digest: UInt64 = 0
        for slice in 0..<slices { digest &+= try results[slice].get() }
        return digest
    }

    /// The digest's share from the pages in `pages`, reading those of them inside `runs`: each stretch of
    /// resident pages is one C call, each stretch between them a sum of zero-page contributions.
    private static func compute(_ range: MemoryRange, runs: [PageRun], pages: Range<Int>) -> UInt64 {
        checkPageSize(range.pageSize)
        let zero = zeroPageHash(byteCount: range.pageSize)
        var digest: UInt64 = 0
        var cursor = pages.lowerBound
        for run in runs where run.end > pages.lowerBound && run.first < pages.upperBound {
            let first = Swift.max(run.first, pages.lowerBound)
            let end = Swift.min(run.end, pages.upperBound)
            if cursor < first { digest &+= CShims_digest_sum(nil, zero, UInt64(cursor), first - cursor) }
            digest &+= CShims_digest_run(range.baseAddress + first * range.pageSize, range.pageSize, UInt64(first), end - first, nil)
            cursor = end
        }
        if cursor < pages.upperBound { digest &+= CShims_digest_sum(nil, zero, UInt64(cursor), pages.upperBound - cursor) }
        return digest
    }

    /// The digest as the 8 bytes sent on the wire (big-endian).
    public static func bytes(of digest: UInt64) -> [UInt8] { withUnsafeBytes(of: digest.bigEndian) { Array($0) } }

    /// The digest from its 8 wire bytes, nil for any other length.
    public static func value(of bytes: [UInt8]) -> UInt64? {
        guard bytes.count == 8 else { return nil }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    static func checkPageSize(_ byteCount: Int) {
        precondition(byteCount > 0 && byteCount % Int(CSHIMS_DIGEST_BLOCK) == 0, "page size \(byteCount) is not a multiple of 1 KiB")
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
        precondition(first >= 0 && count >= 0 && first + count <= hashes.count && range.pageSize == pageSize)
        guard count > 0 else { return }
        hashes.withUnsafeMutableBufferPointer { hashes in
            _ = CShims_digest_run(range.baseAddress + first * pageSize, pageSize, UInt64(first), count, hashes.baseAddress! + first)
        }
    }

    /// Records the pages `first..<first+count` as the bytes at `bytes` (a copy about to be installed there).
    public mutating func record(first: Int, count: Int, from bytes: UnsafeRawPointer) {
        precondition(first >= 0 && count >= 0 && first + count <= hashes.count)
        guard count > 0 else { return }
        hashes.withUnsafeMutableBufferPointer { hashes in
            _ = CShims_digest_run(bytes, pageSize, UInt64(first), count, hashes.baseAddress! + first)
        }
    }

    /// Records the pages as zero.
    public mutating func zero(first: Int, count: Int) {
        let zero = RegionDigest.zeroPageHash(byteCount: pageSize)
        for page in first..<(first + count) { hashes[page] = zero }
    }

    public var digest: UInt64 {
        hashes.withUnsafeBufferPointer { CShims_digest_sum($0.baseAddress, 0, 0, $0.count) }
    }
}
