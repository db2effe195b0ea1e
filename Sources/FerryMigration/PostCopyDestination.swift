#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryRegion
import FerrySystem
import FerryTracking
import FerryTransport
import FerryWire
import Synchronization

/// The destination's side of a post-copy migration, from the switch-over on: the workload already runs here
/// while the pages it lacks arrive, on demand over the urgent channel and in the background over the main one.
///
/// Guarantees: a thread of the workload that touches a page not here yet blocks until that page is installed
/// whole (userfaultfd missing mode, `MissingPageFaults`); it never sees a zero page that should not be zero,
/// because only pages the source did not send as stale are installed as zero locally. Each page is installed
/// once and hashed from the bytes installed, before any thread can touch it, so the digest compared at the end
/// is of what the workload started from. When every page is here, missing mode ends and the ownership record
/// says the move is over. If a connection breaks, faulting threads stay blocked (the workload waits; nothing
/// is lost or invented), the interruption is logged and shown, and when the source reconnects (`reattach`) it
/// is told which pages are here and the rest continues.
final class PostCopyDestination: Sendable {
    /// What the session did, for the logs and the source's report.
    struct Statistics: Sendable {
        var demandPages = 0
        var backgroundPages = 0
        /// Demand faults by latency: bucket i counts faults served in [2^i, 2^(i+1)) microseconds.
        var latencyBuckets = [UInt64](repeating: 0, count: Frame.maximumLatencyBuckets)
        var seconds = 0.0
    }

    private struct State {
        /// Pages present with their final content.
        var have: [Bool]
        /// Pages the source still sends (stale here, or never sent).
        var lacking: [Bool]
        var remaining: Int
        var digest: IncrementalDigest
        /// Faulting pages waiting for the background stream, since when.
        var waiting: [Int: ContinuousClock.Instant] = [:]
        var statistics = Statistics()
        /// Why the pages stopped coming, while they do not (a broken link, until the source reconnects).
        var interruption: String?
        var finished = false
    }

    /// The connections to the source: replaced when it reconnects after a break.
    private struct Links {
        var main: Connection?
        var urgent: Connection?
    }

    let region: MigratableRegion
    /// Names this migration's connections: a reconnecting source presents it.
    let token: [UInt8]
    private let faults: MissingPageFaults
    private let links: Mutex<Links>
    private let state: Mutex<State>
    private let started = ContinuousClock.now
    private let faultThreadDone = DispatchSemaphore(value: 0)

    /// Switches `region` to post-copy: registers it in missing mode, drops the stale pages (`lacking`), and starts
    /// serving faults over `urgent`. Nothing of the workload runs yet; call `finish(sharedDirectory:generation:log:)`
    /// on a thread of its own once it does.
    init(region: MigratableRegion, lacking runs: [PageRun], digest: IncrementalDigest, main: Connection, urgent: Connection,
         token: [UInt8], log: @escaping @Sendable (String) -> Void) throws {
        let range = region.range
        var lacking = [Bool](repeating: false, count: range.pageCount)
        var remaining = 0
        for run in runs {
            for page in run.first..<run.end where !lacking[page] {
                lacking[page] = true
                remaining += 1
            }
            // Stale here: drop it, so the next touch faults and fetches the source's copy.
            guard madvise(range.baseAddress + run.first * range.pageSize, run.count * range.pageSize, MADV_DONTNEED) == 0 else {
                throw MigrationError.aborted("cannot drop the stale pages \(run) of \(range): \(Errno.current)")
            }
        }
        self.region = region
        self.token = token
        links = Mutex(Links(main: main, urgent: urgent))
        faults = try MissingPageFaults(range: range)
        state = Mutex(State(have: lacking.map { !$0 }, lacking: lacking, remaining: remaining, digest: digest))
        let thread = Thread { [self] in serveFaults(log: log) }
        thread.name = "ferry-postcopy-faults"
        thread.start()
    }

    /// Pages still to arrive.
    var pagesLeft: Int { state.withLock { $0.remaining } }

    /// Why the pages stopped coming, while they do not.
    var interruption: String? { state.withLock { $0.interruption } }

    /// Whether every page arrived and missing mode ended.
    var isFinished: Bool { state.withLock { $0.finished } }

    /// Records why the pages stopped coming.
    func interrupted(_ why: String) { state.withLock { $0.interruption = $0.interruption ?? why } }

    // MARK: Reconnecting

