#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerrySystem

/// The single point where a workload changes hosts: a small file on the shared mount, replaced atomically
/// (write a temporary file, fsync, rename over the record, fsync the directory), together with the claim
/// files of `OwnershipClaim`.
///
/// The record says which generation is current; the claim `ferry-claim-<g>` (created with `O_EXCL`, so one
/// creator wins) says which process runs it. A process runs the workload only after it created the claim
/// of the generation the record holds. The source renames generation g+1 into place exactly once, after
/// the destination applied the last round (and, in strict mode, proved its region identical); from that
/// rename on, the source never runs generation g again. Before it, any failure leaves the source the owner.
///
/// The handoff as a state machine (g is the source's generation):
///
/// | source state | what it does next | if the source dies here | if the link or the destination fails here |
/// |---|---|---|---|
/// | running(g) | accepts `migrate` | nobody runs it: `ferry run --resume` restarts it if its files hold its state | – |
/// | streaming (auth, hello, rounds) | pauses | destination sees the link close and discards its copy; as above | source resumes: still owner of g |
/// | paused (final round, strict digest) | renames g+1 into place | as above | source resumes: still owner of g |
/// | committed (record = g+1, still paused) | sends commit, waits for "running" | destination, holding the final round, sees the link close, claims g+1, runs | after a grace second, source claims g+1 itself: if it wins, the destination can never run g+1, and the source writes g+2, claims it and resumes; if it loses, the destination runs and the source stops for good |
/// | handed over | exits | – | – |
///
/// | destination state | what it does next | if it dies here | if the link fails here |
/// |---|---|---|---|
/// | listening | challenges, checks hello | nothing was sent | waits for the next source |
/// | receiving (rounds) | applies rounds | source resumes | discards the copy; source resumes |
/// | final round applied | waits for commit | before the rename: source resumes; after it: the source takes the workload back (g+2) | record = g+1: claims it and runs (unless the source claimed it first: discards); record = g: discards |
/// | commit received | claims g+1, runs, answers "running" | before the claim: the source takes it back; after it: the only owner died | runs (the claim is won); the source sees the claim and stops |
/// | running(g+1) | serves its control socket | nobody runs it: `ferry run --resume` as above | – |
///
/// Post-copy (`--mode post-copy`, or the switch-over of `hybrid`) commits generation g+1 at the pause, with the
/// record's `postCopySource` naming the source: the destination runs the workload at once and fetches the pages
/// it lacks, so until every page arrived neither side alone holds it.
///
/// | post-copy state | source | destination | if the source dies | if a link breaks |
/// |---|---|---|---|---|
/// | switched (record = g+1, post-copy) | paused for good, serving pages | claims g+1, runs; faulting threads wait for pages | the pages only it held are lost, so the workload cannot complete (as with QEMU and CRIU): the destination's threads that touch them wait, and its log and `ferry status` say post-copy was interrupted | both keep what they hold and say so; threads touching missing pages wait (never a wrong zero page); `--resume` refuses; reconnecting is not built yet |
/// | complete (record = g+1, mark cleared) | exits | the only owner | – | – |
///
/// An owner renews its claim (modification time) every second; `ferry run --resume` treats a claim silent for
/// 10 s as a dead owner's. An owner that finds the record past its generation (it was resumed elsewhere while
/// hung) stops its workload within a second.
///
/// So at no moment do two processes run the workload: running needs the claim of the current generation,
/// and each claim has one creator. After a single failure exactly one process runs it, except when that
/// one process itself died; then its memory died with it and only what the shared mount holds remains.
public struct OwnershipRecord: Codable, Hashable, Sendable {
    public static let fileName = "ferry-owner.json"

    public var generation: UInt64
    /// Who owns it: `host:pid` of the owning process.
    public var owner: String
    public var workload: String
    /// Seconds since 1970 of the change.
    public var changedAt: Double
    /// Where the region lives and the workload's seed: what `ferry run --resume` needs to rebuild a workload
    /// whose files hold its state. Absent in records of older builds.
    public var regionBase: UInt64?
    public var regionBytes: Int?
    public var seed: UInt64?
    /// The workload's pace in steps per second, for a resume (absent: the program paces itself).
    public var stepsPerSecond: Double?
    /// Set while a post-copy migration is under way: the source (`host:pid`) still holds pages the owner
    /// lacks, so neither side alone holds the workload and it cannot be resumed from the shared mount.
    /// Cleared by the owner once every page arrived.
    public var postCopySource: String?

    public init(
        generation: UInt64, owner: String, workload: String, regionBase: UInt64? = nil, regionBytes: Int? = nil,
        seed: UInt64? = nil, stepsPerSecond: Double? = nil
    ) {
        self.generation = generation
        self.owner = owner
        self.workload = workload
        self.regionBase = regionBase
        self.regionBytes = regionBytes
        self.seed = seed
        self.stepsPerSecond = stepsPerSecond.map { $0.isFinite ? $0 : -1 }
        changedAt = Date().timeIntervalSince1970
    }

    /// The recorded pace (`.infinity` is stored as -1, which JSON can hold).
    public var pace: Double? { stepsPerSecond.map { $0 < 0 ? .infinity : $0 } }

