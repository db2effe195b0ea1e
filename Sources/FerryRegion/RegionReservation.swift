import FerrySystem
import Synchronization

/// A standby destination's memory: mapped at a fixed address and populated before any migration arrives, so
/// the move itself needs no set-up (`ferry receive --reserve`).
///
/// Guarantees: the reservation is handed out once, to the first region that fits it (same base, not
/// larger); the tail beyond that region is unmapped then. Until it is taken, the memory is present and
/// zeroed, exactly as a fresh region; a reservation never taken is unmapped when released.
public final class RegionReservation: Sendable {
    /// What is reserved.
    public let layout: RegionLayout
    /// Seconds the populating took (spent before any migration).
    public let populateSeconds: Double
    /// Whether huge pages were asked for (a reservation made again asks the same).
    public let hugePages: Bool

    private let mapping: Mutex<AnonymousMapping?>

    /// Maps and populates `layout` now (with transparent huge pages where the kernel allows them, when asked).
    /// - Throws: `RegionError.insufficientMemory` when the host cannot give it, `.addressInUse`,
    ///   `.invalidLayout`, `.mapFailed`, `.populateFailed`.
    public init(layout: RegionLayout, hugePages: Bool = false) throws(RegionError) {
        try layout.validate()
        try MigratableRegion.checkMemory(for: layout.byteCount)
        let mapped: AnonymousMapping
        do {
            mapped = try AnonymousMapping(byteCount: layout.byteCount, at: layout.base, hugePages: hugePages)
        } catch {
            if error.errno == .exists { throw .addressInUse(base: layout.base, size: layout.byteCount) }
            throw .mapFailed(error)
        }
        // On all cores, as a destination populates alongside a stream (the mapping outlives the threads).
        let populator = RegionPopulator(range: mapped.range, owner: nil)
        populator.wait(untilPopulated: mapped.range.byteCount)
        let done = populator.cancel()
        if let error = done.error { throw error }
        populateSeconds = done.seconds
        self.layout = layout
        self.hugePages = hugePages
        self.mapping = Mutex(mapped)
    }

    /// Whether a region of `layout` fits (same base, not larger); nil when it does, else why not.
    public func misfit(_ wanted: RegionLayout) -> RegionError? {
        wanted.base == layout.base && wanted.byteCount <= layout.byteCount && wanted.pageSize == layout.pageSize
            ? nil : .reservationMismatch(reserved: layout, wanted: wanted)
    }

    /// Whether the reservation is still there to be taken.
    public var isAvailable: Bool { mapping.withLock { $0 != nil } }

    /// Hands the reserved memory over as the region `wanted`, unmapping the reserved tail beyond it.
    /// - Throws: `.reservationMismatch` when it does not fit, `.reservationTaken` when it was handed out before.
    public func take(for wanted: RegionLayout) throws(RegionError) -> MigratableRegion {
        if let misfit = misfit(wanted) { throw misfit }
        guard let taken = mapping.withLock({ $0.take() }) else { throw .reservationTaken(layout) }
        return MigratableRegion(layout: wanted, adopting: taken.truncated(to: wanted.byteCount), populateSeconds: 0)
    }
}
