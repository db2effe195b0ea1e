public import FerrySystem

/// A 64-bit digest of a memory range, computed the same way on both hosts.
///
/// Not cryptographic: it exists to catch a page that differs between the source's paused region and the
/// destination's reconstruction (a write no tracker saw, a lost frame). Four independent lanes of
/// multiply-rotate mixing over 8-byte words, folded at the end, with the length mixed in.
public enum RegionDigest {
    public static let algorithm = "ferry-mix64x4"

    /// The digest of `range`'s bytes.
    public static func compute(_ range: MemoryRange) -> UInt64 {
        let words = range.byteCount / 8
        let base = UnsafeRawPointer(range.baseAddress).assumingMemoryBound(to: UInt64.self)
        var lanes: (UInt64, UInt64, UInt64, UInt64) = (0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F, 0x1656_67B1_9E37_79F9, 0x85EB_CA77_C2B2_AE63)
        let prime: UInt64 = 0x9E37_79B1_85EB_CA87
        var index = 0
        while index + 4 <= words {
            lanes.0 = ((lanes.0 ^ base[index]) &* prime).rotated(31)
            lanes.1 = ((lanes.1 ^ base[index + 1]) &* prime).rotated(31)
            lanes.2 = ((lanes.2 ^ base[index + 2]) &* prime).rotated(31)
            lanes.3 = ((lanes.3 ^ base[index + 3]) &* prime).rotated(31)
            index += 4
        }
        while index < words {
            lanes.0 = ((lanes.0 ^ base[index]) &* prime).rotated(31)
            index += 1
        }
        var hash = UInt64(range.byteCount) &* prime
        for lane in [lanes.0, lanes.1, lanes.2, lanes.3] {
            hash = ((hash ^ lane) &* 0xC2B2_AE3D_27D4_EB4F).rotated(27) &+ 0x1656_67B1_9E37_79F9
        }
        hash ^= hash >> 33
        hash = hash &* 0xFF51_AFD7_ED55_8CCD
        hash ^= hash >> 33
        return hash
    }

    /// The digest as the 8 bytes sent on the wire (big-endian).
    public static func bytes(of digest: UInt64) -> [UInt8] { withUnsafeBytes(of: digest.bigEndian) { Array($0) } }
}

extension UInt64 {
    fileprivate func rotated(_ count: UInt64) -> UInt64 { (self << count) | (self >> (64 - count)) }
}
