@testable import FerryMigration
import FerrySystem
import FerryTestSupport
import Foundation
import Synchronization
import Testing

/// The ownership record and claims on a real directory.
@Suite struct OwnershipTests {
    static func directory() throws -> String {
        let path = "/tmp/ferry-ownership-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func exactlyOneOfManyConcurrentClaimantsWins() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for generation in UInt64(1)...20 {
            let winners = Mutex<[Int]>([])
            DispatchQueue.concurrentPerform(iterations: 8) { claimant in
                if (try? OwnershipClaim.claim(generation, in: directory, by: "host:\(claimant)")) == true {
                    winners.withLock { $0.append(claimant) }
                }
            }
            let won = winners.withLock { $0 }
            #expect(won.count == 1, "generation \(generation): \(won)")
            #expect(try OwnershipClaim.owner(of: generation, in: directory) == "host:\(won.first ?? -1)")
        }
        OwnershipClaim.removeClaims(before: 20, in: directory)
        #expect(try OwnershipClaim.owner(of: 19, in: directory) == nil)
        #expect(try OwnershipClaim.owner(of: 20, in: directory) != nil)
        #expect(try OwnershipClaim.claim(20, in: directory, by: "late") == false, "a claim is never taken twice")
    }

    @Test func aPreparedRecordReplacesTheCurrentOneOnlyAtItsCommit() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = OwnershipRecord(generation: 1, owner: "a:1", workload: "download", regionBase: 0x7e00_0000_0000, regionBytes: 1 << 20, seed: 7)
        try first.write(in: directory)
        let next = first.successor(owner: "b:2")
        #expect(next.generation == 2 && next.seed == 7 && next.regionBase == first.regionBase && next.regionBytes == first.regionBytes)
        let prepared = try next.prepare(in: directory)
        #expect(try OwnershipRecord.read(in: directory)?.generation == 1, "preparing changes nothing")
        // The current record's file gets a second name, so the rename in the pause does not free it (cheaper).
        let current = directory + "/" + OwnershipRecord.fileName
        var status = stat()
        #expect(stat(current, &status) == 0 && status.st_nlink == 2, "a second name keeps the current record's file")
        try prepared.rename()
        #expect(try OwnershipRecord.read(in: directory) == next, "the rename is the commit point")
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).contains { $0.hasPrefix(OwnershipRecord.fileName + ".old-") })
        #expect(prepared.syncDirectory() == nil)
        #expect(try OwnershipRecord.read(in: directory) == next)
        let discarded = try next.successor(owner: "c:3").prepare(in: directory)
        discarded.discard()
        #expect(try OwnershipRecord.read(in: directory)?.generation == 2)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0 != OwnershipRecord.fileName }
        #expect(leftovers.isEmpty, "no temporary file stays behind: \(leftovers)")
    }

    @Test func anUnreadableRecordIsAnErrorThatSaysWhatToDo() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "{ half a record".write(toFile: directory + "/" + OwnershipRecord.fileName, atomically: true, encoding: .utf8)
        #expect { _ = try OwnershipRecord.read(in: directory) } throws: { "\($0)".contains("remove it only if no host runs the workload") }
    }

    // MARK: The lease

    @Test func aLeaseRecordRoundTripsAndATornOneIsRejected() throws {
        let lease = OwnerLease(generation: 3, owner: "hosta:42", counter: 17, ioTimeout: 0.25)
        let bytes = lease.encoded
        #expect(bytes.count == OwnerLease.size && bytes.last == 0x0A)
        #expect(OwnerLease(decoding: bytes) == lease)
        var torn = bytes
        torn[20] = UInt8(ascii: "9")  // a digit of the counter changed, the checksum not
        #expect(OwnerLease(decoding: torn) == nil)
        #expect(OwnerLease(decoding: Array(bytes[0..<40])) == nil)
    }

    /// The observer reads the counter, never the modification time: a time set a year ahead or behind changes
    /// nothing; only a renewal counts as a change.
    @Test func theObserverJudgesTheCounterNotTheModificationTime() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = try LeaseWriter(OwnerLease(generation: 2, owner: "hosta:1", counter: 1, ioTimeout: 1), in: directory)
        var observer = LeaseObserver()
        #expect(try observer.look(at: 2, in: directory) == false, "the first look sets the baseline")
        #expect(observer.lease?.counter == 1)
        for offset in [365.0 * 86400, -365.0 * 86400] {
            let seconds = Date().timeIntervalSince1970 + offset
            var times = [timespec(tv_sec: Int(seconds), tv_nsec: 0), timespec(tv_sec: Int(seconds), tv_nsec: 0)]
            #expect(utimensat(AT_FDCWD, OwnerLease.path(2, in: directory), &times, 0) == 0)
            #expect(try observer.look(at: 2, in: directory) == false, "a skewed time is no renewal")
        }
        usleep(50_000)
        #expect(observer.unchangedSeconds >= 0.05)
        try writer.renew()
        #expect(try observer.look(at: 2, in: directory) == true)
        #expect(observer.lease?.counter == 2 && observer.changes == 1)
        #expect(observer.unchangedSeconds < 0.05)
    }

    // MARK: A full or read-only shared mount

    static func mount() throws -> SmallFileSystem {
        try SmallFileSystem(at: "/tmp/ferry-fs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    }

    /// On a full mount a claim and the next record fail with the errno and the file and leave nothing behind,
    /// the current record stays as it was, and the owner's lease is still renewed (in place: no new blocks).
    @Test(.enabled(if: SmallFileSystem.canMount)) func aFullMountFailsClaimsAndRecordsButNotRenewals() throws {
        let mount = try Self.mount()
        defer { mount.unmount() }
        let directory = mount.path
        let record = OwnershipRecord(generation: 1, owner: "hosta:1", workload: "download", regionBase: 0x7e00_0000_0000, regionBytes: 1 << 20, seed: 7)
        try record.write(in: directory)
        #expect(try OwnershipClaim.claim(1, in: directory, by: "hosta:1"))
        let writer = try LeaseWriter(OwnerLease(generation: 1, owner: "hosta:1", counter: 1, ioTimeout: 1), in: directory)
        #expect(mount.fill() == ENOSPC)
        #expect { _ = try OwnershipClaim.claim(2, in: directory, by: "hostb:2") } throws: { error in
            "\(error)" == "shared mount: cannot claim generation 2: write \(directory)/ferry-claim-2: No space left on device (ENOSPC)"
        }
        #expect(try OwnershipClaim.owner(of: 2, in: directory) == nil, "the failed claim claimed nothing")
        #expect { _ = try record.successor(owner: "hostb:2").prepare(in: directory) } throws: { error in
            "\(error)".contains("write \(directory)/ferry-owner.json.tmp-\(getpid()): No space left on device (ENOSPC)")
        }
        #expect(try OwnershipRecord.read(in: directory) == record)
        for _ in 0..<5 { try writer.renew() }
        #expect(try OwnerLease.read(1, in: directory)?.lease?.counter == 6, "renewals go on in place")
        let left = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        #expect(left == ["ferry-claim-1", "ferry-lease-1", "ferry-owner.json", "filler"], "\(left)")
    }

    @Test(.enabled(if: SmallFileSystem.canMount)) func aReadOnlyMountFailsClaimsAndRecordsAndKeepsWhatItHolds() throws {
        let mount = try Self.mount()
        defer { mount.unmount() }
        let directory = mount.path
        let record = OwnershipRecord(generation: 1, owner: "hosta:1", workload: "hotset", regionBase: 0x7e00_0000_0000, regionBytes: 1 << 20)
        try record.write(in: directory)
        #expect(try OwnershipClaim.claim(1, in: directory, by: "hosta:1"))
        try mount.remount(readOnly: true)
        defer { try? mount.remount(readOnly: false) }
        // Tidying old claims fails with the file and the errno, and leaves the claim as it was.
        #expect(OwnershipClaim.removeClaims(before: 2, in: directory) == ["unlink \(directory)/ferry-claim-1: Read-only file system (EROFS)"])
        #expect(try OwnershipClaim.owner(of: 1, in: directory) == "hosta:1")
        #expect { _ = try OwnershipClaim.claim(2, in: directory, by: "hostb:2") } throws: { error in
            "\(error)" == "shared mount: cannot claim generation 2: create \(directory)/ferry-claim-2: Read-only file system (EROFS)"
        }
        #expect { try record.successor(owner: "hostb:2").write(in: directory) } throws: { "\($0)".contains("(EROFS)") }
        #expect(try OwnershipRecord.read(in: directory) == record)
    }
}
