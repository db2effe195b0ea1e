import FerryMigration
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
        try prepared.commit()
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
}
