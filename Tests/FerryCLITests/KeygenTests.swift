#if canImport(Glibc)
import Glibc
#endif
import FerryAuth
import FerryTestSupport
import Foundation
import Testing

/// `ferry keygen FILE`: a new pre-shared key, mode 0600, never over an existing one unless `--force`.
@Suite struct KeygenTests {
    @Test func writesA32ByteKeyOfMode0600ThatLoads() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/ferry.key"
            let run = try runFerry(["keygen", path])
            #expect(run.status == 0, "\(run.standardError)")
            let facts = try FileFacts(path)
            #expect(facts.kind == S_IFREG)
            #expect(facts.permissions == 0o600)
            #expect(try keyBytes(path).count == 32)
            let key = try PresharedKey(loadingFrom: path)
            let fingerprint = try #require(key.fingerprint)
            #expect(fingerprint.count == 16)
            #expect(fingerprint.allSatisfy { $0.isHexDigit })
            #expect(run.standardOutput == "key          \(path)\nfingerprint  \(fingerprint)\n")
            // The documented way to compare on a host without ferry.
            if let sha256sum = (["/usr/bin/sha256sum", "/bin/sha256sum"] as [String]).first(where: { access($0, X_OK) == 0 }) {
                #expect(NamespaceLab.run(sha256sum, [path], deadline: 30).output.hasPrefix(fingerprint))
            }
        }
    }

    @Test func aSecondKeygenWithoutForceFailsAndLeavesTheKey() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/ferry.key"
            #expect(try runFerry(["keygen", path]).status == 0)
            let before = try keyBytes(path)
            let again = try runFerry(["keygen", path])
            #expect(again.status == 1)
            #expect(again.standardError.contains("key file \(path) already exists"), "\(again.standardError)")
            #expect(again.standardError.contains("ferry keygen --force \(path)"), "\(again.standardError)")
            #expect(try keyBytes(path) == before)
            #expect(try FileFacts(path).permissions == 0o600)
        }
    }

    @Test func forceReplacesTheKeyAndLeavesNothingElse() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/ferry.key"
            #expect(try runFerry(["keygen", path]).status == 0)
            let before = try keyBytes(path)
            let forced = try runFerry(["keygen", "--force", path])
            #expect(forced.status == 0, "\(forced.standardError)")
            let after = try keyBytes(path)
            #expect(after.count == 32)
            #expect(after != before)
            #expect(try FileFacts(path).permissions == 0o600)
            #expect(try PresharedKey(loadingFrom: path).fingerprint.map { forced.standardOutput.contains($0) } == true)
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["ferry.key"], "no temporary file left")
            // --force where there is no file yet just writes one.
            #expect(try runFerry(["keygen", path + "2", "--force"]).status == 0)
            #expect(try FileFacts(path + "2").permissions == 0o600)
        }
    }

    @Test func twoKeygensGiveDifferentKeys() throws {
        try withTemporaryDirectory { directory in
            let a = try runFerry(["keygen", directory + "/a.key"])
            let b = try runFerry(["keygen", directory + "/b.key"])
            #expect(a.status == 0 && b.status == 0)
            #expect(try keyBytes(directory + "/a.key") != keyBytes(directory + "/b.key"))
            #expect(a.standardOutput.split(separator: "\n").last != b.standardOutput.split(separator: "\n").last)
        }
    }

    @Test func aKeyOthersCanReadIsRefusedByFerryRun() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let path = lab.directory + "/ferry.key"
        #expect(try runFerry(["keygen", path]).status == 0)
        chmod(path, 0o644)
        let run = try runFerry(["run", "--region-size", "16MiB", "--shared-dir", lab.shared, "--control", lab.socket("a"), "--key", path])
        #expect(run.status == 1)
        #expect(
            run.standardError.contains("key file \(path) has mode 0644: its group or others can access it; run 'chmod 600 \(path)'"),
            "\(run.standardError)")
        #expect((try? FileFacts(lab.socket("a"))) == nil, "nothing was started")
    }

    @Test(arguments: [[], ["a", "b"]] as [[String]])
    func keygenNeedsExactlyOneFile(files: [String]) throws {
        let run = try runFerry(["keygen"] + files)
        #expect(run.status == 64)
        #expect(run.standardError.contains("Run 'ferry keygen --help' for usage."))
    }
}

private func keyBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}
