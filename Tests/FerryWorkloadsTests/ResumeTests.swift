#if canImport(Glibc)
import Glibc
#endif
import FerryRegion
import FerryTestSupport
import FerryWorkloads
import FerrySystem
import Foundation
import Testing

private func fileBytes(_ path: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }
private func writeFile(_ path: String, _ bytes: [UInt8]) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

/// What a download left behind when its process died: the file, and what its region held (for comparison).
private struct DeadDownload {
    let path: String
    let regionBytes: [UInt8]
    let runningChecksum: UInt64
}

/// Runs a download `steps` steps in a region at `layout`, then unmaps the region without flushing, as if
/// its process had been killed.
private func runAndDrop(layout: RegionLayout, options: WorkloadOptions, steps: Int) throws -> DeadDownload {
    let region = try MigratableRegion.create(layout: layout)
    let download = try DownloadWorkload(creating: region, options: options)
    try download.steps(steps)
    #expect(download.verify().passed)
    return DeadDownload(path: download.filePath, regionBytes: snapshot(region), runningChecksum: download.runningChecksum)
}

@Suite struct ResumeTests {
    @Test func resumedDownloadHoldsTheStateItsDeadOwnerHad() throws {
        try withTemporaryDirectory { directory in
            let layout = testLayout(slot: 140, pages: 32)
            let options = WorkloadOptions(sharedDirectory: directory, fill: .random, seed: 0xBEEF)
            // 37 blocks: the ring has wrapped, so the last 16 blocks span its end and its start.
            let dead = try runAndDrop(layout: layout, options: options, steps: 37)

            // Same address: the rebuilt region is byte for byte the one that died.
            do {
                let region = try MigratableRegion.create(layout: layout)
                let download = try DownloadWorkload(resuming: region, options: options, source: nil)
                let recovery = try #require(download.recovery)
                #expect(recovery.blockCount == 37)
                #expect(recovery.droppedBytes == 0)
                #expect(recovery.tailProblem == nil)
                #expect(download.nextIndex == 37)
                #expect(download.stepCount == 37)
                #expect(download.runningChecksum == dead.runningChecksum)
                #expect(snapshot(region) == dead.regionBytes)
                let report = download.verify()
                #expect(report.passed, "\(report)")
                try download.steps(20)
                #expect(download.verify().passed, "\(download.verify())")
                #expect(fileBytes(dead.path).count == 57 * DownloadBlock.size)
            }

            // Another address and size, through `WorkloadKind`: continues from block 57.
            let region = try MigratableRegion.create(layout: testLayout(slot: 141, pages: 20))
            let resumed = try WorkloadKind.download.resume(in: region, options: options)
            let download = try #require(resumed as? DownloadWorkload)
            #expect(download.nextIndex == 57)
            #expect(download.stepCount == 57)
            #expect(download.verify().passed, "\(download.verify())")
            try download.steps(30)
            try download.flush()
            let report = download.verify()
            #expect(report.passed, "\(report)")
            #expect(download.nextIndex == 87)
        }
    }

    enum Damage: String, CaseIterable, CustomTestStringConvertible {
        /// Half a block appended after the last complete one.
        case halfBlockAppended
        /// The last block zeroed (written as a hole, never filled in).
        case lastBlockZeroed
        /// One byte of block 4 flipped: blocks 4 and later are dropped, though they are whole.
        case middleBlockCorrupt
        /// Only half of block 0 reached the file.
        case onlyAHalfBlock

        var testDescription: String { rawValue }
        var slot: Int { 42 + Self.allCases.firstIndex(of: self)! }
        var steps: Int { self == .onlyAHalfBlock ? 0 : 10 }

        func apply(to file: inout [UInt8]) {
            let size = DownloadBlock.size
            switch self {
            case .halfBlockAppended, .onlyAHalfBlock:
                var block = [UInt8](repeating: 0, count: size)
                block.withUnsafeMutableBytes { DownloadBlock.write(seed: 7, index: UInt64(steps), into: $0) }
                file += block[0..<size / 2]
            case .lastBlockZeroed:
                file.replaceSubrange(file.count - size..<file.count, with: repeatElement(0, count: size))
            case .middleBlockCorrupt:
                file[4 * size + 1000] ^= 0x10
            }
        }

