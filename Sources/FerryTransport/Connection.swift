#if canImport(Glibc)
import Glibc
#endif
public import FerrySystem
public import FerryWire
import CShims
import Synchronization

/// One TCP connection carrying migration frames; it owns its socket.
///
/// Plain, page bytes are written straight from the region's memory and read straight into place: no
/// user-space copy on either side. Sealed (`enableSealing`, after the handshake), everything it sends is
/// AES-256-GCM records (`SealedRecord`), and page records are opened in place, in the region. Sends can be rate-limited (`maximumBytesPerSecond`) so migration traffic leaves
/// business traffic its share. Every read has a timeout, so a stalled peer is an error, not a hang.
public final class Connection: Sendable {
    /// Who is on the other end, for messages (`10.0.0.2:41822`).
    public let peer: String
    private let socket: CInt
    private let limiter: RateLimiter?
    private let counters = Mutex<(sent: Int, received: Int)>((0, 0))
    /// The sealing state of each direction, once `enableSealing` was called.
    private let sealing = Mutex<(send: SealingDirection?, receive: SealingDirection?)>((nil, nil))
    /// Seconds a read may wait for the next byte before the peer counts as stalled.
    public let timeoutSeconds: Double
    /// Small sends gathered into one write while a batch is open (`batched`).
    private let gathered = GatheredSends()

