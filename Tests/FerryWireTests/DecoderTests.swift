import FerrySystem
import FerryWire
import Testing

@Suite struct DecoderTests {
    let stream = sampleFrames.flatMap(FrameCodec.encode)

    @Test func oneByteAtATimeYieldsTheSameFrames() {
        let result = decodeStream(stream, chunks: [1])
        #expect(result.error == nil)
        #expect(result.frames == sampleFrames)
        #expect(result.buffered == 0)
    }

    @Test(arguments: [1, 2, 3, 99, 12345] as [UInt64])
    func randomChunkSizesYieldTheSameFrames(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        let chunks = (0..<200).map { _ in
            Int.random(in: 1...(Bool.random(using: &random) ? 7 : 5000), using: &random)
        }
        let result = decodeStream(stream, chunks: chunks)
        #expect(result.error == nil)
        #expect(result.frames == sampleFrames)
        #expect(result.buffered == 0)
    }

    @Test(arguments: sampleFrames)
    func everyTruncationNeedsMoreBytes(frame: Frame) throws {
        let bytes = FrameCodec.encode(frame)
        for length in 0..<bytes.count {
            var decoder = FrameDecoder()
            decoder.append(bytes[..<length])
            #expect(try decoder.next() == nil)
            #expect(decoder.bufferedByteCount == length)
            // The rest arrives: the frame comes out.
            decoder.append(bytes[length...])
            #expect(try decoder.next() == frame)
        }
    }

    @Test(arguments: sampleFrames)
    func everyShortBodyIsTruncated(frame: Frame) {
        let full = body(of: frame)
        for length in 0..<full.count {
            #expect {
                _ = try decodeBody(type: frame.typeCode, Array(full[..<length]))
            } throws: { error in
                guard case .truncated(let type, let needed, let available) = error as? WireError else { return false }
                return type == frame.typeCode && available == length && needed > length && needed <= full.count
            }
        }
    }

    @Test func fixedSizeBodiesReportTheirWholeSize() {
        #expect(throws: WireError.truncated(type: 3, needed: 12, available: 7)) {
            try decodeBody(type: 3, [0, 0, 0, 0, 0, 0, 0])
        }
        #expect(
            WireError.truncated(type: 3, needed: 12, available: 7).description
                == "frame type 3 (pageData) is 7 bytes, its fields need at least 12"
        )
    }

    @Test func rawPageBytesAfterPageDataCanBeTakenOut() throws {
        let pages: [UInt8] = (0..<24).map { UInt8($0) }
        var decoder = FrameDecoder()
        decoder.append(
            FrameCodec.encode(.pageData(firstPage: 5, pageCount: 3)) + pages + FrameCodec.encode(.roundAck(round: 1))
        )
        #expect(try decoder.next() == .pageData(firstPage: 5, pageCount: 3))
        var received = [UInt8](repeating: 0, count: 24)
        let first = received.withUnsafeMutableBytes {
            decoder.takeRawBytes(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<10]))
        }
        let second = received.withUnsafeMutableBytes {
            decoder.takeRawBytes(into: UnsafeMutableRawBufferPointer(rebasing: $0[10...]))
        }
        #expect(first == 10 && second == 14)
        #expect(received == pages)
        #expect(try decoder.next() == .roundAck(round: 1))
        #expect(decoder.bufferedByteCount == 0)
        var empty = [UInt8](repeating: 0, count: 4)
        #expect(empty.withUnsafeMutableBytes { decoder.takeRawBytes(into: $0) } == 0)
    }

    @Test func aFailedDecoderStaysFailed() {
        var decoder = FrameDecoder()
        decoder.append([0, 0, 0, 0])
        #expect(throws: WireError.emptyFrame) { try decoder.next() }
        decoder.append(FrameCodec.encode(.digestRequest))
        #expect(throws: WireError.emptyFrame) { try decoder.next() }
    }

    @Test func consumedBytesAreDropped() throws {
        var decoder = FrameDecoder()
        let frame = FrameCodec.encode(.running(step: 42))
        for _ in 0..<10_000 {
            decoder.append(frame)
            #expect(try decoder.next() == .running(step: 42))
        }
        #expect(decoder.bufferedByteCount == 0)
    }
}
