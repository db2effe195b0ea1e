public import FerrySystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How a workload fills the part of its data area it does not otherwise initialise, at creation.
public enum RegionFill: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    /// Leave the pages untouched: not even faulted in (so they travel as zero pages).
    case none
    /// Fault the pages in, all zeros (memory is committed, contents compress to nothing).
    case zero
    /// Fill with seeded pseudo-random bytes (nothing to compress: the worst case for transfer).
    case random
    /// Fill with seeded text-like content (`RegionText`): what compression on a slow link is measured on.
    case text

    var code: UInt32 {
        switch self {
        case .none: 0
        case .zero: 1
        case .random: 2
        case .text: 3
        }
    }

    init?(code: UInt32) {
        switch code {
        case 0: self = .none
        case 1: self = .zero
        case 2: self = .random
        case 3: self = .text
        default: return nil
        }
    }

    public var description: String { rawValue }
}

/// Settings for creating a workload.
public struct WorkloadOptions: Hashable, Sendable {
    /// The directory on the shared mount where the workload keeps its files.
    public var sharedDirectory: String
    /// How to fill the data area the workload does not initialise itself.
    public var fill: RegionFill
    /// The hotset's working set, in pages (nil: every data page). Other workloads ignore it.
    public var workingSetPages: Int?
    /// Determines all of the workload's deterministic content.
    public var seed: UInt64
    /// The pace of `step()`s, kept in the region header so the workload keeps it after a move or a resume
    /// (0 idle, `.infinity` flat out; nil: whoever runs it decides).
    public var stepsPerSecond: Double?
    /// The hotset only: a step changes a few bytes of its page (version and checksum) instead of rewriting it,
    /// the case deltas (`--delta-cache`) shrink. Other workloads ignore it.
    public var fewByteWrites: Bool

    public init(
        sharedDirectory: String, fill: RegionFill = .none, workingSetPages: Int? = nil, seed: UInt64 = 1,
        stepsPerSecond: Double? = nil, fewByteWrites: Bool = false
    ) {
        self.fewByteWrites = fewByteWrites
        self.sharedDirectory = sharedDirectory
        self.fill = fill
        self.workingSetPages = workingSetPages
        self.seed = seed
        self.stepsPerSecond = stepsPerSecond
    }
}

/// Why a workload could not be created, attached, stepped or flushed. Each case says what to do.
public enum WorkloadError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The region itself is unusable (bad header, …).
    case region(RegionError)
    /// The region holds a different workload than the one asked for.
    case wrongWorkload(expected: String, found: String)
    /// The region names a workload this build does not know.
    case unknownWorkload(String)
    /// The region is too small for the workload.
    case regionTooSmall(workload: String, required: Int, actual: Int)
    /// An option is out of range.
    case invalidOptions(String)
    /// A file operation failed.
    case file(SystemCallError)
    /// The workload's file on the shared mount is missing or shorter than the region says it should be.
    case sharedFileInconsistent(path: String, reason: String)
    /// A received block failed its integrity check.
    case corruptBlock(index: UInt64, reason: String)
    /// The workload's state in the region is impossible (the region is damaged).
    case corruptState(String)
    /// Where the workload's input comes from failed (e.g. the block server of `download`).
    case source(String)
    /// The program's own callback (flush) reported a failure.
    case program(String)
    /// Nothing outside the memory of the process that ran the workload holds its progress, so it cannot be
    /// resumed after that process died: `path` is the file that should have (nil if the workload keeps none).
    case notResumable(workload: String, path: String?, reason: String)
    /// The process may no longer write the workload's shared files: its lease lapsed or another process owns
    /// the workload now (`WriteFence`). Nothing was written.
    case fenced(String)

    public var description: String {
        switch self {
        case let .region(error):
            return error.description
        case let .wrongWorkload(expected, found):
            return "the region holds the \"\(found)\" workload, not \"\(expected)\"; attach it as \(found)"
        case let .unknownWorkload(name):
            return "the region holds the workload \"\(name)\", which this program does not run; "
                + "receive it with the program that started it (the same build on both hosts)"
        case let .regionTooSmall(workload, required, actual):
            return "the \(workload) workload needs a region of at least \(ByteCount(required)), "
                + "not \(ByteCount(actual)); give a larger --size"
        case let .invalidOptions(reason):
            return "invalid workload options: \(reason)"
        case let .file(error):
            return "\(error); check that the shared directory is mounted, writable and not full"
        case let .sharedFileInconsistent(path, reason):
            return "the shared file \(path) \(reason); check that both hosts mount the same shared directory "
                + "and that the source flushed before handing over"
        case let .corruptBlock(index, reason):
            return "block \(index) arrived corrupt: \(reason); the block source is broken"
        case let .corruptState(reason):
            return "the workload's state in the region is damaged: \(reason); run `ferry verify` for details"
        case let .source(reason):
            return "the workload's input failed: \(reason)"
        case let .program(reason):
            return "the program reported: \(reason)"
        case let .notResumable(workload, path, reason):
            return "the \(workload) workload cannot be resumed: \(path.map { "\($0) " } ?? "")\(reason); "
                + "create it afresh"
        case let .fenced(reason):
            return "fenced, nothing written: \(reason)"
        }
    }
}