    /// Takes over `socket` (closed by the connection from here on, and here if an option cannot be set).
    /// - Throws: `TransportError.io` naming the socket option that could not be set: the timeouts are what
    ///   turn a silent peer or a partition into an error, so a connection without them is refused.
    init(socket: CInt, peer: String, maximumBytesPerSecond: Double?, timeoutSeconds: Double) throws(TransportError) {
        func set<Value: BitwiseCopyable>(_ level: CInt, _ option: CInt, _ name: String, _ value: Value) throws(TransportError) {
            var value = value
            guard setsockopt(socket, level, option, &value, socklen_t(MemoryLayout<Value>.size)) == 0 else {
                let error = SystemCallError("setsockopt(\(name))", errno: .current, subject: "the socket to \(peer)")
                close(socket)
                throw .io(peer: peer, error)
            }
        }
        try set(CInt(IPPROTO_TCP), TCP_NODELAY, "TCP_NODELAY", CInt(1))
        try set(SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF", CInt(4 << 20))
        try set(SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF", CInt(4 << 20))
        // Whole microseconds, at least one (a zero timeval would mean no timeout at all), at most a year.
        let microseconds = Swift.min(Swift.max((timeoutSeconds * 1e6).rounded(.up), 1), 365 * 86400 * 1e6)
        let timeout = timeval(tv_sec: Int(microseconds / 1e6), tv_usec: Int(microseconds.truncatingRemainder(dividingBy: 1e6)))
        try set(SOL_SOCKET, SO_RCVTIMEO, "SO_RCVTIMEO", timeout)
        try set(SOL_SOCKET, SO_SNDTIMEO, "SO_SNDTIMEO", timeout)
        // A silent partition (no FIN, no RST): TCP gives up once sent data stays unacknowledged this long,
        // instead of retransmitting for minutes; a send blocked on it fails with ETIMEDOUT.
        try set(CInt(IPPROTO_TCP), TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", CUnsignedInt(Swift.min(microseconds / 1000, Double(CUnsignedInt.max)).rounded(.up)))
        self.socket = socket
        self.peer = peer
        self.timeoutSeconds = timeoutSeconds
        limiter = maximumBytesPerSecond.map { RateLimiter(bytesPerSecond: $0) }
    }

    deinit { close(socket) }

    /// Connects to `endpoint`, optionally from a given local address (so traffic uses the migration network).
    public static func connect(
        to endpoint: Endpoint, from localAddress: String? = nil, maximumBytesPerSecond: Double? = nil,
        timeoutSeconds: Double = 30
    ) throws(TransportError) -> Connection {
        var lastError = Errno.invalidArgument
        for (family, address) in try endpoint.resolve() {
            let fd = Glibc.socket(family, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { lastError = .current; continue }
            if let localAddress {
                guard let local = try? Endpoint(host: localAddress, port: 0).resolve().first(where: { $0.family == family }) else {
                    close(fd)
                    throw .resolve(Endpoint(host: localAddress, port: 0), "no \(family == AF_INET6 ? "IPv6" : "IPv4") address")
                }
                let bound = local.address.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count)) }
                guard bound == 0 else { lastError = .current; close(fd); continue }
            }
            let result = address.withUnsafeBytes { Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count)) }
            if result == 0 {
                return try Connection(socket: fd, peer: endpoint.description, maximumBytesPerSecond: maximumBytesPerSecond, timeoutSeconds: timeoutSeconds)
            }
            lastError = .current
            close(fd)
        }
        throw .connect(endpoint, lastError)
    }

    /// From now on, seals everything sent and opens everything received (both sides switch at the same point
    /// of the stream: right after the handshake).
    /// - Throws: `TransportError.crypto` when libcrypto cannot set up AES-256-GCM.
    public func enableSealing(_ keys: SealingKeys) throws(TransportError) {
        guard let send = SealingDirection(key: keys.send, sealing: true), let receive = SealingDirection(key: keys.receive, sealing: false) else {
            throw .crypto(peer: peer, "cannot set up AES-256-GCM in libcrypto")
        }
        sealing.withLock { $0 = (send, receive) }
    }

    /// Whether the connection is sealed.
    public var isSealed: Bool { sealing.withLock { $0.send != nil } }

    /// The bytes of this stream the peer has acknowledged (`TCP_INFO`'s `tcpi_bytes_acked`), sealing included: it
    /// grows at the pace the link delivers, whatever the socket's buffer and a shaper's queue hold. Nil when the
    /// kernel does not say.
    public var acknowledgedBytes: Int? {
        var acknowledged: UInt64 = 0
        return CShims_tcp_bytes_acked(socket, &acknowledged) == 0 ? Int(clamping: acknowledged) : nil
    }

    /// Bytes sent and received so far, frames and pages together.
    public var byteCounts: (sent: Int, received: Int) { counters.withLock { $0 } }

    // MARK: Frames

    /// Sends one frame (gathered with the next ones inside `batched`).
    public func send(_ frame: Frame) throws(TransportError) {
        let bytes = FrameCodec.encode(frame)
        try withBytes(bytes) { buffer throws(TransportError) in try sendPieces([buffer], what: "sending \(FrameCodec.name(ofType: frame.typeCode))") }
    }

    /// Sends the pages `first..<first+count` of `range`: a `pageData` header, then the bytes straight from
    /// memory (a few pages inside `batched` are copied into the gathered write instead).
    public func sendPages(of range: MemoryRange, first: Int, count: Int) throws(TransportError) {
        precondition(first >= 0 && count > 0 && first + count <= range.pageCount, "pages outside the region")
        let bytes = UnsafeRawBufferPointer(start: range.baseAddress + first * range.pageSize, count: count * range.pageSize)
        try send(.pageData(firstPage: UInt64(first), pageCount: UInt32(count)), followedBy: bytes)
    }

    /// Runs `body`, gathering the small frames it sends (a frame with a few pages, a zero range, a round's
    /// end) into writes of up to 256 KiB, each one sealed record: scattered pages cost a copy each instead of
    /// a syscall and a record each. Large page frames still go straight from memory. Everything is on the
    /// wire when it returns; one thread sends on a connection at a time.
    public func batched<Result>(_ body: () throws -> Result) throws -> Result {
        gathered.depth += 1
        let result: Result
        do {
            result = try body()
        } catch {
            gathered.depth -= 1
            if gathered.depth == 0 { try? flushGathered() }
            throw error
        }
        gathered.depth -= 1
        if gathered.depth == 0 { try flushGathered() }
        return result
    }

    /// Sends `frame` and then `payload` as it is, outside any frame: the encoded pages an `encodedPages` frame
    /// announces (gathered with the next frames inside `batched` when small).
    public func send(_ frame: Frame, followedBy payload: UnsafeRawBufferPointer) throws(TransportError) {
        let header = FrameCodec.encode(frame)
        try withBytes(header) { headerBytes throws(TransportError) in
            try sendPieces([headerBytes, payload], what: "sending \(FrameCodec.name(ofType: frame.typeCode))")
        }
    }

    /// Sends `pieces` in order: gathered while a batch is open and they are small, else at once.
    private func sendPieces(_ pieces: [UnsafeRawBufferPointer], what: String) throws(TransportError) {
        let total = pieces.reduce(0) { $0 + $1.count }
        guard gathered.depth > 0, total <= GatheredSends.largestGathered else {
            try flushGathered()
            return try sendAll(pieces, what: what)
        }
        if gathered.count + total > gathered.buffer.count { try flushGathered() }
        for piece in pieces where piece.count > 0 {
            (gathered.buffer.baseAddress! + gathered.count).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
            gathered.count += piece.count
        }
    }

    /// Writes what was gathered (one sealed record when sealed).
    private func flushGathered() throws(TransportError) {
        guard gathered.count > 0 else { return }
        let pending = UnsafeRawBufferPointer(start: gathered.buffer.baseAddress, count: gathered.count)
        gathered.count = 0
        try sendAll([pending], what: "sending gathered frames")
    }

    /// Receives the next frame, waiting at most the connection's timeout for each byte.
    public func receive(while what: String) throws(TransportError) -> Frame {
        let header = UnsafeMutableRawBufferPointer.allocate(byteCount: FrameCodec.headerSize, alignment: 8)
        defer { header.deallocate() }
        try receiveAll(into: header, what: what)
        let decoded: (type: UInt8, bodyLength: Int)
        do throws(WireError) { decoded = try FrameCodec.decodeHeader(header) } catch { throw .malformed(peer: peer, "\(error)") }
        let body = UnsafeMutableRawBufferPointer.allocate(byteCount: decoded.bodyLength, alignment: 8)
        defer { body.deallocate() }
        try receiveAll(into: body, what: what)
        do throws(WireError) {
            return try FrameCodec.decodeBody(type: decoded.type, UnsafeRawBufferPointer(body))
        } catch {
            throw .malformed(peer: peer, "\(error)")
        }
    }

    /// Reads the bytes announced by a `pageData` frame straight into `range`, after checking the pages lie
    /// inside it.
    public func receivePages(into range: MemoryRange, first: UInt64, count: UInt32) throws(TransportError) {
        guard count > 0, first < UInt64(range.pageCount), UInt64(count) <= UInt64(range.pageCount) - first else {
            throw .malformed(peer: peer, "pages \(first)..<\(first + UInt64(count)) lie outside the region of \(range.pageCount) pages")
        }
        let buffer = UnsafeMutableRawBufferPointer(start: range.baseAddress + Int(first) * range.pageSize, count: Int(count) * range.pageSize)
        try receiveAll(into: buffer, what: "receiving pages")
    }

    /// Sends raw bytes with no framing (benchmarks' plain-TCP baseline).
    public func sendBytes(_ buffer: UnsafeRawBufferPointer) throws(TransportError) {
        try sendAll([buffer], what: "sending bytes")
    }

    /// Receives exactly `buffer.count` raw bytes with no framing.
    public func receiveBytes(into buffer: UnsafeMutableRawBufferPointer) throws(TransportError) {
        try receiveAll(into: buffer, what: "receiving bytes")
    }

    /// Shuts the connection down in both directions (the peer sees end of stream at once).
    public func shutdown() { _ = Glibc.shutdown(socket, CInt(SHUT_RDWR)) }

    // MARK: Bytes

    /// Sends `pieces` in order: as they are (one `sendmsg` for all), or sealed in records of at most
    /// `SealedRecord.maximumPlaintext` bytes.
    private func sendAll(_ pieces: [UnsafeRawBufferPointer], what: String) throws(TransportError) {
        guard let sealer = sealing.withLock({ $0.send }) else {
            var vectors = pieces.filter { $0.count > 0 }.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
            try sendVectors(&vectors, what: what)
            return
        }
        let total = pieces.reduce(0) { $0 + $1.count }
        if pieces.count == 1, total <= GatheredSends.largestGathered {
            // One small record (a frame, a demand-fetched page, a gathered batch): sealed and written here,
            // without the hop to the send queue, which only pays for large ones.
            try sealer.lock.withLock { _ throws(TransportError) in
                guard let record = sealer.seal(pieces[0], into: sealer.staging) else {
                    throw .crypto(peer: peer, "AES-256-GCM sealing failed in libcrypto")
                }
                var vectors = [iovec(iov_base: UnsafeMutableRawPointer(mutating: record.baseAddress), iov_len: record.count)]
                try sendVectors(&vectors, what: what)
            }
            return
        }
        try sealer.lock.withLock { _ throws(TransportError) in
            // Seal record n+1 while record n is on the wire (`sendQueue`); return once all of them are, so no
            // queued send outlives the buffers it reads.
            var sealed = 0
            do throws(TransportError) {
                for piece in pieces where piece.count > 0 {
                    var offset = 0
                    while offset < piece.count {
                        let length = Swift.min(SealedRecord.maximumPlaintext, piece.count - offset)
                        sealer.slots.wait()
                        if let failure = sealer.failure.withLock({ $0 }) {
                            sealer.slots.signal()
                            throw failure
                        }
                        let buffer = sealed % 2 == 0 ? sealer.staging : sealer.spare
                        sealed += 1
                        guard let record = sealer.seal(UnsafeRawBufferPointer(rebasing: piece[offset..<offset + length]), into: buffer) else {
                            sealer.slots.signal()
                            throw .crypto(peer: peer, "AES-256-GCM sealing failed in libcrypto")
                        }
                        let address = UInt(bitPattern: record.baseAddress)
                        let count = record.count
                        sealer.sendQueue.async { [self] in
                            var vectors = [iovec(iov_base: UnsafeMutableRawPointer(bitPattern: address), iov_len: count)]
                            do throws(TransportError) {
                                try sendVectors(&vectors, what: what)
                            } catch {
                                sealer.failure.withLock { $0 = $0 ?? error }
                            }
                            sealer.slots.signal()
                        }
                        offset += length
                    }
                }
            } catch {
                _ = sealer.finishSends()
                throw error
            }
            if let failure = sealer.finishSends() { throw failure }
        }
    }

    /// Writes all of `vectors`, in slices the rate limiter allows.
    private func sendVectors(_ vectors: inout [iovec], what: String) throws(TransportError) {
        var index = 0
        while index < vectors.count {
            if vectors[index].iov_len == 0 { index += 1; continue }
            var allowed = Int.max
            if let limiter { allowed = limiter.take(upTo: vectors[index...].reduce(0) { $0 + $1.iov_len }) }
            // Write at most `allowed` bytes: trim a copy of the vector list.
            var budget = allowed
            var slice: [iovec] = []
            for vector in vectors[index...] where budget > 0 {
                let length = Swift.min(vector.iov_len, budget)
                slice.append(iovec(iov_base: vector.iov_base, iov_len: length))
                budget -= length
            }
            // sendmsg with MSG_NOSIGNAL, not writev: a peer that has gone away is an EPIPE error here,
            // not a SIGPIPE that kills the process.
            let written = slice.withUnsafeMutableBufferPointer { pointer in
                var message = msghdr()
                message.msg_iov = pointer.baseAddress
                message.msg_iovlen = pointer.count
                return Glibc.sendmsg(socket, &message, CInt(MSG_NOSIGNAL))
            }
            if written < 0 {
                let error = Errno.current
                if error == .interrupted { continue }
                if error == .wouldBlock || error.rawValue == ETIMEDOUT { throw .sendTimedOut(peer: peer, what: what, seconds: timeoutSeconds) }
                if error.rawValue == EPIPE || error.rawValue == ECONNRESET { throw .closed(peer: peer, what: what) }
                throw .io(peer: peer, SystemCallError("sendmsg", errno: error, subject: peer))
            }
            counters.withLock { $0.sent += written }
            var remaining = written
            while remaining > 0 {
                let take = Swift.min(remaining, vectors[index].iov_len)
                vectors[index].iov_base = vectors[index].iov_base.map { $0 + take }
                vectors[index].iov_len -= take
                remaining -= take
                if vectors[index].iov_len == 0 { index += 1 }
            }
        }
    }

    /// Fills `buffer` from the stream: as it comes, or from sealed records, each opened in place in `buffer`
    /// when it fits there (pages land in the region with no copy), else through the staging buffer.
    private func receiveAll(into buffer: UnsafeMutableRawBufferPointer, what: String) throws(TransportError) {
        guard let opener = sealing.withLock({ $0.receive }) else { return try receiveRaw(into: buffer, what: what) }
        try opener.lock.withLock { _ throws(TransportError) in
            var offset = 0
            while offset < buffer.count {
                if opener.pendingStart < opener.pendingEnd {
                    let take = Swift.min(buffer.count - offset, opener.pendingEnd - opener.pendingStart)
                    (buffer.baseAddress! + offset).copyMemory(from: opener.staging.baseAddress! + opener.pendingStart, byteCount: take)
                    opener.pendingStart += take
                    offset += take
                    continue
                }
                var header: UInt32 = 0
                try withUnsafeMutableBytes(of: &header) { raw throws(TransportError) in try receiveRaw(into: raw, what: what) }
                let recordLength = Int(UInt32(bigEndian: header))
                guard recordLength > SealedRecord.tagLength, recordLength <= SealedRecord.maximumPlaintext + SealedRecord.tagLength else {
                    throw .tampered(peer: peer, record: opener.counter, "its length field says \(recordLength) bytes")
                }
                let length = recordLength - SealedRecord.tagLength
                let inPlace = buffer.count - offset >= length
                let target = inPlace ? buffer.baseAddress! + offset : opener.staging.baseAddress!
                try receiveRaw(into: UnsafeMutableRawBufferPointer(start: target, count: length), what: what)
                var tag = (UInt64(0), UInt64(0))
                try withUnsafeMutableBytes(of: &tag) { raw throws(TransportError) in try receiveRaw(into: raw, what: what) }
                let status = withUnsafeBytes(of: &header) { header in
                    withUnsafeBytes(of: &tag) { tag in opener.open(target, length: length, header: header.baseAddress!, tag: tag.baseAddress!) }
                }
                guard status == 0 else {
                    if status < 0 { throw .crypto(peer: peer, "AES-256-GCM opening failed in libcrypto") }
                    throw .tampered(peer: peer, record: opener.counter, "its authentication tag does not match")
                }
                if inPlace {
                    offset += length
                } else {
                    opener.pendingStart = 0
                    opener.pendingEnd = length
                }
            }
        }
    }

    private func receiveRaw(into buffer: UnsafeMutableRawBufferPointer, what: String) throws(TransportError) {
        var offset = 0
        while offset < buffer.count {
            let got = recv(socket, buffer.baseAddress! + offset, buffer.count - offset, CInt(MSG_WAITALL))
            if got > 0 {
                offset += got
                continue
            }
            if got == 0 { throw .closed(peer: peer, what: what) }
            let error = Errno.current
            if error == .interrupted { continue }
            if error == .wouldBlock || error.rawValue == ETIMEDOUT { throw .timedOut(peer: peer, what: what, seconds: timeoutSeconds) }
            if error.rawValue == ECONNRESET { throw .closed(peer: peer, what: what) }
            throw .io(peer: peer, SystemCallError("recv", errno: error, subject: peer))
        }
        counters.withLock { $0.received += buffer.count }
    }
}

