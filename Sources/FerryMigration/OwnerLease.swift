#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import FerrySystem
import Synchronization

/// Every time of the lease, derived from one I/O timeout `T` as sanlock derives its own (sanlock: T = 10 s,
/// renew every 20 s, a lease expires after 80 s). No time is ever compared between hosts: each host measures
/// only durations, on its own monotonic clock.
///
/// | what | who | time | T = 2 s (default) | T = 0.25 s |
/// |---|---|---|---|---|
/// | a renewal (write + fdatasync of the lease) counts only if it finished within | owner | T | 2 s | 0.25 s |
/// | renewal interval | owner | T | 2 s | 0.25 s |
/// | fence: the workload's writes are refused once the last good renewal *started* this long ago | owner, in-process | 6T | 12 s | 1.5 s |
/// | enforcer thread kills the process (SIGKILL) | owner, in-process | 6T (checked every T/10) | 12 s | 1.5 s |
/// | watchdog child kills the owner (SIGKILL, works on a stopped process) after its last heartbeat | owner, child process | 6T | 12 s | 1.5 s |
/// | owner gone: the counter seen unchanged for | any other host | 8T | 16 s | 2 s |
/// | `ferry run --resume` watches the lease before taking over | resuming host | 8T | 16 s | 2 s |
///
/// Why 8T is safe: an observer that first read counter c at its time t0 read it after the owner wrote it, so
/// the owner's last good renewal started before t0; the owner fences itself and is killed by 6T after that
/// start, and its watchdog by 6T after the heartbeat, which comes at most T after the start (renewals slower
/// than T do not count): the owner is gone by t0 + 7T, a full T before the observer takes over at t0 + 8T.
/// Clock rates, not clock values, are assumed equal (as sanlock does); a frozen owner (SIGSTOP, a paused VM)
/// is killed by its watchdog, and if that is frozen too, the fencing of the files holds (`OwnerLease`).
public struct LeaseTiming: Hashable, Sendable, CustomStringConvertible {
    /// The I/O timeout `T` in seconds: the longest a lease write may take and still count.
    public let ioTimeout: Double

    public static let defaultIOTimeout = 2.0

    public init(ioTimeout: Double = defaultIOTimeout) {
        self.ioTimeout = ioTimeout.isFinite && ioTimeout > 0 ? Swift.min(Swift.max(ioTimeout, 0.05), 3600) : Self.defaultIOTimeout
    }

    /// `FERRY_IO_TIMEOUT` (seconds) when set and valid, else the default.
    public static var fromEnvironment: LeaseTiming {
        guard let text = ProcessInfo.processInfo.environment["FERRY_IO_TIMEOUT"], let value = Double(text), value > 0 else { return LeaseTiming() }
        return LeaseTiming(ioTimeout: value)
    }

    public var renewalInterval: Double { ioTimeout }
    /// How long after the start of its last good renewal the owner stops writing and is killed.
    public var ownerDeadline: Double { 6 * ioTimeout }
    /// How long another host must see the counter unchanged before it counts the owner as gone.
    public var expiry: Double { 8 * ioTimeout }
    /// How often the enforcer checks the deadline.
    public var checkInterval: Double { Swift.min(Swift.max(ioTimeout / 10, 0.01), 0.25) }

    public var description: String {
        func format(_ seconds: Double) -> String { String(format: seconds < 10 ? "%.2g s" : "%.0f s", seconds) }
        return "I/O timeout \(format(ioTimeout)): renewed every \(format(renewalInterval)), owner fenced and killed after \(format(ownerDeadline)) without a good renewal, gone for other hosts after \(format(expiry)) unchanged"
    }
}

/// The lease of one generation: the file `ferry-lease-<generation>` on the shared mount, which the process that
/// claimed the generation creates and then renews every `LeaseTiming.renewalInterval` by writing a higher
/// counter into it, in place (no new blocks: a full file system does not stop renewals). Its modification time
/// is never read: other hosts judge the owner by whether the counter moves, on their own monotonic clocks.
///
/// The file is one fixed-size text record (`size` bytes, padded with spaces, ending in a newline):
/// `ferry-lease 1 <generation> <counter> <io-timeout-ms> <host:pid> <fnv1a64 of the text before it, hex>`.
/// A torn read (checksum wrong) is read again; one that stays torn still counts, as raw bytes, for whether
/// the lease moved.
///
/// Fencing: the generation is the fencing token. A process writes the workload's shared files only while its
/// lease is valid by its own clock (`WriteFence`), and a process that takes a workload over from an owner it
/// judged gone never writes into any file that owner has open: the download's file is copied into a new file
/// and renamed into place before the new owner writes (`DownloadWorkload.init(resuming:)`), so whatever the
/// old owner writes after it wakes up lands in a file that no longer has a name.
public struct OwnerLease: Hashable, Sendable {
    static let prefix = "ferry-lease-"
    public static let size = 256

    public var generation: UInt64
    public var owner: String
    public var counter: UInt64
    /// The owner's I/O timeout: an observer waits by the longer of its own and this one.
    public var ioTimeout: Double

