#if canImport(Glibc)
import Glibc
#endif
import CShims
import FerrySystem
import FerryTracking
import FerryTransport
import FerryWire

/// Whether and how page data is compressed on the wire (`ferry migrate --compress`).
public enum CompressionChoice: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Compress a frame only while that makes the stream faster: the link (measured as the stream runs) is
    /// slower than the compressor (measured too), and the data compresses (random bytes are sent as they are).
    case auto
    /// Never compress.
    case none
    /// Always zstd (level 1) where it makes a frame smaller.
    case zstd
    /// Always lz4 where it makes a frame smaller.
    case lz4

    public var description: String { rawValue }
}

/// What encoding saved in one round, for the report.
struct EncodingTally {
    /// Pages sent as deltas against the copy sent before, and the bytes that saved.
    var deltaPages = 0
    var deltaSavedBytes = 0
    /// Pages sent compressed, and the bytes that saved.
    var compressedPages = 0
    var compressedSavedBytes = 0
}

/// Sends runs of data pages for `MigrationSource`, each the cheapest way it knows:
///
/// - in rounds after the first, a page whose last sent copy is in the delta cache, as the runs of bytes that
///   changed (`PageEncoding.delta`), when that is smaller than the page;
/// - else compressed, as `CompressionChoice` says, when that is smaller;
/// - else as it is.
///
/// Nothing is compressed or delta-encoded from the running workload's memory: a frame is copied out first (a
/// compressor reading a page while it changes can decode *other* pages of the frame wrong).
///
/// The delta cache (QEMU's XBZRLE idea) is direct-mapped: page p lives in slot p mod slots. It holds exactly the
/// bytes the destination holds: pages of later rounds are first copied out of the running workload into a
/// snapshot, and what is sent (raw, compressed or as a delta) is computed from that snapshot, which then
/// replaces the cached copy. A page sent as zeros leaves the cache. Used by one thread at a time.
final class PageSender {
    let range: MemoryRange
    let compression: CompressionChoice
    private let pageSize: Int
    private let slots: Int
    private var tags: [Int]
    /// The cached pages (one page, unused, when there is no cache).
    private let cache: AnonymousMapping
    /// The snapshot of a frame's pages, then encoded output (a whole frame's worth each, and zstd's bound).
    private let scratch: AnonymousMapping
    private let scratchFrameBytes: Int
    private let pagesPerFrame: Int
    private let zstd: OpaquePointer?
    private var policy = CompressionPolicy()
    private(set) var tally = EncodingTally()

    /// - Parameters:
    ///   - deltaCacheBytes: The delta cache's size (0: no deltas); rounded down to whole pages.
    init(range: MemoryRange, compression: CompressionChoice, deltaCacheBytes: Int, pagesPerFrame: Int) throws(MigrationError) {
        self.range = range
        self.compression = compression
        pageSize = range.pageSize
        slots = Swift.max(0, deltaCacheBytes / range.pageSize)
        tags = [Int](repeating: -1, count: slots)
        self.pagesPerFrame = pagesPerFrame
        let frameBytes = pagesPerFrame * range.pageSize
        scratchFrameBytes = Int(ZSTD_compressBound(frameBytes))
        do {
            cache = try AnonymousMapping(byteCount: Swift.max(1, slots) * range.pageSize)
            scratch = try AnonymousMapping(byteCount: 3 * scratchFrameBytes)
        } catch {
            throw MigrationError.aborted("cannot map the delta cache (\(slots * range.pageSize) bytes) and the encoding buffers: \(error); try a smaller --delta-cache")
        }
        zstd = compression == .none ? nil : ZSTD_createCCtx()
    }

    deinit { if let zstd { ZSTD_freeCCtx(zstd) } }

    /// Starts a round's tally.
    func startRound() { tally = EncodingTally() }

    /// Zero pages were sent as a zero range: their cached copies no longer hold what the destination holds.
    func forget(first: Int, count: Int) {
        guard slots > 0 else { return }
        for page in first..<(first + count) where tags[page % slots] == page { tags[page % slots] = -1 }
    }

