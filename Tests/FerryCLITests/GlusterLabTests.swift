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
    }

    static func status(_ control: String) -> Status? {
        guard let run = try? runFerry(["status", "--control", control, "--json"]), run.status == 0,
              let object = try? JSONSerialization.jsonObject(with: Data(run.standardOutput.utf8)) as? [String: Any] else { return nil }
        return Status(role: object["role"] as? String ?? "", generation: object["generation"] as? Int ?? -1, pid: object["pid"] as? Int ?? -1)
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
}
}