/// One check of a verification, e.g. `ledger` → passed.
public struct VerificationCheck: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public let passed: Bool
    /// What was found: the figures when it passed, the first thing wrong when it did not.
    public let detail: String

    public var description: String { "\(passed ? "ok  " : "FAIL") \(name): \(detail)" }
}

/// The outcome of `Workload.verify()`: every invariant checked, each with what was found.
public struct VerificationReport: Hashable, Sendable, CustomStringConvertible {
    /// The workload verified.
    public let workload: String
    /// The checks, in the order they ran.
    public private(set) var checks: [VerificationCheck] = []

    public init(workload: String) { self.workload = workload }

    /// Whether every check passed.
    public var passed: Bool { checks.allSatisfy(\.passed) }
    /// The checks by name.
    public var checksByName: [String: VerificationCheck] {
        Dictionary(checks.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }
    /// The checks that failed.
    public var failures: [VerificationCheck] { checks.filter { !$0.passed } }

    /// One line: `hotset: all 6 checks passed` or `hotset: 2 of 6 checks FAILED: ledger: …; pages: …`.
    public var summary: String {
        if passed { return "\(workload): all \(checks.count) checks passed" }
        let failed = failures.map { "\($0.name): \($0.detail)" }.joined(separator: "; ")
        return "\(workload): \(failures.count) of \(checks.count) checks FAILED: \(failed)"
    }

    public var description: String {
        ([summary] + checks.map { "  \($0)" }).joined(separator: "\n")
    }

    /// Appends one check.
    public mutating func record(_ name: String, _ passed: Bool, _ detail: String) {
        checks.append(VerificationCheck(name: name, passed: passed, detail: detail))
    }
}

/// Whether this process may still write a workload's files on the shared mount. The process that owns the
/// workload extends it at every good renewal of its lease (`OwnerLease` in FerryMigration) and revokes it when
/// another process took the workload over; a workload checks it right before each write to its shared files
/// and refuses the write once it lapsed. An unarmed fence (never extended) permits everything: a workload
/// run without an ownership agent, as the tests do.
public final class WriteFence: Sendable {
    private struct State {
        var deadline: ContinuousClock.Instant?
        var revoked: String?
    }
    private let state = Mutex(State())
    /// Why a write after the deadline is refused.
    private let lapse: String

    /// `lapse` says in words what a lapsed deadline means (the lease's times).
    public init(lapse: String = "the lease was not renewed in time") { self.lapse = lapse }

    /// Permits writes until `deadline` (a later renewal moves it on; an earlier one never moves it back).
    public func extend(until deadline: ContinuousClock.Instant) {
        state.withLock { if $0.deadline.map({ deadline > $0 }) ?? true { $0.deadline = deadline } }
    }

    /// Refuses every write from now on.
    public func revoke(_ reason: String) { state.withLock { if $0.revoked == nil { $0.revoked = reason } } }

    /// Why a write now would be refused; nil if it is permitted.
    public var refusal: String? {
        let (deadline, revoked) = state.withLock { ($0.deadline, $0.revoked) }
        if let revoked { return revoked }
        if let deadline, ContinuousClock.now > deadline {
            return "\(lapse) (\(String(format: "%.2f", (ContinuousClock.now - deadline).secondsValue)) s past its deadline)"
        }
        return nil
    }

