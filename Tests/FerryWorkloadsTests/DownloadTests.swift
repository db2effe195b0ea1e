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

/// A block source that sends garbage for one block.
private struct FlakySource: BlockSource {
    let seed: UInt64
    let badIndex: UInt64
    func receive(block index: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(WorkloadError) {
        DownloadBlock.write(seed: seed, index: index, into: buffer)
        if index == badIndex { buffer[100] ^= 1 }
    }
}

@Suite struct DownloadTests {
    @Test func stepsWriteEveryBlockOnceInOrder() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 130, pages: 32))
            let download = try DownloadWorkload(
                creating: region, options: WorkloadOptions(sharedDirectory: directory, seed: 0x1234))
            #expect(download.filePath == "\(directory)/download-0000000000001234.dat")
            #expect(download.verify().passed)
            try download.steps(100)
            try download.flush()
            let report = download.verify()
            #expect(report.passed, "\(report)")
            #expect(download.nextIndex == 100)
            #expect(download.stepCount == 100)
            let file = fileBytes(download.filePath)
            #expect(file.count == 100 * DownloadBlock.size)
            // Block 42 at its offset is the deterministic block 42.
            var expected = [UInt8](repeating: 0, count: DownloadBlock.size)
            expected.withUnsafeMutableBytes { DownloadBlock.write(seed: 0x1234, index: 42, into: $0) }
            #expect(Array(file[42 * 4096..<43 * 4096]) == expected)
            // The stand-alone file check agrees.
            #expect(DownloadWorkload.verifyFile(
                at: download.filePath, seed: 0x1234, blockCount: 100, runningChecksum: download.runningChecksum).passed)
        }
    }

    @Test func corruptFileByteIsNamed() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 131, pages: 32))
            let download = try DownloadWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
            try download.steps(40)
            var file = fileBytes(download.filePath)
            file[17 * 4096 + 2000] ^= 0x01
            try writeFile(download.filePath, file)
            let report = download.verify()
            #expect(!report.passed)
            let blocks = try #require(report.checksByName["blocks"])
            #expect(blocks.detail.hasPrefix("block 17 at offset \(17 * 4096)"), "\(blocks.detail)")
            #expect(blocks.detail.contains("checksum"))
            #expect(report.checksByName["file length"]?.passed == true)
        }
    }

    @Test func deletedBlockIsNamed() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 132, pages: 32))
            let download = try DownloadWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
            try download.steps(40)
            var file = fileBytes(download.filePath)
            file.removeSubrange(9 * 4096..<10 * 4096)
            try writeFile(download.filePath, file)
            let report = download.verify()
            #expect(report.checksByName["file length"]?.passed == false)
            let blocks = try #require(report.checksByName["blocks"])
            #expect(blocks.detail.contains("block 9 at offset"), "\(blocks.detail)")
            #expect(blocks.detail.contains("block 9 is missing"), "\(blocks.detail)")
            #expect(report.checksByName["running checksum"]?.passed == false)
        }
    }

    @Test func duplicatedBlockIsNamed() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 133, pages: 32))
            let download = try DownloadWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
            try download.steps(40)
            var file = fileBytes(download.filePath)
            file.insert(contentsOf: file[20 * 4096..<21 * 4096], at: 21 * 4096)
            try writeFile(download.filePath, file)
            let report = download.verify()
            #expect(!report.passed)
            let blocks = try #require(report.checksByName["blocks"])
            #expect(blocks.detail.contains("block 21 at offset"), "\(blocks.detail)")
            #expect(blocks.detail.contains("block 20 is duplicated"), "\(blocks.detail)")
        }
    }

    @Test func extraBlockAtTheEndIsNamed() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 134, pages: 32))
            let download = try DownloadWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
            try download.steps(10)
            var file = fileBytes(download.filePath)
            var extra = [UInt8](repeating: 0, count: 4096)
            extra.withUnsafeMutableBytes { DownloadBlock.write(seed: download.seed, index: 10, into: $0) }
            file += extra
            try writeFile(download.filePath, file)
            let report = download.verify()
            #expect(report.checksByName["file length"]?.passed == false)
            #expect(report.checksByName["blocks"]?.detail.contains("1 more than recorded") == true)
        }
    }

    @Test func corruptBlockFromTheSourceIsRefusedAndNotRecorded() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 135, pages: 32))
            let download = try DownloadWorkload(
                creating: region, options: WorkloadOptions(sharedDirectory: directory, seed: 5),
                source: FlakySource(seed: 5, badIndex: 7))
            try download.steps(7)
            #expect(throws: WorkloadError.self) { try download.step() }
            #expect(download.nextIndex == 7)
            #expect(download.stepCount == 7)
            #expect(download.verify().passed)
        }
    }

    @Test func migrationLosesAndDuplicatesNoBlock() throws {
        try withTemporaryDirectory { directory in
            let layout = testLayout(slot: 136, pages: 32)
            let bytes: [UInt8]
            let path: String
            do {
                let region = try MigratableRegion.create(layout: layout)
                let source = try DownloadWorkload(
                    creating: region, options: WorkloadOptions(sharedDirectory: directory, fill: .random, seed: 99))
                try source.steps(45)
                // The safe point: flush, then the final copy of the region.
                try source.flush()
                bytes = snapshot(region)
                path = source.filePath
                // The source writes three more blocks after the copy (as if it had not yet stopped); those
                // were never recorded in the copied region, and attaching must drop them.
                try source.steps(3)
                #expect(fileBytes(path).count == 48 * 4096)
            }
            let region = try restore(bytes, layout: layout)
            let destination = try WorkloadKind.attach(to: region, sharedDirectory: directory + "/")
            let download = try #require(destination as? DownloadWorkload)
            #expect(download.filePath == path)
            #expect(fileBytes(path).count == 45 * 4096)
            #expect(download.verify().passed, "\(download.verify())")
            try download.steps(40)
            try download.flush()
            let report = download.verify()
            #expect(report.passed, "\(report)")
            #expect(download.nextIndex == 85)
            #expect(fileBytes(path).count == 85 * 4096)
        }
    }

    @Test func attachingWithoutTheSharedFileIsAClearError() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 137, pages: 32))
            let download = try DownloadWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
            try download.steps(5)
            let path = download.filePath
            do throws(WorkloadError) {
                _ = try DownloadWorkload(attaching: region, sharedDirectory: "/tmp/ferry-no-such-directory")
                Issue.record("attaching without the file must fail")
            } catch {
                guard case .sharedFileInconsistent(_, let reason) = error else { Issue.record("\(error)"); return }
                #expect(reason.contains("does not exist"))
                #expect(error.description.contains("same shared directory"))
            }
            // Shorter than recorded (the source did not flush, or another mount): refused, not padded.
            #expect(truncate(path, 3 * 4096) == 0)
            #expect(throws: WorkloadError.self) {
                _ = try DownloadWorkload(attaching: region, sharedDirectory: directory)
            }
        }
    }
}
