import FerryWire
import Testing

/// Decodes `bytes` with a fresh decoder and returns the error it throws, if any.
private func streamError(_ bytes: [UInt8], maximumLength: UInt32 = Frame.maximumLength) -> WireError? {
    var decoder = FrameDecoder(maximumLength: maximumLength)
    decoder.append(bytes)
    do {
        while try decoder.next() != nil {}
        return nil
    } catch {
        return error
    }
}

/// A hello body of this protocol version up to its image list: every field before it, with short values.
private let helloHead: [UInt8] = [0, 4] + field("b") + field("a") + [0, 0, 16, 0] + Array(repeating: 0, count: 16)
    + field("w") + [0, 0, 0, 1] + field("t") + field("v") + Array(repeating: 0, count: 8) + [0]

@Suite struct MalformedTests {
    @Test func oversizedLengthIsRejectedFromTheHeaderAlone() {
        let tooLong = Frame.maximumLength + 1
        let expected = WireError.frameTooLarge(length: tooLong, limit: Frame.maximumLength)
        #expect(streamError(header(length: tooLong)) == expected)
        #expect(streamError(header(length: .max)) == .frameTooLarge(length: .max, limit: Frame.maximumLength))
        #expect(throws: expected) { try FrameCodec.decodeHeader(header(length: tooLong) + [11]) }
        // Exactly the limit is fine: the decoder waits for the body.
        #expect(streamError(header(length: Frame.maximumLength) + [11]) == nil)
        // A smaller limit of the caller's choosing.
        let commit = FrameCodec.encode(.commit(generation: 1))
        #expect(streamError(commit, maximumLength: 8) == .frameTooLarge(length: 9, limit: 8))
        #expect(throws: WireError.frameTooLarge(length: 9, limit: 8)) {
            try FrameCodec.decodeHeader(commit, maximumLength: 8)
        }
    }

    @Test func zeroLengthIsEmptyFrame() {
        #expect(streamError([0, 0, 0, 0]) == .emptyFrame)
        #expect(throws: WireError.emptyFrame) { try FrameCodec.decodeHeader([0, 0, 0, 0, 7]) }
    }

    @Test(arguments: [0, 21, 200, 255] as [UInt8])
    func unknownTypeIsRejected(type: UInt8) {
        #expect(streamError(header(length: 100) + [type]) == .unknownFrameType(type))
        #expect(throws: WireError.unknownFrameType(type)) { try FrameCodec.decodeHeader(header(length: 1) + [type]) }
        #expect(throws: WireError.unknownFrameType(type)) { try decodeBody(type: type, []) }
    }

    @Test func shortHeaderIsTruncated() throws {
        #expect(throws: WireError.truncated(type: 0, needed: 5, available: 3)) {
            try FrameCodec.decodeHeader([0, 0, 1])
        }
        #expect(
            WireError.truncated(type: 0, needed: 5, available: 3).description == "frame header is 3 bytes, it needs 5"
        )
        // Works over any collection, and reads only the header.
        let header = try FrameCodec.decodeHeader([9, 9, 0, 0, 0, 5, 6, 1, 2][2...])
        #expect(header.type == 6 && header.bodyLength == 4)
    }

    @Test(arguments: sampleFrames)
    func trailingBytesAreRejected(frame: Frame) {
        let extra = body(of: frame) + [0]
        #expect(throws: WireError.trailingBytes(type: frame.typeCode, count: 1)) {
            try decodeBody(type: frame.typeCode, extra)
        }
        #expect(
            streamError(frameBytes(type: frame.typeCode, body: extra + [1, 2]))
                == .trailingBytes(type: frame.typeCode, count: 3)
        )
    }

    @Test(
        arguments: [[0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0x61, 0x80], [0xF4, 0x90, 0x80, 0x80]]
            as [[UInt8]]
    )
    func invalidUTF8IsRejected(bad: [UInt8]) {
        #expect(streamError(frameBytes(type: 11, body: field(bad))) == .invalidUTF8(field: "abort.reason"))
        #expect(
            streamError(frameBytes(type: 8, body: field(bad) + field([1]))) == .invalidUTF8(field: "digest.algorithm")
        )
        let hello = [0, 4] + field("b") + field("a") + [0, 0, 16, 0] + Array(repeating: 0, count: 16) + field(bad)
            + [0, 0, 0, 1] + field("t") + field("v") + Array(repeating: 0, count: 8)
        #expect(streamError(frameBytes(type: 1, body: hello)) == .invalidUTF8(field: "hello.workloadName"))
        let image = helloHead + [0, 2] + field("/ok") + field([]) + u64(1) + field(bad) + field([]) + u64(2) + [0]
        #expect(streamError(frameBytes(type: 1, body: image)) == .invalidUTF8(field: "hello.images.path"))
        let refused: [UInt8] = [1, 0, 1] + field(bad)
        #expect(streamError(frameBytes(type: 2, body: refused)) == .invalidUTF8(field: "helloReply.reason"))
    }

    @Test func fieldsOverTheirLimitAreRejected() {
        let reason = [UInt8](repeating: 0x61, count: 4097)
        #expect(
            streamError(frameBytes(type: 11, body: field(reason)))
                == .stringTooLong(field: "abort.reason", length: 4097, limit: 4096)
        )
        // The length alone decides, even before the bytes are there.
        #expect(throws: WireError.stringTooLong(field: "abort.reason", length: 0xFFFF, limit: 4096)) {
            try decodeBody(type: 11, [0xFF, 0xFF])
        }
        let name = [UInt8](repeating: 0x61, count: 257)
        #expect(
            streamError(frameBytes(type: 8, body: field(name) + field([])))
                == .stringTooLong(field: "digest.algorithm", length: 257, limit: 256)
        )
        let digest = [UInt8](repeating: 7, count: 65)
        #expect(
            streamError(frameBytes(type: 8, body: field("sha256") + field(digest)))
                == .stringTooLong(field: "digest.value", length: 65, limit: 64)
        )
        #expect(
            streamError(frameBytes(type: 12, body: field(digest) + field([])))
                == .stringTooLong(field: "auth.nonce", length: 65, limit: 64)
        )
        #expect(
            streamError(frameBytes(type: 12, body: field([]) + field(digest)))
                == .stringTooLong(field: "auth.mac", length: 65, limit: 64)
        )
        let hello = [0, 4] + field(name)
        #expect(
            streamError(frameBytes(type: 1, body: hello))
                == .stringTooLong(field: "hello.buildIdentity", length: 257, limit: 256)
        )
        let path = [UInt8](repeating: 0x2F, count: Frame.maximumPathLength + 1)
        #expect(
            streamError(frameBytes(type: 1, body: helloHead + [0, 1] + field(path) + field([]) + u64(0) + [0]))
                == .stringTooLong(field: "hello.images.path", length: 1025, limit: 1024)
        )
        // Exactly the limit is fine.
        #expect(
            streamError(frameBytes(type: 1, body: helloHead + [0, 1] + field(Array(path.dropLast())) + field([]) + u64(0) + [0]))
                == nil
        )
        #expect(
            streamError(frameBytes(type: 1, body: helloHead + [0, 1] + field("/a") + field(digest) + u64(0) + [0]))
                == .stringTooLong(field: "hello.images.buildID", length: 65, limit: 64)
        )
        #expect(
            WireError.stringTooLong(field: "abort.reason", length: 4097, limit: 4096).description
                == "abort.reason is 4097 bytes, the limit is 4096"
        )
    }

    /// The image count is judged on its own, before any image is read: 513 is too many even when 513
    /// images follow.
    @Test func helloWithTooManyImagesIsRejected() {
        let oneImage = field("/x") + field([1]) + u64(1)
        let images = (0..<513).flatMap { _ in oneImage }
        #expect(
            streamError(frameBytes(type: 1, body: helloHead + [0x02, 0x01] + images + [0]))
                == .fieldOutOfRange(field: "hello.imageCount", value: 513)
        )
        #expect(throws: WireError.fieldOutOfRange(field: "hello.imageCount", value: 0xFFFF)) {
            try decodeBody(type: 1, helloHead + [0xFF, 0xFF])
        }
        // 512 is the limit, and fits.
        let frame = try? decodeBody(type: 1, helloHead + [0x02, 0x00] + images.dropLast(oneImage.count) + [1])
        guard case .hello(let hello) = frame else { Issue.record("512 images must decode"); return }
        #expect(hello.images.count == 512 && hello.fixedLayout)
    }

    /// A hello cut anywhere in its image list or before its last byte is truncated, never misread.
    @Test func helloTruncatedInsideItsImagesIsTruncated() throws {
        let full = helloHead + [0, 2] + field("/bin/p") + field([1, 2, 3]) + u64(0x5555_0000) + field("/lib/c")
            + field([4]) + u64(0x7F00_0000) + [1]
        guard case .hello(let hello) = try decodeBody(type: 1, full) else { Issue.record("not a hello"); return }
        #expect(hello.images.map(\.path) == ["/bin/p", "/lib/c"] && hello.fixedLayout)
        for cut in helloHead.count..<full.count {
            let error = #expect(throws: WireError.self) { try decodeBody(type: 1, Array(full[..<cut])) }
            guard case .truncated(type: 1, let needed, available: cut) = error else {
                Issue.record("cut at \(cut): \(String(describing: error))")
                continue
            }
            #expect(needed > cut && needed <= full.count)
            #expect(streamError(frameBytes(type: 1, body: Array(full[..<cut])))?.unsupportedProtocolVersion == nil)
        }
    }

    @Test func pageRangesMustHoldPagesAndNotOverflow() {
        #expect(throws: WireError.fieldOutOfRange(field: "pageData.pageCount", value: 0)) {
            try decodeBody(type: 3, [0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0])
        }
        #expect(throws: WireError.fieldOutOfRange(field: "zeroPages.pageCount", value: 0)) {
            try decodeBody(type: 4, Array(repeating: 0, count: 16))
        }
        #expect(throws: WireError.fieldOutOfRange(field: "pageData.firstPage", value: .max)) {
            try decodeBody(type: 3, Array(repeating: 0xFF, count: 8) + [0, 0, 0, 1])
        }
        #expect(throws: WireError.fieldOutOfRange(field: "zeroPages.firstPage", value: 2)) {
            try decodeBody(type: 4, [0, 0, 0, 0, 0, 0, 0, 2] + Array(repeating: 0xFF, count: 8))
        }
    }

    @Test func enumsAndBoolsMustHoldKnownValues() throws {
        let counts = [UInt8](repeating: 0, count: 28)
        #expect(throws: WireError.fieldOutOfRange(field: "roundEnd.final", value: 2)) {
            try decodeBody(type: 5, counts + [2])
        }
        #expect(throws: WireError.fieldOutOfRange(field: "helloReply.code", value: 0)) {
            try decodeBody(type: 2, [1, 0, 0] + field(""))
        }
        #expect(throws: WireError.fieldOutOfRange(field: "helloReply.code", value: 13)) {
            try decodeBody(type: 2, [1, 0, 13] + field(""))
        }
        #expect(try decodeBody(type: 2, [1, 0, 12] + field("")) == .helloReply(.refused(Refusal(code: .build, reason: ""))))
        #expect(throws: WireError.fieldOutOfRange(field: "hello.fixedLayout", value: 2)) {
            try decodeBody(type: 1, helloHead + [0, 0, 2])
        }
        #expect(throws: WireError.fieldOutOfRange(field: "helloReply.kind", value: 2)) {
            try decodeBody(type: 2, [2])
        }
        for bad in [Double.nan, -1, -.infinity, .infinity] {
            let bits = bad.bitPattern
            let body: [UInt8] = [0] + (0..<8).map { UInt8(truncatingIfNeeded: bits >> (56 - 8 * $0)) }
            #expect(throws: WireError.fieldOutOfRange(field: "helloReply.setupSeconds", value: bits)) {
                try decodeBody(type: 2, body)
            }
        }
    }

    @Test func helloOfAnotherVersionSaysSo() throws {
        var hello = Hello(
            protocolVersion: 5, buildIdentity: "ferry 9", architecture: "x86_64", pageSize: 4096,
            regionBase: 1 << 40, regionSize: 1 << 20, workloadName: "w", layoutVersion: 1, sharedMountToken: "t",
            sharedMountTokenValue: "v", generation: 1, images: sampleImages, fixedLayout: true
        )
        // Same layout: it decodes, and the destination refuses by looking at the version.
        #expect(try decodeBody(type: 1, body(of: .hello(hello))) == .hello(hello))
        var newest = hello
        newest.protocolVersion = .max
        #expect(try decodeBody(type: 1, body(of: .hello(newest))) == .hello(newest))
        // A layout this build cannot read: the error names the version, not the bytes.
        let error = WireError.fieldOutOfRange(field: WireError.protocolVersionField, value: 5)
        #expect(throws: error) { try decodeBody(type: 1, body(of: .hello(hello)) + [1, 2, 3]) }
        #expect(throws: error) { try decodeBody(type: 1, [0, 5, 0xFF]) }
        #expect(error.unsupportedProtocolVersion == 5)
        #expect(error.description == "hello is protocol version 5, this build speaks version 4")
        #expect(WireError.emptyFrame.unsupportedProtocolVersion == nil)
        // A version 1 hello (as a build before the image list sends it) ends where version 2 goes on:
        // refused for its version, not as a short frame.
        var first = hello
        first.protocolVersion = 1
        first.images = []
        first.fixedLayout = false
        let version1 = Array(body(of: .hello(first)).dropLast(3))
        let old = WireError.fieldOutOfRange(field: WireError.protocolVersionField, value: 1)
        #expect(throws: old) { try decodeBody(type: 1, version1) }
        #expect(streamError(frameBytes(type: 1, body: version1)) == old)
        #expect(old.description == "hello is protocol version 1, this build speaks version 4")
        // Too many images in a hello of another version: the version is what is wrong.
        #expect(throws: error) { try decodeBody(type: 1, [0, 5] + helloHead.dropFirst(2) + [0xFF, 0xFF]) }
        // Our own version with a bad body gets the precise error.
        hello.protocolVersion = wireProtocolVersion
        #expect(throws: WireError.trailingBytes(type: 1, count: 3)) {
            try decodeBody(type: 1, body(of: .hello(hello)) + [1, 2, 3])
        }
        #expect(throws: WireError.truncated(type: 1, needed: version1.count + 2, available: version1.count)) {
            try decodeBody(type: 1, [0, 4] + version1.dropFirst(2))
        }
    }

    @Test func descriptionsSayWhatAndWhere() {
        #expect(
            WireError.frameTooLarge(length: 2_000_000, limit: 1 << 20).description
                == "frame length 2000000 is over the limit of 1048576 bytes"
        )
        #expect(WireError.unknownFrameType(42).description == "unknown frame type 42")
        #expect(
            WireError.trailingBytes(type: 6, count: 3).description
                == "frame type 6 (roundAck) has 3 bytes after its last field"
        )
        #expect(WireError.invalidUTF8(field: "abort.reason").description == "abort.reason is not valid UTF-8")
        #expect(
            WireError.fieldOutOfRange(field: "pageData.pageCount", value: 0).description
                == "pageData.pageCount has a value out of range: 0"
        )
        #expect(
            Refusal(code: .pageSize, reason: "source pages are 16 KiB, here 4 KiB").description
                == "destination refused (pageSize): source pages are 16 KiB, here 4 KiB"
        )
    }
}
