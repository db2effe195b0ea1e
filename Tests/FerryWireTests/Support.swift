import FerryWire
import FerrySystem

/// One valid frame of every case, with the boundary values of every field. (A `Hello` of another
/// protocol version decodes differently when malformed; `MalformedTests` covers it.)
let sampleFrames: [Frame] = {
    let longName = String(repeating: "é", count: Frame.maximumNameLength / 2)  // 256 UTF-8 bytes
    let longReason = String(repeating: "🚢", count: Frame.maximumReasonLength / 4)  // 4096 UTF-8 bytes
    let fullDigest = (0..<64).map { UInt8($0 * 3 & 0xFF) }
    let longPath = String(repeating: "é", count: Frame.maximumPathLength / 2)  // 1024 UTF-8 bytes
    var frames: [Frame] = [
        .hello(
            Hello(
                buildIdentity: "ferry 0.1 (git abc123)", architecture: "x86_64", pageSize: 4096,
                regionBase: 0x7F00_0000_0000, regionSize: 1 << 30, workloadName: "counter", layoutVersion: 3,
                sharedMountToken: "ferry-token-1f2e", sharedMountTokenValue: "c0ffee", generation: 7
            )
        ),
        .hello(
            Hello(
                buildIdentity: "", architecture: "", pageSize: 0, regionBase: 0, regionSize: 0, workloadName: "",
                layoutVersion: 0, sharedMountToken: "", sharedMountTokenValue: "", generation: 0
            )
        ),
        .hello(
            Hello(
                buildIdentity: "ferry 0.2", architecture: "x86_64", pageSize: 4096, regionBase: 0x7E00_0000_0000,
                regionSize: 1 << 20, workloadName: "c-demo", layoutVersion: 1, sharedMountToken: "t",
                sharedMountTokenValue: "v", generation: 2, auditVerification: true, images: sampleImages,
                fixedLayout: true
            )
        ),
        // Every field at its limit; `largestHello` has as many images as allowed, too many bytes for the
        // tests that try every prefix of every sample.
        .hello(
            Hello(
                buildIdentity: longName, architecture: longName, pageSize: .max,
                regionBase: .max, regionSize: .max, workloadName: longName, layoutVersion: .max,
                sharedMountToken: longName, sharedMountTokenValue: longName, generation: .max,
                auditVerification: true,
                images: Array(repeating: ImageIdentity(path: longPath, buildID: fullDigest, loadAddress: .max), count: 3),
                fixedLayout: true
            )
        ),
        .helloReply(.accepted(setupSeconds: 0)),
        .helloReply(.accepted(setupSeconds: 12.625)),
        .helloReply(.accepted(setupSeconds: .greatestFiniteMagnitude)),
        .helloReply(.refused(Refusal(code: .other, reason: ""))),
        .helloReply(.refused(Refusal(code: .memory, reason: longReason))),
        .pageData(firstPage: 0, pageCount: 1),
        .pageData(firstPage: 0x0102_0304_0506_0708, pageCount: 9),
        .pageData(firstPage: .max - UInt64(UInt32.max), pageCount: .max),
        .pageData(firstPage: .max - 1, pageCount: 1),
        .zeroPages(firstPage: 0, pageCount: 1),
        .zeroPages(firstPage: 0, pageCount: .max),
        .zeroPages(firstPage: .max - 1, pageCount: 1),
        .roundEnd(RoundSummary(round: 0, pages: 0, zeroPages: 0, bytes: 0, final: false)),
        .roundEnd(RoundSummary(round: .max, pages: .max, zeroPages: .max, bytes: .max, final: true)),
        .roundAck(round: 0),
        .roundAck(round: .max),
        .digestRequest,
        .digest(algorithm: "", value: []),
        .digest(algorithm: "sha256", value: Array(fullDigest.prefix(32))),
        .digest(algorithm: longName, value: fullDigest),
        .commit(generation: 0),
        .commit(generation: .max),
        .running(step: 0),
        .running(step: .max),
        .abort(reason: ""),
        .abort(reason: "destination disk full: free space on /srv and retry"),
        .abort(reason: longReason),
        .auth(nonce: [], mac: []),
        .auth(nonce: fullDigest, mac: fullDigest.reversed()),
        .discardPages(firstPage: 0, pageCount: 1),
        .discardPages(firstPage: .max - 1, pageCount: 1),
        .postCopy(generation: 2, token: []),
        .postCopy(generation: .max, token: fullDigest),
        .urgentChannel(token: Array(fullDigest.prefix(16))),
        .pageRequest(firstPage: 0, pageCount: 1),
        .pageRequest(firstPage: .max - UInt64(UInt32.max), pageCount: .max),
        .pageEnRoute(firstPage: 7, pageCount: 3),
        .postCopyDone(demandPages: 0, latencyBuckets: []),
        .postCopyDone(demandPages: .max, latencyBuckets: (0..<UInt64(Frame.maximumLatencyBuckets)).map { $0 * 1000 }),
        .pagesHeld(pageCount: 1, bitmap: [1]),
        .pagesHeld(pageCount: 20, bitmap: [0xFF, 0x0F, 0x05]),
        .encodedPages(firstPage: 0, pageCount: 1, encoding: .delta, byteCount: 1),
        .encodedPages(firstPage: .max - UInt64(UInt32.max), pageCount: .max, encoding: .zstd, byteCount: .max),
        .encodedPages(firstPage: 64, pageCount: 16, encoding: .lz4, byteCount: 5000),
    ]
    for code in [Refusal.Code.protocolVersion, .architecture, .pageSize, .address, .sharedMount, .workload,
                 .layoutVersion, .busy, .authentication, .build] {
        frames.append(.helloReply(.refused(Refusal(code: code, reason: "\(code)"))))
    }
    return frames
}()

