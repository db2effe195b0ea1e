import FerryWire
import Testing

@Suite struct RoundTripTests {
    @Test(arguments: sampleFrames)
    func everyFrameRoundTrips(frame: Frame) throws {
        let bytes = FrameCodec.encode(frame)
        #expect(bytes.count <= 4 + Int(Frame.maximumLength))

        let header = try FrameCodec.decodeHeader(bytes)
        #expect(header.type == frame.typeCode)
        #expect(header.bodyLength == bytes.count - FrameCodec.headerSize)
        #expect(try decodeBody(type: header.type, body(of: frame)) == frame)

        var decoder = FrameDecoder()
        decoder.append(bytes)
        #expect(try decoder.next() == frame)
        #expect(try decoder.next() == nil)
        #expect(decoder.bufferedByteCount == 0)
    }

    @Test func encodeIntoAppendsToWhatIsThere() {
        var buffer: [UInt8] = [0xAA, 0xBB]
        for frame in sampleFrames { FrameCodec.encode(frame, into: &buffer) }
        #expect(buffer == [0xAA, 0xBB] + sampleFrames.flatMap(FrameCodec.encode))
    }

    @Test func bytesAreExactlyAsDesigned() {
        #expect(
            FrameCodec.encode(.pageData(firstPage: 0x0102_0304_0506_0708, pageCount: 9))
                == [0, 0, 0, 13, 3, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 9]
        )
        #expect(FrameCodec.encode(.abort(reason: "hi")) == [0, 0, 0, 5, 11, 0, 2, 0x68, 0x69])
        #expect(FrameCodec.encode(.digestRequest) == [0, 0, 0, 1, 7])
        #expect(FrameCodec.encode(.roundAck(round: 0x0A0B_0C0D)) == [0, 0, 0, 5, 6, 0x0A, 0x0B, 0x0C, 0x0D])
        #expect(
            FrameCodec.encode(.helloReply(.refused(Refusal(code: .busy, reason: "x"))))
                == [0, 0, 0, 7, 2, 1, 0, 9, 0, 1, 0x78]
        )
        #expect(
            FrameCodec.encode(.roundEnd(RoundSummary(round: 1, pages: 2, zeroPages: 3, bytes: 4, final: true)))
                == [0, 0, 0, 30, 5, 0, 0, 0, 1] + [0, 0, 0, 0, 0, 0, 0, 2] + [0, 0, 0, 0, 0, 0, 0, 3]
                + [0, 0, 0, 0, 0, 0, 0, 4] + [1]
        )
    }

    @Test func typeCodesAndNamesAreStable() {
        let expected: [(Frame, UInt8, String)] = [
            (.digestRequest, 7, "digestRequest"), (.pageData(firstPage: 0, pageCount: 1), 3, "pageData"),
            (.auth(nonce: [], mac: []), 12, "auth"), (.abort(reason: ""), 11, "abort"),
        ]
        for (frame, code, name) in expected {
            #expect(frame.typeCode == code)
            #expect(FrameCodec.name(ofType: code) == name)
        }
        #expect(FrameCodec.name(ofType: 0) == "unknown")
        #expect(FrameCodec.name(ofType: 13) == "unknown")
        #expect(Set(sampleFrames.map(\.typeCode)) == Set(1...12))
    }

    @Test func encoderCutsOverlongFieldsSoTheyStillDecode() throws {
        let cases: [(Frame, Frame)] = [
            (.abort(reason: String(repeating: "x", count: 5000)), .abort(reason: String(repeating: "x", count: 4096))),
            // 1 + 2 * 2048 = 4097 bytes: the cut must not split the last "é".
            (
                .abort(reason: "a" + String(repeating: "é", count: 2048)),
                .abort(reason: "a" + String(repeating: "é", count: 2047))
            ),
            (
                .digest(algorithm: String(repeating: "🚢", count: 70), value: Array(repeating: 1, count: 100)),
                .digest(algorithm: String(repeating: "🚢", count: 64), value: Array(repeating: 1, count: 64))
            ),
            (
                .auth(nonce: Array(repeating: 2, count: 65), mac: Array(repeating: 3, count: 1000)),
                .auth(nonce: Array(repeating: 2, count: 64), mac: Array(repeating: 3, count: 64))
            ),
            (.helloReply(.accepted(setupSeconds: .nan)), .helloReply(.accepted(setupSeconds: 0))),
            (.helloReply(.accepted(setupSeconds: -3)), .helloReply(.accepted(setupSeconds: 0))),
            (.helloReply(.accepted(setupSeconds: .infinity)), .helloReply(.accepted(setupSeconds: 0))),
        ]
        for (given, decoded) in cases {
            var decoder = FrameDecoder()
            decoder.append(FrameCodec.encode(given))
            #expect(try decoder.next() == decoded)
        }
    }
}
