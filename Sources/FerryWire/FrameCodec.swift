/// Encodes frames to bytes and decodes them back: pure functions, no I/O.
///
/// Encoding is total and never produces a frame the decoder rejects (over-long strings are cut at a
/// character boundary, see ``Frame``). Decoding checks every length and field before use, never traps,
/// and throws a ``WireError`` that says what was wrong.
public enum FrameCodec {
    /// Size of the frame header: a `u32` length and a `u8` type.
    public static let headerSize = 5

    /// The bytes of one frame, header included.
    /// - Parameter frame: The frame to encode.
    /// - Returns: `u32 length | u8 type | body`.
    public static func encode(_ frame: Frame) -> [UInt8] {
        var buffer: [UInt8] = []
        encode(frame, into: &buffer)
        return buffer
    }

    /// Appends the bytes of one frame to `buffer`, with no intermediate array.
    /// - Parameters:
    ///   - frame: The frame to encode.
    ///   - buffer: The bytes to append to; what it held before is kept.
    public static func encode(_ frame: Frame, into buffer: inout [UInt8]) {
        var writer = ByteWriter(bytes: [])
        swap(&writer.bytes, &buffer)
        defer { swap(&writer.bytes, &buffer) }
        let start = writer.beginFrame(frame.kind)
        switch frame {
        case .hello(let hello):
            writer.write(hello.protocolVersion)
            writer.write(hello.buildIdentity, limit: Frame.maximumNameLength)
            writer.write(hello.architecture, limit: Frame.maximumNameLength)
            writer.write(hello.pageSize)
            writer.write(hello.regionBase)
            writer.write(hello.regionSize)
            writer.write(hello.workloadName, limit: Frame.maximumNameLength)
            writer.write(hello.layoutVersion)
            writer.write(hello.sharedMountToken, limit: Frame.maximumNameLength)
            writer.write(hello.sharedMountTokenValue, limit: Frame.maximumNameLength)
            writer.write(hello.generation)
            writer.write(UInt8(hello.auditVerification ? 1 : 0))
            let images = hello.images.prefix(Frame.maximumImages)
            writer.write(UInt16(images.count))
            for image in images {
                writer.write(image.path, limit: Frame.maximumPathLength)
                writer.write(bytes: image.buildID, limit: Frame.maximumDigestLength)
                writer.write(image.loadAddress)
            }
            writer.write(hello.fixedLayout)
        case .helloReply(.accepted(let setupSeconds)):
            writer.write(UInt8(0))
            writer.write((setupSeconds.isFinite && setupSeconds >= 0 ? setupSeconds : 0).bitPattern)
        case .helloReply(.refused(let refusal)):
            writer.write(UInt8(1))
            writer.write(refusal.code.rawValue)
            writer.write(refusal.reason, limit: Frame.maximumReasonLength)
        case .pageData(let firstPage, let pageCount):
            writer.write(firstPage)
            writer.write(pageCount)
        case .zeroPages(let firstPage, let pageCount):
            writer.write(firstPage)
            writer.write(pageCount)
        case .encodedPages(let firstPage, let pageCount, let encoding, let byteCount):
            writer.write(firstPage)
            writer.write(pageCount)
            writer.write(encoding.rawValue)
            writer.write(Swift.max(byteCount, 1))
        case .roundEnd(let summary):
            writer.write(summary.round)
            writer.write(summary.pages)
            writer.write(summary.zeroPages)
            writer.write(summary.bytes)
            writer.write(summary.final)
        case .roundAck(let round):
            writer.write(round)
        case .digestRequest:
            break
        case .digest(let algorithm, let value):
            writer.write(algorithm, limit: Frame.maximumNameLength)
            writer.write(bytes: value, limit: Frame.maximumDigestLength)
        case .commit(let generation):
            writer.write(generation)
        case .running(let step):
            writer.write(step)
        case .abort(let reason):
            writer.write(reason, limit: Frame.maximumReasonLength)
        case .auth(let nonce, let mac):
            writer.write(bytes: nonce, limit: Frame.maximumDigestLength)
            writer.write(bytes: mac, limit: Frame.maximumDigestLength)
        case .discardPages(let firstPage, let pageCount):
            writer.write(firstPage)
            writer.write(pageCount)
        case .postCopy(let generation, let token):
            writer.write(generation)
            writer.write(bytes: token, limit: Frame.maximumDigestLength)
        case .urgentChannel(let token):
            writer.write(bytes: token, limit: Frame.maximumDigestLength)
        case .pageRequest(let firstPage, let pageCount), .pageEnRoute(let firstPage, let pageCount):
            writer.write(firstPage)
            writer.write(pageCount)
        case .postCopyDone(let demandPages, let latencyBuckets):
            writer.write(demandPages)
            let buckets = latencyBuckets.prefix(Frame.maximumLatencyBuckets)
            writer.write(UInt16(buckets.count))
            for bucket in buckets { writer.write(bucket) }
        case .pagesHeld(let pageCount, let bitmap):
            // Always the exact size the count asks for (cut or zero-padded), so it decodes.
            let count = Swift.min(pageCount, Frame.maximumBitmapPages)
            let size = Int((count + 7) / 8)
            writer.write(count)
            writer.bytes.append(contentsOf: bitmap.prefix(size))
            if bitmap.count < size { writer.bytes.append(contentsOf: [UInt8](repeating: 0, count: size - bitmap.count)) }
        }
        writer.endFrame(startingAt: start)
    }

