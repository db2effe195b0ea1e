#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import FerrySystem

/// The single point where a workload changes hosts: a small file on the shared mount, replaced atomically
/// (write a temporary file, fsync, rename over the record, fsync the directory), together with the claim
/// files of `OwnershipClaim`.
///
/// What the handoff's pause holds: the rename (the commit point; the next record was written and synced before
/// the pause, and the current one's file given a second name so the rename frees nothing) and the destination's
/// `O_EXCL` claim. Nothing in it is synced: just after "running" the source syncs the directory and the
/// destination syncs its claim. If the file server loses those last writes (its host crashes within that
/// millisecond), the record names g again while the destination runs g+1: the destination sees it at its next
/// look (every I/O timeout T) and writes its claim and the record again, long before another host could take
/// the workload over (8T of an unchanged lease of g).
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
/// | handed over ("running" arrived) | stops its loop, syncs the record's directory, exits | – | – |
///
/// | destination state | what it does next | if it dies here | if the link fails here |
/// |---|---|---|---|
/// | listening | challenges, checks hello | nothing was sent | waits for the next source |
/// | receiving (rounds) | applies rounds | source resumes | discards the copy; source resumes |
/// | final round applied | waits for commit | before the rename: source resumes; after it: the source takes the workload back (g+2) | record = g+1: claims it and runs (unless the source claimed it first: discards); record = g: discards |
/// | final round applied, commit not yet received | attaches the workload, builds its host paused (not in the pause) | as above | as above |
/// | commit received | claims g+1 (the `O_EXCL` create decides), reads the record (it must hold g+1), resumes the workload, answers "running", then syncs the claim | before the claim: the source takes it back; after it: the only owner died | runs (the claim is won); the source sees the claim and stops |
/// | running(g+1) | serves its control socket; every T: renews its lease, and writes the record and claim again if the record went back to g (a file server that lost them) | nobody runs it: `ferry run --resume` as above | – |
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
/// From the switch-over on, the source's lease is no longer enforced (it owns nothing and writes nothing shared;
/// killing it would lose the pages it holds); the destination's lease of g+1 is, from its claim.
///
/// Liveness is the lease `ferry-lease-<g>` (`OwnerLease`), never a time written by another host's clock: the
/// owner of g rewrites a counter in it every I/O timeout T, and another host counts the owner as gone only after
/// it saw the counter unchanged for 8T on its own monotonic clock (`LeaseTiming` has the table of every time).
/// A running owner fences itself: its workload's writes pass a fence that lapses 6T after its last good renewal,
/// when its enforcer thread also kills it, and its watchdog child kills it even while it is stopped. A resume
/// writes nothing into a file the old owner has open (the download's file is copied and renamed over first).
///
/// | owner of g | what other hosts see | what happens |
/// |---|---|---|
/// | running, renewing | the counter moves | `ferry run --resume` elsewhere refuses: alive |
/// | running, its renewals failing or slower than T (mount gone or read-only, server down, I/O hung) | the counter stops | at 6T its writes are refused and it is killed (SIGKILL); from 8T another host may resume g+1 |
/// | frozen (SIGSTOP, paused VM) | the counter stops | its watchdog kills it at 6T; at 8T another host may resume g+1 |
/// | frozen with its watchdog, thawed after a resume took g+1 | – | its lease lapsed and is never renewed again: the fence refuses its writes, the enforcer kills it, the record past g fences it; anything it still writes lands in the unnamed old file |
/// | the record moved past g (resumed elsewhere) | – | it stops its workload within T and exits 1 |
/// | dead on this host | – | `--resume` on this host sees the process is gone and takes over at once |
///
/// Every file operation here goes through `SharedFile`: each result is checked, a failure names the
/// operation, the file and the errno, and `ESTALE` (and `ENOENT` of the renamed-over record) is retried with a
/// bound. A full mount fails claims and records (nothing is left behind, nothing changes hands) but not the
/// lease's renewal, which rewrites its bytes in place; a read-only one fails them all.
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

    /// Reads the record in `directory`, nil if there is none. It is renamed over at every handoff, so a
    /// network file system may answer `ESTALE` or `ENOENT` for a moment: both are retried (`SharedFile`).
    public static func read(in directory: String) throws(MigrationError) -> OwnershipRecord? {
        try read(at: directory + "/" + fileName, in: nil)
    }

    /// Reads the record in a directory held open (on a network file system, one lookup fewer per directory on the
    /// way: what the handoff's pause uses).
    public static func read(in directory: SharedDirectory) throws(MigrationError) -> OwnershipRecord? {
        try read(at: fileName, in: directory)
    }

    private static func read(at name: String, in directory: SharedDirectory?) throws(MigrationError) -> OwnershipRecord? {
        let path = directory?.path(of: name) ?? name
        let data: [UInt8]
        do {
            guard let bytes = try SharedFile.contents(of: name, in: directory, missingIsTransient: true) else { return nil }
            data = bytes
        } catch {
            throw .sharedMount("cannot read the ownership record: \(error)")
        }
        do {
            return try JSONDecoder().decode(OwnershipRecord.self, from: Data(data))
        } catch {
            throw .sharedMount("the ownership record \(path) is unreadable (\(error)); remove it only if no host runs the workload")
        }
    }

    /// Writes this record into `directory` atomically and durably (a failed directory sync is an error too).
    public func write(in directory: String) throws(MigrationError) {
        if let notDurable = try prepare(in: directory).commit() { throw .sharedMount("\(notDurable)") }
    }

    /// Writes the record to a temporary file beside the real one and makes it durable, without replacing
    /// anything yet: the slow part of a handoff, done before the workload pauses.
    /// - Throws: `MigrationError.sharedMount` naming the operation, the file and the errno (a full or
    ///   read-only file system fails here, before anything changed).
    public func prepare(in directory: String) throws(MigrationError) -> PreparedOwnershipRecord {
        // Held open for the handoff's rename (one lookup fewer per directory on the way, on a network file system).
        let opened: SharedDirectory
        do { opened = try SharedDirectory(directory) } catch {
            throw .sharedMount("cannot open the shared directory: \(error)")
        }
        let temporary = Self.fileName + ".tmp-\(getpid())"
        let data: Data
        do { data = try JSONEncoder().encode(self) } catch { throw .sharedMount("cannot encode the ownership record: \(error)") }
        do { try SharedFile.writeNew(opened.path(of: temporary), contents: [UInt8](data)) } catch {
            throw .sharedMount("cannot write the next ownership record: \(error)")
        }
        // A second name for the current record's file, so the rename does not free it: on ext4 a rename over a
        // file's last name costs about 0.25 ms (the file is deleted in the same transaction), over a file that
        // keeps a name 0.03 ms. Only speed rests on it: where hard links fail, the rename frees the file.
        let previous = opened.path(of: Self.fileName + ".old-\(getpid())")
        unlink(previous)
        let linked = link(opened.path(of: Self.fileName), previous) == 0
        return PreparedOwnershipRecord(directory: opened, temporary: temporary, previous: linked ? previous : nil)
    }

    /// This process's identity in records: `host:pid`, the host being `FERRY_HOST` when set (hosts that share a
    /// host name, containers, or a test that plays two hosts on one machine), else the host name.
    public static var thisProcess: String { thisHost + ":\(getpid())" }

    /// This host's name in records: `FERRY_HOST`, else `gethostname`.
    public static var thisHost: String {
        if let host = ProcessInfo.processInfo.environment["FERRY_HOST"], !host.isEmpty, !host.contains(":") { return host }
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// An ownership record written and synced beside the real one, waiting to be renamed into place.
public struct PreparedOwnershipRecord: Sendable {
    let directory: SharedDirectory
    /// The prepared record's name in `directory`.
    let temporary: String
    /// The second name (a path) that keeps the replaced record's file until `syncDirectory()`, if linking worked.
    let previous: String?
    var path: String { directory.path(of: OwnershipRecord.fileName) }

    /// The commit point: renames the record over the current one (atomic), then syncs the directory.
    /// - Returns: nil, or the directory sync's failure: the rename happened and other hosts see the new record,
    ///   so the handoff stands (undoing it could give two owners), but a crash of the file server might undo it;
    ///   it is also written to standard error.
    /// - Throws: `MigrationError.sharedMount` when the rename fails: nothing changed.
    @discardableResult
    public func commit() throws(MigrationError) -> SharedFileError? {
        try rename()
        return syncDirectory()
    }

    /// The commit point alone: renames the record over the current one (atomic). Every host sees the new
    /// record from here on; `syncDirectory()` makes it survive a crash of the file server.
    /// - Throws: `MigrationError.sharedMount` when the rename fails: nothing changed.
    public func rename() throws(MigrationError) {
        do { try SharedFile.rename(temporary, over: OwnershipRecord.fileName, in: directory) } catch {
            unlink(directory.path(of: temporary))
            throw .sharedMount("cannot rename the ownership record into place: \(error)")
        }
    }

    /// After `rename()`: removes the replaced record's file (its last name), then syncs the directory, so the
    /// new record survives a crash of the file server.
    /// - Returns: nil, or the sync's failure (also written to standard error): the handoff stands.
    @discardableResult
    public func syncDirectory() -> SharedFileError? {
        if let previous { unlink(previous) }
        do { try SharedFile.syncDirectory(directory.path) } catch {
            FileHandle.standardError.write(Data("ferry: warning: the ownership record was renamed into place at \(path), but \(error): the change is visible, yet a crash of the file server might undo it\n".utf8))
            return error
        }
        return nil
    }

    /// Removes the prepared file (and the current record's second name) when the handoff does not happen.
    public func discard() {
        unlink(directory.path(of: temporary))
        if let previous { unlink(previous) }
    }
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
    /// - Throws: `MigrationError.sharedMount` naming the failed operation (create, write, fsync, close,
    ///   directory fsync), the claim's path and the errno; a claim that could not be written completely is
    ///   removed again, so a failed claim claims nothing.
    /// `durable` false: the claim is created (the `O_EXCL` create is what decides who runs it) but not yet synced,
    /// so the handoff's pause holds no sync; `makeDurable` syncs it right after "running".
    public static func claim(_ generation: UInt64, in directory: String, by owner: String, durable: Bool = true) throws(MigrationError) -> Bool {
        try claim(generation, at: path(generation, in: directory), in: nil, by: owner, durable: durable)
    }

    /// The same in a directory held open (what the handoff's pause uses).
    public static func claim(_ generation: UInt64, in directory: SharedDirectory, by owner: String, durable: Bool = true) throws(MigrationError) -> Bool {
        try claim(generation, at: prefix + "\(generation)", in: directory, by: owner, durable: durable)
    }

    private static func claim(_ generation: UInt64, at name: String, in directory: SharedDirectory?, by owner: String, durable: Bool) throws(MigrationError) -> Bool {
        do {
            return try SharedFile.createExclusive(name, in: directory, contents: Array(owner.utf8), durable: durable)
        } catch {
            throw .sharedMount("cannot claim generation \(generation): \(error)")
        }
    }

    /// Syncs a claim made with `durable: false` (file and directory), so it survives a crash of the shared mount.
    public static func makeDurable(_ generation: UInt64, in directory: String) throws(MigrationError) {
        do {
            try SharedFile.makeDurable(path(generation, in: directory))
        } catch {
            throw .sharedMount("cannot sync the claim of generation \(generation): \(error)")
        }
    }

    /// Who claimed `generation` (`host:pid`), nil if nobody has. A claim is never renamed over: only `ESTALE`
    /// is retried, and a missing claim is an answer.
    public static func owner(of generation: UInt64, in directory: String) throws(MigrationError) -> String? {
        do {
            return try SharedFile.contents(of: path(generation, in: directory)).map { String(decoding: $0, as: UTF8.self) }
        } catch {
            throw .sharedMount("cannot read the claim of generation \(generation): \(error)")
        }
    }

    /// Withdraws this process's claim of `generation` (it never ran it). A failure is written to standard error
    /// with the errno: the claim then stays, and the next claimant of that generation is told who holds it.
    public static func release(_ generation: UInt64, in directory: String) {
        let path = path(generation, in: directory)
        do throws(SharedFileError) {
            try SharedFile.remove(path)
        } catch {
            FileHandle.standardError.write(Data("ferry: cannot withdraw the claim of generation \(generation), which this process never ran: \(error); remove it by hand if no process runs generation \(generation)\n".utf8))
        }
    }

    /// The claims in `directory`, by generation.
    public static func all(in directory: String) throws(MigrationError) -> [(generation: UInt64, owner: String)] {
        var claims: [(generation: UInt64, owner: String)] = []
        for generation in generations(in: directory) {
            if let owner = try owner(of: generation, in: directory) { claims.append((generation, owner)) }
        }
        return claims
    }

    static func generations(in directory: String) -> [UInt64] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .compactMap { $0.hasPrefix(prefix) ? UInt64($0.dropFirst(prefix.count)) : nil }.sorted()
    }

    /// Removes the claims (and leases) of generations before `generation`, once the record has moved past them.
    /// Tidying only: the record decides which generation is current, so a file left behind claims nothing. A
    /// failure is written to standard error with the file and the errno; one already gone is not a failure.
    /// - Returns: what could not be removed, and why.
    @discardableResult
    public static func removeClaims(before generation: UInt64, in directory: String) -> [String] {
        let names: [String]
        var failures: [String] = []
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            FileHandle.standardError.write(Data("ferry: cannot list \(directory) to remove the claims before generation \(generation): \(error)\n".utf8))
            return ["\(error)"]
        }
        for name in names {
            for prefix in [prefix, OwnerLease.prefix] where name.hasPrefix(prefix) {
                guard let old = UInt64(name.dropFirst(prefix.count)), old < generation else { continue }
                let path = directory + "/" + name
                do throws(SharedFileError) {
                    try SharedFile.remove(path)
                } catch where error.errno.rawValue == ENOENT {
                    continue
                } catch {
                    failures.append("\(error)")
                    FileHandle.standardError.write(Data("ferry: cannot remove \(path), of generation \(old), which the record has moved past: \(error); it claims nothing and may be removed by hand\n".utf8))
                }
            }
        }
        return failures
    }
}