    /// Sends pages `first..<first+count` (non-zero pages of one frame) of round `round` on `link`.
    func send(first: Int, count: Int, round: Int, on link: Connection) throws {
        precondition(count > 0 && count <= pagesPerFrame && first >= 0 && first + count <= range.pageCount, "pages outside a frame")
        // Round 0 reads straight from the running workload, except the pages that end up in the cache (the
        // last `slots` of the region: each slot's last occupant), so a page's next send can be a delta.
        let cachedFrom = round > 0 ? 0 : range.pageCount - slots
        guard slots > 0 && first + count > cachedFrom else {
            let pages = UnsafeRawBufferPointer(start: range.baseAddress + first * pageSize, count: count * pageSize)
            try sendWhole(first: first, count: count, pages: pages, inRegion: true, on: link)
            return
        }
        if first < cachedFrom {
            try send(first: first, count: cachedFrom - first, round: round, on: link)
            try send(first: cachedFrom, count: first + count - cachedFrom, round: round, on: link)
            return
        }
        // A snapshot, so that what is sent and what is cached are the same bytes.
        let snapshot = scratch.range.baseAddress
        memcpy(snapshot, range.baseAddress + first * pageSize, count * pageSize)
        let deltas = scratch.range.baseAddress + scratchFrameBytes
        var runStart = 0  // the first page of the current run of pages of one kind
        var runIsDelta = false
        var deltaBytes = 0
        func flush(upTo end: Int) throws {
            guard end > runStart else { return }
            if runIsDelta {
                try link.send(
                    .encodedPages(firstPage: UInt64(first + runStart), pageCount: UInt32(end - runStart), encoding: .delta, byteCount: UInt32(deltaBytes)),
                    followedBy: UnsafeRawBufferPointer(start: deltas, count: deltaBytes))
                tally.deltaPages += end - runStart
                tally.deltaSavedBytes += (end - runStart) * pageSize - deltaBytes
            } else {
                try sendWhole(
                    first: first + runStart, count: end - runStart,
                    pages: UnsafeRawBufferPointer(start: snapshot + runStart * pageSize, count: (end - runStart) * pageSize), inRegion: false,
                    on: link)
            }
            deltaBytes = 0
            runStart = end
        }
        for index in 0..<count {
            let page = first + index
            let current = snapshot + index * pageSize
            // (A run of deltas begins at the start of the delta buffer, so its encodings lie end to end.)
            let encoded = delta(of: page, current: current, into: deltas + deltaBytes)
            let isDelta = encoded != nil
            if isDelta != runIsDelta {
                try flush(upTo: index)
                runIsDelta = isDelta
            }
            deltaBytes += encoded ?? 0
            memcpy(cachedPage(page % slots), current, pageSize)
            tags[page % slots] = page
        }
        try flush(upTo: count)
    }

    /// The delta of `page` (its content now at `current`) against its cached copy, written to `output`: its size,
    /// or nil when the page is not cached or the delta is not well below a page (the frame and the decoding cost
    /// the rest).
    private func delta(of page: Int, current: UnsafeRawPointer, into output: UnsafeMutableRawPointer) -> Int? {
        let slot = page % slots
        guard tags[slot] == page else { return nil }
        let size = CShims_delta_encode(
            cachedPage(slot).assumingMemoryBound(to: UInt8.self), current.assumingMemoryBound(to: UInt8.self), pageSize,
            output.assumingMemoryBound(to: UInt8.self), pageSize * 3 / 4)
        return size >= 0 ? size : nil
    }

