#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryAuth
import FerrySystem
import FerryTracking
import FerryTransport
import FerryWire
import Synchronization

/// The source's side of a post-copy migration, from the switch-over on: the workload is paused here for good
/// and its region frozen; this serves the pages the destination lacks, on demand over the urgent channel and
/// in the background over the main connection, until the destination holds every page, and reconnects when a
/// link breaks.
///
/// Guarantees: each lacking page goes out on the background stream unless a demand request claimed it first;
/// a demand request is always answered with the page, also when the background claimed it already (it may be
/// queued behind megabytes of stream: sent again, 4 KiB, rather than waited for). Pages that hold no memory
/// here go as zero ranges without being read. After a reconnection the destination says which pages it holds,
/// and exactly the others are sent again. The region stays intact as long as this object lives.
final class PostCopySource: Sendable {
    /// What was sent where.
    struct Counts: Sendable {
        /// Pages claimed by a demand request (sent on the urgent channel only).
        var demandPages = 0
        var sentTwice = 0
        /// Pages sent on the background stream (after a reconnection, those lost in flight count again).
        var backgroundPages = 0
        var recoveries = 0
    }

    /// What the destination reported at the end.
    struct Outcome: Sendable {
        var demandPages: Int
        var latencyBuckets: [UInt64]
        var destinationDigest: UInt64
    }

    /// How to reach the destination again.
    struct Peer: Sendable {
        var destination: Endpoint
        var bindAddress: String?
        var key: PresharedKey
        var encryption: StreamEncryption
        var maximumBytesPerSecond: Double?
        var timeoutSeconds: Double

        /// A new connection to the destination, this side proven to hold the key.
        func connect() throws -> Connection {
            let link = try Connection.connect(
                to: destination, from: bindAddress, maximumBytesPerSecond: maximumBytesPerSecond, timeoutSeconds: timeoutSeconds)
            do throws(AuthError) {
                try PeerAuthentication.proveToDestination(on: link, key: key, encryption: encryption)
            } catch {
                throw MigrationError.authentication(error)
            }
            return link
        }
    }

    /// Pages per background frame: small, so a page a fault waits for (claimed, not yet on the wire) is
    /// never far behind, and the destination installs it in one short step.
    static let pagesPerFrame = 64

    let range: MemoryRange
    /// The generation the destination runs, and the token naming this migration's channels.
    let generation: UInt64
    let token: [UInt8]
    private let peer: Mutex<Peer>
    /// Pages sent, or claimed to be sent, on either channel; only lacking pages count as unsent.
    private let sent: Mutex<[Bool]>
    private let counts = Mutex(Counts())
    /// The last page asked for on demand: the background goes on from there (the workload is likely near it).
    private let lastRequested = Mutex<Int?>(nil)
    /// The urgent channel being served, and the semaphore its thread signals when it ends.
    private let serving = Mutex<(link: Connection, done: DispatchSemaphore)?>(nil)

    /// The pages of `range` the destination lacks are `lacking`.
    init(range: MemoryRange, lacking: DirtyPages, generation: UInt64, token: [UInt8], peer: Peer) {
        self.range = range
        self.generation = generation
        self.token = token
        self.peer = Mutex(peer)
        var sent = [Bool](repeating: true, count: range.pageCount)
        for run in lacking.runs { for page in run.first..<run.end { sent[page] = false } }
        self.sent = Mutex(sent)
    }

    var sentCounts: Counts { counts.withLock { $0 } }

    /// Lacking pages not sent yet.
    var pagesUnsent: Int { sent.withLock { $0.reduce(0) { $0 + ($1 ? 0 : 1) } } }

    /// Reconnects now (a retry waiting for its next second goes at once), to `destination` when given.
    func redirect(to destination: Endpoint?) {
        if let destination { peer.withLock { $0.destination = destination } }
        retryNow.withLock { $0 = true }
        // A link that only looks alive (a silent partition) is given up on now, not after its timeout.
        activeMain.withLock { $0?.shutdown() }
        serving.withLock { $0?.link.shutdown() }
    }

    /// The main connection the background stream is on.
    private let activeMain = Mutex<Connection?>(nil)

    /// Set by `redirect`: the next reconnection attempt does not wait.
    private let retryNow = Mutex(false)

    /// Claims `page` for sending; false when it went (or is going) out already.
    private func claim(_ page: Int) -> Bool {
        sent.withLock { sent in
            guard !sent[page] else { return false }
            sent[page] = true
            return true
        }
    }

    // MARK: Demand

