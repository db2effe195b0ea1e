/// An incremental decoder over a byte stream: feed it bytes as they arrive, take whole frames out.
///
/// Guarantees: it never traps, whatever the input; it returns a frame only once all of its bytes are
/// there, and `nil` (not an error) for any proper prefix of a valid frame; it rejects a bad header
/// (zero length, over ``maximumLength``, unknown type) as soon as the header's bytes arrive, without
/// waiting for the body. So a peer can make it hold at most `maximumLength + 4` bytes of one frame
/// plus whatever the caller appends between calls to ``next()``. After it throws, it is unusable: every
/// later call to `next()` throws the same error and appended bytes are dropped.
///
/// A ``Frame/pageData(firstPage:pageCount:)`` frame is followed on the stream by raw page bytes that
/// are not frames: after `next()` returns one, take the page bytes already buffered with
/// ``takeRawBytes(into:)``, read the rest straight from the stream into place, and only then go on
/// appending stream bytes.
public struct FrameDecoder: Sendable {
    /// The largest frame length (type byte plus body) this decoder accepts.
    public let maximumLength: UInt32
    private var storage: [UInt8] = []
    private var readIndex = 0
    private var failure: WireError?

    /// - Parameter maximumLength: The largest frame length to accept; ``Frame/maximumLength`` by default.
    public init(maximumLength: UInt32 = Frame.maximumLength) {
        self.maximumLength = maximumLength
    }

    /// Bytes buffered but not yet consumed.
    public var bufferedByteCount: Int { storage.count - readIndex }

    /// Adds bytes read from the stream.
    /// - Parameter bytes: The next bytes of the stream, in order.
    public mutating func append(_ bytes: some Sequence<UInt8>) {
        guard failure == nil else { return }
        compact()
        storage.append(contentsOf: bytes)
    }

    /// The next complete frame.
    /// - Returns: The frame, or nil if more bytes are needed.
    /// - Throws: The ``WireError`` that makes the buffered bytes not a frame; the decoder is then unusable.
    public mutating func next() throws(WireError) -> Frame? {
        if let failure { throw failure }
        do throws(WireError) {
            return try decodeNext()
        } catch {
            failure = error
            throw error
        }
    }

    /// Moves up to `destination.count` buffered bytes, as they are, into `destination`: the start of the
    /// raw page bytes that follow a `pageData` frame, when they arrived with it.
    /// - Parameter destination: Where to put the bytes.
    /// - Returns: How many bytes were moved (0 once the decoder has failed).
    public mutating func takeRawBytes(into destination: UnsafeMutableRawBufferPointer) -> Int {
        guard failure == nil else { return 0 }
        let count = min(destination.count, bufferedByteCount)
        guard count > 0 else { return 0 }
        storage.withUnsafeBytes { source in
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[readIndex..<(readIndex + count)]))
        }
        readIndex += count
        return count
    }

    private mutating func decodeNext() throws(WireError) -> Frame? {
        guard bufferedByteCount >= 4 else { return nil }
        var length: UInt32 = 0
        for index in readIndex..<(readIndex + 4) { length = length << 8 | UInt32(storage[index]) }
        try FrameCodec.checkLength(length, maximumLength: maximumLength)
        guard bufferedByteCount >= FrameCodec.headerSize else { return nil }
        let type = storage[readIndex + 4]
        try FrameCodec.checkType(type)
        let frameSize = 4 + Int(length)
        guard bufferedByteCount >= frameSize else { return nil }
        let body = (readIndex + FrameCodec.headerSize)..<(readIndex + frameSize)
        let result = storage.withUnsafeBytes { raw in
            Result { () throws(WireError) -> Frame in
                try FrameCodec.decodeBody(type: type, UnsafeRawBufferPointer(rebasing: raw[body]))
            }
        }
        let frame = try result.get()
        readIndex += frameSize
        return frame
    }

    /// Drops consumed bytes once they are at least half the buffer, so appends stay amortised O(1).
    private mutating func compact() {
        guard readIndex > 0, readIndex >= storage.count / 2 else { return }
        storage.removeSubrange(0..<readIndex)
        readIndex = 0
    }
}
