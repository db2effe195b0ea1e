#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerrySystem
import FerryTracking
import FerryTransport
import FerryWire
import Synchronization

/// The source's side of a post-copy migration, from the switch-over on: the workload is paused here for good
/// and its region frozen; this serves the pages the destination lacks, on demand over the urgent channel and
/// in the background over the main connection.
///
/// Guarantees: each lacking page goes out on the background stream unless a demand request claimed it first;
/// a demand request is always answered with the page, also when the background claimed it already (it may be
/// queued behind megabytes of stream: sent again, 4 KiB, rather than waited for). Pages that hold no memory
/// here go as zero ranges without being read.
final class PostCopySource: Sendable {
    /// What was sent where.
    struct Counts: Sendable {
        var demandPages = 0
        var sentTwice = 0
        var backgroundPages = 0
    }

    /// Pages per background frame: small, so a page a fault waits for (claimed, not yet on the wire) is
    /// never far behind, and the destination installs it in one short step.
    static let pagesPerFrame = 64

    private let range: MemoryRange
    private let urgent: Connection
    /// Pages sent, or claimed to be sent, on either channel; only lacking pages count as unsent.
    private let sent: Mutex<[Bool]>
    private let counts = Mutex(Counts())
    /// The last page asked for on demand: the background goes on from there (the workload is likely near it).
    private let lastRequested = Mutex<Int?>(nil)
    private let serverDone = DispatchSemaphore(value: 0)
    private let failure = Mutex<String?>(nil)

    /// The pages of `range` the destination lacks are `lacking`; demand requests arrive on `urgent`.
    init(range: MemoryRange, lacking: DirtyPages, urgent: Connection) {
        self.range = range
        self.urgent = urgent
        var sent = [Bool](repeating: true, count: range.pageCount)
        for run in lacking.runs { for page in run.first..<run.end { sent[page] = false } }
        self.sent = Mutex(sent)
    }

    /// Claims `page` for sending; false when it went (or is going) out already.
    private func claim(_ page: Int) -> Bool {
        sent.withLock { sent in
            guard !sent[page] else { return false }
            sent[page] = true
            return true
        }
    }

    /// Starts answering demand requests on the urgent channel, on a thread of its own, until `stop()`.
    func startServing() {
        let thread = Thread { [self] in
            defer { serverDone.signal() }
            do {
                while true {
                    let frame = try urgent.receive(while: "waiting for demand requests on the urgent channel")
                    guard case .pageRequest(let first, let count) = frame, count == 1, first < UInt64(range.pageCount) else {
                        throw MigrationError.protocolViolation("expected a request for one page on the urgent channel, got \(frame)")
                    }
                    let page = Int(first)
                    lastRequested.withLock { $0 = page }
                    // A page the background claimed may still be behind megabytes of queued stream: the
                    // faulting thread should not wait for those, so it gets its page here too (the destination
                    // keeps whichever copy lands first; both are the frozen page).
                    let claimed = claim(page)
                    try urgent.batched {
                        if MigrationSource.isZero(range, page: page) {
                            try urgent.send(.zeroPages(firstPage: UInt64(page), pageCount: 1))
                        } else {
                            try urgent.sendPages(of: range, first: page, count: 1)
                        }
                    }
                    counts.withLock { if claimed { $0.demandPages += 1 } else { $0.sentTwice += 1 } }
                }
            } catch {
                failure.withLock { $0 = "\(error)" }
            }
        }
        thread.name = "ferry-postcopy-urgent"
        thread.start()
    }

    /// Sends every lacking page not sent yet on `link`, from the last page asked for on demand onwards (then
    /// from the start), and ends with a final `roundEnd`. `resident` says which pages hold memory.
    func sendBackground(on link: Connection, resident: DirtyPages, round: Int) throws {
        var holdsMemory = [Bool](repeating: false, count: range.pageCount)
        for run in resident.runs { for page in run.first..<run.end { holdsMemory[page] = true } }
        let start = lastRequested.withLock { $0 }.map { Swift.min($0 + 1, range.pageCount) } ?? 0
        var sentPages = 0
        try link.batched {
            for segment in [start..<range.pageCount, 0..<start] {
                var page = segment.lowerBound
                while page < segment.upperBound {
                    guard claim(page) else { page += 1; continue }
                    // A run of pages claimed together, of one kind: zero (no memory, or all zero bytes) or data.
                    let zero = !holdsMemory[page] || MigrationSource.isZero(range, page: page)
                    var end = page + 1
                    while end < segment.upperBound, end - page < Self.pagesPerFrame,
                          (!holdsMemory[end] || MigrationSource.isZero(range, page: end)) == zero, claim(end) {
                        end += 1
                    }
                    if zero {
                        try link.send(.zeroPages(firstPage: UInt64(page), pageCount: UInt64(end - page)))
                    } else {
                        try link.sendPages(of: range, first: page, count: end - page)
                    }
                    sentPages += end - page
                    page = end
                }
            }
            try link.send(.roundEnd(RoundSummary(round: UInt32(round), pages: UInt64(sentPages), zeroPages: 0, bytes: 0, final: true)))
        }
        counts.withLock { $0.backgroundPages = sentPages }
    }

    /// Closes the urgent channel and waits for its thread.
    func stop() {
        urgent.shutdown()
        serverDone.wait()
    }

    var sentCounts: Counts { counts.withLock { $0 } }
}
