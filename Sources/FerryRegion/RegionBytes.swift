public import FerrySystem

/// Bounds-checked loads and stores into a mapped region: the one place that turns the region's
/// addresses into raw pointers.
///
/// Values are stored in the machine's native byte order (little-endian on x86-64 and arm64); source and
/// destination of a migration must share the architecture anyway. Loads and stores are unaligned-safe.
/// A view does not own the memory: its region must stay mapped while the view is used.
public struct RegionBytes: Sendable {
    /// First byte's address.
    public let start: UInt
    /// Number of bytes the view covers.
    public let count: Int

    public init(_ range: MemoryRange) {
        start = range.start
        count = range.byteCount
    }

    public var base: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: start)! }

    @inline(__always)
    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T {
        precondition(offset >= 0 && offset <= count - MemoryLayout<T>.size, "region access out of bounds")
        return base.loadUnaligned(fromByteOffset: offset, as: T.self)
    }

    @inline(__always)
    public func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset <= count - MemoryLayout<T>.size, "region access out of bounds")
        base.storeBytes(of: value, toByteOffset: offset, as: T.self)
    }

    /// Runs `body` over `length` bytes at `offset`.
    public func withBytes<R, E: Error>(
        at offset: Int, count length: Int, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        precondition(offset >= 0 && length >= 0 && offset <= count - length, "region access out of bounds")
        return try body(UnsafeMutableRawBufferPointer(start: base + offset, count: length))
    }

    /// The absolute address of the byte at `offset`.
    public func address(at offset: Int) -> UInt { start + UInt(offset) }

    /// The offset of `address`, or nil when `address .. address + length` does not lie inside the view.
    public func offset(ofAddress address: UInt, length: Int = 1) -> Int? {
        guard address >= start, address - start <= UInt(count - length) else { return nil }
        return Int(address - start)
    }
}

/// 64-bit FNV-1a, the checksum used by the workloads' on-disk and in-memory formats.
///
/// `hash(bytes:)` is the textbook byte-wise FNV-1a 64; `hash(word:)` feeds the 8 little-endian bytes of
/// a word, so hashing a sequence of words equals hashing their little-endian bytes.
public enum FNV1a64 {
    public static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    public static let prime: UInt64 = 0x0000_0100_0000_01b3

    @inline(__always)
    public static func hash(bytes: UnsafeRawBufferPointer, into hash: UInt64 = offsetBasis) -> UInt64 {
        var h = hash
        for byte in bytes { h = (h ^ UInt64(byte)) &* prime }
        return h
    }

    @inline(__always)
    public static func hash(word: UInt64, into hash: UInt64 = offsetBasis) -> UInt64 {
        var h = hash
        var w = word
        for _ in 0..<8 {
            h = (h ^ (w & 0xff)) &* prime
            w >>= 8
        }
        return h
    }
}

/// The generator behind every "deterministic content" in this module (SplitMix64, from FerrySystem).
public typealias RegionRandom = SplitMix64

extension SplitMix64 {
    /// A generator continuing from `state` (as stored in a region).
    public init(state: UInt64) { self.init(seed: state) }

    /// A well-mixed seed derived from several values (e.g. creation seed, page, version).
    public static func mix(_ values: UInt64...) -> UInt64 {
        var generator = RegionRandom(state: 0x5EED_F00D_CAFE_D00D)
        for value in values {
            generator.state ^= value
            generator.state = generator.next()
        }
        return generator.state
    }
}
