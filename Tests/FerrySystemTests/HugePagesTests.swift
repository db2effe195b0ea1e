#if canImport(Glibc)
import Glibc
#endif
@testable import FerrySystem
import Testing

/// Transparent huge pages on real mappings: the advice, the alignment, and the count of bytes they back.
@Suite struct HugePagesTests {
    /// The huge page size, or a cancelled test (with the reason printed) where the kernel gives no THP.
    static func hugePageSize() throws -> Int {
        guard TransparentHugePages.isAvailable, let size = TransparentHugePages.size else {
            let policy = TransparentHugePages.policy.map { "\($0)" } ?? "not built into this kernel"
            print("skip: no transparent huge pages here (policy: \(policy))")
            try Test.cancel("no transparent huge pages here (policy: \(policy))")
        }
        return size
    }

    @Test func thePolicyIsTheBracketedChoice() {
        #expect(TransparentHugePages.selected(in: "always [madvise] never") == "madvise")
        #expect(TransparentHugePages.selected(in: "always inherit madvise [never]") == "never")
        #expect(TransparentHugePages.selected(in: "[always] madvise never") == "always")
        #expect(TransparentHugePages.selected(in: "always madvise never") == nil)
        #expect(TransparentHugePages.selected(in: nil) == nil)
    }

    @Test func anAdvisedMappingStartsOnAHugePageAndHugePagesBackEachWholeOne() throws {
        let huge = try Self.hugePageSize()
        let pageSize = Kernel.pageSize
        // Four huge pages and three base pages: the tail cannot be a huge page.
        let mapping = try AnonymousMapping(byteCount: 4 * huge + 3 * pageSize, populate: true, hugePages: true)
        let range = mapping.range
        let advised = mapping.hugePagesAdvised
        #expect(advised)
        #expect(range.start % UInt(huge) == 0, "\(range) does not start on a huge page")
        #expect(range.byteCount == 4 * huge + 3 * pageSize)
        #expect(try TransparentHugePages.backedBytes(in: range) == 4 * huge)
        // Counted per range, not per mapping: half of huge page 0 and all of huge page 1.
        let part = MemoryRange(start: range.start + UInt(huge / 2), byteCount: huge + huge / 2, pageSize: pageSize)
        #expect(try TransparentHugePages.backedBytes(in: part) == huge + huge / 2)
        #expect(range.baseAddress.load(fromByteOffset: range.byteCount - 1, as: UInt8.self) == 0)
    }

    @Test func aFirstTouchFaultsInAWholeHugePageOnlyWhereAdvised() throws {
        let huge = try Self.hugePageSize()
        let advised = try AnonymousMapping(byteCount: 2 * huge, hugePages: true)
        #expect(try TransparentHugePages.backedBytes(in: advised.range) == 0, "nothing is populated yet")
        advised.range.baseAddress.storeBytes(of: 1, toByteOffset: huge + 100, as: UInt8.self)
        #expect(try TransparentHugePages.backedBytes(in: advised.range) == huge)

        let plain = try AnonymousMapping(byteCount: 2 * huge, populate: true)
        let plainAdvised = plain.hugePagesAdvised
        #expect(!plainAdvised)
        if TransparentHugePages.policy == .madvise {
            #expect(try TransparentHugePages.backedBytes(in: plain.range) == 0, "THP is madvise-only here")
        }
    }

    /// In a child process of its own, so no other test's mapping can sit next to (and merge with) this one:
    /// smaps counts per VMA. The child's exit status names the check that failed.
    @Test func aFixedAddressGetsHugePagesAndSmapsAgreesWithThePageScan() async throws {
        _ = try Self.hugePageSize()
        await #expect(processExitsWith: .success) {
            let huge = TransparentHugePages.size!
            // Find a free, huge-page-aligned address for four huge pages, then map exactly there.
            let probe = try AnonymousMapping(byteCount: 5 * huge).release()
            munmap(probe.baseAddress, probe.byteCount)
            let address = (probe.start + UInt(huge) - 1) & ~UInt(huge - 1)
            let mapping = try AnonymousMapping(byteCount: 4 * huge, at: address, populate: true, hugePages: true)
            guard mapping.range.start == address else { exit(2) }
            guard try TransparentHugePages.scannedBytes(in: mapping.range) == 4 * huge else { exit(3) }
            guard try TransparentHugePages.smapsBytes(in: mapping.range) == 4 * huge else { exit(4) }
            // Protecting one base page inside huge page 1 splits its VMA, and with it that huge page only.
            mprotect(mapping.range.baseAddress + huge + 4096, 4096, PROT_READ)
            guard try TransparentHugePages.scannedBytes(in: mapping.range) == 3 * huge else { exit(5) }
            guard try TransparentHugePages.smapsBytes(in: mapping.range) == 3 * huge else { exit(6) }
            exit(0)
        }
    }
}
