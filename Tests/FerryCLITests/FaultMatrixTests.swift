import FerryTestSupport
import Foundation
import Testing

/// The fault matrix: each side of a migration is killed (`kill -9`) or loses its link at each phase, between
/// real `ferry` processes on loopback (`FERRY_TEST_FAULT=PHASE:ACTION` breaks the process at that exact phase).
/// After each fault exactly one process runs the workload, the ownership record and the claim name it, and
/// `ferry verify` passes on it; where the only owner died, `ferry run --resume` restarts the workload from
/// the shared mount (the download workload; a hotset cannot be, and says so). `GlusterFaultMatrixTests` plays
/// the same cells on a GlusterFS volume, the source and the destination in two network namespaces, each with
/// its own mount of it.
@Suite(.serialized) struct FaultMatrixTests {
    enum Side: String, Sendable, CaseIterable { case source, destination }
    enum Action: String, Sendable, CaseIterable { case kill, cut }
    static let phases = ["hello", "full-copy", "dirty-round", "stop-and-copy", "after-verify", "after-commit"]

    /// Who must run the workload once the fault has played out.
    enum Owner: Equatable, CustomStringConvertible {
        /// The source, at this generation (1: the migration was abandoned; 3: the source took the workload
        /// back after committing generation 2 to a destination that never ran it).
        case source(generation: Int)
        case destination
        /// Either the source (generation 3) or the destination (generation 2): the link broke while the
        /// commit raced the destination's view of the record; both outcomes keep one owner.
        case either
        /// Nobody: the only owner died; `ferry run --resume` must restart it.
        case resumed

        var description: String {
            switch self {
            case .source(let generation): "the source at generation \(generation)"
            case .destination: "the destination"
            case .either: "one of them"
            case .resumed: "a resumed process"
            }
        }
    }

    struct Cell: Sendable, CustomTestStringConvertible {
        let side: Side
        let phase: String
        let action: Action
        var testDescription: String { "\(side.rawValue) \(action.rawValue) at \(phase)" }

        /// A killed source is the only owner before the commit, so those cells use the workload whose state
        /// the shared mount holds; the rest use the hotset, whose state is all memory.
        var workload: String { side == .source && action == .kill ? "download" : "hotset" }

        var expected: Owner {
            let committed = phase == "after-commit"
            switch (side, action) {
            case (.source, .kill): return committed ? .destination : .resumed
            case (.source, .cut): return committed ? .destination : phase == "after-verify" ? .either : .source(generation: 1)
            case (.destination, .kill): return phase == "after-verify" || committed ? .source(generation: 3) : .source(generation: 1)
            case (.destination, .cut):
                return committed ? .destination : phase == "after-verify" ? .either : .source(generation: 1)
            }
        }
    }

    static let cells = Side.allCases.flatMap { side in
        phases.flatMap { phase in Action.allCases.map { Cell(side: side, phase: phase, action: $0) } }
    }

    struct Status {
        let role: String
        let generation: Int
        let pid: Int
        let stepsPerSecond: Double?
    }

    static func status(_ control: String) -> Status? {
        guard let run = try? runFerry(["status", "--control", control, "--json"]), run.status == 0,
              let object = try? JSONSerialization.jsonObject(with: Data(run.standardOutput.utf8)) as? [String: Any] else { return nil }
        return Status(role: object["role"] as? String ?? "", generation: object["generation"] as? Int ?? -1, pid: object["pid"] as? Int ?? -1,
                      stepsPerSecond: object["steps_per_second"] as? Double)
    }

