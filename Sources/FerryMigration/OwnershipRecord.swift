#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerrySystem

/// The single point where a workload changes hosts: a small file on the shared mount, replaced atomically
/// (write a temporary file, fsync, rename over the record, fsync the directory).
///
/// A process runs the workload only while the record holds the generation it was given. The source
/// renames generation g+1 into place exactly once, after the destination applied the last round (and, in
/// strict mode, proved its region identical); from that rename on, the destination owns the workload and
/// the source must not resume. Before it, any failure leaves the source the owner.
///
/// The handoff as a state machine (g is the source's generation):
///
/// | source state | what it does next | if the source dies here | if the link or the destination fails here |
/// |---|---|---|---|
/// | running(g) | accepts `migrate` | workload lost with its memory (only its files remain) | – |
/// | streaming (hello, auth, rounds) | pauses | destination sees the link close, discards its copy | source resumes: still owner of g |
/// | paused (final round, strict digest) | renames g+1 into place | as above: nobody committed; the workload is lost with the source | source resumes: still owner of g |
/// | committed (record = g+1) | sends commit, stops its loop, exits | destination, holding the final round, sees the link close, reads g+1 and runs | destination runs once it sees g+1 (commit frame or, without it, the record); the source exits |
///
/// | destination state | what it does next | if it dies here | if the link fails here |
/// |---|---|---|---|
/// | listening | challenges, checks hello | nothing was sent | waits for the next source |
/// | receiving (rounds) | applies rounds | source resumes | discards the copy; source resumes |
/// | final round applied | waits for commit | before the rename: source resumes; after it: the only owner died, the workload is lost | record = g+1: runs it; otherwise discards |
/// | running(g+1) | serves its control socket | the only owner died | – |
///
/// So at no moment do two processes run the workload: the source runs only before the rename, the
/// destination only after it. After a single failure at most one runs it; none does only when the owner
/// itself died (the memory died with it).
public struct OwnershipRecord: Codable, Hashable, Sendable {
    public static let fileName = "ferry-owner.json"

    public var generation: UInt64
    /// Who owns it: `host:pid` of the owning process.
    public var owner: String
    public var workload: String
    /// Seconds since 1970 of the change.
    public var changedAt: Double

    public init(generation: UInt64, owner: String, workload: String) {
        self.generation = generation
        self.owner = owner
        self.workload = workload
        changedAt = Date().timeIntervalSince1970
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
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            close(directoryFD)
        }
    }

    /// Removes the prepared file when the handoff does not happen.
    public func discard() { unlink(temporary) }
}
