#if canImport(Glibc)
import Glibc
#endif
import FerrySystem
import Testing

/// What backs the memory a tracker contract test runs on.
enum Backing: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// Base pages (4 KiB on x86_64).
    case basePages = "base pages"
    /// Transparent huge pages (2 MiB on x86_64); tracking must still be exact per base page.
    case hugePages = "THP"

    var testDescription: String { rawValue }

    /// Maps at least `byteCount` bytes backed this way. For THP: a whole number of huge pages (at least one),
    /// advised and aligned; cancels the test case, saying why, where the kernel gives no THP.
    func mapping(byteCount: Int) throws -> AnonymousMapping {
        switch self {
        case .basePages:
            return try AnonymousMapping(byteCount: byteCount)
        case .hugePages:
            guard TransparentHugePages.isAvailable, let huge = TransparentHugePages.size else {
                let policy = TransparentHugePages.policy.map { "\($0)" } ?? "not built into this kernel"
                print("skip: no transparent huge pages here (policy: \(policy))")
                try Test.cancel("no transparent huge pages here (policy: \(policy))")
            }
            let mapping = try AnonymousMapping(byteCount: Swift.max(1, (byteCount + huge - 1) / huge) * huge, hugePages: true)
            let advised = mapping.hugePagesAdvised
            #expect(advised, "madvise(MADV_HUGEPAGE) was refused")
            return mapping
        }
    }

    /// Populates `range` (`MADV_POPULATE_WRITE`) and, for THP, requires that huge pages back all of it: a THP
    /// test on base pages would prove nothing.
    func populate(_ range: MemoryRange, sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(madvise(range.baseAddress, range.byteCount, MADV_POPULATE_WRITE) == 0, "MADV_POPULATE_WRITE: errno \(errno)")
        try requireHugePages(range, sourceLocation: sourceLocation)
    }

    /// For THP, requires that huge pages back all of `range` (already populated); nothing for base pages.
    func requireHugePages(_ range: MemoryRange, sourceLocation: SourceLocation = #_sourceLocation) throws {
        guard self == .hugePages else { return }
        let backed = try TransparentHugePages.backedBytes(in: range)
        try #require(
            backed == range.byteCount,
            "only \(ByteCount(backed)) of \(range) are backed by huge pages", sourceLocation: sourceLocation)
    }
}

extension MemoryRange {
    /// `pages` pages of this range from page `first`.
    func pages(_ first: Int, count: Int) -> MemoryRange {
        MemoryRange(start: address(ofPage: first), byteCount: count * pageSize, pageSize: pageSize)
    }
}