    /// The wire bytes that sending `pages` would take now, estimated from a sample of at most 256 of them: a
    /// delta's size for a page whose copy is cached, else a page compressed as the last frames were (or whole).
    /// What the stop rule predicts a round's time and the pause from.
    func expectedBytes(of pages: DirtyPages) -> Double {
        let count = pages.pageCount
        guard count > 0 else { return 0 }
        let whole = Double(pageSize) * policy.ratio(of: compression)
        guard slots > 0 else { return Double(count) * whole }
        let every = Swift.max(1, count / 256)
        var sampled = 0, index = 0
        var bytes = 0.0
        let output = scratch.range.baseAddress + scratchFrameBytes
        for run in pages.runs {
            var page = run.first + (every - index % every) % every
            index += run.count
            while page < run.end {
                let size = delta(of: page, current: range.baseAddress + page * pageSize, into: output)
                bytes += size.map { Double($0) + 4 } ?? whole
                sampled += 1
                page += every
            }
        }
        return sampled > 0 ? bytes / Double(sampled) * Double(count) : Double(count) * whole
    }

    private func cachedPage(_ slot: Int) -> UnsafeMutableRawPointer { cache.range.baseAddress + slot * pageSize }

    /// Sends pages compressed when the policy says so and it is smaller, else as they are (`inRegion`: straight
    /// from the region, `pages` being the region's own).
    private func sendWhole(first: Int, count: Int, pages: UnsafeRawBufferPointer, inRegion: Bool, on link: Connection) throws {
        if compression == .auto { policy.linkAcknowledged(link.acknowledgedBytes, at: .now) }
        if let (encoding, bytes) = compress(pages, inRegion: inRegion) {
            try link.send(
                .encodedPages(firstPage: UInt64(first), pageCount: UInt32(count), encoding: encoding, byteCount: UInt32(bytes.count)),
                followedBy: bytes)
            tally.compressedPages += count
            tally.compressedSavedBytes += pages.count - bytes.count
        } else if inRegion {
            try link.sendPages(of: range, first: first, count: count)
        } else {
            try link.send(.pageData(firstPage: UInt64(first), pageCount: UInt32(count)), followedBy: pages)
        }
    }

    /// The pages compressed, when the choice (and for `auto` the policy) says to and they shrink.
    ///
    /// Pages still in the running workload's region are copied out first and the copy is compressed: a compressor
    /// that finds a match against bytes the workload then changes encodes the match and the changed bytes apart,
    /// so the page *after* the match would decode wrong although it never changed and is never sent again
    /// (seen: a Lua heap under load failed the strict digest). The changing page itself is dirty and sent again.
    private func compress(_ pages: UnsafeRawBufferPointer, inRegion: Bool) -> (PageEncoding, UnsafeRawBufferPointer)? {
        let codec: PageEncoding
        switch compression {
        case .none: return nil
        case .zstd: codec = .zstd
        case .lz4: codec = .lz4
        case .auto:
            if let sample = policy.codecToSample() {
                // A sample of the frame's first 64 KiB: the ratio and the speed, at little cost.
                let prefix = UnsafeRawBufferPointer(rebasing: pages.prefix(64 << 10))
                _ = timedCompress(prefix, with: sample)
            }
            guard let chosen = policy.choice() else { return nil }
            codec = chosen
        }
        var input = pages
        if inRegion {
            memcpy(scratch.range.baseAddress, pages.baseAddress!, pages.count)
            input = UnsafeRawBufferPointer(start: scratch.range.baseAddress, count: pages.count)
        }
        guard let size = timedCompress(input, with: codec), size < pages.count - pages.count / 32 else { return nil }
        return (codec, UnsafeRawBufferPointer(start: scratch.range.baseAddress + 2 * scratchFrameBytes, count: size))
    }