    /// The record of the next generation, owned by `owner`, describing the same workload; `postCopySource`
    /// when the handoff is a post-copy switch-over.
    public func successor(owner: String, postCopySource: String? = nil) -> OwnershipRecord {
        var next = OwnershipRecord(
            generation: generation + 1, owner: owner, workload: workload, regionBase: regionBase, regionBytes: regionBytes,
            seed: seed, stepsPerSecond: pace)
        next.postCopySource = postCopySource
        return next
    }

    /// Reads the record in `directory`, nil if there is none.
    public static func read(in directory: String) throws -> OwnershipRecord? {
        let path = directory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do {
            return try JSONDecoder().decode(OwnershipRecord.self, from: data)
        } catch {
            throw MigrationError.sharedMount("the ownership record \(path) is unreadable (\(error)); remove it only if no host runs the workload")
        }
    }

    /// Writes this record into `directory` atomically and durably.
    public func write(in directory: String) throws {
        try prepare(in: directory).commit()
    }

    /// Writes the record to a temporary file beside the real one and makes it durable, without replacing
    /// anything yet: the slow part of a handoff, done before the workload pauses.
    public func prepare(in directory: String) throws -> PreparedOwnershipRecord {
        let path = directory + "/" + Self.fileName
        let temporary = path + ".tmp-\(getpid())"
        let data = try JSONEncoder().encode(self)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw MigrationError.sharedMount("cannot create \(temporary): \(Errno.current)") }
        let written = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == data.count, synced == 0 else {
            unlink(temporary)
            throw MigrationError.sharedMount("cannot write \(temporary): \(Errno.current)")
        }
        return PreparedOwnershipRecord(directory: directory, temporary: temporary, path: path)
    }

    /// This process's identity in records: `hostname:pid`.
    public static var thisProcess: String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + ":\(getpid())"
    }
}

/// An ownership record written and synced beside the real one, waiting to be renamed into place.
public struct PreparedOwnershipRecord: Sendable {
    let directory: String
    let temporary: String
    let path: String

    /// The commit point: renames the record over the current one (atomic), then syncs the directory.
    public func commit() throws {
        guard rename(temporary, path) == 0 else {
            let error = Errno.current
            unlink(temporary)
            throw MigrationError.sharedMount("cannot rename the ownership record into place at \(path): \(error)")
        }
        syncDirectory(directory)
    }

    /// Removes the prepared file when the handoff does not happen.
    public func discard() { unlink(temporary) }
}

/// Who runs a generation: the one process that created `ferry-claim-<generation>` on the shared mount
/// (`O_CREAT|O_EXCL`, which exactly one creator wins). The record says which generation is current; the
/// claim says who runs it. `ferry run` claims generation 1; a destination claims the generation the source
/// committed before it runs it; a source that never heard "running" claims it too, to take the workload
/// back. Whoever loses the race must not run it.
public enum OwnershipClaim {
    static let prefix = "ferry-claim-"

    public static func path(_ generation: UInt64, in directory: String) -> String { directory + "/" + prefix + "\(generation)" }

    /// Claims `generation` for `owner`. True if this call created the claim, false if it existed already.
    public static func claim(_ generation: UInt64, in directory: String, by owner: String) throws -> Bool {
        let path = path(generation, in: directory)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        if fd < 0 {
            let error = Errno.current
            if error == Errno(rawValue: EEXIST) { return false }
            throw MigrationError.sharedMount("cannot create the claim \(path): \(error)")
        }
        let data = Array(owner.utf8)
        _ = write(fd, data, data.count)
        fsync(fd)
        close(fd)
        syncDirectory(directory)
        return true
    }

    /// Who claimed `generation` (`host:pid`), nil if nobody has.
    public static func owner(of generation: UInt64, in directory: String) -> String? {
        FileManager.default.contents(atPath: path(generation, in: directory)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Marks the claim of `generation` as renewed now (its modification time): the owner's heartbeat, which
    /// `ferry run --resume` on another host reads to tell a live owner from a dead one.
    public static func renew(_ generation: UInt64, in directory: String) {
        _ = utimensat(AT_FDCWD, path(generation, in: directory), nil, 0)
    }

    /// Seconds since the claim of `generation` was created or last renewed; nil if there is no claim.
    public static func secondsSinceRenewal(of generation: UInt64, in directory: String) -> Double? {
        var status = stat()
        guard stat(path(generation, in: directory), &status) == 0 else { return nil }
        let modified = Double(status.st_mtim.tv_sec) + Double(status.st_mtim.tv_nsec) / 1e9
        return Date().timeIntervalSince1970 - modified
    }

    /// Removes the claims of generations before `generation`, once the record has moved past them.
    public static func removeClaims(before generation: UInt64, in directory: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where name.hasPrefix(prefix) {
            if let old = UInt64(name.dropFirst(prefix.count)), old < generation { unlink(directory + "/" + name) }
        }
    }
}

/// fsyncs a directory, so a rename or a new file in it survives a crash.
func syncDirectory(_ directory: String) {
    let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if directoryFD >= 0 {
        fsync(directoryFD)
        close(directoryFD)
    }
}