/// The largest hello there is: every field at its limit, and ``Frame/maximumImages`` images of the
/// longest path and build id (about 550 KB).
let largestHello: Hello = {
    let longName = String(repeating: "é", count: Frame.maximumNameLength / 2)
    let image = ImageIdentity(
        path: String(repeating: "é", count: Frame.maximumPathLength / 2),
        buildID: (0..<64).map { UInt8($0 * 3 & 0xFF) }, loadAddress: .max
    )
    return Hello(
        buildIdentity: longName, architecture: longName, pageSize: .max, regionBase: .max, regionSize: .max,
        workloadName: longName, layoutVersion: .max, sharedMountToken: longName, sharedMountTokenValue: longName,
        generation: .max, auditVerification: true, images: Array(repeating: image, count: Frame.maximumImages),
        fixedLayout: true
    )
}()

/// What a source's hello reports: the executable, libc and the loader, plus an object with neither a
/// path nor a build id (the codec leaves judging that to the destination).
let sampleImages: [ImageIdentity] = [
    ImageIdentity(path: "/opt/demo/bin/counter", buildID: Array(0..<20), loadAddress: 0x5555_5555_4000),
    ImageIdentity(
        path: "/lib/x86_64-linux-gnu/libc.so.6", buildID: (0..<20).map { 0xFF - $0 }, loadAddress: 0x7FFF_F7D8_0000
    ),
    ImageIdentity(path: "/lib64/ld-linux-x86-64.so.2", buildID: [0xAB], loadAddress: 0x7FFF_F7FC_5000),
    ImageIdentity(path: "", buildID: [], loadAddress: 0),
]

/// The bytes of a big-endian `u64`.
func u64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) } }

/// A frame's bytes from a type and a body, with the header computed.
func frameBytes(type: UInt8, body: [UInt8]) -> [UInt8] {
    header(length: UInt32(body.count + 1)) + [type] + body
}

/// The four length bytes of a header.
func header(length: UInt32) -> [UInt8] {
    [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
}

/// The body of an encoded frame.
func body(of frame: Frame) -> [UInt8] {
    Array(FrameCodec.encode(frame).dropFirst(FrameCodec.headerSize))
}

/// `FrameCodec.decodeBody` over an array.
func decodeBody(type: UInt8, _ body: [UInt8]) throws(WireError) -> Frame {
    try body.withUnsafeBytes { raw in
        Result { () throws(WireError) -> Frame in try FrameCodec.decodeBody(type: type, raw) }
    }.get()
}

/// A `u16` length and the bytes: a string or byte string field.
func field(_ bytes: [UInt8]) -> [UInt8] {
    [UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes
}

func field(_ string: String) -> [UInt8] { field(Array(string.utf8)) }

/// Every frame a decoder returns for `bytes` appended in chunks of the given sizes (cycled; all at once
/// when empty), and how it ended.
func decodeStream(_ bytes: [UInt8], chunks: [Int]) -> (frames: [Frame], error: WireError?, buffered: Int) {
    var decoder = FrameDecoder()
    var frames: [Frame] = []
    var start = 0
    var chunkIndex = 0
    while true {
        let size = chunks.isEmpty ? bytes.count : chunks[chunkIndex % chunks.count]
        chunkIndex += 1
        let end = min(bytes.count, start + size)
        decoder.append(bytes[start..<end])
        start = end
        do {
            while let frame = try decoder.next() { frames.append(frame) }
        } catch {
            return (frames, error, decoder.bufferedByteCount)
        }
        if start == bytes.count { return (frames, nil, decoder.bufferedByteCount) }
    }
}
