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

    @Test(arguments: [0, 13, 200, 255] as [UInt8])
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
        let hello = [0, 1] + field("b") + field("a") + [0, 0, 16, 0] + Array(repeating: 0, count: 16) + field(bad)
            + [0, 0, 0, 1] + field("t") + field("v") + Array(repeating: 0, count: 8)
        #expect(streamError(frameBytes(type: 1, body: hello)) == .invalidUTF8(field: "hello.workloadName"))
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
        let hello = [0, 1] + field(name)
        #expect(
            streamError(frameBytes(type: 1, body: hello))
                == .stringTooLong(field: "hello.buildIdentity", length: 257, limit: 256)
        )
        #expect(
            WireError.stringTooLong(field: "abort.reason", length: 4097, limit: 4096).description
                == "abort.reason is 4097 bytes, the limit is 4096"
        )
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

    @Test func enumsAndBoolsMustHoldKnownValues() {
        let counts = [UInt8](repeating: 0, count: 28)
        #expect(throws: WireError.fieldOutOfRange(field: "roundEnd.final", value: 2)) {
            try decodeBody(type: 5, counts + [2])
        }
        #expect(throws: WireError.fieldOutOfRange(field: "helloReply.code", value: 0)) {
            try decodeBody(type: 2, [1, 0, 0] + field(""))
        }
        #expect(throws: WireError.fieldOutOfRange(field: "helloReply.code", value: 12)) {
            try decodeBody(type: 2, [1, 0, 12] + field(""))
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
            protocolVersion: 2, buildIdentity: "ferry 9", architecture: "x86_64", pageSize: 4096,
            regionBase: 1 << 40, regionSize: 1 << 20, workloadName: "w", layoutVersion: 1, sharedMountToken: "t",
            sharedMountTokenValue: "v", generation: 1
        )
        // Same layout: it decodes, and the destination refuses by looking at the version.
        #expect(try decodeBody(type: 1, body(of: .hello(hello))) == .hello(hello))
        var newest = hello
        newest.protocolVersion = .max
        #expect(try decodeBody(type: 1, body(of: .hello(newest))) == .hello(newest))
        // A layout this build cannot read: the error names the version, not the bytes.
        let error = WireError.fieldOutOfRange(field: WireError.protocolVersionField, value: 2)
        #expect(throws: error) { try decodeBody(type: 1, body(of: .hello(hello)) + [1, 2, 3]) }
        #expect(throws: error) { try decodeBody(type: 1, [0, 2, 0xFF]) }
        #expect(error.unsupportedProtocolVersion == 2)
        #expect(error.description == "hello is protocol version 2, this build speaks version 1")
        #expect(WireError.emptyFrame.unsupportedProtocolVersion == nil)
        // Our own version with a bad body gets the precise error.
        hello.protocolVersion = wireProtocolVersion
        #expect(throws: WireError.trailingBytes(type: 1, count: 3)) {
            try decodeBody(type: 1, body(of: .hello(hello)) + [1, 2, 3])
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
