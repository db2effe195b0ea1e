import FerryTracking
import Testing

@Suite struct DirtyPagesTests {
    @Test func buildsSortedMergedRunsFromAnyOrder() {
        let pages = DirtyPages(pages: [9, 3, 4, 5, 3, 0, 10, 12])
        #expect(pages.runs == [PageRun(first: 0, count: 1), PageRun(first: 3, count: 3), PageRun(first: 9, count: 2), PageRun(first: 12, count: 1)])
        #expect(pages.pageCount == 7)
        #expect(Array(pages) == [0, 3, 4, 5, 9, 10, 12])
    }

    @Test func appendMergesTouchingAndOverlappingRuns() {
        var pages = DirtyPages()
        pages.append(PageRun(first: 2, count: 3))
        pages.append(PageRun(first: 5, count: 2))
        pages.append(PageRun(first: 6, count: 4))
        #expect(pages.runs == [PageRun(first: 2, count: 8)])
        #expect(pages.pageCount == 8)
    }

    @Test func containsFindsExactlyTheMembers() {
        let pages = DirtyPages(pages: [1, 2, 3, 7, 100])
        for page in 0..<120 {
            #expect(pages.contains(page) == [1, 2, 3, 7, 100].contains(page))
        }
    }

    @Test func allCoversTheRange() {
        #expect(DirtyPages.all(pageCount: 5).runs == [PageRun(first: 0, count: 5)])
        #expect(DirtyPages.all(pageCount: 0).isEmpty)
    }
}
