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

    @Test func theHelloEndsWithItsImagesAndTheLayoutFlag() {
        let hello = Hello(
            buildIdentity: "b", architecture: "a", pageSize: 4096, regionBase: 0x7E00_0000_0000, regionSize: 1 << 20,
            workloadName: "w", layoutVersion: 1, sharedMountToken: "t", sharedMountTokenValue: "v", generation: 7,
            images: [
                ImageIdentity(path: "/p", buildID: [0xAB, 0xCD], loadAddress: 0x5555_5555_4000),
                ImageIdentity(path: "", buildID: [], loadAddress: 0x0102_0304_0506_0708),
            ],
            fixedLayout: true
        )
        let head: [UInt8] = [0, 4] + field("b") + field("a") + [0, 0, 0x10, 0] + u64(0x7E00_0000_0000) + u64(1 << 20)
            + field("w") + [0, 0, 0, 1] + field("t") + field("v") + u64(7) + [0]
        let images: [UInt8] = [0, 2] + field("/p") + field([0xAB, 0xCD]) + u64(0x5555_5555_4000)
            + field("") + field([]) + [1, 2, 3, 4, 5, 6, 7, 8]
        #expect(body(of: .hello(hello)) == head + images + [1])
        #expect(FrameCodec.encode(.hello(hello)) == header(length: UInt32(head.count + images.count + 2)) + [1] + head + images + [1])
        // The defaults: no images, no fixed layout.
        var plain = hello
        plain.images = []
        plain.fixedLayout = false
        #expect(body(of: .hello(plain)) == head + [0, 0, 0])
        #expect(
            Hello(
                buildIdentity: "b", architecture: "a", pageSize: 4096, regionBase: 0x7E00_0000_0000, regionSize: 1 << 20,
                workloadName: "w", layoutVersion: 1, sharedMountToken: "t", sharedMountTokenValue: "v", generation: 7
            ) == plain
        )
        #expect(wireProtocolVersion == 4)
    }

    /// 512 images of 1,024-byte paths and 64-byte build ids, with every other field at its limit, fit in
    /// one frame with room to spare; the frame decodes every way, and cut short it waits for the rest.
    @Test func theLargestHelloFitsInAFrame() throws {
        let hello = largestHello
        #expect(hello.images.count == Frame.maximumImages)
        #expect(hello.images.allSatisfy { $0.path.utf8.count == Frame.maximumPathLength && $0.buildID.count == Frame.maximumDigestLength })
        let bytes = FrameCodec.encode(.hello(hello))
        let length = bytes.count - 4
        #expect(length == 1 + 2 + 5 * (2 + 256) + 4 + 8 + 8 + 4 + 8 + 1 + 2 + 512 * (2 + 1024 + 2 + 64 + 8) + 1)
        #expect(length <= Int(Frame.maximumLength))
        #expect(Frame.maximumPathLength == 1024 && Frame.maximumImages == 512)

        #expect(try decodeBody(type: 1, body(of: .hello(hello))) == .hello(hello))
        #expect(throws: WireError.trailingBytes(type: 1, count: 1)) { try decodeBody(type: 1, body(of: .hello(hello)) + [0]) }
        bytes.withUnsafeBytes { FrameCodec.fuzzOneInput($0) }
        for cut in stride(from: 0, to: bytes.count, by: 4_099) + [bytes.count - 1] {
            var decoder = FrameDecoder()
            decoder.append(bytes[..<cut])
            #expect(try decoder.next() == nil)
            decoder.append(bytes[cut...])
            #expect(try decoder.next() == .hello(hello))
        }
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
        #expect(FrameCodec.name(ofType: 13) == "discardPages")
        #expect(FrameCodec.name(ofType: 17) == "pageEnRoute")
        #expect(FrameCodec.name(ofType: 18) == "postCopyDone")
        #expect(FrameCodec.name(ofType: 19) == "pagesHeld")
        #expect(FrameCodec.name(ofType: 20) == "encodedPages")
        #expect(FrameCodec.name(ofType: 21) == "unknown")
        #expect(Set(sampleFrames.map(\.typeCode)) == Set(1...20))
    }

    @Test func encoderCutsOverlongFieldsSoTheyStillDecode() throws {
        // Too many images: the first 512 go. A path over 1024 bytes is cut before the "é" that would cross
        // the limit; a build id over 64 bytes is cut to 64.
        let path = "/" + String(repeating: "é", count: 600)
        let first = ImageIdentity(path: path, buildID: Array(repeating: 9, count: 100), loadAddress: 1)
        let firstCut = ImageIdentity(
            path: "/" + String(repeating: "é", count: 511), buildID: Array(repeating: 9, count: 64), loadAddress: 1
        )
        let rest = (2...600).map { ImageIdentity(path: "/lib\($0).so", buildID: [UInt8($0 & 0xFF)], loadAddress: UInt64($0)) }
        let overlong = [first] + rest
        let cut = [firstCut] + rest.prefix(Frame.maximumImages - 1)
        func imagesHello(_ images: [ImageIdentity]) -> Hello {
            Hello(
                buildIdentity: "b", architecture: "a", pageSize: 4096, regionBase: 0, regionSize: 0, workloadName: "w",
                layoutVersion: 0, sharedMountToken: "t", sharedMountTokenValue: "v", generation: 0, images: images,
                fixedLayout: true
            )
        }
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
            (.hello(imagesHello(overlong)), .hello(imagesHello(cut))),
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