    /// Parses a frame header, for a transport that reads the header and then the body.
    /// - Parameters:
    ///   - bytes: At least ``headerSize`` bytes; only the first five are read.
    ///   - maximumLength: The largest length to accept.
    /// - Returns: The type byte and the length of the body that follows.
    /// - Throws: `truncated(type: 0, …)` for fewer than five bytes, `emptyFrame`, `frameTooLarge`, or
    ///   `unknownFrameType`.
    public static func decodeHeader(
        _ bytes: some Collection<UInt8>, maximumLength: UInt32 = Frame.maximumLength
    ) throws(WireError) -> (type: UInt8, bodyLength: Int) {
        var header = (UInt32(0), UInt8(0))
        var count = 0
        for byte in bytes.prefix(headerSize) {
            if count < 4 { header.0 = header.0 << 8 | UInt32(byte) } else { header.1 = byte }
            count += 1
        }
        guard count == headerSize else { throw .truncated(type: 0, needed: headerSize, available: count) }
        try checkLength(header.0, maximumLength: maximumLength)
        try checkType(header.1)
        return (header.1, Int(header.0) - 1)
    }

    /// Decodes one frame body.
    /// - Parameters:
    ///   - type: The type byte from the header.
    ///   - body: The whole body, exactly (for `pageData`, without the page bytes that follow).
    /// - Returns: The frame.
    /// - Throws: `unknownFrameType`, `truncated` when the body is shorter than its fields,
    ///   `trailingBytes` when it is longer, or the error of the first bad field.
    public static func decodeBody(type: UInt8, _ body: UnsafeRawBufferPointer) throws(WireError) -> Frame {
        guard let kind = FrameType(rawValue: type) else { throw .unknownFrameType(type) }
        var reader = ByteReader(body, type: type)
        if let size = kind.fixedBodySize {
            try reader.require(size)
            guard body.count == size else { throw .trailingBytes(type: type, count: body.count - size) }
        }
        let frame: Frame
        switch kind {
        case .hello:
            return .hello(try decodeHello(&reader))
        case .helloReply:
            frame = .helloReply(try decodeHelloReply(&reader))
        case .pageData:
            let firstPage = try reader.read(UInt64.self)
            let pageCount = try reader.read(UInt32.self)
            try checkPageRange(firstPage: firstPage, pageCount: UInt64(pageCount), frame: "pageData")
            frame = .pageData(firstPage: firstPage, pageCount: pageCount)
        case .zeroPages:
            let firstPage = try reader.read(UInt64.self)
            let pageCount = try reader.read(UInt64.self)
            try checkPageRange(firstPage: firstPage, pageCount: pageCount, frame: "zeroPages")
            frame = .zeroPages(firstPage: firstPage, pageCount: pageCount)
        case .encodedPages:
            let firstPage = try reader.read(UInt64.self)
            let pageCount = try reader.read(UInt32.self)
            try checkPageRange(firstPage: firstPage, pageCount: UInt64(pageCount), frame: "encodedPages")
            let raw = try reader.read(UInt8.self)
            guard let encoding = PageEncoding(rawValue: raw) else { throw .fieldOutOfRange(field: "encodedPages.encoding", value: UInt64(raw)) }
            let byteCount = try reader.read(UInt32.self)
            guard byteCount > 0 else { throw .fieldOutOfRange(field: "encodedPages.byteCount", value: 0) }
            frame = .encodedPages(firstPage: firstPage, pageCount: pageCount, encoding: encoding, byteCount: byteCount)
        case .roundEnd:
            frame = .roundEnd(
                RoundSummary(
                    round: try reader.read(UInt32.self),
                    pages: try reader.read(UInt64.self),
                    zeroPages: try reader.read(UInt64.self),
                    bytes: try reader.read(UInt64.self),
                    final: try reader.readBool(field: "roundEnd.final")
                )
            )
        case .roundAck:
            frame = .roundAck(round: try reader.read(UInt32.self))
        case .digestRequest:
            frame = .digestRequest
        case .digest:
            frame = .digest(
                algorithm: try reader.readString(field: "digest.algorithm", limit: Frame.maximumNameLength),
                value: try reader.readBytes(field: "digest.value", limit: Frame.maximumDigestLength)
            )
        case .commit:
            frame = .commit(generation: try reader.read(UInt64.self))
        case .running:
            frame = .running(step: try reader.read(UInt64.self))
        case .abort:
            frame = .abort(reason: try reader.readString(field: "abort.reason", limit: Frame.maximumReasonLength))
        case .auth:
            frame = .auth(
                nonce: try reader.readBytes(field: "auth.nonce", limit: Frame.maximumDigestLength),
                mac: try reader.readBytes(field: "auth.mac", limit: Frame.maximumDigestLength)
            )
        case .discardPages:
            let firstPage = try reader.read(UInt64.self)
            let pageCount = try reader.read(UInt64.self)
            try checkPageRange(firstPage: firstPage, pageCount: pageCount, frame: "discardPages")
            frame = .discardPages(firstPage: firstPage, pageCount: pageCount)
        case .postCopy:
            frame = .postCopy(
                generation: try reader.read(UInt64.self),
                token: try reader.readBytes(field: "postCopy.token", limit: Frame.maximumDigestLength))
        case .urgentChannel:
            frame = .urgentChannel(token: try reader.readBytes(field: "urgentChannel.token", limit: Frame.maximumDigestLength))
        case .pageRequest, .pageEnRoute:
            let firstPage = try reader.read(UInt64.self)
            let pageCount = try reader.read(UInt32.self)
            let name = kind == .pageRequest ? "pageRequest" : "pageEnRoute"
            try checkPageRange(firstPage: firstPage, pageCount: UInt64(pageCount), frame: name)
            frame = kind == .pageRequest
                ? .pageRequest(firstPage: firstPage, pageCount: pageCount) : .pageEnRoute(firstPage: firstPage, pageCount: pageCount)
        case .postCopyDone:
            let demandPages = try reader.read(UInt64.self)
            let count = try reader.read(UInt16.self)
            guard Int(count) <= Frame.maximumLatencyBuckets else {
                throw .fieldOutOfRange(field: "postCopyDone.latencyBuckets", value: UInt64(count))
            }
            var buckets: [UInt64] = []
            for _ in 0..<count { buckets.append(try reader.read(UInt64.self)) }
            frame = .postCopyDone(demandPages: demandPages, latencyBuckets: buckets)
        case .pagesHeld:
            let pageCount = try reader.read(UInt64.self)
            guard pageCount <= Frame.maximumBitmapPages else { throw .fieldOutOfRange(field: "pagesHeld.pageCount", value: pageCount) }
            let size = Int((pageCount + 7) / 8)
            frame = .pagesHeld(pageCount: pageCount, bitmap: try reader.readRaw(count: size))
        }
        try reader.finish()
        return frame
    }

