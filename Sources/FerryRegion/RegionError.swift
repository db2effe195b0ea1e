public import FerrySystem

/// Why a region could not be mapped, populated or recognised. Each case says what happened and what to do.
public enum RegionError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Something is already mapped somewhere in `base ..< base + size` in this process.
    case addressInUse(base: UInt, size: Int)
    /// The layout itself is unusable (unaligned base, size not a page multiple, …).
    case invalidLayout(String)
    /// `mmap` failed for another reason than a clash (e.g. `ENOMEM`: not enough address space or memory).
    case mapFailed(SystemCallError)
    /// Pre-faulting the pages failed (`madvise(MADV_POPULATE_WRITE)`), usually for lack of memory.
    case populateFailed(SystemCallError)
    /// The region does not start with the `FERRYRG1` magic: it was not created by ferry or never arrived.
    case notARegion(found: [UInt8])
    /// The header was written by a layout this build does not understand.
    case unsupportedLayoutVersion(found: UInt32, supported: UInt32)
    /// The magic is right but a field is impossible (the region is damaged or only partly transferred).
    case malformedHeader(String)
    /// The region is larger than the memory this host can give it (`MemAvailable`).
    case insufficientMemory(required: Int, available: Int)
    /// A standby reservation cannot hold the region that arrived (another base, or larger).
    case reservationMismatch(reserved: RegionLayout, wanted: RegionLayout)
    /// A standby reservation was already handed to an earlier migration.
    case reservationTaken(RegionLayout)

    public var description: String {
        switch self {
        case let .addressInUse(base, size):
            let range = "0x\(String(base, radix: 16))+\(ByteCount(size))"
            return "cannot map the region at \(range): something else in this process is already mapped "
                + "there (a library, the heap, a thread stack or another region); choose another, free base "
                + "address with --base (page-aligned, e.g. 0x7d0000000000) and use the same one on both hosts"
        case let .invalidLayout(reason):
            return "invalid region layout: \(reason)"
        case let .mapFailed(error):
            return "cannot map the region: \(error); make the region smaller (--size) or free memory"
        case let .populateFailed(error):
            return "cannot pre-fault the region's pages: \(error); the host may lack free memory for the "
                + "region: free memory or make the region smaller"
        case let .notARegion(found):
            let shown = found.map { (0x20..<0x7f).contains($0) ? String(UnicodeScalar($0)) : "." }.joined()
            return "the memory does not hold a ferry region: its first bytes are \"\(shown)\", not \"FERRYRG1\"; "
                + "the region was not created by ferry, or its contents never (fully) arrived: migrate it again"
        case let .unsupportedLayoutVersion(found, supported):
            return "the region's layout version is \(found) but this build understands version \(supported); "
                + "run the same ferry build on both hosts"
        case let .insufficientMemory(required, available):
            return "the region needs \(ByteCount(required)) but this host has only \(ByteCount(available)) of memory "
                + "available; make the region smaller or free memory first"
        case let .reservationMismatch(reserved, wanted):
            let why = reserved.base != wanted.base ? "it starts at another address" : "it is larger"
            return "the region \(wanted) does not fit this receiver's reservation \(reserved): \(why); restart the "
                + "receiver with --reserve \(ByteCount(wanted.byteCount)) --base 0x\(String(wanted.base, radix: 16)), or without --reserve"
        case let .reservationTaken(reserved):
            return "the reservation \(reserved) was already used by an earlier migration; restart the receiver"
        case let .malformedHeader(reason):
            return "the region header is damaged: \(reason); the region was corrupted or only partly "
                + "transferred: migrate it again from the source"
        }
    }
}
