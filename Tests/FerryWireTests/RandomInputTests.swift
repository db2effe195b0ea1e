import FerrySystem
import FerryWire
import Testing

/// Thousands of random and mutated inputs: the decoder must never trap, and `fuzzOneInput` checks on each
/// that every way of decoding agrees and that decoded frames re-encode to their bytes.
@Suite struct RandomInputTests {
    private func fuzz(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { FrameCodec.fuzzOneInput($0) }
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomBuffersNeverTrap(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        for _ in 0..<2_500 {
            let count = Int.random(in: 0..<80, using: &random)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
            // Half the time, a plausible header so that bodies get decoded, not just rejected.
            if Bool.random(using: &random), count >= 5 {
                bytes[0] = 0
                bytes[1] = 0
                bytes[2] = 0
                bytes[3] = UInt8.random(in: 1...UInt8(count - 4), using: &random)
                bytes[4] = UInt8.random(in: 1...12, using: &random)
            }
            fuzz(bytes)
        }
    }

    @Test(arguments: [5, 6, 7] as [UInt64])
    func mutatedFramesNeverTrap(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        // Small frames only, so the byte-at-a-time pass in fuzzOneInput stays quick.
        let valid = sampleFrames.map(FrameCodec.encode).filter { $0.count < 600 }
        var decodedSome = 0
        var rejected = 0
        for _ in 0..<3_000 {
            var bytes = valid.randomElement(using: &random)!
            if Bool.random(using: &random) { bytes += valid.randomElement(using: &random)! }
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                guard !bytes.isEmpty else { break }
                let index = Int.random(in: 0..<bytes.count, using: &random)
                switch Int.random(in: 0..<6, using: &random) {
                case 0: bytes[index] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &random)
                case 1: bytes[index] = UInt8.random(in: 0...255, using: &random)
                case 2: bytes.insert(UInt8.random(in: 0...255, using: &random), at: index)
                case 3: bytes.remove(at: index)
                case 4: bytes.removeSubrange(index...)
                default: bytes[index] = [0, 1, 0x7F, 0x80, 0xFF].randomElement(using: &random)!
                }
            }
            fuzz(bytes)
            let outcome = decodeStream(bytes, chunks: [])
            if !outcome.frames.isEmpty { decodedSome += 1 }
            if outcome.error != nil { rejected += 1 }
        }
        // The mutations reach both sides: frames that still decode and frames that are rejected.
        #expect(decodedSome > 300 && rejected > 300)
    }

    /// Random image lists round-trip, and random damage to the list (never to the fields before it) is
    /// either decoded canonically or rejected, never trapped on.
    @Test(arguments: [9, 10] as [UInt64])
    func randomImageListsRoundTripAndSurviveDamage(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        let pieces = ["a", "/", "lib", ".so.6", "é", "🚢", "\u{0}"]
        var decodedSome = 0
        var rejected = 0
        for _ in 0..<200 {
            let images = (0..<Int.random(in: 0...12, using: &random)).map { _ in
                ImageIdentity(
                    path: (0..<Int.random(in: 0...30, using: &random)).map { _ in pieces.randomElement(using: &random)! }
                        .joined(),
                    buildID: (0..<Int.random(in: 0...Frame.maximumDigestLength, using: &random)).map { _ in
                        UInt8.random(in: 0...255, using: &random)
                    },
                    loadAddress: random.next()
                )
            }
            let hello = Hello(
                buildIdentity: "ferry", architecture: "x86_64", pageSize: 4096, regionBase: 0x7E00_0000_0000,
                regionSize: 1 << 20, workloadName: "w", layoutVersion: 1, sharedMountToken: "t",
                sharedMountTokenValue: "v", generation: random.next(), images: images,
                fixedLayout: Bool.random(using: &random)
            )
            let bytes = FrameCodec.encode(.hello(hello))
            #expect(try decodeBody(type: 1, body(of: .hello(hello))) == .hello(hello))
            fuzz(bytes)

            var plain = hello
            plain.images = []
            let listStart = FrameCodec.encode(.hello(plain)).count - 3
            var damaged = bytes
            for _ in 0..<Int.random(in: 1...3, using: &random) {
                let index = Int.random(in: listStart..<damaged.count, using: &random)
                switch Int.random(in: 0..<4, using: &random) {
                case 0: damaged[index] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &random)
                case 1: damaged[index] = UInt8.random(in: 0...255, using: &random)
                case 2: damaged[index] = [0, 1, 2, 0x7F, 0x80, 0xFF].randomElement(using: &random)!
                default: damaged.removeSubrange(index...)
                }
                if damaged.count <= listStart { break }
            }
            fuzz(damaged)
            let outcome = decodeStream(damaged, chunks: [7])
            if !outcome.frames.isEmpty { decodedSome += 1 }
            if outcome.error != nil { rejected += 1 }
        }
        #expect(decodedSome > 20 && rejected > 20, "decoded \(decodedSome), rejected \(rejected)")
    }

    @Test func aValidFrameBeforeGarbageStillComesOut() {
        let outcome = decodeStream(FrameCodec.encode(.commit(generation: 9)) + [0, 0, 0, 1, 99], chunks: [3])
        #expect(outcome.frames == [.commit(generation: 9)])
        #expect(outcome.error == .unknownFrameType(99))
    }

    @Test func randomBodiesOfEveryTypeNeverTrap() {
        var random = SplitMix64(seed: 8)
        for type in UInt8(0)...UInt8(14) {
            for _ in 0..<1_000 {
                let count = Int.random(in: 0..<48, using: &random)
                let body = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
                if let frame = try? decodeBody(type: type, body) {
                    // Whatever decodes is canonical.
                    #expect(FrameCodec.encode(frame) == frameBytes(type: type, body: body))
                }
            }
        }
    }

    @Test func largeValidFramesPassTheFuzzChecks() {
        fuzz(sampleFrames.flatMap(FrameCodec.encode))
    }
}