    /// Compresses into the output buffer; the size, or nil when it failed. Tells the policy how it went.
    private func timedCompress(_ input: UnsafeRawBufferPointer, with codec: PageEncoding) -> Int? {
        let output = scratch.range.baseAddress + 2 * scratchFrameBytes
        let started = ContinuousClock.now
        var size: Int?
        switch codec {
        case .zstd:
            let result = ZSTD_compressCCtx(zstd, output, scratchFrameBytes, input.baseAddress, input.count, 1)
            size = ZSTD_isError(result) != 0 ? nil : Int(result)
        case .lz4:
            let result = LZ4_compress_default(
                input.baseAddress!.assumingMemoryBound(to: CChar.self), output.assumingMemoryBound(to: CChar.self),
                CInt(input.count), CInt(scratchFrameBytes))
            size = result > 0 ? Int(result) : nil
        case .delta:
            size = nil
        }
        policy.compressed(codec, input: input.count, output: size ?? input.count, seconds: (ContinuousClock.now - started).secondsValue)
        return size
    }
}

/// `--compress auto`'s decision: compress with a codec when, by what was measured so far, compressing and then
/// sending a byte costs less time than sending it as it is: 1/compressor rate + ratio/link rate < 0.9 × 1/link
/// rate (compressing and sending taken one after the other, the cautious view). The link's rate is the pace at
/// which the peer acknowledges the stream over the last second (`Connection.acknowledgedBytes`), which the
/// socket's buffer and a shaper's queue cannot hide; until 5 ms of it were seen, lz4 (the cheap codec) is used
/// if the data compresses. Codecs are sampled on a frame's first 64 KiB: each once at the start, then every 2nd
/// frame, up to every 64th while neither wins, so a change in the data or the link is seen.
struct CompressionPolicy {
    private struct Estimate {
        var inputBytes = 0.0, outputBytes = 0.0, seconds = 0.0
        var ratio: Double { inputBytes > 0 ? outputBytes / inputBytes : 1 }
        var bytesPerSecond: Double { seconds > 0 ? inputBytes / seconds : .infinity }
        /// Keeps the estimate recent: older measurements weigh half once 64 MiB were measured.
        mutating func add(input: Int, output: Int, seconds elapsed: Double) {
            if inputBytes > Double(64 << 20) { inputBytes /= 2; outputBytes /= 2; seconds /= 2 }
            inputBytes += Double(input); outputBytes += Double(output); seconds += elapsed
        }
    }
    private var acknowledged: [(at: ContinuousClock.Instant, bytes: Int)] = []
    private var codecs: [PageEncoding: Estimate] = [:]
    private var framesSinceSample = 0
    private var sampleEvery = 1
    private var nextSample: PageEncoding = .lz4

    /// What the peer has acknowledged by now (nil: the kernel does not say).
    mutating func linkAcknowledged(_ bytes: Int?, at now: ContinuousClock.Instant) {
        guard let bytes else { return }
        acknowledged.append((now, bytes))
        while acknowledged.count > 2 && now - acknowledged[1].at > .seconds(1) { acknowledged.removeFirst() }
    }

    /// The link's rate over the last second, once 5 ms of it were seen.
    var linkBytesPerSecond: Double? {
        guard let first = acknowledged.first, let last = acknowledged.last, last.at - first.at >= .milliseconds(5) else { return nil }
        return Double(last.bytes - first.bytes) / (last.at - first.at).secondsValue
    }

    mutating func compressed(_ codec: PageEncoding, input: Int, output: Int, seconds: Double) {
        codecs[codec, default: Estimate()].add(input: input, output: output, seconds: seconds)
    }

    /// The ratio of compressed to whole bytes that `choice` gets now (1 when it would not compress).
    func ratio(of choice: CompressionChoice) -> Double {
        let codec: PageEncoding? = switch choice {
        case .none: nil
        case .zstd: .zstd
        case .lz4: .lz4
        case .auto: self.choice()
        }
        return codec.flatMap { codecs[$0] }.map { Swift.min(1, $0.ratio) } ?? 1
    }

