import CShims
import FerryMigration
import FerrySystem
import Foundation
import Testing

/// The page hash behind `RegionDigest` ("ferry-pagemix64-v2", CShims/digest.c): the same bits from every
/// implementation (two hosts may have different CPUs), the documented algorithm, and a changed page for
/// any flipped bit.
@Suite struct PageHashTests {
    /// The implementations this CPU can run; the scalar one is the reference.
    static var paths: [CShimsDigestPath] {
        [CShimsDigestScalar, CShimsDigestSSE2, CShimsDigestAVX2].filter { CShims_digest_available($0) != 0 }
    }

    /// `pages` pages of `pageSize` bytes: random ones, then all zeros, all ones, one set bit, a word counter.
    static func samplePages(pageSize: Int, random pages: Int, seed: UInt64) -> [UInt64] {
        let words = pageSize / 8
        var generator = SplitMix64(seed: seed)
        var result = (0..<(pages * words)).map { _ in generator.next() }
        result += [UInt64](repeating: 0, count: words)
        result += [UInt64](repeating: .max, count: words)
        result += [1] + [UInt64](repeating: 0, count: words - 1)
        result += (0..<words).map { UInt64($0) }
        return result
    }

    /// Per-page hashes and the run's sum, from one implementation.
    static func hashes(_ words: [UInt64], pageSize: Int, first: UInt64, path: CShimsDigestPath) -> (sum: UInt64, hashes: [UInt64]) {
        let count = words.count * 8 / pageSize
        var hashes = [UInt64](repeating: 0, count: count)
        let sum = words.withUnsafeBytes { bytes in
            hashes.withUnsafeMutableBufferPointer { CShims_digest_run_using(path, bytes.baseAddress, pageSize, first, count, $0.baseAddress) }
        }
        return (sum, hashes)
    }