    /// A short name for a frame type, for messages: `"pageData"`, or `"unknown"` for a type this build
    /// does not know.
    public static func name(ofType type: UInt8) -> String {
        switch FrameType(rawValue: type) {
        case .hello: "hello"
        case .helloReply: "helloReply"
        case .pageData: "pageData"
        case .zeroPages: "zeroPages"
        case .roundEnd: "roundEnd"
        case .roundAck: "roundAck"
        case .digestRequest: "digestRequest"
        case .digest: "digest"
        case .commit: "commit"
        case .running: "running"
        case .abort: "abort"
        case .auth: "auth"
        case .discardPages: "discardPages"
        case .postCopy: "postCopy"
        case .urgentChannel: "urgentChannel"
        case .pageRequest: "pageRequest"
        case .pageEnRoute: "pageEnRoute"
        case .postCopyDone: "postCopyDone"
        case .pagesHeld: "pagesHeld"
        case .encodedPages: "encodedPages"
        case nil: "unknown"
        }
    }

    // MARK: Pieces shared with FrameDecoder

    static func checkLength(_ length: UInt32, maximumLength: UInt32) throws(WireError) {
        guard length != 0 else { throw .emptyFrame }
        guard length <= maximumLength else { throw .frameTooLarge(length: length, limit: maximumLength) }
    }

