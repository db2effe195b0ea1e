/// A run of consecutive pages: `count` pages starting at page index `first` of a tracked range.
public struct PageRun: Hashable, Sendable, CustomStringConvertible {
    /// Index of the first page, counted from the start of the tracked range.
    public var first: Int
    /// Number of pages, at least 1.
    public var count: Int

    public init(first: Int, count: Int) {
        precondition(first >= 0 && count > 0, "a page run holds at least one page at a non-negative index")
        self.first = first
        self.count = count
    }

    /// Without the checks, for runs built from kernel reports already bounded by the caller.
    init(unchecked first: Int, count: Int) {
        self.first = first
        self.count = count
    }

    /// One past the last page index.
    public var end: Int { first + count }
    /// The page indices of the run.
    public var pages: Range<Int> { first..<end }

    public var description: String { count == 1 ? "[\(first)]" : "[\(first)..<\(end)]" }
}

/// The pages written since the previous collect: sorted, non-overlapping, non-adjacent runs.
public struct DirtyPages: Hashable, Sendable, Sequence {
    /// The runs in ascending order; no two runs touch.
    public private(set) var runs: [PageRun]
    /// Total pages in all runs.
    public private(set) var pageCount: Int

    /// No page at all.
    public init() {
        runs = []
        pageCount = 0
    }

    /// Every page of a range of `pageCount` pages (what a tracker reports when it lost precision).
    public static func all(pageCount: Int) -> DirtyPages {
        var pages = DirtyPages()
        if pageCount > 0 { pages.append(PageRun(first: 0, count: pageCount)) }
        return pages
    }

    /// Takes runs already sorted, non-overlapping and non-touching, with their page total (unchecked).
    init(trustedRuns runs: [PageRun], pageCount: Int) {
        self.runs = runs
        self.pageCount = pageCount
    }

    /// Builds the set from runs in any order, merging overlapping and touching ones.
    public init(unorderedRuns runs: [PageRun]) {
        self.init()
        let sorted = zip(runs, runs.dropFirst()).allSatisfy { $0.first <= $1.first } ? runs : runs.sorted { $0.first < $1.first }
        self.runs.reserveCapacity(sorted.count)
        for run in sorted { append(run) }
    }

    /// Builds the set from any page indices, in any order, with repeats.
    public init(pages: some Sequence<Int>) {
        self.init()
        for page in pages.sorted() { append(page: page) }
    }

    public var isEmpty: Bool { runs.isEmpty }

    /// Adds a run that starts at or after the end of the last run, merging it when they touch.
    /// - Precondition: runs are appended in ascending order.
    public mutating func append(_ run: PageRun) {
        if let last = runs.last, run.first <= last.end {
            precondition(run.first >= last.first, "runs must be appended in ascending order")
            let end = Swift.max(last.end, run.end)
            pageCount += end - last.end
            runs[runs.count - 1].count = end - last.first
        } else {
            runs.append(run)
            pageCount += run.count
        }
    }

    /// Adds a run if it starts at or after the last run's start (merging when they touch); returns false,
    /// adding nothing, if it does not. The hot path of collecting: no traps, no extra copies.
    @inline(__always)
    mutating func appendIfAscending(first: Int, count: Int) -> Bool {
        if let last = runs.last {
            if first < last.first { return false }
            if first <= last.end {
                let end = Swift.max(last.end, first + count)
                pageCount += end - last.end
                runs[runs.count - 1].count = end - last.first
                return true
            }
        }
        runs.append(PageRun(unchecked: first, count: count))
        pageCount += count
        return true
    }

    /// Reserves room for `count` more runs.
    mutating func reserveCapacity(_ count: Int) { runs.reserveCapacity(count) }

    /// Adds one page at or after the last page added.
    public mutating func append(page: Int) { append(PageRun(first: page, count: 1)) }

    /// Whether `page` is in the set (binary search).
    public func contains(_ page: Int) -> Bool {
        var low = 0
        var high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].end <= page { low = mid + 1 } else { high = mid }
        }
        return low < runs.count && runs[low].first <= page
    }

    /// The page indices in ascending order.
    public func makeIterator() -> FlattenSequence<LazyMapSequence<[PageRun], Range<Int>>>.Iterator {
        runs.lazy.map(\.pages).joined().makeIterator()
    }
}