    @Test func thisMachineRunsTheVectorPaths() throws {
        #if arch(x86_64)
        #expect(Self.paths.contains(CShimsDigestSSE2), "SSE2 is part of x86-64")
        let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        if cpuinfo.contains(" avx2") { #expect(Self.paths.contains(CShimsDigestAVX2), "the CPU has AVX2, the dispatch must see it") }
        #endif
        #expect(CShims_digest_available(CShimsDigestBest) != 0)
    }

    @Test(arguments: [1024, 4096, 16384, 65536])
    func everyImplementationGivesTheSameBits(pageSize: Int) {
        let words = Self.samplePages(pageSize: pageSize, random: 64, seed: UInt64(pageSize))
        let reference = Self.hashes(words, pageSize: pageSize, first: 1000, path: CShimsDigestScalar)
        #expect(Set(reference.hashes).count == reference.hashes.count, "distinct pages, distinct hashes")
        for path in Self.paths + [CShimsDigestBest] {
            let other = Self.hashes(words, pageSize: pageSize, first: 1000, path: path)
            #expect(other.hashes == reference.hashes, "path \(path.rawValue), \(pageSize)-byte pages")
            #expect(other.sum == reference.sum, "path \(path.rawValue), \(pageSize)-byte pages")
        }
        // Unaligned input (a copy may come from anywhere): same bits.
        var shifted = [UInt8](repeating: 0, count: pageSize + 3)
        words.withUnsafeBytes { shifted.replaceSubrange(3..., with: $0.prefix(pageSize)) }
        for path in Self.paths {
            let hash = shifted.withUnsafeBytes { bytes in
                var hash: UInt64 = 0
                _ = CShims_digest_run_using(path, bytes.baseAddress! + 3, pageSize, 0, 1, &hash)
                return hash
            }
            #expect(hash == reference.hashes[0], "path \(path.rawValue), unaligned")
        }
    }

    @Test func theCIsTheDocumentedAlgorithm() {
        // A second implementation, in Swift from the description at the top of digest.c, on random pages.
        let words = Self.samplePages(pageSize: 4096, random: 16, seed: 99)
        let c = Self.hashes(words, pageSize: 4096, first: 0, path: CShimsDigestBest).hashes
        words.withUnsafeBytes { bytes in
            for page in 0..<c.count {
                #expect(ReferencePageMix.hash(UnsafeRawBufferPointer(rebasing: bytes[(page * 4096)..<((page + 1) * 4096)])) == c[page], "page \(page)")
            }
        }
        #expect(RegionDigest.contribution(page: 12345, hash: c[0]) == ReferencePageMix.mix(c[0] ^ (12345 &* 0xFF51_AFD7_ED55_8CCD)))
    }

    @Test func knownAnswersPinTheAlgorithm() {
        // Changing any of these changes what two hosts compare: rename `RegionDigest.algorithm` with them.
        #expect(RegionDigest.algorithm == "ferry-pagemix64-v2")
        #expect(RegionDigest.zeroPageHash(byteCount: 4096) == 0x3425_eff8_5fa0_7ed0)
        #expect(RegionDigest.zeroPageHash(byteCount: 16384) == 0x54ae_5f3d_5047_6dbb)
        // Bytes (i * 2654435761 mod 2^32) >> 13, truncated to 8 bits, for i over three pages, indices 5 to 7.
        let bytes = (0..<(3 * 4096)).map { UInt8(truncatingIfNeeded: (UInt32($0) &* 2_654_435_761) >> 13) }
        bytes.withUnsafeBytes { raw in
            var hashes = [UInt64](repeating: 0, count: 3)
            for path in Self.paths {
                let sum = hashes.withUnsafeMutableBufferPointer { CShims_digest_run_using(path, raw.baseAddress, 4096, 5, 3, $0.baseAddress) }
                #expect(hashes == [0x0217_747c_1959_cd92, 0x61a1_486e_9c08_bc11, 0x5e72_0f5e_482f_5839], "path \(path.rawValue)")
                #expect(sum == 0x80f0_5d9b_5c13_7d54, "path \(path.rawValue)")
            }
            #expect(RegionDigest.pageHash(raw.baseAddress!, byteCount: 4096) == 0x0217_747c_1959_cd92)
        }
    }

    @Test func aFlippedBitAnywhereInAPageChangesItsHash() {
        var generator = SplitMix64(seed: 7)
        for pattern in ["random", "zero"] {
            var page = (0..<512).map { _ in pattern == "zero" ? 0 : generator.next() }
            for path in Self.paths {
                func hash() -> UInt64 { page.withUnsafeBytes { bytes in var h: UInt64 = 0; _ = CShims_digest_run_using(path, bytes.baseAddress, 4096, 0, 1, &h); return h } }
                let original = hash()
                var seen: Set<UInt64> = [original]
                // Every byte, one bit each (cycling through the 8), and all 8 bits of the bytes at lane, stripe,
                // block and page edges: each variant hashes differently from the page and from each other.
                var flips = (0..<4096).map { ($0, $0 % 8) }
                for byte in [0, 7, 8, 63, 64, 1023, 1024, 2047, 2048, 3071, 3072, 4095] { flips += (0..<8).map { (byte, $0) } }
                for (byte, bit) in flips {
                    page.withUnsafeMutableBytes { $0[byte] ^= UInt8(1 << bit) }
                    let changed = hash()
                    page.withUnsafeMutableBytes { $0[byte] ^= UInt8(1 << bit) }
                    #expect(changed != original, "\(pattern) page, path \(path.rawValue), byte \(byte) bit \(bit)")
                    seen.insert(changed)
                }
                #expect(seen.count == Set(flips.map { "\($0.0).\($0.1)" }).count + 1, "\(pattern) page, path \(path.rawValue): no two flips collide")
                #expect(hash() == original)
            }
        }
    }

    @Test func movedBytesChangeThePageHash() {
        var generator = SplitMix64(seed: 8)
        let page = (0..<512).map { _ in generator.next() }
        func hash(_ words: [UInt64]) -> UInt64 { words.withUnsafeBytes { RegionDigest.pageHash($0.baseAddress!, byteCount: 4096) } }
        let original = hash(page)
        var variants: [String: [UInt64]] = [:]
        var swapped = page; swapped.swapAt(0, 1); variants["two neighbouring words"] = swapped
        swapped = page; swapped.swapAt(3, 11); variants["the same lane of two stripes"] = swapped
        swapped = page; for i in 0..<8 { swapped.swapAt(i, 8 + i) }; variants["two stripes of a block"] = swapped
        swapped = page; for i in 0..<128 { swapped.swapAt(i, 128 + i) }; variants["two blocks"] = swapped
        swapped = page; swapped[5] &+= 1 << 40; swapped[13] &-= 1 << 40; variants["a difference moved between stripes (lane sums equal)"] = swapped
        for (name, words) in variants { #expect(hash(words) != original, "\(name)") }
    }
}

/// "ferry-pagemix64-v2" as digest.c describes it, written out plainly in Swift (slow; for the tests).
enum ReferencePageMix {
    static let key: [UInt64] = [
        0x1fb9b23b396c4c96, 0xf23c4228c9472aa5, 0x301aa59f2280e808, 0xdbe046d19444f928, 0x32e605a70eaa46ef, 0x9128b60d1978d0c4,
        0xbe49c05e3dc6ac1c, 0x0b42a56e533d0da1, 0x37e05dbf9a0d85d5, 0xfccf9bcee910bf48, 0x09a6c8f20177ed47, 0x69f54c50931e3eed,
        0x062fcca995c7b961, 0xf929a40ec1319d97, 0xaf2b6faf9107a4b6, 0x937680f2ed292d1c, 0xcf747a8d31c86c03, 0x76bccbfcd9624e7a,
        0x4005c0b91f86d999, 0x1e86502cc07bf6b0, 0x0ca522642f024eb8, 0xab8730de6819f333, 0xb4aceca9e54a0d27,
    ]
    static let scramble: [UInt64] = [
        0xf478f97243e01d08, 0x0d00560091382490, 0xa833eff7d82c87a9, 0x0315146b27599f64,
        0x4ad322bcf8ab446d, 0x466e0735c90d4e8b, 0x14da5dae38c24512, 0xdcd3a4bff2ede791,
    ]
    static let merge: [UInt64] = [
        0x2345b308440e13fd, 0x7e7dea69d397026f, 0x8f71055aea193e3b, 0x5fccc79c722fda08,
        0xf24723e4993a0ae3, 0xc9c04dab171c45b2, 0x16d99ed1b8e1fd4c, 0x11000a799b0da38b,
    ]
    static let initial: [UInt64] = [
        0x00000000C2B2AE3D, 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
        0x85EBCA77C2B2AE63, 0x0000000085EBCA77, 0x27D4EB2F165667C5, 0x000000009E3779B1,
    ]

    static func hash(_ page: UnsafeRawBufferPointer) -> UInt64 {
        var acc = initial
        for block in stride(from: 0, to: page.count, by: 1024) {
            for stripe in 0..<16 {
                for lane in 0..<8 {
                    let v = UInt64(littleEndian: page.loadUnaligned(fromByteOffset: block + stripe * 64 + lane * 8, as: UInt64.self))
                    let k = v ^ key[stripe + lane]
                    acc[lane ^ 1] &+= v
                    acc[lane] &+= (k & 0xFFFF_FFFF) &* (k >> 32)
                }
            }
            for lane in 0..<8 {
                var a = acc[lane]
                a ^= a >> 47
                a ^= scramble[lane]
                acc[lane] = a &* 0x9E37_79B1
            }
        }
        var h = UInt64(page.count) &* 0x9E37_79B1_85EB_CA87
        for j in stride(from: 0, to: 8, by: 2) {
            let product = (acc[j] ^ merge[j]).multipliedFullWidth(by: acc[j + 1] ^ merge[j + 1])
            h &+= product.high ^ product.low
        }
        return mix(h)
    }

    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 33)) &* 0xFF51_AFD7_ED55_8CCD
        z = (z ^ (z >> 33)) &* 0xC4CE_B9FE_1A85_EC53
        return z ^ (z >> 33)
    }
}
