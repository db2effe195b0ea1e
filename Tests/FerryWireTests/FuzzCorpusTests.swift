import FerryWire
import Foundation
import Testing

/// The seed corpus of `demo/fuzz.sh` (written by `demo/fuzz-corpus/make-corpus.py`) is what it says:
/// every seed not named `bad-*` is a stream of valid frames, every `bad-*` seed is rejected, and every
/// seed passes the fuzz entry point's checks.
@Suite struct FuzzCorpusTests {
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("demo/fuzz-corpus")

    static var seeds: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".bin") }.sorted()
    }

    @Test func theCorpusHoldsFramesOfEveryType() throws {
        #expect(Self.seeds.count >= 30)
        var types = Set<UInt8>()
        var hellos: [Hello] = []
        for name in Self.seeds where !name.hasPrefix("bad-") {
            for frame in try frames(in: name) {
                types.insert(frame.typeCode)
                if case .hello(let hello) = frame { hellos.append(hello) }
            }
        }
        #expect(types == Set(1...20))
        // The hellos are of this protocol version's layout, with images and a fixed layout among them.
        #expect(hellos.contains { $0.protocolVersion == wireProtocolVersion && $0.images.count >= 2 })
        #expect(hellos.contains { $0.fixedLayout })
        #expect(hellos.contains { $0.images.isEmpty })
    }

    /// A hello of the version before the image list is refused for its version, not misread.
    @Test func aVersionOneHelloIsRefusedForItsVersion() throws {
        let bytes = try [UInt8](Data(contentsOf: Self.directory.appendingPathComponent("bad-hello-version-1.bin")))
        let error = #expect(throws: WireError.self) { try decodeAll(bytes) }
        #expect(error?.unsupportedProtocolVersion == 1)
    }

    @Test(arguments: seeds) func eachSeedDecodesAsItsNameSays(name: String) throws {
        let bytes = try [UInt8](Data(contentsOf: Self.directory.appendingPathComponent(name)))
        bytes.withUnsafeBytes { FrameCodec.fuzzOneInput($0) }
        if name.hasPrefix("bad-") {
            #expect(throws: WireError.self) { try decodeAll(bytes) }
        } else {
            let frames = try decodeAll(bytes)
            #expect(!frames.isEmpty)
            #expect(frames.flatMap(FrameCodec.encode) == bytes)
        }
    }

    private func frames(in name: String) throws -> [Frame] {
        try decodeAll(try [UInt8](Data(contentsOf: Self.directory.appendingPathComponent(name))))
    }

    /// Every frame in `bytes`; throws on the first bad one or on bytes left over.
    private func decodeAll(_ bytes: [UInt8]) throws -> [Frame] {
        var decoder = FrameDecoder()
        decoder.append(bytes[...])
        var frames: [Frame] = []
        while let frame = try decoder.next() { frames.append(frame) }
        if frames.flatMap(FrameCodec.encode).count != bytes.count {
            throw WireError.truncated(type: 0, needed: FrameCodec.headerSize, available: bytes.count)
        }
        return frames
    }
}