    /// A reconnecting source's new main connection: it is told which pages are here (the rest continues on it).
    func reattach(main link: Connection) throws {
        let count = region.range.pageCount
        let bitmap = state.withLock { state -> [UInt8] in
            var bits = [UInt8](repeating: 0, count: (count + 7) / 8)
            for page in 0..<count where state.have[page] { bits[page / 8] |= 1 << UInt8(page % 8) }
            return bits
        }
        try link.send(.pagesHeld(pageCount: UInt64(count), bitmap: bitmap))
        links.withLock { $0.main?.shutdown(); $0.main = link }
        state.withLock { $0.interruption = nil }
    }

    /// A reconnecting source's new urgent channel.
    func reattach(urgent link: Connection) {
        links.withLock { $0.urgent?.shutdown(); $0.urgent = link }
    }

    /// The current link of one kind, waiting (indefinitely: the source decides how long to try) while there
    /// is none; nil once the session finished.
    private func current(_ kind: KeyPath<Links, Connection?>) -> Connection? {
        while true {
            if let link = links.withLock({ $0[keyPath: kind] }) { return link }
            if isFinished { return nil }
            usleep(20_000)
        }
    }

    /// Forgets a link that broke (unless it was replaced meanwhile) and says why the pages stopped coming.
    private func broken(_ link: Connection, _ kind: WritableKeyPath<Links, Connection?>, _ error: any Error, log: @Sendable (String) -> Void) {
        let forgotten = links.withLock { links -> Bool in
            guard links[keyPath: kind] === link else { return false }
            links[keyPath: kind] = nil
            return true
        }
        link.shutdown()
        if forgotten {
            interrupted("\(error); waiting for the source to reconnect")
            log("post-copy interrupted: \(error); threads touching the \(pagesLeft) pages not here yet wait until the source reconnects")
        }
    }

    // MARK: Installing

    /// Installs the pages of `buffer` at `first ..< first + count` that are not here yet, hashing what it installs.
    private func install(first: Int, count: Int, from buffer: UnsafeRawPointer, demand: Bool) throws {
        let pageSize = region.range.pageSize
        // A bounded slice at a time, so a demand fault never waits long behind a background frame.
        var slice = first
        while slice < first + count {
            let end = Swift.min(first + count, slice + 64)
            try state.withLock { state throws in
                var page = slice
                while page < end {
                    guard !state.have[page] else { page += 1; continue }
                    var runEnd = page + 1
                    while runEnd < end && !state.have[runEnd] { runEnd += 1 }
                    let source = buffer + (page - first) * pageSize
                    try faults.install(first: page, count: runEnd - page, from: source)
                    state.digest.record(first: page, count: runEnd - page, from: source)
                    settle(&state, pages: page..<runEnd, demand: demand)
                    page = runEnd
                }
            }
            slice = end
        }
    }

    /// Installs zero pages at `first ..< first + count` where nothing is yet.
    private func installZero(first: Int, count: Int, demand: Bool) throws {
        try state.withLock { state throws in
            var page = first
            while page < first + count {
                guard !state.have[page] else { page += 1; continue }
                var runEnd = page + 1
                while runEnd < first + count && !state.have[runEnd] { runEnd += 1 }
                try faults.installZero(first: page, count: runEnd - page)
                state.digest.zero(first: page, count: runEnd - page)
                settle(&state, pages: page..<runEnd, demand: demand)
                page = runEnd
            }
        }
    }

    /// Marks pages installed: counts them, and the latency of faults that waited for them.
    private func settle(_ state: inout State, pages: Range<Int>, demand: Bool) {
        let now = ContinuousClock.now
        for page in pages {
            state.have[page] = true
            if state.lacking[page] {
                state.remaining -= 1
                if demand { state.statistics.demandPages += 1 } else { state.statistics.backgroundPages += 1 }
            }
            if let since = state.waiting.removeValue(forKey: page) {
                let micros = Swift.max(1, (now - since).microsecondsValue)
                let bucket = Swift.min(Frame.maximumLatencyBuckets - 1, Int(log2(micros)))
                state.statistics.latencyBuckets[bucket] += 1
            }
        }
    }

    // MARK: The fault thread