        /// Blocks kept, bytes dropped, and what the tail problem names.
        var expected: (blocks: UInt64, dropped: UInt64, problem: String) {
            switch self {
            case .halfBlockAppended: (10, 2048, "a partial block of 2048 bytes at offset 40960")
            case .lastBlockZeroed: (9, 4096, "block 9 at offset 36864: its magic is not FERRYBK1")
            case .middleBlockCorrupt: (4, 6 * 4096, "block 4 at offset 16384: its checksum field")
            case .onlyAHalfBlock: (0, 2048, "a partial block of 2048 bytes at offset 0")
            }
        }
    }

    @Test(arguments: Damage.allCases) func tornTailIsDroppedAndTheFileCut(damage: Damage) throws {
        try withTemporaryDirectory { directory in
            let layout = testLayout(slot: damage.slot, pages: 24)
            let options = WorkloadOptions(sharedDirectory: directory, seed: 7)
            let dead = try runAndDrop(layout: layout, options: options, steps: damage.steps)
            var file = fileBytes(dead.path)
            damage.apply(to: &file)
            try writeFile(dead.path, file)
            let expected = damage.expected

            // Scanning alone changes nothing.
            let scanned = try DownloadWorkload.recoverableProgress(sharedDirectory: directory, seed: 7)
            #expect(scanned.blockCount == expected.blocks)
            #expect(scanned.droppedBytes == expected.dropped)
            #expect(scanned.tailProblem?.hasPrefix(expected.problem) == true, "\(scanned)")
            #expect(fileBytes(dead.path) == file)

            let region = try MigratableRegion.create(layout: layout)
            let download = try DownloadWorkload(resuming: region, options: options, source: nil)
            #expect(download.recovery == scanned)
            #expect(download.nextIndex == expected.blocks)
            #expect(download.stepCount == expected.blocks)
            #expect(fileBytes(dead.path) == Array(file[0..<Int(expected.blocks) * DownloadBlock.size]))
            let report = download.verify()
            #expect(report.passed, "\(report)")
            try download.steps(12)
            #expect(download.verify().passed, "\(download.verify())")
        }
    }

    @Test func scanCrossesReadChunks() throws {
        try withTemporaryDirectory { directory in
            let layout = testLayout(slot: 149, pages: 24)
            let options = WorkloadOptions(sharedDirectory: directory, seed: 11)
            // 600 blocks is 2.3 MiB: three 1 MiB reads. Block 513 lies in the third.
            let dead = try runAndDrop(layout: layout, options: options, steps: 600)
            let intact = try DownloadWorkload.recoverableProgress(sharedDirectory: directory, seed: 11)
            #expect(intact.blockCount == 600)
            #expect(intact.runningChecksum == dead.runningChecksum)
            var file = fileBytes(dead.path)
            file[513 * DownloadBlock.size + 8] ^= 0xFF
            try writeFile(dead.path, file)
            let region = try MigratableRegion.create(layout: layout)
            let download = try DownloadWorkload(resuming: region, options: options, source: nil)
            #expect(download.nextIndex == 513)
            #expect(download.recovery?.droppedBytes == UInt64(87 * DownloadBlock.size))
            #expect(download.recovery?.tailProblem?.contains("it holds block") == true)
            #expect(download.verify().passed, "\(download.verify())")
        }
    }

    @Test func emptyFileResumesAtBlockZero() throws {
        try withTemporaryDirectory { directory in
            let layout = testLayout(slot: 146, pages: 24)
            let options = WorkloadOptions(sharedDirectory: directory, fill: .zero, seed: 3)
            let dead = try runAndDrop(layout: layout, options: options, steps: 0)
            #expect(fileBytes(dead.path).isEmpty)
            let region = try MigratableRegion.create(layout: layout)
            let download = try DownloadWorkload(resuming: region, options: options, source: nil)
            #expect(download.recovery?.blockCount == 0)
            #expect(download.recovery?.droppedBytes == 0)
            #expect(download.recovery?.tailProblem == nil)
            #expect(download.nextIndex == 0)
            #expect(download.stepCount == 0)
            #expect(download.runningChecksum == FNV1a64.offsetBasis)
            #expect(snapshot(region) == dead.regionBytes)
            #expect(download.verify().passed, "\(download.verify())")
            try download.steps(3)
            #expect(download.verify().passed, "\(download.verify())")
        }
    }

