#if canImport(Glibc)
import Glibc
#endif
import FerrySystem
import FerryTestSupport
import Foundation
import Testing

/// The one helper every file operation of the ownership path and of the download's file goes through: results
/// checked and named, transient failures of a network file system retried with a bound.
@Suite struct SharedFileTests {
    /// A body that fails with `errno` the first `failures` times it runs, then returns how often it ran.
    final class Flaky: @unchecked Sendable {
        var runs = 0
        let failures: Int
        let errno: CInt
        init(failures: Int, errno: CInt) { self.failures = failures; self.errno = errno }
        func run() throws(SharedFileError) -> Int {
            runs += 1
            if runs <= failures { throw SharedFileError("open", path: "/shared/ferry-owner.json", errno: Errno(rawValue: errno)) }
            return runs
        }
    }

    @Test func aStaleHandleIsRetriedUntilItClears() throws {
        let flaky = Flaky(failures: 2, errno: ESTALE)
        #expect(try SharedFile.retrying { () throws(SharedFileError) in try flaky.run() } == 3)
    }

    @Test func aStaleHandleThatDoesNotClearIsNamedWithItsAttempts() {
        let flaky = Flaky(failures: 100, errno: ESTALE)
        let started = ContinuousClock.now
        do {
            _ = try SharedFile.retrying { () throws(SharedFileError) in try flaky.run() }
            Issue.record("a persistent ESTALE must fail")
        } catch {
            #expect(error.errno.rawValue == ESTALE && error.attempts == SharedFile.maximumAttempts)
            #expect(error.description == "open /shared/ferry-owner.json: Stale file handle (ESTALE), still after \(SharedFile.maximumAttempts) attempts", "\(error)")
        }
        #expect(flaky.runs == SharedFile.maximumAttempts)
        #expect(ContinuousClock.now - started < .milliseconds(500), "the bound is short")
    }

    @Test func aMissingFileIsAnAnswerUnlessItIsRenamedOver() throws {
        let once = Flaky(failures: 1, errno: ENOENT)
        #expect(throws: SharedFileError("open", path: "/shared/ferry-owner.json", errno: Errno(rawValue: ENOENT))) {
            _ = try SharedFile.retrying { () throws(SharedFileError) in try once.run() }
        }
        #expect(once.runs == 1)
        let renamed = Flaky(failures: 2, errno: ENOENT)
        #expect(try SharedFile.retrying(missingIsTransient: true) { () throws(SharedFileError) in try renamed.run() } == 3)
        let denied = Flaky(failures: 1, errno: EACCES)
        #expect(throws: SharedFileError.self) { _ = try SharedFile.retrying(missingIsTransient: true) { () throws(SharedFileError) in try denied.run() } }
        #expect(denied.runs == 1, "only ESTALE and ENOENT are transient")
    }

    /// Names relative to a directory held open act as the paths do, and failures name the whole path.
    @Test func aDirectoryHeldOpenNamesFilesRelativeToIt() throws {
        try withTemporaryDirectory { path in
            let directory = try SharedDirectory(path)
            #expect(try SharedFile.createExclusive("claim", in: directory, contents: Array("a:1".utf8), durable: false))
            #expect(try !SharedFile.createExclusive("claim", in: directory, contents: Array("b:2".utf8)), "one winner")
            #expect(try SharedFile.contents(of: path + "/claim") == Array("a:1".utf8))
            try SharedFile.writeNew(path + "/next", contents: Array("2".utf8))
            try SharedFile.rename("next", over: "claim", in: directory)
            #expect(try SharedFile.contents(of: "claim", in: directory) == Array("2".utf8))
            #expect(try SharedFile.contents(of: "missing", in: directory) == nil)
            #expect(throws: SharedFileError("rename", path: "\(path)/missing -> \(path)/claim", errno: Errno(rawValue: ENOENT))) {
                try SharedFile.rename("missing", over: "claim", in: directory)
            }
            #expect(throws: SharedFileError("open (directory)", path: path + "/none", errno: Errno(rawValue: ENOENT))) {
                _ = try SharedDirectory(path + "/none")
            }
        }
    }

    @Test func aReaderDuringRenamesOverAlwaysSeesAWholeFile() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/record"
            try SharedFile.writeNew(path, contents: Array(repeating: UInt8(ascii: "a"), count: 3000))
            let writer = Thread {
                for round in 0..<300 {
                    let byte = UInt8(ascii: round % 2 == 0 ? "b" : "c")
                    try? SharedFile.writeNew(path + ".tmp", contents: Array(repeating: byte, count: 3000), durable: false)
                    try? SharedFile.rename(path + ".tmp", over: path)
                }
            }
            writer.start()
            for _ in 0..<300 {
                let bytes = try #require(try SharedFile.contents(of: path, missingIsTransient: true))
                #expect(bytes.count == 3000 && Set(bytes).count == 1, "a torn or missing record")
            }
        }
    }

    @Test(.enabled(if: SmallFileSystem.canMount)) func everyWriteOnAFullFileSystemFailsNamingTheFileAndLeavesNothing() throws {
        let mount = try SmallFileSystem(at: "/tmp/ferry-fs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { mount.unmount() }
        #expect(mount.fill() == ENOSPC)
        let claim = mount.path + "/ferry-claim-1"
        #expect(throws: SharedFileError("write", path: claim, errno: Errno(rawValue: ENOSPC))) {
            _ = try SharedFile.createExclusive(claim, contents: Array("host:1".utf8))
        }
        #expect(!FileManager.default.fileExists(atPath: claim), "a claim that could not be written is removed")
        let temporary = mount.path + "/ferry-owner.json.tmp-1"
        #expect(throws: SharedFileError("write", path: temporary, errno: Errno(rawValue: ENOSPC))) {
            try SharedFile.writeNew(temporary, contents: Array(repeating: 0x20, count: 100))
        }
        #expect(!FileManager.default.fileExists(atPath: temporary))
    }

    @Test(.enabled(if: SmallFileSystem.canMount)) func aReadOnlyFileSystemFailsEveryChangeNamingTheFile() throws {
        let mount = try SmallFileSystem(at: "/tmp/ferry-fs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { mount.unmount() }
        let record = mount.path + "/record"
        try SharedFile.writeNew(record, contents: Array("generation 1".utf8))
        try mount.remount(readOnly: true)
        #expect(throws: SharedFileError("create", path: mount.path + "/claim", errno: Errno(rawValue: EROFS))) {
            _ = try SharedFile.createExclusive(mount.path + "/claim", contents: [1])
        }
        #expect(throws: SharedFileError("create", path: record + ".tmp", errno: Errno(rawValue: EROFS))) {
            try SharedFile.writeNew(record + ".tmp", contents: [1])
        }
        #expect(try SharedFile.contents(of: record) == Array("generation 1".utf8), "reading still works, nothing was lost")
        try mount.remount(readOnly: false)
    }
}
