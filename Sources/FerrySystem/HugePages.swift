#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShims

/// Transparent huge pages (THP): whether the kernel backs anonymous memory with PMD-size pages (2 MiB on
/// x86_64), and how much of a range they back right now.
///
/// A THP is a performance matter only: the memory reads and writes the same, and the kernel may split one
/// into base pages at any time (a write-protect fault on part of it, `mprotect` on part of it, reclaim).
public enum TransparentHugePages {
    /// When the kernel gives anonymous memory PMD-size huge pages.
    public enum Policy: String, Hashable, Sendable {
        /// Every anonymous mapping large enough.
        case always
        /// Mappings advised with `madvise(MADV_HUGEPAGE)` only.
        case madvise
        /// None.
        case never
    }

    static let directory = "/sys/kernel/mm/transparent_hugepage"

    /// The PMD huge page size (`hpage_pmd_size`, 2 MiB on x86_64); nil if the kernel has no THP.
    public static let size: Int? = Kernel.integer(at: "\(directory)/hpage_pmd_size")

    /// The policy for PMD-size anonymous pages: the per-size setting (`hugepages-2048kB/enabled`, Linux 6.8+)
    /// unless it says `inherit`, else the global `enabled`; nil if the kernel has no THP.
    public static var policy: Policy? {
        guard let size else { return nil }
        if let perSize = selected(in: Kernel.firstLine(of: "\(directory)/hugepages-\(size / 1024)kB/enabled")),
            perSize != "inherit"
        {
            return Policy(rawValue: perSize)
        }
        return selected(in: Kernel.firstLine(of: "\(directory)/enabled")).flatMap(Policy.init(rawValue:))
    }

    /// Whether a mapping advised with `MADV_HUGEPAGE` can get huge pages here (the policy is not `never`).
    /// Whether it does still depends on free, unfragmented memory: see `backedBytes(in:)`.
    public static var isAvailable: Bool { policy.map { $0 != .never } ?? false }

    /// The bracketed word of a sysfs choice line, e.g. `madvise` in `always [madvise] never`.
    static func selected(in line: String?) -> String? {
        guard let line, let open = line.firstIndex(of: "["), let close = line[open...].firstIndex(of: "]") else {
            return nil
        }
        return String(line[line.index(after: open)..<close])
    }

    /// The bytes of `range` mapped by PMD-size huge pages right now, not counting the shared huge zero page.
    ///
    /// Exact per range with `PAGEMAP_SCAN` (Linux 6.7+; hugetlb pages count too); on older kernels, the sum of
    /// `AnonHugePages` in /proc/self/smaps of every mapping (VMA) that overlaps `range`, each capped at its
    /// overlap: exact when `range` is whole VMAs, an upper bound otherwise.
    /// - Throws: `SystemCallError` naming the call on /proc/self/pagemap or /proc/self/smaps.
    public static func backedBytes(in range: MemoryRange) throws(SystemCallError) -> Int {
        do {
            return try scannedBytes(in: range)
        } catch where error.errno == .inappropriateIoctl || error.errno == .invalidArgument {
            return try smapsBytes(in: range)  // no PAGEMAP_SCAN before Linux 6.7
        }
    }

    /// `backedBytes(in:)` by `PAGEMAP_SCAN`: the regions whose category is huge and neither the zero page nor
    /// a file's page.
    static func scannedBytes(in range: MemoryRange) throws(SystemCallError) -> Int {
        let pagemap = try OwnedDescriptor(opening: "/proc/self/pagemap", flags: O_RDONLY)
        let excluded = UInt64(PAGE_IS_PFNZERO | PAGE_IS_FILE)
        var bytes = 0
        try PagemapScan.forEachRun(in: range, pagemap: pagemap.rawValue, categoryMask: UInt64(PAGE_IS_HUGE) | excluded, inverted: excluded) {
            bytes += Int($1 - $0)
        }
        return bytes
    }

    /// `backedBytes(in:)` from /proc/self/smaps: `AnonHugePages` of each VMA overlapping `range`, capped at
    /// the overlap. Read as a stream: a process with many VMAs has a smaps of many megabytes.
    static func smapsBytes(in range: MemoryRange) throws(SystemCallError) -> Int {
        let smaps = try OwnedDescriptor(opening: "/proc/self/smaps", flags: O_RDONLY)
        var bytes = 0
        var overlap = 0  // bytes of the current VMA inside `range`; 0 if it lies outside
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var done = false
        while !done {
            let fd = smaps.rawValue
            let count = try systemCall("read", subject: "/proc/self/smaps") {
                buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            }
            if count == 0 {
                if pending.isEmpty { break }
                done = true
                pending.append(UInt8(ascii: "\n"))
            } else {
                pending += buffer[..<count]
            }
            var lineStart = 0
            while let newline = pending[lineStart...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[lineStart..<newline]
                lineStart = newline + 1
                if let (start, end) = vmaBounds(line) {
                    if start >= range.end {
                        done = true  // smaps lists VMAs in address order
                        break
                    }
                    let low = Swift.max(start, range.start)
                    let high = Swift.min(end, range.end)
                    overlap = low < high ? Int(high - low) : 0
                } else if overlap > 0, let kib = field("AnonHugePages:", of: line) {
                    bytes += Swift.min(kib * 1024, overlap)
                }
            }
            pending.removeFirst(lineStart)
        }
        return bytes
    }

    /// The bounds of a smaps VMA header line (`7f12a000-7f12c000 rw-p 00000000 00:00 0`), nil for a field line.
    private static func vmaBounds(_ line: ArraySlice<UInt8>) -> (UInt, UInt)? {
        let token = line.prefix { $0 != UInt8(ascii: " ") }
        guard let dash = token.firstIndex(of: UInt8(ascii: "-")),
            let start = UInt(String(decoding: token[..<dash], as: UTF8.self), radix: 16),
            let end = UInt(String(decoding: token[(dash + 1)...], as: UTF8.self), radix: 16)
        else { return nil }
        return (start, end)
    }

    /// The number of a smaps field line (`AnonHugePages:   4096 kB`) named `name`.
    private static func field(_ name: StaticString, of line: ArraySlice<UInt8>) -> Int? {
        let prefix = UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        guard line.starts(with: prefix) else { return nil }
        let digits = line.dropFirst(prefix.count).drop { $0 == UInt8(ascii: " ") }.prefix { $0 >= 48 && $0 <= 57 }
        return Int(String(decoding: digits, as: UTF8.self))
    }
}
