import FerryTestSupport
import Foundation
import Synchronization
import Testing

/// Leases without clocks, fencing of a hung owner, and the shared mount full or read-only, between real `ferry`
/// processes. Two hosts are played on one machine by `FERRY_HOST` (the host part of `host:pid` identities): a
/// process then judges an owner "on another host" by its lease alone, as it would across machines. Every
/// process runs with a short I/O timeout (0.25 s: renewed every 0.25 s, owner killed after 1.5 s without a good
/// renewal, taken over after 2 s unchanged).
@Suite(.serialized) struct LeaseTests {
    static let ioTimeout = "0.25"
    static func host(_ name: String) -> [String: String] { ["FERRY_HOST": name, "FERRY_IO_TIMEOUT": ioTimeout] }

    func status(_ control: String) -> [String: Any]? {
        guard let run = try? runFerry(["status", "--control", control, "--json"]), run.status == 0 else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(run.standardOutput.utf8)) as? [String: Any]
    }

    /// Sets a file's modification (and access) time to `date`, as a host whose clock is that far off would.
    func touch(_ path: String, to date: Date) {
        let seconds = date.timeIntervalSince1970
        let time = timespec(tv_sec: Int(seconds.rounded(.down)), tv_nsec: 0)
        var times = [time, time]
        _ = utimensat(AT_FDCWD, path, &times, 0)
    }

    func modificationTime(_ path: String) -> Date? {
        try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date
    }

    func downloadFile(_ shared: String) throws -> String {
        shared + "/" + (try #require(try FileManager.default.contentsOfDirectory(atPath: shared).first { $0.hasPrefix("download-") && $0.hasSuffix(".dat") }))
    }

    func waitForExit(_ process: Process, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        return !process.isRunning
    }

    /// Skewed modification times change nothing: while the owner renews, a resume from another host is refused
    /// even though the claim's and the lease's modification times say a year ago (the old heartbeat would have
    /// declared it dead); once the owner is killed, the resume takes over even though the times say a year ahead
    /// (the old heartbeat would have refused forever).
    @Test func skewedModificationTimesChangeNothing() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let owner = try lab.startSource(workload: "download", regionSize: "8MiB", ["--dirty-rate", "500"], environment: Self.host("hosta"))
        let files = [lab.shared + "/ferry-claim-1", lab.shared + "/ferry-lease-1", lab.shared + "/ferry-owner.json"]
        // Skew the times again and again while the resume watches: a year in the past.
        let skewing = Mutex(true)
        let skewedSeen = Mutex(0)
        let yearAgo = Date().addingTimeInterval(-365 * 86400)
        let skewer = Thread {
            while skewing.withLock({ $0 }) {
                for file in files { touch(file, to: yearAgo) }
                if let time = modificationTime(files[1]), time < Date().addingTimeInterval(-300 * 86400) { skewedSeen.withLock { $0 += 1 } }
                usleep(20_000)
            }
        }
        skewer.start()
        let refused = try runFerry(["run", "--resume", "--shared-dir", lab.shared, "--control", lab.socket("r")], environment: Self.host("hostb"))
        skewing.withLock { $0 = false }
        #expect(refused.status == 1, "\(refused.standardOutput) \(refused.standardError)")
        #expect(refused.standardError.contains("renewed its lease while this host watched") && refused.standardError.contains("looks alive"),
                "\(refused.standardError)")
        #expect(skewedSeen.withLock { $0 } > 10, "the lease's modification time read a year ago while the resume watched")
        #expect(owner.isRunning, "the owner was never disturbed")
        #expect(status(lab.socket("a"))?["generation"] as? Int == 1)

        // The owner dies (its watchdog exits with it); the times now claim a renewal a year in the future.
        kill(owner.processIdentifier, SIGKILL)
        owner.waitUntilExit()
        let yearAhead = Date().addingTimeInterval(365 * 86400)
        for file in files { touch(file, to: yearAhead) }
        #expect((modificationTime(files[1]) ?? .distantPast) > Date().addingTimeInterval(300 * 86400), "the skew took")
        let started = Date()
        let resumed = try lab.start(["run", "--resume", "--dirty-rate", "0", "--shared-dir", lab.shared, "--control", lab.socket("r")],
                                    log: "r", environment: Self.host("hostb"))
        try lab.waitForSocket(lab.socket("r"))
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 2 && waited < 10, "took over after watching 8 × 0.25 s on its own clock, not \(waited) s: \(lab.log("r"))")
        #expect(lab.log("r").contains("has not renewed its lease"), "\(lab.log("r"))")
        #expect(status(lab.socket("r"))?["generation"] as? Int == 2)
        #expect(try runFerry(["verify", "--control", lab.socket("r")]).status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("r")])
        resumed.waitUntilExit()
    }

    /// A frozen owner (SIGSTOP) is killed by its watchdog child (SIGKILL ends a stopped process) 6 × the I/O
    /// timeout after its last renewal, before another host takes the workload over at 8 ×.
    @Test func aFrozenOwnerIsKilledByItsWatchdogBeforeAnotherHostTakesOver() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let owner = try lab.startSource(workload: "download", regionSize: "8MiB", ["--dirty-rate", "2000"], environment: Self.host("hosta"))
        let watchdog = try #require(status(lab.socket("a"))?["watchdog_pid"] as? Int, "the owner runs a watchdog")
        usleep(300_000)
        let frozen = Date()
        kill(owner.processIdentifier, SIGSTOP)
        #expect(waitForExit(owner, seconds: 5), "the watchdog kills the frozen owner")
        let killedAfter = Date().timeIntervalSince(frozen)
        #expect(owner.terminationReason == .uncaughtSignal && owner.terminationStatus == SIGKILL)
        #expect(killedAfter >= 1.0 && killedAfter < 3.0, "killed 6 × 0.25 s after its last renewal (≤ 0.25 s before the freeze), not after \(killedAfter) s")
        #expect(lab.log("a").contains("ferry watchdog: process \(owner.processIdentifier) did not renew its lease"), "\(lab.log("a"))")
        for _ in 0..<100 where kill(pid_t(watchdog), 0) == 0 { usleep(20_000) }
        #expect(kill(pid_t(watchdog), 0) != 0, "the watchdog exits after killing its owner")

        let size = try #require(try FileManager.default.attributesOfItem(atPath: try downloadFile(lab.shared))[.size] as? Int)
        let resumed = try lab.start(["run", "--resume", "--dirty-rate", "0", "--shared-dir", lab.shared, "--control", lab.socket("r")],
                                    log: "r", environment: Self.host("hostb"))
        try lab.waitForSocket(lab.socket("r"))
        #expect(lab.log("r").contains("resumed download at step \(size / 4096) "), "\(lab.log("r"))")
        #expect(try runFerry(["verify", "--control", lab.socket("r")]).status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("r")])
        resumed.waitUntilExit()
    }

    /// Which of the owner's defences run when it is thawed.
    enum Defences: String, CaseIterable, CustomTestStringConvertible {
        /// All of them: the enforcer thread kills it, the fence refuses its writes, its file is not the file any more.
        case all
        /// Without the enforcer thread (a test hook of debug builds): the fence and the file takeover alone.
        case withoutEnforcer
        var testDescription: String { rawValue }
        var environment: [String: String] { self == .withoutEnforcer ? ["FERRY_TEST_NO_ENFORCER": "1"] : [:] }
    }

    /// The bar of issue 12: the owner and its watchdog both frozen (a whole machine paused), another host takes
    /// the workload over once the lease expired, then the old owner is thawed. Not one byte it writes after the
    /// takeover lands in the workload's file, and it exits.
    @Test(arguments: Defences.allCases) func aThawedOwnerWritesNothingAfterTheTakeoverAndExits(defences: Defences) throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let owner = try lab.startSource(workload: "download", regionSize: "8MiB", ["--dirty-rate", "2000"],
                                        environment: Self.host("hosta").merging(defences.environment) { $1 })
        let watchdog = pid_t(try #require(status(lab.socket("a"))?["watchdog_pid"] as? Int))
        defer { kill(watchdog, SIGKILL) }
        usleep(300_000)
        kill(watchdog, SIGSTOP)
        kill(owner.processIdentifier, SIGSTOP)
        let path = try downloadFile(lab.shared)
        // The new owner writes nothing (pace 0): every byte the file gains from here on would be the old owner's.
        let resumed = try lab.start(["run", "--resume", "--dirty-rate", "0", "--shared-dir", lab.shared, "--control", lab.socket("r")],
                                    log: "r", environment: Self.host("hostb"))
        try lab.waitForSocket(lab.socket("r"))
        #expect(lab.log("r").contains("has not renewed its lease"), "\(lab.log("r"))")
        let taken = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(taken.count > 0 && taken.count % 4096 == 0)

        kill(owner.processIdentifier, SIGCONT)
        #expect(waitForExit(owner, seconds: 5), "the thawed owner exits: \(lab.log("a"))")
        usleep(300_000)
        let after = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(after.count == taken.count, "the file grew from \(taken.count) to \(after.count) bytes after the takeover")
        #expect(after == taken, "the file changed after the takeover")
        let log = lab.log("a")
        #expect(log.contains("was not renewed for") || log.contains("another process owns the workload now"), "\(log)")
        if defences == .withoutEnforcer {
            #expect(owner.terminationReason == .exit && owner.terminationStatus == 1, "fenced by the record, it exits: \(log)")
        }
        let verify = try runFerry(["verify", "--control", lab.socket("r")])
        #expect(verify.status == 0, "\(verify.standardOutput)")
        _ = try runFerry(["stop", "--control", lab.socket("r")])
        resumed.waitUntilExit()
    }

    /// What a file server that crashed just after a handoff leaves: the rename of the record and the destination's
    /// claim are synced just after "running", so a crash of the server's host in that millisecond could lose both,
    /// and the record would name the source's generation again while the destination runs the next one. The owner
    /// sees it within a few I/O timeouts and writes both again; a resume from a third host is then refused (without
    /// that it would take over once the old generation's lease looked dead: two owners). Played here by putting the
    /// old record back and removing the claim.
    @Test func aHandoffTheFileServerLostIsWrittenAgainByTheNewOwner() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let source = try lab.startSource(workload: "download", regionSize: "8MiB", ["--dirty-rate", "200"], environment: Self.host("hosta"))
        let receiver = try lab.startReceiver(port: port, environment: Self.host("hostb"))
        let recordPath = lab.shared + "/ferry-owner.json"
        let before = try Data(contentsOf: URL(fileURLWithPath: recordPath))
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--verify", "audit"])
        #expect(migrate.status == 0, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(waitForExit(source, seconds: 10), "the source handed over and exits")
        let id = "hostb:\(receiver.processIdentifier)"
        #expect(status(lab.socket("b"))?["generation"] as? Int == 2)

        try before.write(to: URL(fileURLWithPath: recordPath), options: .atomic)
        unlink(lab.shared + "/ferry-claim-2")
        let lost = ContinuousClock.now
        func record() -> [String: Any]? {
            (try? Data(contentsOf: URL(fileURLWithPath: recordPath))).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
        }
        let deadline = lost + .seconds(5)
        // (The log line comes just after the record: wait for both.)
        while ContinuousClock.now < deadline
            && !(record()?["generation"] as? Int == 2 && FileManager.default.fileExists(atPath: lab.shared + "/ferry-claim-2") && lab.log("b").contains("written again")) {
            usleep(20_000)
        }
        print("LeaseTests: a lost handoff was written again after \(ContinuousClock.now - lost)")
        #expect(record()?["generation"] as? Int == 2 && record()?["owner"] as? String == id, "the record again: \(record() ?? [:]) \(lab.log("b"))")
        #expect((try? String(contentsOfFile: lab.shared + "/ferry-claim-2", encoding: .utf8)) == id, "the claim again")
        #expect(lab.log("b").contains("written again"), "\(lab.log("b"))")
        #expect(status(lab.socket("b"))?["role"] as? String == "running")

        // Started, not run to the end: a resume that took over would run the workload and not return.
        let resume = try lab.start(["run", "--resume", "--shared-dir", lab.shared, "--control", lab.socket("r")], log: "r", environment: Self.host("hostc"))
        let refused = waitForExit(resume, seconds: 10)
        if !refused { kill(resume.processIdentifier, SIGKILL); resume.waitUntilExit() }
        #expect(refused && resume.terminationStatus == 1 && lab.log("r").contains("alive"), "a third host must not take it over: \(lab.log("r"))")
        #expect(receiver.isRunning && status(lab.socket("b"))?["role"] as? String == "running", "\(lab.log("b"))")
        let verify = try runFerry(["verify", "--control", lab.socket("b")])
        #expect(verify.status == 0, "\(verify.standardOutput)")
    }

    /// `ferry status` shows the record, the claims and the lease: the owner its own renewals; a receiver
    /// waiting on another host how long ago it saw the counter change, on its own clock, growing once the owner
    /// stops renewing.
    @Test func statusShowsTheRecordTheClaimsAndTheLease() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let owner = try lab.startSource(regionSize: "8MiB", ["--dirty-rate", "100"], environment: Self.host("hosta"))
        _ = try lab.startReceiver(port: Lab.freePort(), environment: Self.host("hostb"))
        usleep(1_000_000)
        let own = try #require(status(lab.socket("a")))
        let id = "hosta:\(owner.processIdentifier)"
        #expect((own["record"] as? [String: Any])?["generation"] as? Int == 1)
        #expect((own["record"] as? [String: Any])?["owner"] as? String == id)
        #expect((own["claims"] as? [[String: Any]])?.map { "\($0["generation"] ?? "")=\($0["owner"] ?? "")" } == ["1=\(id)"])
        let lease = try #require(own["lease"] as? [String: Any])
        #expect(lease["owner"] as? String == id)
        #expect((lease["counter"] as? Int ?? 0) >= 3, "\(lease)")
        #expect((lease["seconds_since_change"] as? Double ?? 99) < 0.5, "\(lease)")
        let waiting = try #require(status(lab.socket("b")))
        let seen = try #require(waiting["lease"] as? [String: Any])
        #expect(seen["owner"] as? String == id, "\(seen)")
        #expect((seen["seconds_since_change"] as? Double ?? 99) < 0.6, "the receiver saw the counter move: \(seen)")
        let text = try runFerry(["status", "--control", lab.socket("b")]).standardOutput
        #expect(text.contains("record            generation 1, owner \(id)"), "\(text)")
        #expect(text.contains("claims            1: \(id)"), "\(text)")
        #expect(text.contains("lease             generation 1, owner \(id), counter"), "\(text)")
        kill(owner.processIdentifier, SIGKILL)
        owner.waitUntilExit()
        usleep(1_500_000)
        let stale = try #require(status(lab.socket("b"))?["lease"] as? [String: Any])
        #expect((stale["seconds_since_change"] as? Double ?? 0) > 1.2, "unchanged since the owner died: \(stale)")
    }

    // MARK: A full or read-only shared mount

    /// A migration onto a full shared mount fails before the pause with the errno and the file, and changes
    /// nothing: the source keeps running its workload as the only owner (its lease is renewed in place, which
    /// needs no new blocks), the receiver keeps waiting, nothing is lost.
    @Test(.enabled(if: SmallFileSystem.canMount)) func aMigrationOntoAFullSharedMountFailsAndTheSourceKeepsRunning() throws {
        let lab = try Lab()
        let mount = try SmallFileSystem(at: lab.directory + "-shared")
        defer {
            lab.tearDown()
            mount.unmount()
        }
        let shared = ["--shared-dir", mount.path]
        let port = Lab.freePort()
        let source = try lab.startSource(regionSize: "8MiB", ["--dirty-rate", "1000"] + shared, environment: Self.host("hosta"))
        let receiver = try lab.startReceiver(port: port, shared, environment: Self.host("hostb"))
        let record = try Data(contentsOf: URL(fileURLWithPath: mount.path + "/ferry-owner.json"))
        #expect(mount.fill() == ENOSPC)
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)"])
        #expect(migrate.status != 0, "\(migrate.standardOutput)")
        // The first file the migration writes on the shared mount is the one-time token of the hello.
        #expect(migrate.standardError.contains("No space left on device (ENOSPC)") && migrate.standardError.contains(mount.path + "/.ferry-token-"),
                "the error names the errno and the file: \(migrate.standardError)")
        usleep(2_500_000)  // longer than the owner's deadline (1.5 s): renewals go on in place
        #expect(source.isRunning && receiver.isRunning, "\(lab.log("a"))")
        let after = try #require(status(lab.socket("a")))
        #expect(after["role"] as? String == "running" && after["generation"] as? Int == 1)
        #expect((after["lease"] as? [String: Any])?["renewal_error"] == nil, "\(after)")
        #expect(status(lab.socket("b"))?["role"] as? String == "waiting")
        #expect(try Data(contentsOf: URL(fileURLWithPath: mount.path + "/ferry-owner.json")) == record, "the record is unchanged")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mount.path).filter { $0.hasPrefix("ferry-claim-") } == ["ferry-claim-1"])
        #expect(!(try FileManager.default.contentsOfDirectory(atPath: mount.path)).contains { $0.contains(".tmp-") || $0.contains("token") },
                "no temporary or token file left")
        #expect(try runFerry(["verify", "--control", lab.socket("a")]).status == 0)
    }

    /// `ferry run` on a read-only shared mount fails at once, naming the errno and the file (the claim for a
    /// hotset, the download's own file for a download, which is created first), and leaves nothing behind.
    @Test(.enabled(if: SmallFileSystem.canMount), arguments: [("hotset", "ferry-claim-1"), ("download", "download-0000000000000001.dat")])
    func ferryRunOnAReadOnlySharedMountFailsClearly(workload: String, file: String) throws {
        let lab = try Lab()
        let mount = try SmallFileSystem(at: lab.directory + "-shared", readOnly: true)
        defer {
            lab.tearDown()
            mount.unmount()
        }
        // The key elsewhere: it would be the first file written otherwise.
        let run = try runFerry(["run", "--workload", workload, "--region-size", "8MiB", "--shared-dir", mount.path,
                                "--key", lab.directory + "/key", "--control", lab.socket("a")])
        #expect(run.status == 1, "\(run.standardOutput) \(run.standardError)")
        #expect(run.standardError.contains("Read-only file system (EROFS)") && run.standardError.contains(mount.path + "/" + file), "\(run.standardError)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mount.path).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: lab.socket("a")))
    }
}