    /// Serves missing-page faults until every page is here (or a connection broke): a page the source does
    /// not hold as data-to-send is installed as zero here; any other is asked for on the urgent channel.
    private func serveFaults(log: @Sendable (String) -> Void) {
        defer { faultThreadDone.signal() }
        let pageSize = region.range.pageSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        do {
            while let page = try faults.nextFault() {
                let now = ContinuousClock.now
                let (present, lacking, pending) = state.withLock { state -> (Bool, Bool, Bool) in
                    let pending = state.waiting[page] != nil
                    if !state.have[page] && !pending { state.waiting[page] = now }
                    return (state.have[page], state.lacking[page], pending)
                }
                if present { faults.wake(page: page); continue }
                if pending { continue }  // asked for already: its install wakes this thread too
                guard lacking else {
                    try installZero(first: page, count: 1, demand: true)
                    continue
                }
                // Ask on the urgent channel; when it breaks, ask again on the next one.
                while let urgent = current(\.urgent) {
                    do {
                        try urgent.send(.pageRequest(firstPage: UInt64(page), pageCount: 1))
                        switch try urgent.receive(while: "waiting for page \(page) on the urgent channel") {
                        case .pageData(let first, let count) where count <= 16 && Int(first) == page:
                            let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(count) * pageSize])
                            try urgent.receiveBytes(into: bytes)
                            try install(first: page, count: Int(count), from: bytes.baseAddress!, demand: true)
                        case .zeroPages(let first, let count) where Int(first) == page && count <= 16:
                            try installZero(first: page, count: Int(count), demand: true)
                        case .pageEnRoute(let first, _) where Int(first) == page:
                            break  // on the background stream; its install wakes the faulting thread
                        case let other:
                            throw MigrationError.protocolViolation("expected page \(page) on the urgent channel, got \(other)")
                        }
                        break
                    } catch let error as TransportError {
                        broken(urgent, \.urgent, error, log: log)
                    }
                }
            }
        } catch {
            interrupted("serving faults failed: \(error)")
            log("post-copy: serving faults failed: \(error); threads touching pages not yet here wait")
        }
    }

    // MARK: The background stream and the end

    /// Receives the background stream on the main connection until the source has sent everything and every
    /// page is here; then ends missing mode, clears the record's post-copy mark, and sends the source its
    /// statistics and this side's digest. Returns the statistics; throws (leaving faulting threads blocked) if
    /// the link broke.
    func finish(sharedDirectory: String, generation: UInt64, log: @Sendable (String) -> Void) throws -> Statistics {
        let pageSize = region.range.pageSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MigrationSource.pagesPerFrame * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        var main: Connection!
        receiving: while true {
            guard let link = current(\.main) else { throw MigrationError.aborted("post-copy ended") }
            main = link
            do {
                switch try main.receive(while: "receiving the post-copy background stream") {
                case .pageData(let first, let count):
                    guard count > 0, Int(count) <= MigrationSource.pagesPerFrame, Int(first) + Int(count) <= region.range.pageCount else {
                        throw MigrationError.protocolViolation("background pages \(first)+\(count) do not fit")
                    }
                    let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(count) * pageSize])
                    try main.receiveBytes(into: bytes)
                    try install(first: Int(first), count: Int(count), from: bytes.baseAddress!, demand: false)
                case .zeroPages(let first, let count):
                    guard count > 0, first < UInt64(region.range.pageCount), count <= UInt64(region.range.pageCount) - first else {
                        throw MigrationError.protocolViolation("background zero pages \(first)+\(count) lie outside the region")
                    }
                    try installZero(first: Int(first), count: Int(count), demand: false)
                case .roundEnd(let summary) where summary.final:
                    // Everything is sent; replies to demand requests may still be on their way.
                    let deadline = ContinuousClock.now + .seconds(main.timeoutSeconds)
                    while pagesLeft > 0 && ContinuousClock.now < deadline { usleep(200) }
                    guard pagesLeft > 0 else { break receiving }
                    throw MigrationError.protocolViolation("\(pagesLeft) pages never arrived after the source sent everything")
                case .abort(let reason):
                    throw MigrationError.aborted("the source: \(reason)")
                case let other:
                    throw MigrationError.protocolViolation("unexpected \(other) in the post-copy background stream")
                }
            } catch let error as TransportError {
                broken(main, \.main, error, log: log)
            }
        }
        state.withLock { $0.finished = true }
        faults.stopWaiting()
        faultThreadDone.wait()
        try faults.unregister()
        // The move is over: this process alone holds the workload.
        if var record = try OwnershipRecord.read(in: sharedDirectory), record.generation == generation, record.postCopySource != nil {
            record.postCopySource = nil
            try record.write(in: sharedDirectory)
        }
        var statistics = state.withLock { $0.statistics }
        statistics.seconds = (ContinuousClock.now - started).secondsValue
        let digest = state.withLock { $0.digest.digest }
        try main.send(.postCopyDone(demandPages: UInt64(statistics.demandPages), latencyBuckets: statistics.latencyBuckets))
        try main.send(.digest(algorithm: RegionDigest.algorithm, value: RegionDigest.bytes(of: digest)))
        log(String(format: "post-copy complete: every page here after %.3f s (%d on demand, %d in the background); missing mode ended",
                   statistics.seconds, statistics.demandPages, statistics.backgroundPages))
        return statistics
    }
}