/// The buffer `batched` gathers small sends in. Used by the one thread sending on the connection.
final class GatheredSends: @unchecked Sendable {
    /// At most one sealed record's plaintext, so a flush is one record.
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SealedRecord.maximumPlaintext, alignment: 64)
    var count = 0
    /// Nesting of `batched` calls; gathering happens while above 0.
    var depth = 0
    /// Sends larger than this go straight from memory (16 pages and a header).
    static let largestGathered = 64 << 10 + 64

    deinit { buffer.deallocate() }
}

/// A token bucket: at most `bytesPerSecond` on average, bursts of up to 64 KiB or 50 ms of traffic (so the time
/// spent compressing a frame, tens of milliseconds, is not lost from the link's share).
final class RateLimiter: Sendable {
    let bytesPerSecond: Double
    private let burst: Double
    private let state: Mutex<(tokens: Double, last: ContinuousClock.Instant)>

    init(bytesPerSecond: Double) {
        self.bytesPerSecond = bytesPerSecond
        burst = Swift.max(65536, bytesPerSecond / 20)
        state = Mutex((burst, .now))
    }

    /// Waits until some bytes may be sent and returns how many (at most `wanted`).
    func take(upTo wanted: Int) -> Int {
        while true {
            let (granted, wait) = state.withLock { state -> (Int, Double) in
                let now = ContinuousClock.now
                let elapsed = (now - state.last).secondsValue
                state.last = now
                state.tokens = Swift.min(burst, state.tokens + elapsed * bytesPerSecond)
                if state.tokens >= 1 {
                    let granted = Swift.min(wanted, Int(state.tokens))
                    state.tokens -= Double(granted)
                    return (granted, 0)
                }
                return (0, (1 - state.tokens) / bytesPerSecond + 0.001)
            }
            if granted > 0 { return granted }
            usleep(UInt32(Swift.min(wait, 0.1) * 1e6))
        }
    }
}


/// Runs `body` over the bytes of `array`, keeping `body`'s typed error.
func withBytes<R>(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(TransportError) -> R) throws(TransportError) -> R {
    let result = array.withUnsafeBytes { buffer in Result { () throws(TransportError) -> R in try body(buffer) } }
    return try result.get()
}