    /// The codec to compress with now, or nil to send as it is.
    func choice() -> PageEncoding? {
        let shrinking = codecs.filter { $0.value.inputBytes >= Double(64 << 10) && $0.value.ratio < 0.9 }
        guard let rate = linkBytesPerSecond else { return shrinking[.lz4] != nil ? .lz4 : nil }
        // A link that acknowledged nothing for a second is as slow as links get: the smallest output wins.
        let perByteRaw = 1 / Swift.max(rate, 1)
        var best: (PageEncoding, Double)?
        for (codec, estimate) in shrinking {
            let perByte = 1 / estimate.bytesPerSecond + estimate.ratio * perByteRaw
            if perByte < perByteRaw * 0.9, perByte < best?.1 ?? .infinity { best = (codec, perByte) }
        }
        return best?.0
    }

    /// The codec to sample on this frame, if any: each once at the start, then alternating lz4 and zstd, ever more
    /// rarely while neither wins.
    mutating func codecToSample() -> PageEncoding? {
        // Every codec is measured once at the start.
        if let unmeasured = [PageEncoding.lz4, .zstd].first(where: { codecs[$0] == nil }) { return unmeasured }
        framesSinceSample += 1
        guard framesSinceSample >= sampleEvery else { return nil }
        framesSinceSample = 0
        sampleEvery = choice() == nil ? Swift.min(sampleEvery * 2, 64) : 8
        defer { nextSample = nextSample == .lz4 ? .zstd : .lz4 }
        return nextSample
    }
}

/// The destination's side of `PageSender`: receives the bytes of an `encodedPages` frame and decodes them into
/// the region, in place. It guarantees that a frame either decodes to exactly the pages it announced or is
/// refused as a protocol violation naming the pages (the pages may then be partly written, and the migration
/// fails). Used by one thread at a time.
final class PageDecoder {
    private var buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 0, alignment: 16)
    private let zstd = ZSTD_createDCtx()

    deinit {
        buffer.deallocate()
        ZSTD_freeDCtx(zstd)
    }

    func receive(
        into range: MemoryRange, first: UInt64, count: UInt32, encoding: PageEncoding, byteCount: UInt32, from link: Connection
    ) throws {
        guard first < UInt64(range.pageCount), UInt64(count) <= UInt64(range.pageCount) - first else {
            throw MigrationError.protocolViolation("encoded pages \(first)+\(count) lie outside the region of \(range.pageCount) pages")
        }
        let pageBytes = Int(count) * range.pageSize
        guard Int(byteCount) <= pageBytes else {
            throw MigrationError.protocolViolation("encoded pages \(first)+\(count) take \(byteCount) bytes, more than the \(pageBytes) they encode")
        }
        if buffer.count < Int(byteCount) {
            buffer.deallocate()
            buffer = .allocate(byteCount: Swift.max(Int(byteCount), 1 << 20), alignment: 16)
        }
        let encoded = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(byteCount)])
        try link.receiveBytes(into: encoded)
        let destination = range.baseAddress + Int(first) * range.pageSize
        let decoded: Bool
        switch encoding {
        case .zstd:
            let result = ZSTD_decompressDCtx(zstd, destination, pageBytes, encoded.baseAddress, encoded.count)
            decoded = ZSTD_isError(result) == 0 && result == pageBytes
        case .lz4:
            let result = LZ4_decompress_safe(
                encoded.baseAddress!.assumingMemoryBound(to: CChar.self), destination.assumingMemoryBound(to: CChar.self), CInt(encoded.count),
                CInt(pageBytes))
            decoded = Int(result) == pageBytes
        case .delta:
            var offset = 0
            var valid = true
            for page in 0..<Int(count) where valid {
                let used = CShims_delta_apply(
                    (destination + page * range.pageSize).assumingMemoryBound(to: UInt8.self), range.pageSize,
                    (encoded.baseAddress! + offset).assumingMemoryBound(to: UInt8.self), encoded.count - offset)
                if used < 0 { valid = false } else { offset += used }
            }
            decoded = valid && offset == encoded.count
        }
        guard decoded else {
            throw MigrationError.protocolViolation("pages \(first)+\(count) (\(encoding), \(byteCount) bytes) do not decode to exactly \(pageBytes) bytes")
        }
    }
}