    @Test(arguments: cells)
    func afterEveryFaultOneProcessRunsTheWorkloadAndItVerifies(cell: Cell) throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        try Self.play(cell, in: lab, port: Lab.freePort())
    }

    /// Plays one cell in `lab`: the source is `a`, the destination `b` (listening on `port`), a resume `r`, each
    /// where `lab.placements` puts it, each with its own shared directory if the placements give one;
    /// `migrateOptions` go to `ferry migrate` after the matrix's own.
    static func play(_ cell: Cell, in lab: Lab, port: Int, migrateOptions: [String] = []) throws {
        let fault = ["FERRY_TEST_FAULT": "\(cell.phase):\(cell.action.rawValue)"]
        let source = try lab.startSource(workload: cell.workload, regionSize: "8MiB", ["--fill", "random", "--dirty-rate", "3000"],
                                         environment: cell.side == .source ? fault : [:])
        let destination = try lab.startReceiver(port: port, [], environment: cell.side == .destination ? fault : [:])
        usleep(200_000)
        // A target no round can meet and three rounds at most: round 1 is always a dirty round.
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "\(lab.address(of: "b")):\(port)",
                                    "--downtime-target", "1us", "--max-rounds", "3"] + migrateOptions)
        let context = { "\(cell.testDescription): migrate exited \(migrate.status): \(migrate.standardOutput) \(migrate.standardError)\n--- source\n\(lab.log("a"))\n--- destination\n\(lab.log("b"))" }
        #expect(lab.log(cell.side == .source ? "a" : "b").contains("test fault: \(cell.action.rawValue) at \(cell.phase)"), "the fault did not fire: \(context())")

        // Let it play out: a source that handed over exits; a destination that gave up waits for the next
        // source. Then look again half a second later: a late second owner would show there.
        func owners() -> [(name: String, status: Status)] {
            [("a", source), ("b", destination)].compactMap { name, process in
                guard process.isRunning, let status = status(lab.socket(name)) else { return nil }
                return (name, status)
            }.filter { $0.status.role == "running" || $0.status.role == "migrating" }
        }
        for _ in 0..<100 {
            let now = owners()
            if now.count == 1 && now[0].status.role == "running" { break }
            if cell.expected == .resumed && !source.isRunning { break }
            usleep(100_000)
        }
        usleep(500_000)
        var running = owners()
        running.removeAll { $0.status.role != "running" }
        var owner: (name: String, status: Status)
        switch cell.expected {
        case .resumed:
            #expect(running.isEmpty, "nobody may run a workload whose only owner died: \(running.map(\.name)) \(context())")
            #expect(!source.isRunning)
            #expect(destination.isRunning, "the destination discards its copy and waits for the next migration")
            let resumed = try lab.start(["run", "--resume", "--shared-dir", lab.shared(for: "r"), "--control", lab.socket("r")], log: "r")
            try lab.waitForSocket(lab.socket("r"))
            #expect(lab.log("r").contains("resumed download at step"), "\(lab.log("r"))")
            owner = ("r", try #require(status(lab.socket("r")), "\(lab.log("r"))"))
            #expect(owner.status.generation == 2, "the resume claims the generation after the dead owner's")
            #expect(owner.status.stepsPerSecond == 3000, "the resumed workload keeps the pace it had: \(lab.log("r"))")
            #expect(resumed.isRunning)
        default:
            #expect(running.count == 1, "exactly one owner, found \(running.map { "\($0.name) \($0.status.role) g\($0.status.generation)" }): \(context())")
            owner = try #require(running.first, "\(context())")
            switch cell.expected {
            case .source(let generation):
                #expect(owner.name == "a" && owner.status.generation == generation, "expected \(cell.expected), found \(owner.name) at generation \(owner.status.generation): \(context())")
            case .destination:
                #expect(owner.name == "b" && owner.status.generation == 2, "expected the destination at generation 2: \(context())")
            default:
                #expect((owner.name == "a" && owner.status.generation == 3) || (owner.name == "b" && owner.status.generation == 2), "\(context())")
            }
        }
        // The record and the claim of the current generation both name the owner.
        // Read through the owner's own mount.
        let shared = lab.shared(for: owner.name)
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: shared + "/ferry-owner.json"))) as? [String: Any]
        #expect(record?["generation"] as? Int == owner.status.generation, "\(context())")
        let claim = try String(contentsOfFile: shared + "/ferry-claim-\(owner.status.generation)", encoding: .utf8)
        #expect(claim.hasSuffix(":\(owner.status.pid)"), "the claim of generation \(owner.status.generation) is \(claim), not pid \(owner.status.pid)")
        let verify = try runFerry(["verify", "--control", lab.socket(owner.name)])
        #expect(verify.status == 0, "\(verify.standardOutput) \(verify.standardError) \(context())")
        for name in ["a", "b", "r"] where FileManager.default.fileExists(atPath: lab.socket(name)) {
            _ = try? runFerry(["stop", "--control", lab.socket(name)])
        }
    }

    @Test func aHotsetWhoseOnlyOwnerDiedCannotBeResumedAndSaysWhy() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let source = try lab.startSource(regionSize: "8MiB")
        // While the owner lives, resuming is refused: nothing to resume.
        let early = try runFerry(["run", "--resume", "--shared-dir", lab.shared, "--control", lab.socket("r")])
        #expect(early.status == 1 && early.standardError.contains("alive"), "\(early.standardError)")
        kill(source.processIdentifier, SIGKILL)
        source.waitUntilExit()
        let late = try runFerry(["run", "--resume", "--shared-dir", lab.shared, "--control", lab.socket("r")])
        #expect(late.status == 1, "\(late.standardOutput) \(late.standardError)")
        #expect(late.standardError.contains("cannot resume") && late.standardError.contains("memory"), "\(late.standardError)")
        #expect(!FileManager.default.fileExists(atPath: lab.shared + "/ferry-claim-2"), "a refused resume claims nothing")
    }

    /// An owner on another host is judged by its lease: `--resume` watches the lease for 8 × the I/O timeout on
    /// its own clock and takes over only if the counter never moved; the download then resumes exactly where its
    /// file ends. A second resume finds the new owner alive (on this host: its process is checked).
    @Test func anOwnerOnAnotherHostIsJudgedByItsLeaseAndTheDownloadResumesWhereItsFileEnds() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let quick = ["FERRY_IO_TIMEOUT": "0.25"]
        let source = try lab.startSource(workload: "download", regionSize: "8MiB", ["--dirty-rate", "2000"], environment: quick)
        usleep(300_000)
        kill(source.processIdentifier, SIGKILL)
        source.waitUntilExit()
        // The claim names a process on another host: only its lease can tell whether it is alive.
        try "elsewhere:4242".write(toFile: lab.shared + "/ferry-claim-1", atomically: true, encoding: .utf8)
        let file = try #require(try FileManager.default.contentsOfDirectory(atPath: lab.shared).first { $0.hasPrefix("download-") })
        let blocks = try #require(try FileManager.default.attributesOfItem(atPath: lab.shared + "/" + file)[.size] as? Int) / 4096
        #expect(blocks > 0, "the download wrote blocks before it was killed")
        let started = Date()
        let resumed = try lab.start(["run", "--resume", "--dirty-rate", "0", "--shared-dir", lab.shared, "--control", lab.socket("r")], log: "r", environment: quick)
        try lab.waitForSocket(lab.socket("r"))
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 2, "it watched the lease for 8 × 0.25 s before taking over, not \(waited) s")
        #expect(lab.log("r").contains("watching its lease (counter"), "\(lab.log("r"))")
        #expect(lab.log("r").contains("has not renewed its lease"), "\(lab.log("r"))")
        #expect(lab.log("r").contains("resumed download at step \(blocks) "), "every complete block is kept: \(lab.log("r"))")
        #expect(try runFerry(["verify", "--control", lab.socket("r")]).status == 0)
        let second = try runFerry(["run", "--resume", "--shared-dir", lab.shared, "--control", lab.socket("s")], environment: quick)
        #expect(second.status == 1 && second.standardError.contains("alive"), "\(second.standardError)")
        _ = try runFerry(["stop", "--control", lab.socket("r")])
        resumed.waitUntilExit()
    }

    /// A running owner renews its lease (the counter moves; the claim's modification time is no heartbeat any
    /// more), and stops its workload within a second or two once the record names a newer generation (someone
    /// resumed the workload elsewhere, wrongly believing it dead).
    @Test func anOwnerRenewsItsLeaseAndStopsWhenTheRecordMovesPastIt() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let source = try lab.startSource(regionSize: "8MiB", ["--dirty-rate", "2000", "--io-timeout", "0.2s"])
        let lease = lab.shared + "/ferry-lease-1"
        func counter() throws -> Int {
            let fields = try String(contentsOfFile: lease, encoding: .utf8).split(separator: " ")
            return try #require(Int(fields[3]), "\(fields)")
        }
        let first = try counter()
        usleep(1_000_000)
        let later = try counter()
        #expect(later - first >= 3, "renewed every 0.2 s: \(first) → \(later) in a second")
        #expect(source.isRunning)
        try #"{"generation":7,"owner":"elsewhere:1","workload":"hotset","changedAt":0}"#
            .write(toFile: lab.shared + "/ferry-owner.json", atomically: true, encoding: .utf8)
        for _ in 0..<50 where source.isRunning { usleep(100_000) }
        #expect(!source.isRunning, "the fenced owner stops")
        source.waitUntilExit()
        #expect(source.terminationStatus == 1)
        #expect(lab.log("a").contains("another process owns the workload now"), "\(lab.log("a"))")
    }

    @Test func resumingAnEmptySharedDirectorySaysThereIsNothingToResume() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let run = try runFerry(["run", "--resume", "--shared-dir", lab.shared, "--control", lab.socket("r")])
        #expect(run.status == 1 && run.standardError.contains("nothing to resume"), "\(run.standardError)")
    }
}
