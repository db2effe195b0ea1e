import FerryTestSupport
import Foundation
import Synchronization
import Testing

/// One GlusterFS lab (`GlusterLab`: a volume served from a server namespace, mounted separately in host A and
/// host B) for a whole suite: brought up before its first test and torn down after its last. The suite's tests
/// find it in `GlusterVolume.current`; each takes its own folder on the volume.
struct GlusterVolume: SuiteTrait, TestScoping {
    @TaskLocal static var current: GlusterLab?

    var isRecursive: Bool { false }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        guard GlusterLab.missingPrerequisite == nil else { return try await function() }  // the tests skip themselves
        let lab = try GlusterLab()
        print("GlusterLab: volume up in \(String(format: "%.2f", lab.upSeconds)) s for \(test.name)")
        defer { lab.tearDown() }
        try await Self.$current.withValue(lab) { try await function() }
    }
}

/// A port nothing in the lab's namespaces listens on yet (each test of a suite takes the next).
private let nextPort = Mutex(7400)
private func labPort() -> Int { nextPort.withLock { $0 += 1; return $0 } }

/// The GlusterFS lab's tests share one volume and run one at a time (the fault matrix's cells and the file server
/// killed): two volumes at once would only compete for the two cores with the rest of the suite.
@Suite(.serialized, GlusterVolume())
struct GlusterTests {}

extension GlusterTests {
/// The fault matrix (`FaultMatrixTests`, 24 cells) on GlusterFS: the source in host A with A's mount, the
/// destination and any resume in host B with B's mount, migrating over the lab's migration network. The bar is the
/// same as on one local directory: after each fault exactly one process runs the workload, the record and the claim
/// (read through the owner's own mount) name it, and `ferry verify` passes on it.
@Suite struct GlusterFaultMatrixTests {
    @Test(.enabled(if: GlusterLab.available("GlusterFaultMatrixTests"), "needs root, ip and GlusterFS"),
          .timeLimit(.minutes(2)), arguments: FaultMatrixTests.cells)
    func afterEveryFaultOneProcessRunsTheWorkloadAndItVerifies(cell: FaultMatrixTests.Cell) throws {
        let gluster = try #require(GlusterVolume.current)
        let lab = try Lab()
        defer { lab.tearDown() }
        let folder = "matrix-\(cell.side.rawValue)-\(cell.action.rawValue)-\(cell.phase)-\(UInt32.random(in: 0...UInt32.max))"
        lab.placements = gluster.placements(try gluster.folder(folder))
        // Round 1 must be a dirty round: over the unshaped veth an 8 MiB full copy takes 20 ms, in which a download
        // writing its blocks through GlusterFS (about 1 ms each) may dirty nothing measurable, and the source then
        // stops at once. At 200 Mbit/s the full copy takes a third of a second.
        try FaultMatrixTests.play(cell, in: lab, port: labPort(), migrateOptions: ["--max-bandwidth", "200mbit"])
    }
}

/// Migrations between two network namespaces whose shared mount is GlusterFS, each host with its own mount.
@Suite struct GlusterLabTests {
    struct Status {
        let role: String
        let generation: Int
        let pid: Int
        let watchdogPID: Int?
    }

    static func status(_ control: String) -> Status? {
        guard let run = try? runFerry(["status", "--control", control, "--json"]), run.status == 0,
              let object = try? JSONSerialization.jsonObject(with: Data(run.standardOutput.utf8)) as? [String: Any] else { return nil }
        return Status(role: object["role"] as? String ?? "", generation: object["generation"] as? Int ?? -1, pid: object["pid"] as? Int ?? -1,
                      watchdogPID: object["watchdog_pid"] as? Int)
    }

    static func report(_ path: String) -> [String: Any]? {
        FileManager.default.contents(atPath: path).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
    }

