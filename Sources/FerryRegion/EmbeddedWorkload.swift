public import FerrySystem
import Synchronization

/// The workload of a program that embeds Ferry and runs its own loop: page 0 of its region is the header
/// (the program's name, the safe points passed as the step counter, the root pointer), and every page after
/// it is a `RegionHeap` from which the program allocates all the state it wants to move.
///
/// Guarantees: every byte the program allocates here, and all of the allocator's metadata, lies inside the
/// region, so after the region arrives at the same address on another host, `init(attaching:name:)` continues
/// with the same pointers, the same free lists and the same root. The allocator is locked, so any thread may
/// allocate; the program decides when its state is consistent by calling the safe point.
public final class EmbeddedWorkload: MigratableWorkload {
    public let workloadName: String
    public let region: MigratableRegion
    private let heap: Mutex<RegionHeap>

    /// What the program registered for `flush()` and `verify()`.
    public struct Callbacks: Sendable {
        /// Makes the program's files durable; returns nil or what failed.
        public var flush: (@Sendable () -> String?)?
        /// Checks the program's invariants: whether they hold, and a one-line finding.
        public var verify: (@Sendable () -> (passed: Bool, detail: String))?

        public init(flush: (@Sendable () -> String?)? = nil, verify: (@Sendable () -> (passed: Bool, detail: String))? = nil) {
            self.flush = flush
            self.verify = verify
        }
    }
    private let callbacks = Mutex(Callbacks())

    /// The smallest region a program's workload fits in: the header page and one page of heap.
    public static func minimumRegionSize(pageSize: Int = Kernel.pageSize) -> Int { 2 * pageSize }

    /// Creates the workload fresh in `region`: writes the header and formats the heap over the rest.
    /// - Throws: `WorkloadError.invalidOptions` for a bad name, `.regionTooSmall`.
    public init(creating region: MigratableRegion, name: String) throws(WorkloadError) {
        guard RegionHeader.isValidName(name) else {
            throw .invalidOptions("the workload name \"\(name)\" must be 1 to \(RegionHeader.maximumNameLength) UTF-8 bytes without NUL")
        }
        let pageSize = region.range.pageSize
        guard region.range.byteCount >= Self.minimumRegionSize(pageSize: pageSize) else {
            throw .regionTooSmall(workload: name, required: Self.minimumRegionSize(pageSize: pageSize), actual: region.range.byteCount)
        }
        region.header.initialize(workloadName: name, seed: 0, dataOffset: pageSize, fill: .none, parameters: [])
        workloadName = name
        self.region = region
        heap = Mutex(RegionHeap.format(at: region.baseAddress + pageSize, byteCount: region.range.byteCount - pageSize))
    }

    /// Attaches to a region that arrived from another host (or was kept), checking that it holds `name`'s
    /// workload and a heap where the header says.
    /// - Throws: `WorkloadError.region` for a damaged header or heap, `.wrongWorkload`.
    public init(attaching region: MigratableRegion, name: String) throws(WorkloadError) {
        let info = try attachHeader(region, workload: name)
        let offset = Int(info.dataOffset)
        do {
            heap = Mutex(try RegionHeap(attachingAt: region.baseAddress + offset, byteCount: region.range.byteCount - offset))
        } catch { throw .region(error) }
        workloadName = name
        self.region = region
    }

    public var stepCount: UInt64 { region.header.stepCount }

    /// Counts one safe point passed (the header's step counter).
    public func countSafePoint() { region.header.stepCount &+= 1 }

    /// Registers the program's callbacks, replacing earlier ones.
    public func setCallbacks(_ update: (inout Callbacks) -> Void) { callbacks.withLock { update(&$0) } }

    // MARK: The heap

    /// `byteCount` bytes inside the region, 16-byte aligned; nil when the region is full (nothing changes).
    public func allocate(_ byteCount: Int) -> UnsafeMutableRawPointer? {
        // Addresses cross the lock as integers: raw pointers are not Sendable.
        UnsafeMutableRawPointer(bitPattern: heap.withLock { UInt(bitPattern: $0.allocate(byteCount)) })
    }

    /// C `realloc` semantics inside the region: nil allocates, 0 frees; nil when it cannot grow (the block stays).
    public func reallocate(_ pointer: UnsafeMutableRawPointer?, to byteCount: Int) -> UnsafeMutableRawPointer? {
        let address = UInt(bitPattern: pointer)
        return UnsafeMutableRawPointer(bitPattern: heap.withLock { UInt(bitPattern: $0.reallocate(UnsafeMutableRawPointer(bitPattern: address), to: byteCount)) })
    }

    /// Frees a block `allocate` returned (nil does nothing); any other pointer stops the process with a message.
    public func free(_ pointer: UnsafeMutableRawPointer?) {
        let address = UInt(bitPattern: pointer)
        heap.withLock { $0.free(UnsafeMutableRawPointer(bitPattern: address)) }
    }

    /// The heap's figures.
    public var heapStatistics: HeapStatistics { heap.withLock { $0.statistics } }

    /// The program's root pointer, kept in the header; nil until set.
    public var root: UnsafeMutableRawPointer? {
        get { UnsafeMutableRawPointer(bitPattern: UInt(region.header.root)) }
        set { region.header.root = UInt64(UInt(bitPattern: newValue)) }
    }

    // MARK: MigratableWorkload

    /// Calls the program's flush callback.
    /// - Throws: `WorkloadError.program` with what the callback reported.
    public func flush() throws(WorkloadError) {
        guard let flush = callbacks.withLock({ $0.flush }) else { return }
        if let failure = flush() { throw .program(failure) }
    }

    /// The header names this program, the heap is consistent (every block and free list), the root lies in
    /// the region, and the program's own verify callback passes.
    public func verify() -> VerificationReport {
        var report = headerVerification()
        let check = heap.withLock { $0.check() }
        report.record("heap", check.passed, check.detail)
        let root = region.header.root
        report.record(
            "root", root == 0 || (region.range.pageIndex(of: UInt(root)) != nil),
            root == 0 ? "not set" : "0x\(String(root, radix: 16))\((region.range.pageIndex(of: UInt(root)) != nil) ? "" : " lies outside the region")")
        if let verify = callbacks.withLock({ $0.verify }) {
            let (passed, detail) = verify()
            report.record("program", passed, detail)
        }
        return report
    }
}