    @Test func missingFileCannotBeResumed() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 147, pages: 24))
            let options = WorkloadOptions(sharedDirectory: directory, seed: 0x42)
            let path = "\(directory)/download-0000000000000042.dat"
            for attempt in 0..<2 {
                do throws(WorkloadError) {
                    if attempt == 0 {
                        _ = try DownloadWorkload(resuming: region, options: options, source: nil)
                    } else {
                        _ = try WorkloadKind.download.resume(in: region, options: options)
                    }
                    Issue.record("resuming without the file must fail")
                } catch {
                    #expect(error == .notResumable(workload: "download", path: path, reason: "does not exist, so no progress survived"))
                    #expect(error.description.contains("\(path) does not exist"), "\(error)")
                }
            }
            #expect(throws: WorkloadError.notResumable(workload: "download", path: path, reason: "does not exist, so no progress survived")) {
                _ = try DownloadWorkload.recoverableProgress(sharedDirectory: directory, seed: 0x42)
            }
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }

    @Test func hotsetIsRefused() throws {
        #expect(WorkloadKind.download.canResumeFromSharedFiles)
        #expect(!WorkloadKind.hotset.canResumeFromSharedFiles)
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 148, pages: 24))
            do throws(WorkloadError) {
                _ = try WorkloadKind.hotset.resume(in: region, options: WorkloadOptions(sharedDirectory: directory))
                Issue.record("resuming a hotset must fail")
            } catch {
                guard case let .notResumable(workload, path, _) = error else { Issue.record("\(error)"); return }
                #expect(workload == "hotset")
                #expect(path == nil)
                #expect(error.description.contains("only in the memory of the process that died"), "\(error)")
            }
        }
    }

    /// The file-level fencing of a resume: the resumed download writes into a new file renamed over the old
    /// name, so the previous owner, still alive with the old file open (a frozen process that woke up), writes
    /// into a file that no longer has a name: not one of its bytes reaches the download's file.
    @Test func aResumeTakesTheFileOverSoTheOldOwnersWritesLandNowhere() throws {
        try withTemporaryDirectory { directory in
            let options = WorkloadOptions(sharedDirectory: directory, seed: 0x5EED)
            let old = try DownloadWorkload(creating: try MigratableRegion.create(layout: testLayout(slot: 150, pages: 24)), options: options)
            try old.steps(10)
            try old.flush()
            let resumed = try DownloadWorkload(resuming: try MigratableRegion.create(layout: testLayout(slot: 151, pages: 24)), options: options, source: nil)
            #expect(resumed.nextIndex == 10)
            let taken = fileBytes(old.filePath)
            #expect(taken.count == 10 * DownloadBlock.size)
            try old.steps(5)  // the old owner wakes up and writes blocks 10..<15 through its open file
            try old.flush()
            #expect(fileBytes(old.filePath) == taken, "the old owner's writes reached the file")
            try resumed.steps(3)
            try resumed.flush()
            #expect(fileBytes(resumed.filePath).count == 13 * DownloadBlock.size)
            #expect(resumed.verify().passed, "\(resumed.verify())")
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.contains("takeover") }
            #expect(leftovers.isEmpty, "\(leftovers)")
        }
    }

    /// The fencing token checked before every write: once the fence is revoked or its deadline passed, a step
    /// writes nothing and says why; an unarmed fence (no ownership agent) permits everything.
    @Test func aLapsedFenceRefusesTheWriteAndNothingIsWritten() throws {
        try withTemporaryDirectory { directory in
            let options = WorkloadOptions(sharedDirectory: directory, seed: 0xFE)
            let download = try DownloadWorkload(creating: try MigratableRegion.create(layout: testLayout(slot: 152, pages: 24)), options: options)
            let fence = WriteFence(lapse: "the test's lease lapsed")
            download.install(fence: fence)
            try download.steps(2)  // unarmed: permitted
            fence.extend(until: ContinuousClock.now.advanced(by: .seconds(60)))
            try download.steps(2)
            fence.extend(until: ContinuousClock.now.advanced(by: .seconds(-1)))  // never moves back
            try download.steps(1)
            let lapsed = WriteFence(lapse: "the test's lease lapsed")
            lapsed.extend(until: ContinuousClock.now.advanced(by: .milliseconds(-10)))
            download.install(fence: lapsed)
            #expect { try download.step() } throws: { "\($0)".hasPrefix("fenced, nothing written: the test's lease lapsed (") }
            fence.revoke("another host owns generation 2")
            download.install(fence: fence)
            #expect(throws: WorkloadError.fenced("another host owns generation 2")) { try download.step() }
            #expect(download.nextIndex == 5)
            #expect(fileBytes(download.filePath).count == 5 * DownloadBlock.size, "a refused step writes nothing")
            #expect(download.verify().passed)
        }
    }
}
