extension FrameCodec {
    /// Decodes arbitrary bytes every way the codec offers and traps only if the ways disagree: the entry
    /// point for a fuzz harness (`LLVMFuzzerTestOneInput` calls it with the input and returns 0).
    ///
    /// Checks, for any input: a ``FrameDecoder`` given everything at once and one given one byte at a
    /// time return the same frames and end the same way; ``decodeHeader(_:maximumLength:)`` plus
    /// ``decodeBody(type:_:)`` agree with them; and every decoded frame re-encodes to exactly the bytes
    /// it was decoded from. A trap here is a codec bug; a malformed input is not.
    /// - Parameter data: Any bytes.
    public static func fuzzOneInput(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        let whole = decodeAll(bytes, chunkSize: bytes.count)
        let byByte = decodeAll(bytes, chunkSize: 1)
        precondition(whole == byByte, "FrameDecoder depends on how the bytes arrive")
        precondition(whole == decodeWithHeaders(bytes), "FrameDecoder and decodeHeader/decodeBody disagree")
        var offset = 0
        for frame in whole.frames {
            let encoded = encode(frame)
            precondition(
                bytes.count - offset >= encoded.count && Array(bytes[offset..<(offset + encoded.count)]) == encoded,
                "a decoded frame does not re-encode to its bytes"
            )
            offset += encoded.count
        }
    }

    struct Outcome: Equatable {
        var frames: [Frame] = []
        var error: WireError?
    }

    /// Runs a `FrameDecoder` over `bytes`, appended `chunkSize` bytes at a time.
    static func decodeAll(_ bytes: [UInt8], chunkSize: Int) -> Outcome {
        var decoder = FrameDecoder()
        var outcome = Outcome()
        var start = 0
        repeat {
            let end = min(bytes.count, start + max(chunkSize, 1))
            decoder.append(bytes[start..<end])
            start = end
            do {
                while let frame = try decoder.next() { outcome.frames.append(frame) }
            } catch {
                outcome.error = error
                return outcome
            }
        } while start < bytes.count
        return outcome
    }

    /// Decodes `bytes` frame by frame with `decodeHeader` and `decodeBody`.
    static func decodeWithHeaders(_ bytes: [UInt8]) -> Outcome {
        var outcome = Outcome()
        var offset = 0
        while bytes.count - offset >= 4 {
            let header: (type: UInt8, bodyLength: Int)
            do {
                header = try decodeHeader(bytes[offset...])
            } catch {
                // Only the length is there: judge it alone, as FrameDecoder does.
                if case .truncated = error {
                    let length = bytes[offset..<(offset + 4)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                    do throws(WireError) {
                        try checkLength(length, maximumLength: Frame.maximumLength)
                    } catch {
                        outcome.error = error
                    }
                    return outcome
                }
                outcome.error = error
                return outcome
            }
            let bodyStart = offset + headerSize
            guard bytes.count - bodyStart >= header.bodyLength else { return outcome }
            let result = bytes.withUnsafeBytes { raw in
                Result { () throws(WireError) -> Frame in
                    try decodeBody(
                        type: header.type,
                        UnsafeRawBufferPointer(rebasing: raw[bodyStart..<(bodyStart + header.bodyLength)])
                    )
                }
            }
            switch result {
            case .success(let frame): outcome.frames.append(frame)
            case .failure(let error):
                outcome.error = error
                return outcome
            }
            offset = bodyStart + header.bodyLength
        }
        return outcome
    }
}
