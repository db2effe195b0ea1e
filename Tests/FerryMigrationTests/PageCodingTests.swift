import CShims
@testable import FerryMigration
import FerrySystem
import FerryTracking
import FerryTransport
import FerryWire
import FerryRegion
import Foundation
import Synchronization
import Testing

/// The page coding of slow links: the delta codec (CShims/delta.c) on real pages, and `PageSender` against
/// `PageDecoder` over a real TCP connection, round after round, the destination's memory compared with the
/// source's after each.
@Suite struct PageCodingTests {
    static let pageSize = 4096

    static func encode(_ previous: [UInt8], _ current: [UInt8], capacity: Int = 2 * pageSize) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: capacity)
        let size = CShims_delta_encode(previous, current, previous.count, &out, capacity)
        return size < 0 ? nil : Array(out.prefix(size))
    }

    static func apply(_ encoded: [UInt8], to page: inout [UInt8]) -> Int {
        CShims_delta_apply(&page, page.count, encoded, encoded.count)
    }

    static func randomPage(_ generator: inout SplitMix64) -> [UInt8] {
        (0..<pageSize / 8).flatMap { _ in withUnsafeBytes(of: generator.next()) { Array($0) } }
    }

    /// Runs `receive` on its own thread with the connection a loopback listener accepts, and `send` here with a
    /// connection to it. Returns once both have ended (when `send` throws, its link is shut first, so the receiver
    /// ends before the caller's mappings are released), with `receive`'s error, if any.
    static func exchange(receive: @escaping @Sendable (Connection) throws -> Void, send: (Connection) throws -> Void) throws -> String? {
        let listener = try Listener(on: Endpoint(host: "127.0.0.1", port: 0))
        let failure = Mutex<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            defer { done.signal() }
            do { try receive(try listener.accept(timeoutSeconds: 10)) } catch { failure.withLock { $0 = "\(error)" } }
        }
        var link: Connection?
        do {
            let connected = try Connection.connect(to: Endpoint(host: "127.0.0.1", port: listener.endpoint.port))
            link = connected
            try send(connected)
        } catch {
            link?.shutdown()
            done.wait()
            throw error
        }
        done.wait()
        return failure.withLock { $0 }
    }

    /// Every kind of change decodes back to exactly the new page, and consumes exactly its encoding.
    @Test func deltasDecodeToTheNewPage() throws {
        var generator = SplitMix64(seed: 42)
        let previous = Self.randomPage(&generator)
        var cases: [(String, [UInt8])] = [("unchanged", previous)]
        for (name, offsets) in [("first byte", [0]), ("last byte", [Self.pageSize - 1]), ("two apart", [100, 102]),
                                ("version and checksum", Array(0..<8) + Array(16..<24)), ("scattered", stride(from: 3, to: 4096, by: 97).map { $0 })] {
            var page = previous
            for offset in offsets { page[offset] ^= 0xA5 }
            cases.append((name, page))
        }
        cases.append(("every byte", previous.map { $0 ^ 0xFF }))
        cases.append(("random", Self.randomPage(&generator)))
        for (name, current) in cases {
            let encoded = try #require(Self.encode(previous, current), "\(name)")
            var page = previous
            #expect(Self.apply(encoded, to: &page) == encoded.count, "\(name)")
            #expect(page == current, "\(name)")
        }
        // Small changes encode small: 16 changed bytes take a few bytes more than themselves.
        let sixteen = cases.first { $0.0 == "version and checksum" }!.1
        #expect(try #require(Self.encode(previous, sixteen)).count <= 24)
        #expect(try #require(Self.encode(previous, previous)).count <= 4)
        // Over the capacity: refused, so the page goes whole.
        #expect(Self.encode(previous, cases.last!.1, capacity: Self.pageSize * 3 / 4) == nil)
    }

    /// A malformed delta is refused, never applied past the page: cut short, a run past the page's end, a run of
    /// nothing, a varint that never ends.
    @Test func malformedDeltasAreRefused() throws {
        var generator = SplitMix64(seed: 7)
        let previous = Self.randomPage(&generator)
        var current = previous
        for offset in stride(from: 0, to: 4096, by: 512) { current[offset] &+= 1 }
        let encoded = try #require(Self.encode(previous, current))
        for cut in 0..<encoded.count {
            var page = previous
            #expect(Self.apply(Array(encoded.prefix(cut)), to: &page) == -1, "cut at \(cut) of \(encoded.count)")
        }
        var page = previous
        #expect(Self.apply([0x80, 0x40, 0x01, 0xAA], to: &page) == -1, "8,192 unchanged bytes in a 4,096-byte page")
        #expect(Self.apply([0x00, 0x00], to: &page) == -1, "a run of nothing")
        #expect(Self.apply([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], to: &page) == -1, "an endless varint")
        #expect(Self.apply([0xFF, 0x1F, 0x02, 0x01, 0x02], to: &page) == -1, "changed bytes past the page")
        #expect(page == previous, "nothing was written for a run that does not fit")
    }

    /// Rounds of a region sent by `PageSender` and installed by `PageDecoder` over loopback TCP: round 0 whole
    /// (and compressed), later rounds as deltas where the cache holds the page, zero pages forgetting their cached
    /// copy; after every round the destination holds exactly the source's bytes.
    @Test(arguments: [CompressionChoice.none, .zstd, .lz4])
    func roundsArriveExactly(compression: CompressionChoice) throws {
        let pages = 96
        let source = try AnonymousMapping(byteCount: pages * Self.pageSize)
        let destination = try AnonymousMapping(byteCount: pages * Self.pageSize)
        let sourceRange = source.range, destinationRange = destination.range
        // Text on the first half (compresses), random on the second.
        var text = RegionText(seed: 3)
        var generator = SplitMix64(seed: 9)
        for word in 0..<(pages * Self.pageSize / 8) {
            let value = word < pages * Self.pageSize / 16 ? text.next() : generator.next()
            (sourceRange.baseAddress + word * 8).storeBytes(of: value, as: UInt64.self)
        }
        let failure = try Self.exchange(receive: { link in
            let decoder = PageDecoder()
            while true {
                switch try link.receive(while: "test") {
                case .pageData(let first, let count): try link.receivePages(into: destinationRange, first: first, count: count)
                case .encodedPages(let first, let count, let encoding, let bytes):
                    try decoder.receive(into: destinationRange, first: first, count: count, encoding: encoding, byteCount: bytes, from: link)
                case .zeroPages(let first, let count):
                    memset(destinationRange.baseAddress + Int(first) * Self.pageSize, 0, Int(count) * Self.pageSize)
                case .roundEnd(let summary):
                    try link.send(.roundAck(round: summary.round))
                    if summary.final { return }
                default: Issue.record("unexpected frame")
                }
            }
        }, send: { link in
        // A cache of 64 pages: round 0 caches only the last 64 pages; page p and p+64 share a slot.
        let sender = try PageSender(range: sourceRange, compression: compression, deltaCacheBytes: 64 * Self.pageSize, pagesPerFrame: 16)
        func round(_ number: Int, pages runs: [PageRun], zero: [PageRun] = [], final: Bool = false) throws {
            sender.startRound()
            for run in runs { try sender.send(first: run.first, count: run.count, round: number, on: link) }
            for run in zero {
                memset(sourceRange.baseAddress + run.first * Self.pageSize, 0, run.count * Self.pageSize)
                try link.send(.zeroPages(firstPage: UInt64(run.first), pageCount: UInt64(run.count)))
                sender.forget(first: run.first, count: run.count)
            }
            try link.send(.roundEnd(RoundSummary(round: UInt32(number), pages: 0, zeroPages: 0, bytes: 0, final: final)))
            guard case .roundAck = try link.receive(while: "ack") else { throw MigrationError.protocolViolation("no ack") }
            #expect(memcmp(sourceRange.baseAddress, destinationRange.baseAddress, pages * Self.pageSize) == 0, "after round \(number)")
        }
        func touch(_ pageList: [Int], offset: Int = 8) {
            for page in pageList { (sourceRange.baseAddress + page * Self.pageSize + offset).storeBytes(of: UInt64(page) &* 0x9E37, as: UInt64.self) }
        }
        try round(0, pages: stride(from: 0, to: pages, by: 16).map { PageRun(first: $0, count: 16) })
        if compression != .none { #expect(sender.tally.compressedPages >= 16, "the text half compresses with \(compression)") }
        // Cached pages (32...95) change a few bytes: deltas. Uncached ones (0...31) go whole and are cached now.
        touch([1, 2, 3, 40, 41, 90])
        try round(1, pages: [PageRun(first: 1, count: 3), PageRun(first: 40, count: 2), PageRun(first: 90, count: 1)])
        #expect(sender.tally.deltaPages == 3, "pages 40, 41, 90 were cached by round 0")
        // Page 66 shared its slot with page 2, which evicted it in round 1: whole, and it evicts page 2 in turn.
        touch([66], offset: 100)
        try round(2, pages: [PageRun(first: 66, count: 1)])
        #expect(sender.tally.deltaPages == 0, "page 66 was evicted by page 2")
        touch([2], offset: 100)
        try round(3, pages: [PageRun(first: 2, count: 1)])
        #expect(sender.tally.deltaPages == 0, "page 2 was evicted by page 66")
        touch([2], offset: 200)
        try round(4, pages: [PageRun(first: 1, count: 3)])
        #expect(sender.tally.deltaPages == 3, "pages 1 and 3 (unchanged) and 2 are all cached")
        // A page sent as zeros leaves the cache: its next send is whole, not a delta against stale bytes.
        try round(5, pages: [], zero: [PageRun(first: 41, count: 1)])
        touch([41])
        try round(6, pages: [PageRun(first: 41, count: 1)], final: true)
        #expect(sender.tally.deltaPages == 0)
        })
        #expect(failure == nil)
    }

    /// `--compress auto`'s arithmetic on given measurements: a link faster than the compressor gets the bytes as
    /// they are, a slow one the best ratio, data that does not shrink is never compressed, and before the link
    /// is known the cheap codec is used for data that shrinks.
    @Test func autoCompressesOnlyWhenItPays() {
        func policy(link bytesPerSecond: Double?, lz4: (rate: Double, ratio: Double), zstd: (rate: Double, ratio: Double)) -> CompressionPolicy {
            var policy = CompressionPolicy()
            for (codec, measured) in [(PageEncoding.lz4, lz4), (.zstd, zstd)] {
                policy.compressed(codec, input: 1 << 20, output: Int(measured.ratio * Double(1 << 20)), seconds: Double(1 << 20) / measured.rate)
            }
            if let bytesPerSecond {
                let start = ContinuousClock.now
                policy.linkAcknowledged(1000, at: start)
                policy.linkAcknowledged(1000 + Int(bytesPerSecond / 10), at: start + .milliseconds(100))
            }
            return policy
        }
        let text = (lz4: (rate: 1.5e9, ratio: 0.56), zstd: (rate: 3e8, ratio: 0.38))
        let random = (lz4: (rate: 4e9, ratio: 1.0), zstd: (rate: 1e9, ratio: 1.0))
        #expect(policy(link: 3e9, lz4: text.lz4, zstd: text.zstd).choice() == nil, "loopback outruns both")
        #expect(policy(link: 12.5e6, lz4: text.lz4, zstd: text.zstd).choice() == .zstd, "100 Mbit/s: the best ratio")
        #expect(policy(link: 400e6, lz4: text.lz4, zstd: text.zstd).choice() == .lz4, "a link between them: the fast codec")
        #expect(policy(link: 12.5e6, lz4: random.lz4, zstd: random.zstd).choice() == nil, "random bytes do not shrink")
        #expect(policy(link: 0, lz4: text.lz4, zstd: text.zstd).choice() == .zstd, "a stalled link: the smallest output")
        #expect(policy(link: nil, lz4: text.lz4, zstd: text.zstd).choice() == .lz4, "not measured yet: the cheap codec")
        #expect(policy(link: nil, lz4: random.lz4, zstd: random.zstd).choice() == nil)
        #expect(abs(policy(link: 12.5e6, lz4: text.lz4, zstd: text.zstd).ratio(of: .auto) - 0.38) < 0.01)
        #expect(policy(link: 3e9, lz4: text.lz4, zstd: text.zstd).ratio(of: .auto) == 1)
    }

    /// A frame compressed while the workload writes one of its pages: every page the workload did not write
    /// arrives exact (a compressor reading the live page could match against bytes that then change, and decode a
    /// never-written page wrong). 300 frames of 16 text pages, zstd, a thread rewriting page 0 all along.
    @Test func pagesTheWorkloadDoesNotWriteArriveExactWhileAnotherPageOfTheFrameChanges() throws {
        let pages = 16
        let source = try AnonymousMapping(byteCount: pages * Self.pageSize)
        let destination = try AnonymousMapping(byteCount: pages * Self.pageSize)
        let sourceRange = source.range, destinationRange = destination.range
        var text = RegionText(seed: 11)
        for word in 0..<(pages * Self.pageSize / 8) { (sourceRange.baseAddress + word * 8).storeBytes(of: text.next(), as: UInt64.self) }
        let stop = Atomic<Bool>(false)
        let writerEnded = DispatchSemaphore(value: 0)
        let writer = Thread {
            defer { writerEnded.signal() }
            // Page 0 keeps changing to other text (so the rest of the frame finds matches in it).
            var other = RegionText(seed: 12)
            while !stop.load(ordering: .relaxed) {
                for word in 0..<(Self.pageSize / 8) {
                    let address = sourceRange.baseAddress + word * 8
                    address.storeBytes(of: other.next(), as: UInt64.self)
                }
            }
        }
        writer.start()
        // The writer ends before the mappings go (declared before this, they are released after it runs): a write
        // into an unmapped range another allocation took would corrupt the test process.
        defer {
            stop.store(true, ordering: .relaxed)
            writerEnded.wait()
        }
        let mismatches = Mutex<[Int]>([])
        let sender = try PageSender(range: sourceRange, compression: .zstd, deltaCacheBytes: 0, pagesPerFrame: pages)
        _ = try Self.exchange(receive: { link in
            let decoder = PageDecoder()
            for frame in 0..<300 {
                guard case .encodedPages(let first, let count, let encoding, let bytes)? = try? link.receive(while: "test"),
                      (try? decoder.receive(into: destinationRange, first: first, count: count, encoding: encoding, byteCount: bytes, from: link)) != nil
                else { mismatches.withLock { $0.append(-1) }; return }
                // Pages 1... never change: they must be exact.
                if memcmp(sourceRange.baseAddress + Self.pageSize, destinationRange.baseAddress + Self.pageSize, (pages - 1) * Self.pageSize) != 0 {
                    mismatches.withLock { $0.append(frame) }
                }
                _ = try? link.send(.roundAck(round: UInt32(frame)))
            }
        }, send: { link in
            for _ in 0..<300 {
                try sender.send(first: 0, count: pages, round: 0, on: link)
                guard case .roundAck = try link.receive(while: "ack") else { break }
            }
        })
        #expect(mismatches.withLock { $0 }.isEmpty, "frames whose unwritten pages arrived wrong: \(mismatches.withLock { $0 }.prefix(10))")
        #expect(sender.tally.compressedPages == 300 * pages, "every frame went compressed")
    }
}
