internal import CShims
#if canImport(Glibc)
import Glibc
#endif

/// One bit per page, set by a fault handler (C, lock-free) and taken by the collector.
///
/// `@unchecked Sendable` because the buffer is shared with C code on purpose: every access after
/// creation goes through the atomic helpers in `CShims.h`.
final class DirtyBitmap: @unchecked Sendable {
    let pageCount: Int
    let wordCount: Int
    /// The words, for handing to C. Valid until `self` is released.
    let words: UnsafeMutablePointer<UInt64>
    /// Two counters a fault handler may increment atomically (the words after the bitmap):
    /// faults started and faults resolved.
    var counters: UnsafeMutablePointer<UInt64> { words + wordCount }

    init(pageCount: Int) {
        self.pageCount = pageCount
        wordCount = (pageCount + 63) / 64
        words = .allocate(capacity: wordCount + 2)
        words.initialize(repeating: 0, count: wordCount + 2)
    }

    deinit { words.deallocate() }

    /// Faults the handler resolved so far.
    var faults: UInt64 { CShims_bitmap_load_word(words, wordCount + 1) }

    /// Waits until the handler has set the bit of every fault it had started when this was called. Returns
    /// false, without waiting longer, once `handlerFailed()` is true: a handler that died between its two
    /// counters never resolves the fault it started.
    func waitForStartedFaults(unless handlerFailed: () -> Bool) -> Bool {
        let started = CShims_bitmap_load_word(words, wordCount)
        while CShims_bitmap_load_word(words, wordCount + 1) < started {
            if handlerFailed() { return false }
            sched_yield()
        }
        return true
    }

    /// Sets the bits of `run` atomically.
    func set(_ run: PageRun) {
        for page in run.pages { CShims_bitmap_set(words, page) }
    }

    /// Atomically takes every set bit (leaving zero) and returns them as runs.
    func take() -> DirtyPages {
        var pages = DirtyPages()
        var runStart = -1
        var runEnd = -1
        for word in 0..<wordCount {
            var bits = CShims_bitmap_take_word(words, word)
            while bits != 0 {
                let bit = bits.trailingZeroBitCount
                let page = word &* 64 &+ bit
                if page == runEnd {
                    runEnd += 1
                } else {
                    if runStart >= 0 { pages.append(PageRun(first: runStart, count: runEnd - runStart)) }
                    runStart = page
                    runEnd = page + 1
                }
                bits &= bits &- 1
            }
        }
        if runStart >= 0 { pages.append(PageRun(first: runStart, count: runEnd - runStart)) }
        return pages
    }
}