    /// What one host's mount says about ownership: the record's generation and the owner a claim names.
    static func record(_ shared: String) -> Int? {
        (FileManager.default.contents(atPath: shared + "/ferry-owner.json")
            .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] })?["generation"] as? Int
    }

    static func claim(_ generation: Int, _ shared: String) -> String? {
        try? String(contentsOfFile: shared + "/ferry-claim-\(generation)", encoding: .utf8)
    }

    /// Both hosts' mounts, on the lab's volume: a file one writes is the other's at once, and an `O_EXCL` create
    /// of the same name has one winner across the two clients (what the claims rest on).
    @Test(.enabled(if: GlusterLab.available("GlusterLabTests.theTwoMountsAreOneVolumeWithOneWinnerPerExclusiveCreate"),
                   "needs root, ip and GlusterFS"), .timeLimit(.minutes(2)))
    func theTwoMountsAreOneVolumeWithOneWinnerPerExclusiveCreate() throws {
        let gluster = try #require(GlusterVolume.current)
        let mounts = try String(contentsOfFile: "/proc/mounts", encoding: .utf8)
        #expect(mounts.contains(" \(gluster.mountA) fuse.glusterfs ") && mounts.contains(" \(gluster.mountB) fuse.glusterfs "),
                "two FUSE mounts of GlusterFS: \(mounts)")
        let folder = try gluster.folder("exclusive-\(UInt32.random(in: 0...UInt32.max))")
        try "from A".write(toFile: folder.a + "/note", atomically: true, encoding: .utf8)
        #expect(try String(contentsOfFile: folder.b + "/note", encoding: .utf8) == "from A")
        for round in 0..<20 {
            let name = "/claim-\(round)"
            let a = open(folder.a + name, O_WRONLY | O_CREAT | O_EXCL, 0o644)
            let errnoA = errno
            let b = open(folder.b + name, O_WRONLY | O_CREAT | O_EXCL, 0o644)
            let errnoB = errno
            #expect(a >= 0, "A creates first: errno \(errnoA)")
            #expect(b < 0 && errnoB == EEXIST, "B must lose with EEXIST, got fd \(b) errno \(errnoB)")
            if a >= 0 { close(a) }
            if b >= 0 { close(b) }
        }
    }

    /// The file server (glusterfsd and glusterd, `kill -9`) dies in the middle of a migration's stream and comes
    /// back. Either way exactly one process runs the workload, the record and claim on both mounts name it, and it
    /// verifies; a migration after the server is back completes.
    /// - `backBeforeTheHandoff` false: the server stays down until `ferry migrate` has given up: the handoff cannot
    ///   write the record, the migration fails and the source keeps the workload at generation 1.
    /// - true: the server is back (and both mounts reconnected) while the stream still runs: the migration completes.
    @Test(.enabled(if: GlusterLab.available("GlusterLabTests.theFileServerKilledMidMigrationAndBroughtBackLeavesOneOwner"),
                   "needs root, ip and GlusterFS"), .timeLimit(.minutes(3)), arguments: [false, true])
    func theFileServerKilledMidMigrationAndBroughtBackLeavesOneOwner(backBeforeTheHandoff: Bool) throws {
        let gluster = try #require(GlusterVolume.current)
        let lab = try Lab()
        defer { lab.tearDown() }
        let folder = try gluster.folder("server-killed-\(backBeforeTheHandoff)-\(UInt32.random(in: 0...UInt32.max))")
        lab.placements = gluster.placements(folder)
        let port = labPort()
        // An owner that cannot renew its lease for 6T is killed (sanlock's rule; the default T of 2 s kills it after
        // 12 s of outage). This test keeps the server down for up to about 20 s to see the handoff fail, so both
        // hosts run with T = 5 s: the source survives the outage and keeps the workload.
        let source = try lab.startSource(regionSize: "16MiB", ["--fill", "random", "--dirty-rate", "100", "--io-timeout", "5s"])
        let destination = try lab.startReceiver(port: port, ["--io-timeout", "5s"])
        // 16 MiB at 8 Mbit/s: a full copy of about 17 s (long enough for a restart under load), so the server dies and (in one case) returns mid-stream.
        let reportPath = lab.directory + "/report.json"
        let migrate = try lab.startProgram(ferryExecutableURL().path,
                                           ["migrate", "--control", lab.socket("a"), "--to", "\(gluster.addressB):\(port)",
                                            "--max-bandwidth", "8mbit", "--verify", "audit", "--timeout", "30s", "--report", reportPath],
                                           log: "migrate")
        usleep(1_500_000)
        #expect(migrate.isRunning, "the migration is still streaming when the server dies: \(lab.log("migrate"))")
        try gluster.killFileServer()
        let downAt = ContinuousClock.now
        if backBeforeTheHandoff {
            usleep(1_000_000)
            try gluster.restartFileServer()
            #expect(migrate.isRunning, "the server was back before the stream ended: \(lab.log("migrate"))")
        }
        migrate.waitUntilExit()
        let context = { "migrate exited \(migrate.terminationStatus): \(lab.log("migrate"))\n--- source\n\(lab.log("a"))\n--- destination\n\(lab.log("b"))" }
        if !backBeforeTheHandoff {
            // Down throughout the handoff: still down now.
            #expect(!FileManager.default.fileExists(atPath: gluster.mountA + "/."), "the mount answers while the server is down")
            try gluster.restartFileServer()
            print("GlusterLabTests: file server down \(ContinuousClock.now - downAt)")
        }
        let report = try #require(Self.report(reportPath), "no report: \(context())")
        print("GlusterLabTests: file server killed mid-migration, back \(backBeforeTheHandoff ? "before" : "after") the handoff: outcome \(report["outcome"] ?? "?"), reason \(report["reason"] ?? "-"), total \(report["total_seconds"] ?? "?") s")

        // Let it settle, then look twice: a late second owner would show.
        usleep(2_000_000)
        func owners() -> [(name: String, status: Status)] {
            [("a", source), ("b", destination)].compactMap { name, process in
                guard process.isRunning, let status = Self.status(lab.socket(name)) else { return nil }
                return (name, status)
            }.filter { $0.status.role == "running" || $0.status.role == "migrating" }
        }
        let first = owners()
        usleep(1_000_000)
        let running = owners()
        #expect(first.count == 1 && running.count == 1, "exactly one owner: \(first.map(\.name)) then \(running.map(\.name)): \(context())")
        let owner = try #require(running.first, "\(context())")
        #expect(owner.status.role == "running")
        if backBeforeTheHandoff {
            #expect(report["outcome"] as? String == "completed", "\(context())")
            #expect(owner.name == "b" && owner.status.generation == 2, "the destination runs generation 2: \(context())")
            #expect(!source.isRunning, "the source handed over and exited")
        } else {
            #expect(report["outcome"] as? String != "completed", "no handoff while the record cannot be written: \(context())")
            #expect(migrate.terminationStatus != 0)
            #expect(owner.name == "a" && owner.status.generation == 1, "the source keeps generation 1: \(context())")
            #expect(Self.claim(2, folder.a) == nil && Self.claim(2, folder.b) == nil, "nobody claimed generation 2")
        }
        // Both hosts' mounts agree on the record and the claim once the server is back.
        for shared in [folder.a, folder.b] {
            #expect(Self.record(shared) == owner.status.generation, "the record through \(shared): \(context())")
            #expect(Self.claim(owner.status.generation, shared)?.hasSuffix(":\(owner.status.pid)") == true,
                    "the claim through \(shared): \(Self.claim(owner.status.generation, shared) ?? "none")")
        }
        let verify = try runFerry(["verify", "--control", lab.socket(owner.name)])
        #expect(verify.status == 0, "nothing lost: \(verify.standardOutput) \(verify.standardError)")

        if !backBeforeTheHandoff {
            // The server is back: the same workload now moves, and the destination owns generation 2.
            let again = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "\(gluster.addressB):\(port)", "--verify", "audit"])
            #expect(again.status == 0, "\(again.standardOutput) \(again.standardError) \(context())")
            source.waitUntilExit()
            #expect(Self.status(lab.socket("b"))?.generation == 2)
            #expect(Self.record(folder.a) == 2 && Self.record(folder.b) == 2)
            #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
        }
        _ = try? runFerry(["stop", "--control", lab.socket("b")])
        _ = try? runFerry(["stop", "--control", lab.socket("a")])
    }

    // MARK: The owner's host cut from the shared mount, not from the migration network

    /// The I/O timeout T of the cut tests: the owner is killed by 6T = 9 s after its last good renewal, another host
    /// takes over after 8T = 12 s. A renewal through GlusterFS takes milliseconds, so even a loaded machine renews
    /// well within T.
    static let cutIOTimeout = 1.5
    static let cutTiming = ["--io-timeout", "1.5s"]

    /// Polls `condition` every 50 ms until it holds or `seconds` pass; returns whether it held.
    static func wait(_ seconds: Double, until condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now.advanced(by: .milliseconds(Int(seconds * 1000)))
        while !condition() {
            if ContinuousClock.now >= deadline { return false }
            usleep(50_000)
        }
        return true
    }

    static func seconds(_ duration: Duration) -> Double { duration / .seconds(1) }

    /// The download workload's file in a folder.
    static func downloadFile(_ shared: String) throws -> String {
        let names = try FileManager.default.contentsOfDirectory(atPath: shared)
        return shared + "/" + (try #require(names.first { $0.hasPrefix("download-") && $0.hasSuffix(".dat") }, "no download file in \(names)"))
    }

    /// A process's state and thread count (/proc/PID/status): a process killed while calls on a cut mount wait is a
    /// zombie leader whose other threads still wait in the kernel.
    static func processState(_ pid: Int32) -> String {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return "gone" }
        return text.split(separator: "\n").filter { $0.hasPrefix("State:") || $0.hasPrefix("Threads:") }
            .map { $0.replacingOccurrences(of: "\t", with: " ") }.joined(separator: ", ")
    }

    /// Whether the owner `pid`'s log says its lease enforcer or its watchdog killed it.
    static func killedByItsLease(_ log: String, pid: Int32) -> Bool {
        log.contains("this process stops now (SIGKILL)") || log.contains("ferry watchdog: process \(pid) did not renew its lease")
    }

    /// `--io-timeout` of `seconds`.
    static func timing(_ seconds: Double) -> [String] { ["--io-timeout", "\(seconds)s"] }

    /// Starts the owner on A: a download writing its file on the shared mount, with I/O timeout `T` (the cut tests'
    /// by default), as host "hosta" (plus `environment`); returns it once it has renewed its lease a few times, with
    /// its watchdog's pid.
    static func startTheOwner(_ lab: Lab, folder: (a: String, b: String), _ extra: [String] = [], T: Double = cutIOTimeout,
                              environment: [String: String] = [:]) throws -> (owner: Process, watchdog: pid_t) {
        let owner = try lab.startSource(workload: "download", regionSize: "16MiB", ["--dirty-rate", "500"] + extra + timing(T),
                                        environment: ["FERRY_HOST": "hosta"].merging(environment) { $1 })
        let watchdog = pid_t(try #require(status(lab.socket("a"))?.watchdogPID, "the owner runs a watchdog"))
        #expect(wait(10) { record(folder.b) == 1 && ((try? FileManager.default.attributesOfItem(atPath: downloadFile(folder.b))[.size] as? Int) ?? 0) > 0 },
                "the owner runs generation 1 and writes its file: \(lab.log("a"))")
        usleep(UInt32(2 * T * 1e6))
        return (owner, watchdog)
    }

    /// `ferry run --resume` on host B (as host "hostb", through B's mount) with I/O timeout `T`, idle so that it
    /// writes nothing.
    static func startTheResume(_ lab: Lab, folder: (a: String, b: String), T: Double = cutIOTimeout) throws -> Process {
        try lab.start(["run", "--resume", "--dirty-rate", "0", "--shared-dir", folder.b, "--control", lab.socket("r")] + timing(T),
                      log: "r", environment: ["FERRY_HOST": "hostb"])
    }

    /// Whether `pid` is still a lease watchdog (not a pid reused since it exited).
    static func isWatchdog(_ pid: pid_t) -> Bool {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.hasPrefix("ferry-watchdog") == true
    }

    /// What the cut owner left once its link is back and it is gone: not one byte in the download's file since
    /// `atTakeover` (through either mount), and on both mounts the record of generation 2 and its claim by the
    /// resume, and no other claim. Then the resume verifies.
    static func onlyTheResumeOwnsIt(_ lab: Lab, folder: (a: String, b: String), file: String, atTakeover: Data, resumePID: Int) throws {
        for (host, shared) in [("B", folder.b), ("A", folder.a)] {
            let now = try Data(contentsOf: URL(fileURLWithPath: shared + "/" + file))
            #expect(now.count == atTakeover.count, "through \(host)'s mount the file grew from \(atTakeover.count) to \(now.count) bytes after the takeover")
            #expect(now == atTakeover, "through \(host)'s mount the file changed after the takeover")
            #expect(record(shared) == 2, "the record through \(host)'s mount")
            #expect(claim(2, shared) == "hostb:\(resumePID)", "the claim through \(host)'s mount: \(claim(2, shared) ?? "none")")
            let claims = try FileManager.default.contentsOfDirectory(atPath: shared).filter { $0.hasPrefix("ferry-claim-") }
            #expect(claims == ["ferry-claim-2"], "no other claim through \(host)'s mount: \(claims)")
        }
        #expect(status(lab.socket("r")).map { $0.role == "running" && $0.generation == 2 } == true, "the resume still runs generation 2: \(lab.log("r"))")
        let verify = try runFerry(["verify", "--control", lab.socket("r")])
        #expect(verify.status == 0, "nothing lost: \(verify.standardOutput) \(verify.standardError)")
    }

    /// Issue 12, item 7: the owner's host is cut from the shared mount (its link to the file server goes down) but
    /// not from the migration network. Its lease renewals hang, so the counter stops: its enforcer or its watchdog
    /// kills it 6T after its last good renewal (it cannot finish dying while its calls on the mount wait); a
    /// `ferry run --resume` on host B, watching the counter unchanged on its own clock, takes over after 8T as
    /// generation 2. When A's link is back, A's waiting calls reach the server and A is gone, yet not one byte
    /// lands in the workload's file, the record and the claim on both mounts name the new owner, and it verifies.
    /// Each host has its own `FERRY_HOST`, so B judges A by its lease alone.
    @Test(.enabled(if: GlusterLab.available("GlusterLabTests.theOwnerCutFromTheSharedMountIsKilledAndAnotherHostTakesOverWithoutItsBytes"),
                   "needs root, ip and GlusterFS"), .timeLimit(.minutes(4)))
    func theOwnerCutFromTheSharedMountIsKilledAndAnotherHostTakesOverWithoutItsBytes() throws {
        let gluster = try #require(GlusterVolume.current)
        let lab = try Lab()
        defer { lab.tearDown() }
        // Runs before the lab's tear-down: a process waiting on A's mount finishes dying only once A is back, and
        // the next tests share the volume.
        defer { _ = try? gluster.reconnectToFileServer(host: .a) }
        let folder = try gluster.folder("owner-cut-\(UInt32.random(in: 0...UInt32.max))")
        lab.placements = gluster.placements(folder)
        let T = Self.cutIOTimeout
        let (owner, watchdog) = try Self.startTheOwner(lab, folder: folder)
        defer { if (try? String(contentsOfFile: "/proc/\(watchdog)/comm", encoding: .utf8))?.hasPrefix("ferry-watchdog") == true { kill(watchdog, SIGKILL) } }
        let file = (try Self.downloadFile(folder.b) as NSString).lastPathComponent
        let context = { "--- owner (A)\n\(lab.log("a"))\n--- resume (B)\n\(lab.log("r"))" }

        try gluster.cutFromFileServer(host: .a)
        let cutAt = ContinuousClock.now
        // From here on this process never touches A's mount while A is cut: it reads through B's.
        usleep(500_000)  // a renewal in flight at the cut reached the server, or waits for the link
        let resume = try Self.startTheResume(lab, folder: folder)
        var killedAt: ContinuousClock.Instant?
        var takenAt: ContinuousClock.Instant?
        _ = Self.wait(8 * T + 40) {
            if killedAt == nil && Self.killedByItsLease(lab.log("a"), pid: owner.processIdentifier) { killedAt = .now }
            if takenAt == nil && FileManager.default.fileExists(atPath: lab.socket("r")) { takenAt = .now }
            return takenAt != nil && killedAt != nil || !resume.isRunning
        }
        let killed = try #require(killedAt, "A's enforcer or watchdog kills it: \(context())")
        let taken = try #require(takenAt, "the resume on B takes over: \(context())")
        let stateWhenKilled = Self.processState(owner.processIdentifier)
        let (killedAfter, takenAfter) = (Self.seconds(killed - cutAt), Self.seconds(taken - cutAt))
        // The last good renewal started at most T before the cut (renewals take milliseconds).
        #expect(killedAfter > 5 * T - 0.2 && killedAfter < 6 * T + 3, "killed 6T after its last good renewal, not \(killedAfter) s after the cut: \(context())")
        #expect(takenAfter >= 8 * T, "B took over \(takenAfter) s after the cut, before 8T: \(context())")
        #expect(killed < taken, "A was killed before B took over: \(context())")
        #expect(lab.log("r").contains("has not renewed its lease"), "\(context())")
        let resumed = try #require(Self.status(lab.socket("r")), "\(context())")
        #expect(resumed.role == "running" && resumed.generation == 2, "B runs generation 2: \(context())")
        // The new owner writes nothing (pace 0): any byte the file gains from here on would be A's.
        let atTakeover = try Data(contentsOf: URL(fileURLWithPath: folder.b + "/" + file))
        #expect(atTakeover.count > 0 && atTakeover.count % 4096 == 0)

        let reconnected = try gluster.reconnectToFileServer(host: .a)
        let backAt = ContinuousClock.now
        #expect(Self.wait(60) { !owner.isRunning }, "A finishes dying once its calls return: \(Self.processState(owner.processIdentifier)) \(context())")
        let goneAfter = Self.seconds(ContinuousClock.now - backAt)
        #expect(owner.terminationReason == .uncaughtSignal && owner.terminationStatus == SIGKILL, "A was killed: \(context())")
        #expect(Self.wait(5) { kill(watchdog, 0) != 0 }, "A's watchdog exits with it")
        usleep(1_000_000)  // anything else A's client still held has reached the server by now
        try Self.onlyTheResumeOwnsIt(lab, folder: folder, file: file, atTakeover: atTakeover, resumePID: resumed.pid)
        print("GlusterLabTests: owner cut from the mount (T = \(T) s): killed \(String(format: "%.2f", killedAfter)) s after the cut (then \(stateWhenKilled)), taken over on B at \(String(format: "%.2f", takenAfter)) s; A's link back and its mount writing in \(String(format: "%.2f", reconnected)) s, A gone \(String(format: "%.2f", goneAfter)) s later; download file \(atTakeover.count) bytes at the takeover, unchanged")
        _ = try? runFerry(["stop", "--control", lab.socket("r")])
        resume.waitUntilExit()
    }

    /// When the owner's host is cut from the shared mount, relative to a migration to B.
    enum CutMoment: String, CaseIterable, CustomTestStringConvertible {
        /// Before `ferry migrate`: the hello's one-time token cannot be written.
        case beforeTheMigration
        /// While the full copy streams: the stream ends, but the pause (the download's step waits on the mount) and
        /// the record cannot.
        case midStream
        var testDescription: String { rawValue }
    }

    /// Issue 12, item 7, with a migration: A is cut from the shared mount (not from the migration network) before a
    /// migration to B starts, or while its stream runs. The handoff needs the mount (the token, the pause's flush,
    /// the record), so it cannot complete: `ferry migrate` fails with an error as soon as A's enforcer or watchdog
    /// has killed A (6T), while A's link is still down and A has not finished dying; B's receiver never runs the
    /// workload; a resume on B takes over after 8T as generation 2, the only owner; once A's link is back, A is gone
    /// and wrote nothing more, the record and the claim on both mounts name the resume, and it verifies.
    @Test(.enabled(if: GlusterLab.available("GlusterLabTests.aMigrationFromAnOwnerCutFromTheSharedMountFailsAndAnotherHostTakesOver"),
                   "needs root, ip and GlusterFS"), .timeLimit(.minutes(4)), arguments: CutMoment.allCases)
    func aMigrationFromAnOwnerCutFromTheSharedMountFailsAndAnotherHostTakesOver(cut moment: CutMoment) throws {
        let gluster = try #require(GlusterVolume.current)
        let lab = try Lab()
        defer { lab.tearDown() }
        defer { _ = try? gluster.reconnectToFileServer(host: .a) }  // before the lab's tear-down, as above
        let folder = try gluster.folder("owner-cut-\(moment.rawValue)-\(UInt32.random(in: 0...UInt32.max))")
        lab.placements = gluster.placements(folder)
        let T = Self.cutIOTimeout
        let port = labPort()
        // 16 MiB of random bytes at 32 Mbit/s: a full copy of about 4 s.
        let (owner, watchdog) = try Self.startTheOwner(lab, folder: folder, ["--fill", "random"])
        defer { if (try? String(contentsOfFile: "/proc/\(watchdog)/comm", encoding: .utf8))?.hasPrefix("ferry-watchdog") == true { kill(watchdog, SIGKILL) } }
        let receiver = try lab.startReceiver(port: port, Self.cutTiming, environment: ["FERRY_HOST": "hostb"])
        let file = (try Self.downloadFile(folder.b) as NSString).lastPathComponent
        let context = { "--- migrate\n\(lab.log("migrate"))\n--- owner (A)\n\(lab.log("a"))\n--- receiver (B)\n\(lab.log("b"))\n--- resume (B)\n\(lab.log("r"))" }

        if moment == .beforeTheMigration { try gluster.cutFromFileServer(host: .a) }
        var cutAt = ContinuousClock.now
        let migrate = try lab.startProgram(ferryExecutableURL().path,
                                           ["migrate", "--control", lab.socket("a"), "--to", "\(gluster.addressB):\(port)",
                                            "--max-bandwidth", "32mbit", "--verify", "audit"], log: "migrate")
        if moment == .midStream {
            #expect(Self.wait(20) { lab.log("b").contains("accepted download") }, "the stream starts: \(context())")
            usleep(1_000_000)
            #expect(migrate.isRunning && !lab.log("migrate").contains("completed"), "the full copy still streams at the cut: \(context())")
            try gluster.cutFromFileServer(host: .a)
            cutAt = .now
        }
        usleep(500_000)
        let resume = try Self.startTheResume(lab, folder: folder)
        var killedAt: ContinuousClock.Instant?
        var takenAt: ContinuousClock.Instant?
        var migrateEndedAt: ContinuousClock.Instant?
        var receiverRoles: Set<String> = []
        var polls = 0
        _ = Self.wait(8 * T + 40) {
            if killedAt == nil && Self.killedByItsLease(lab.log("a"), pid: owner.processIdentifier) { killedAt = .now }
            if migrateEndedAt == nil && !migrate.isRunning { migrateEndedAt = .now }
            if takenAt == nil && FileManager.default.fileExists(atPath: lab.socket("r")) { takenAt = .now }
            polls += 1
            if polls % 10 == 0, let status = Self.status(lab.socket("b")) { receiverRoles.insert("\(status.role) \(status.generation)") }
            return takenAt != nil && killedAt != nil && migrateEndedAt != nil || !resume.isRunning
        }
        let killed = try #require(killedAt, "A's enforcer or watchdog kills it: \(context())")
        let taken = try #require(takenAt, "the resume on B takes over: \(context())")
        let migrateEnded = try #require(migrateEndedAt, "ferry migrate ends while A is still cut: \(context())")
        let stateWhenTaken = Self.processState(owner.processIdentifier)
        let (killedAfter, takenAfter, migrateAfter) = (Self.seconds(killed - cutAt), Self.seconds(taken - cutAt), Self.seconds(migrateEnded - cutAt))
        #expect(killedAfter > 5 * T - 0.2 && killedAfter < 6 * T + 3, "killed 6T after its last good renewal, not \(killedAfter) s after the cut: \(context())")
        #expect(migrate.terminationStatus != 0, "the migration failed: \(context())")
        #expect(lab.log("migrate").contains("was killed (SIGKILL) before it answered"), "ferry migrate says the source was killed: \(context())")
        #expect(migrateEnded > killed && Self.seconds(migrateEnded - killed) < 3, "ferry migrate ends within a second or two of the kill, not \(Self.seconds(migrateEnded - killed)) s")
        #expect(takenAfter >= 8 * T && killed < taken, "B took over \(takenAfter) s after the cut, after the kill: \(context())")
        let resumed = try #require(Self.status(lab.socket("r")), "\(context())")
        #expect(resumed.role == "running" && resumed.generation == 2, "B's resume runs generation 2: \(context())")
        #expect(receiverRoles == ["waiting 0"], "B's receiver never ran the workload: \(receiverRoles) \(context())")
        let atTakeover = try Data(contentsOf: URL(fileURLWithPath: folder.b + "/" + file))

        let reconnected = try gluster.reconnectToFileServer(host: .a)
        let backAt = ContinuousClock.now
        #expect(Self.wait(60) { !owner.isRunning }, "A finishes dying once its calls return: \(Self.processState(owner.processIdentifier)) \(context())")
        let goneAfter = Self.seconds(ContinuousClock.now - backAt)
        #expect(owner.terminationReason == .uncaughtSignal && owner.terminationStatus == SIGKILL, "A was killed: \(context())")
        if moment == .midStream {
            // A's end closes the stream (unless B's own 30 s timeout came first): the attempt fails, B waits for the next.
            #expect(Self.wait(40) { lab.log("b").contains("failed") }, "B abandons the attempt: \(context())")
        } else {
            #expect(!lab.log("b").contains("accepted"), "nothing reached B: \(context())")
        }
        #expect(receiver.isRunning && Self.status(lab.socket("b")).map { "\($0.role) \($0.generation)" } == "waiting 0", "B's receiver still waits: \(context())")
        usleep(1_000_000)
        try Self.onlyTheResumeOwnsIt(lab, folder: folder, file: file, atTakeover: atTakeover, resumePID: resumed.pid)
        print("GlusterLabTests: owner cut from the mount \(moment == .midStream ? "mid-stream" : "before the migration") (T = \(T) s): killed \(String(format: "%.2f", killedAfter)) s after the cut, ferry migrate failed at \(String(format: "%.2f", migrateAfter)) s, taken over on B at \(String(format: "%.2f", takenAfter)) s (A then \(stateWhenTaken)); A's link back in \(String(format: "%.2f", reconnected)) s, A gone \(String(format: "%.2f", goneAfter)) s later")
        _ = try? runFerry(["stop", "--control", lab.socket("r")])
        _ = try? runFerry(["stop", "--control", lab.socket("b")])
        resume.waitUntilExit()
    }

    // MARK: The owner frozen, taken over on another host, and thawed

    /// What a resume's file takeover rests on, on GlusterFS: a descriptor host A opened through its own FUSE client
    /// on a file that host B then replaced as the takeover does (a copy written, fsynced and renamed over the name
    /// through B's mount) no longer reaches the file of that name. What A writes through it afterwards, over the
    /// copied bytes and past their end, fsynced, is seen through neither mount. (The thawed owner of the next test
    /// never gets that far, its fence refuses the write first: this shows the last defence holds on its own.)
    @Test(.enabled(if: GlusterLab.available("GlusterLabTests.aDescriptorOnAFileTheOtherHostRenamedOverNoLongerReachesTheName"),
                   "needs root, ip and GlusterFS"), .timeLimit(.minutes(1)))
    func aDescriptorOnAFileTheOtherHostRenamedOverNoLongerReachesTheName() throws {
        let gluster = try #require(GlusterVolume.current)
        let folder = try gluster.folder("renamed-over-\(UInt32.random(in: 0...UInt32.max))")
        let name = "/download.dat"
        let original = [UInt8](repeating: 0x41, count: 8192)
        let fd = open(folder.a + name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        try #require(fd >= 0, "open through A's mount: errno \(errno)")
        defer { close(fd) }
        #expect(pwrite(fd, original, original.count, 0) == original.count && fsync(fd) == 0)

        // B takes the file over through its own mount.
        let copy = try Data(contentsOf: URL(fileURLWithPath: folder.b + name))
        #expect(copy == Data(original), "B reads what A wrote")
        let temporary = folder.b + name + ".takeover"
        let to = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        try #require(to >= 0, "open through B's mount: errno \(errno)")
        let copied = copy.withUnsafeBytes { pwrite(to, $0.baseAddress, $0.count, 0) }
        #expect(copied == copy.count && fsync(to) == 0)
        close(to)
        #expect(rename(temporary, folder.b + name) == 0, "rename through B's mount: errno \(errno)")

        // A writes through its old descriptor: over the copied bytes and past their end, and syncs.
        let stray = [UInt8](repeating: 0x42, count: 4096)
        let over = pwrite(fd, stray, stray.count, 0)
        let overErrno = errno
        let past = pwrite(fd, stray, stray.count, off_t(original.count))
        let pastErrno = errno
        let synced = fsync(fd)
        let syncErrno = errno
        usleep(200_000)
        for (host, shared) in [("B", folder.b), ("A", folder.a)] {
            let now = try Data(contentsOf: URL(fileURLWithPath: shared + name))
            #expect(now == Data(original), "through \(host)'s mount the name holds \(now.count) bytes, not only the copy's \(original.count)")
        }
        var mine = [UInt8](repeating: 0, count: stray.count)
        let readBack = pread(fd, &mine, mine.count, 0)
        func outcome(_ result: Int, _ error: Int32) -> String { result >= 0 ? "\(result) bytes" : "failed (errno \(error))" }
        print("GlusterLabTests: A's descriptor on the file B renamed over: write over the copy \(outcome(over, overErrno)), past its end \(outcome(past, pastErrno)), fsync \(synced == 0 ? "ok" : "failed (errno \(syncErrno))"), read back through it \(readBack == mine.count && mine == stray ? "A's own bytes (the unnamed old file)" : "\(readBack) bytes"); the name unchanged through both mounts")
    }

    /// The I/O timeout T of the freeze test: the fence lapses 6T = 6 s after the frozen owner's last good renewal,
    /// B takes over after watching the lease unchanged for 8T = 8 s. A renewal through GlusterFS takes milliseconds,
    /// and one slower than T merely does not count, so a loaded machine still renews in time.
    static let freezeIOTimeout = 1.0

    /// Issue 12, item 7, `LeaseTests.aThawedOwnerWritesNothingAfterTheTakeoverAndExits` on the real GlusterFS lab:
    /// the owner (a download writing steadily through A's mount) and its watchdog are frozen (SIGSTOP, a whole
    /// host paused), a `ferry run --resume` on B (B's namespace, B's mount, `--dirty-rate 0` so that it writes
    /// nothing itself) takes over as generation 2 once it saw the lease unchanged for 8T, and the owner is thawed
    /// (its watchdog stays frozen until the owner is gone). On GlusterFS the thawed owner's descriptor points to a
    /// file B's client renamed over through another FUSE client, served by the brick as an unlinked file. The owner
    /// exits within a few T, and not one byte lands in the download's file after the takeover, read through both
    /// mounts; the record and the claim on both name the resume, and it verifies. With `withoutEnforcer` nothing
    /// kills the thawed owner: only the fence, the record check and the file takeover stand between it and the file.
    @Test(.enabled(if: GlusterLab.available("GlusterLabTests.aFrozenOwnerThawedAfterAnotherHostTookOverWritesNothingAndExits"),
                   "needs root, ip and GlusterFS"), .timeLimit(.minutes(3)), arguments: LeaseTests.Defences.allCases)
    func aFrozenOwnerThawedAfterAnotherHostTookOverWritesNothingAndExits(defences: LeaseTests.Defences) throws {
        let gluster = try #require(GlusterVolume.current)
        let lab = try Lab()
        defer { lab.tearDown() }
        let folder = try gluster.folder("owner-frozen-\(defences.rawValue)-\(UInt32.random(in: 0...UInt32.max))")
        lab.placements = gluster.placements(folder)
        let T = Self.freezeIOTimeout
        let (owner, watchdog) = try Self.startTheOwner(lab, folder: folder, T: T, environment: defences.environment)
        // Runs before the lab's tear-down (a stopped process would ignore its SIGTERM until thawed; the watchdog is
        // not one of the lab's processes): nothing is left stopped on any path.
        defer {
            if Self.isWatchdog(watchdog) { kill(watchdog, SIGKILL) }
            if owner.isRunning { kill(owner.processIdentifier, SIGCONT) }
        }
        let file = (try Self.downloadFile(folder.b) as NSString).lastPathComponent
        let context = { "--- owner (A)\n\(lab.log("a"))\n--- resume (B)\n\(lab.log("r"))" }

        kill(watchdog, SIGSTOP)
        kill(owner.processIdentifier, SIGSTOP)
        let frozenAt = ContinuousClock.now
        // A thread in a call on the mount stops once the call returns (FUSE requests run to their end).
        let stopped = Self.wait(5) { Self.processState(owner.processIdentifier).hasPrefix("State: T") && Self.processState(watchdog).hasPrefix("State: T") }
        #expect(stopped, "the owner and its watchdog are stopped: \(Self.processState(owner.processIdentifier)); \(Self.processState(watchdog))")
        let stoppedAfter = Self.seconds(ContinuousClock.now - frozenAt)
        let resume = try Self.startTheResume(lab, folder: folder, T: T)
        let resumeStartedAt = ContinuousClock.now
        _ = Self.wait(8 * T + 40) { FileManager.default.fileExists(atPath: lab.socket("r")) || !resume.isRunning }
        let takenAt = ContinuousClock.now
        try #require(FileManager.default.fileExists(atPath: lab.socket("r")), "the resume on B takes over: \(context())")
        let (takenAfterFreeze, resumeWaited) = (Self.seconds(takenAt - frozenAt), Self.seconds(takenAt - resumeStartedAt))
        #expect(resumeWaited >= 8 * T, "B took over after watching the lease unchanged for 8T, not \(resumeWaited) s: \(context())")
        #expect(lab.log("r").contains("has not renewed its lease"), "\(context())")
        let resumed = try #require(Self.status(lab.socket("r")), "\(context())")
        #expect(resumed.role == "running" && resumed.generation == 2, "B runs generation 2: \(context())")
        #expect(owner.isRunning && Self.processState(owner.processIdentifier).hasPrefix("State: T"), "A is still frozen at the takeover")
        // The new owner writes nothing (pace 0): every byte the file gains from here on would be A's.
        let atTakeover = try Data(contentsOf: URL(fileURLWithPath: folder.b + "/" + file))
        #expect(atTakeover.count > 0 && atTakeover.count % 4096 == 0, "\(atTakeover.count) bytes at the takeover")

        kill(owner.processIdentifier, SIGCONT)
        let thawedAt = ContinuousClock.now
        let exited = Self.wait(5 * T) { !owner.isRunning }
        let goneAfter = Self.seconds(ContinuousClock.now - thawedAt)
        #expect(exited, "the thawed owner exits within a few T: \(Self.processState(owner.processIdentifier)) \(context())")
        let log = lab.log("a")
        let killedByTheEnforcer = log.contains("this process stops now (SIGKILL)")
        let fencedByTheRecord = log.contains("another process owns the workload now")
        #expect(killedByTheEnforcer || fencedByTheRecord || log.contains("was not renewed for"), "A says why it stopped: \(context())")
        if defences == .withoutEnforcer {
            #expect(!killedByTheEnforcer, "no enforcer ran: \(log)")
            #expect(!exited || owner.terminationReason == .exit && owner.terminationStatus == 1, "fenced, A exits with 1: \(context())")
        }
        let how = !exited ? "still running" : owner.terminationReason == .uncaughtSignal ? "killed by signal \(owner.terminationStatus)"
            : "exited with \(owner.terminationStatus)"
        // Thawed once its owner is gone, the watchdog finds the owner's end closed and exits, killing nothing.
        if exited { kill(watchdog, SIGCONT) }
        #expect(Self.wait(5) { kill(watchdog, 0) != 0 }, "A's watchdog exits once thawed: \(Self.processState(watchdog))")
        usleep(1_000_000)  // anything A's client still held has reached the brick by now
        try Self.onlyTheResumeOwnsIt(lab, folder: folder, file: file, atTakeover: atTakeover, resumePID: resumed.pid)
        print("GlusterLabTests: owner frozen (\(defences.rawValue), T = \(T) s): stopped in \(String(format: "%.2f", stoppedAfter)) s, taken over on B \(String(format: "%.2f", takenAfterFreeze)) s after the freeze (the resume watched \(String(format: "%.2f", resumeWaited)) s); thawed A \(how) \(String(format: "%.2f", goneAfter)) s later (\(killedByTheEnforcer ? "its enforcer" : fencedByTheRecord ? "the record check" : "its fence")); download file \(atTakeover.count) bytes at the takeover, unchanged through both mounts; A's last words: \(log.split(separator: "\n").suffix(3).joined(separator: " | "))")
        _ = try? runFerry(["stop", "--control", lab.socket("r")])
        if !Self.wait(10, until: { !resume.isRunning }) { kill(resume.processIdentifier, SIGKILL) }
    }
}
}
