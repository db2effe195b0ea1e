@testable import FerryTracking
import Foundation
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

/// The collector's wait for a fault handler (uffd-sync) that started a fault and has not resolved it yet.
@Suite struct DirtyBitmapWaitTests {
    @Test func theWaitEndsWhenTheHandlerResolvesItsStartedFaults() async {
        let bitmap = DirtyBitmap(pageCount: 128)
        bitmap.counters[0] = 1  // a fault started, not resolved yet
        let resolver = Thread {
            usleep(20_000)
            bitmap.set(PageRun(first: 5, count: 1))
            bitmap.counters[1] = 1
        }
        resolver.start()
        #expect(bitmap.waitForStartedFaults { false })
        #expect(bitmap.take().runs == [PageRun(first: 5, count: 1)])
    }

    @Test func aHandlerThatDiedMidFaultEndsTheWaitInsteadOfHangingIt() {
        let bitmap = DirtyBitmap(pageCount: 128)
        bitmap.counters[0] = 3
        bitmap.counters[1] = 2  // the handler died between its two counters
        var asked = 0
        #expect(bitmap.waitForStartedFaults { asked += 1; return asked >= 3 } == false)
        #expect(asked == 3)
    }
}