    /// Starts answering demand requests on `urgent`, on a thread of its own, until that link breaks or `stop()`.
    func startServing(on urgent: Connection) {
        let done = DispatchSemaphore(value: 0)
        serving.withLock { $0 = (urgent, done) }
        let thread = Thread { [self] in
            defer { done.signal() }
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
                // The link broke or was closed: the background side notices too and reconnects.
            }
        }
        thread.name = "ferry-postcopy-urgent"
        thread.start()
    }

    /// Closes the urgent channel being served and waits for its thread.
    func stop() {
        guard let current = serving.withLock({ $0 }) else { return }
        current.link.shutdown()
        current.done.wait()
        current.done.signal()
        serving.withLock { $0 = nil }
    }

    // MARK: Background

    /// Sends every lacking page not sent yet on `link`, from the last page asked for on demand onwards (then
    /// from the start), and ends with a final `roundEnd`. `resident` says which pages hold memory.
    private func sendBackground(on link: Connection, resident: [Bool], round: Int) throws {
        let start = lastRequested.withLock { $0 }.map { Swift.min($0 + 1, range.pageCount) } ?? 0
        var sentPages = 0
        var faultReached = false
        try link.batched {
            for segment in [start..<range.pageCount, 0..<start] {
                var page = segment.lowerBound
                while page < segment.upperBound {
                    guard claim(page) else { page += 1; continue }
                    // A run of pages claimed together, of one kind: zero (no memory, or all zero bytes) or data.
                    let zero = !resident[page] || MigrationSource.isZero(range, page: page)
                    var end = page + 1
                    while end < segment.upperBound, end - page < Self.pagesPerFrame,
                          (!resident[end] || MigrationSource.isZero(range, page: end)) == zero, claim(end) {
                        end += 1
                    }
                    if zero {
                        try link.send(.zeroPages(firstPage: UInt64(page), pageCount: UInt64(end - page)))
                    } else {
                        try link.sendPages(of: range, first: page, count: end - page)
                    }
                    sentPages += end - page
                    counts.withLock { $0.backgroundPages += end - page }
                    if !faultReached && sentPages >= range.pageCount / 4 {
                        faultReached = true
                        FaultInjection.reached(.postCopy, link: link)
                    }
                    page = end
                }
            }
            try link.send(.roundEnd(RoundSummary(round: UInt32(round), pages: UInt64(sentPages), zeroPages: 0, bytes: 0, final: true)))
        }
    }

    /// Streams what the destination lacks on `link` (nil: reconnect first) while serving demand on `urgent`, and waits until the
    /// destination holds every page. When a link breaks, reconnects (every second, for `recoverWithin`
    /// seconds) and goes on from the pages the destination says it holds. Throws when it could not.
    func complete(link: Connection?, urgent: Connection, resident: [Bool], round: Int, recoverWithin: Double,
                  log: @Sendable (String) -> Void) throws -> Outcome {
        // Without a main link (the switch-over broke), reconnect first.
        var links: (main: Connection, urgent: Connection)? = link.map { ($0, urgent) }
        var failedSince: ContinuousClock.Instant?
        while true {
            do {
                if links == nil { links = try reconnect() }
                let (main, urgent) = links!
                activeMain.withLock { $0 = main }
                if serving.withLock({ $0 == nil }) { startServing(on: urgent) }
                try sendBackground(on: main, resident: resident, round: round)
                guard case .postCopyDone(let demandPages, let buckets) = try main.receive(while: "waiting for the destination to hold every page") else {
                    throw MigrationError.protocolViolation("expected the end of post-copy")
                }
                guard case .digest(let algorithm, let value) = try main.receive(while: "waiting for the destination's digest"),
                      algorithm == RegionDigest.algorithm, let digest = RegionDigest.value(of: value) else {
                    throw MigrationError.protocolViolation("expected the destination's \(RegionDigest.algorithm) digest")
                }
                stop()
                return Outcome(demandPages: Int(demandPages), latencyBuckets: buckets, destinationDigest: digest)
            } catch let error as MigrationError {
                // Not the link: the destination said something wrong, or refused us.
                stop()
                throw error
            } catch {
                stop()
                links?.main.shutdown()
                links = nil
                let since = failedSince ?? ContinuousClock.now
                failedSince = since
                guard (ContinuousClock.now - since).secondsValue < recoverWithin else {
                    throw MigrationError.aborted("post-copy could not reach the destination again within \(Int(recoverWithin)) s (\(error))")
                }
                log("post-copy: \(error); reconnecting to \(peer.withLock { $0.destination })")
                for _ in 0..<50 where !retryNow.withLock({ let now = $0; $0 = false; return now }) { usleep(20_000) }
            }
        }
    }

    /// Opens a new main connection and a new urgent channel to the destination, which says which pages it
    /// holds; the others count as unsent again (they may have been lost in flight).
    private func reconnect() throws -> (Connection, Connection) {
        let peer = self.peer.withLock { $0 }
        let main = try peer.connect()
        try main.send(.postCopy(generation: generation, token: token))
        guard case .pagesHeld(let count, let bitmap) = try main.receive(while: "waiting for the pages the destination holds"),
              count == UInt64(range.pageCount) else {
            throw MigrationError.protocolViolation("the destination did not say which of the \(range.pageCount) pages it holds")
        }
        sent.withLock { sent in
            for page in 0..<range.pageCount { sent[page] = bitmap[page / 8] & (1 << UInt8(page % 8)) != 0 }
        }
        let urgent = try peer.connect()
        try urgent.send(.urgentChannel(token: token))
        counts.withLock { $0.recoveries += 1 }
        return (main, urgent)
    }
}
