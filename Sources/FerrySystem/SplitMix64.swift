/// SplitMix64: a small, fast, seedable generator. Its whole state is one `UInt64`, so it can live in a
/// migratable region and continue on another host; the same seed gives the same sequence everywhere.
public struct SplitMix64: RandomNumberGenerator, Hashable, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