    static func checkType(_ type: UInt8) throws(WireError) {
        guard FrameType(rawValue: type) != nil else { throw .unknownFrameType(type) }
    }

    // MARK: Bodies

    /// A page range must hold at least one page and end at or before `UInt64.max`, so that a receiver
    /// can compute `firstPage + pageCount` without overflow.
    private static func checkPageRange(firstPage: UInt64, pageCount: UInt64, frame: String) throws(WireError) {
        guard pageCount != 0 else { throw .fieldOutOfRange(field: "\(frame).pageCount", value: 0) }
        guard firstPage <= UInt64.max - pageCount else {
            throw .fieldOutOfRange(field: "\(frame).firstPage", value: firstPage)
        }
    }

    /// Reads a whole `Hello` body. When the body does not fit this version's layout and its protocol
    /// version is not ours, the error says so (`fieldOutOfRange(protocolVersionField, …)`), so the
    /// destination can refuse with a reason instead of a parse error: a version 1 hello, which ends
    /// before the image list, is one.
    private static func decodeHello(_ reader: inout ByteReader) throws(WireError) -> Hello {
        let version = try reader.read(UInt16.self)
        do throws(WireError) {
            let name = Frame.maximumNameLength
            let hello = Hello(
                protocolVersion: version,
                buildIdentity: try reader.readString(field: "hello.buildIdentity", limit: name),
                architecture: try reader.readString(field: "hello.architecture", limit: name),
                pageSize: try reader.read(UInt32.self),
                regionBase: try reader.read(UInt64.self),
                regionSize: try reader.read(UInt64.self),
                workloadName: try reader.readString(field: "hello.workloadName", limit: name),
                layoutVersion: try reader.read(UInt32.self),
                sharedMountToken: try reader.readString(field: "hello.sharedMountToken", limit: name),
                sharedMountTokenValue: try reader.readString(field: "hello.sharedMountTokenValue", limit: name),
                generation: try reader.read(UInt64.self),
                auditVerification: try reader.readBool(field: "hello.auditVerification"),
                images: try decodeImages(&reader),
                fixedLayout: try reader.readBool(field: "hello.fixedLayout")
            )
            try reader.finish()
            return hello
        } catch {
            guard version == wireProtocolVersion else {
                throw .fieldOutOfRange(field: WireError.protocolVersionField, value: UInt64(version))
            }
            throw error
        }
    }

    /// The image list of a hello: a `u16` count of at most ``Frame/maximumImages``, then per image
    /// `path | buildID | u64 loadAddress`.
    private static func decodeImages(_ reader: inout ByteReader) throws(WireError) -> [ImageIdentity] {
        let count = Int(try reader.read(UInt16.self))
        guard count <= Frame.maximumImages else {
            throw .fieldOutOfRange(field: "hello.imageCount", value: UInt64(count))
        }
        // Each image takes at least 12 bytes: do not reserve for more than the body can hold.
        var images: [ImageIdentity] = []
        images.reserveCapacity(min(count, reader.remaining / 12))
        for _ in 0..<count {
            images.append(
                ImageIdentity(
                    path: try reader.readString(field: "hello.images.path", limit: Frame.maximumPathLength),
                    buildID: try reader.readBytes(field: "hello.images.buildID", limit: Frame.maximumDigestLength),
                    loadAddress: try reader.read(UInt64.self)
                )
            )
        }
        return images
    }

    private static func decodeHelloReply(_ reader: inout ByteReader) throws(WireError) -> HelloReply {
        switch try reader.read(UInt8.self) {
        case 0:
            let bits = try reader.read(UInt64.self)
            let seconds = Double(bitPattern: bits)
            guard seconds.isFinite && seconds >= 0 else {
                throw .fieldOutOfRange(field: "helloReply.setupSeconds", value: bits)
            }
            return .accepted(setupSeconds: seconds)
        case 1:
            let raw = try reader.read(UInt16.self)
            guard let code = Refusal.Code(rawValue: raw) else {
                throw .fieldOutOfRange(field: "helloReply.code", value: UInt64(raw))
            }
            let reason = try reader.readString(field: "helloReply.reason", limit: Frame.maximumReasonLength)
            return .refused(Refusal(code: code, reason: reason))
        case let other:
            throw .fieldOutOfRange(field: "helloReply.kind", value: UInt64(other))
        }
    }
}