    public init(generation: UInt64, owner: String, counter: UInt64, ioTimeout: Double) {
        self.generation = generation
        self.owner = owner
        self.counter = counter
        self.ioTimeout = ioTimeout
    }

    public static func path(_ generation: UInt64, in directory: String) -> String { directory + "/" + prefix + "\(generation)" }

    /// The record as written: `size` bytes.
    public var encoded: [UInt8] {
        let text = "ferry-lease 1 \(generation) \(counter) \(Int((ioTimeout * 1000).rounded())) \(owner)"
        let check = text.utf8.withContiguousStorageIfAvailable { FNV1a64Text.hash($0) } ?? FNV1a64Text.hash(Array(text.utf8))
        var bytes = Array("\(text) \(String(check, radix: 16))".utf8)
        bytes += [UInt8](repeating: 0x20, count: Swift.max(0, Self.size - 1 - bytes.count))
        bytes.append(0x0A)
        return Array(bytes.prefix(Self.size))
    }

    /// Parses a record; nil if it is torn or not a lease.
    public init?(decoding bytes: [UInt8]) {
        let fields = String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard fields.count == 7, fields[0] == "ferry-lease", fields[1] == "1", let generation = UInt64(fields[2]),
              let counter = UInt64(fields[3]), let millis = Int(fields[4]), let check = UInt64(fields[6], radix: 16) else { return nil }
        let text = fields[0..<6].joined(separator: " ")
        guard FNV1a64Text.hash(Array(text.utf8)) == check else { return nil }
        self.init(generation: generation, owner: String(fields[5]), counter: counter, ioTimeout: Double(millis) / 1000)
    }

    /// What the file of `generation` holds: nil if there is none; `lease` nil if it stayed torn over a few reads.
    public static func read(_ generation: UInt64, in directory: String) throws(SharedFileError) -> (bytes: [UInt8], lease: OwnerLease?)? {
        let path = path(generation, in: directory)
        var last: [UInt8] = []
        for attempt in 0..<4 {
            guard let bytes = try SharedFile.contents(of: path) else { return nil }
            if let lease = OwnerLease(decoding: bytes), lease.generation == generation { return (bytes, lease) }
            last = bytes
            if attempt < 3 { usleep(2_000) }
        }
        return (last, nil)
    }
}

/// FNV-1a 64 over text (the lease's checksum).
enum FNV1a64Text {
    static func hash<C: Collection<UInt8>>(_ bytes: C) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return hash
    }
}

/// The owner's side: creates the lease file of its generation and renews it.
final class LeaseWriter: Sendable {
    private let current: Mutex<OwnerLease>
    let path: String
    private let fd: CInt

    var lease: OwnerLease { current.withLock { $0 } }

    /// Creates (or takes over, after a restart of the same claim) the lease file of `lease.generation` and
    /// writes its first counter durably.
    init(_ lease: OwnerLease, in directory: String) throws(SharedFileError) {
        let path = OwnerLease.path(lease.generation, in: directory)
        self.path = path
        current = Mutex(lease)
        let fd = try SharedFile.call("create", path) { open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644) }
        self.fd = fd
        do throws(SharedFileError) {
            try Self.write(lease, fd: fd, path: path)
            try SharedFile.syncDirectory(containing: path)
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(fd) }

    /// Writes the next counter in place and syncs it; the counter moves on only if that succeeded.
    func renew() throws(SharedFileError) {
        var next = lease
        next.counter += 1
        try Self.write(next, fd: fd, path: path)
        current.withLock { $0 = next }
    }

    private static func write(_ lease: OwnerLease, fd: CInt, path: String) throws(SharedFileError) {
        try SharedFile.writeAll(fd, lease.encoded, at: 0, path: path)
        try SharedFile.call("fdatasync", path) { fdatasync(fd) }
    }
}

/// Another host's view of a lease: when this process last saw it change, on its own monotonic clock.
struct LeaseObserver {
    private(set) var generation: UInt64?
    private(set) var bytes: [UInt8]??
    private(set) var lease: OwnerLease?
    private(set) var lastChange = ContinuousClock.now
    /// Changes seen since the first look.
    private(set) var changes = 0
    /// The first look at the current generation (a change before it cannot be known).
    private(set) var firstSeen = ContinuousClock.now

    /// Reads the lease of `generation` once; returns whether it differs from the last look.
    @discardableResult
    mutating func look(at generation: UInt64, in directory: String) throws(SharedFileError) -> Bool {
        let now = ContinuousClock.now
        let read = try OwnerLease.read(generation, in: directory)
        let seen: [UInt8]? = read?.bytes
        if generation != self.generation {
            self.generation = generation
            bytes = .some(seen)
            lease = read?.lease
            lastChange = now
            firstSeen = now
            changes = 0
            return false
        }
        if let lease = read?.lease { self.lease = lease }
        guard bytes != .some(seen) else { return false }
        bytes = .some(seen)
        lastChange = now
        changes += 1
        return true
    }

    /// Seconds the lease has been seen unchanged.
    var unchangedSeconds: Double { (ContinuousClock.now - lastChange).secondsValue }
}