    /// Throws `WorkloadError.fenced` when a write now would be refused.
    public func check() throws(WorkloadError) {
        if let refusal { throw .fenced(refusal) }
    }
}

/// What the migration engine needs of a workload, whoever runs it: the region that holds all of its state,
/// its files made durable at a safe point, and a check of its invariants.
///
/// Implementations keep every mutable value in the region (the object caches only values derived from it
/// and immutable settings), store pointers inside the region as absolute addresses, and count their safe
/// points in the header's step counter. `flush()` and `verify()` are called only while the workload waits
/// at a safe point (or has stopped).
public protocol MigratableWorkload: AnyObject, Sendable {
    /// The name stored in the region header, e.g. `download`.
    var workloadName: String { get }

    /// The region the workload lives in.
    var region: MigratableRegion { get }

    /// Steps (safe points passed) so far, as the region header records them.
    var stepCount: UInt64 { get }

    /// Makes the workload's files durable (`fsync`). Called at a safe point before pausing or migrating.
    func flush() throws(WorkloadError)

    /// Checks every invariant of the workload's state and files, naming what is wrong.
    func verify() -> VerificationReport

    /// The fence every write to the workload's shared files must pass from now on (its ownership agent installs
    /// it when the workload starts running in this process). Workloads without shared files ignore it.
    func install(fence: WriteFence)
}

extension MigratableWorkload {
    /// Nothing to fence: the workload writes no shared files.
    public func install(fence: WriteFence) {}
}

/// A workload run as a sequence of `step()`s by Ferry's own loop (`WorkloadHost`): between two steps is a
/// **safe point**, where it may be paused, its files flushed, its region copied to another host and the
/// workload attached and continued there. One thread at a time calls `step()`.
///
/// A program with its own loop instead calls the safe point itself (`EmbeddedWorkload` in FerryMigration).
public protocol Workload: MigratableWorkload {
    /// The name stored in the region header, e.g. `download`.
    static var name: String { get }

    /// The smallest region the workload fits in, in bytes.
    static func minimumRegionSize(pageSize: Int) -> Int

    /// Creates the workload fresh in `region`: writes the header and its initial state.
    /// - Throws: `WorkloadError.regionTooSmall`, `.invalidOptions`, `.file`, `.region`.
    init(creating region: MigratableRegion, options: WorkloadOptions) throws(WorkloadError)

    /// Attaches to a region whose contents were received from another host (or kept from before),
    /// validating its header, and reopens the workload's files under `sharedDirectory`.
    /// - Throws: `WorkloadError.region`, `.wrongWorkload`, `.corruptState`, `.sharedFileInconsistent`, `.file`.
    init(attaching region: MigratableRegion, sharedDirectory: String) throws(WorkloadError)

    /// Does one unit of work. All state changes land in the region; the step counter is incremented last.
    func step() throws(WorkloadError)
}

extension Workload {
    public var workloadName: String { Self.name }

    public var stepCount: UInt64 { region.header.stepCount }

    /// Runs `count` steps (a convenience for tests and tools; real runs pace steps themselves).
    public func steps(_ count: Int) throws(WorkloadError) {
        for _ in 0..<count { try step() }
    }
}

extension MigratableWorkload {
    /// A verification report whose first check is the region header naming this workload.
    public func headerVerification() -> VerificationReport {
        var report = VerificationReport(workload: workloadName)
        do {
            let info = try region.readHeader()
            report.record("header", info.workloadName == workloadName, info.description)
        } catch {
            report.record("header", false, error.description)
        }
        return report
    }
}

/// Reads and checks the header of `region` for workload `name`.
/// - Throws: `WorkloadError.region` for a bad header, `.wrongWorkload` for another workload's region.
public func attachHeader(_ region: MigratableRegion, workload name: String) throws(WorkloadError) -> RegionHeaderInfo {
    let info: RegionHeaderInfo
    do { info = try region.readHeader() } catch { throw .region(error) }
    guard info.workloadName == name else { throw .wrongWorkload(expected: name, found: info.workloadName) }
    return info
}
