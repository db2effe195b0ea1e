#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension AnonymousMapping {
    /// Keeps the first `byteCount` bytes (rounded up to pages) and unmaps the rest; the returned mapping owns
    /// what is kept. A mapping already that short is returned as it is.
    public consuming func truncated(to byteCount: Int) -> AnonymousMapping {
        let pageSize = range.pageSize
        let kept = Swift.min(range.byteCount, (byteCount + pageSize - 1) / pageSize * pageSize)
        let advised = hugePagesAdvised
        let whole = release()
        if kept < whole.byteCount { munmap(whole.baseAddress + kept, whole.byteCount - kept) }
        return AnonymousMapping(adopting: MemoryRange(start: whole.start, byteCount: kept, pageSize: pageSize), hugePagesAdvised: advised)
    }

    /// Takes ownership of a range this process mapped privately and anonymously.
    init(adopting range: MemoryRange, hugePagesAdvised: Bool) {
        self.range = range
        self.hugePagesAdvised = hugePagesAdvised
    }
}
