import FerryTestSupport
import Foundation
import Testing

/// Post-copy between real `ferry` processes over loopback: the workload moves first, its pages follow.
@Suite struct PostCopyTests {
    static func report(_ path: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    static func number(_ object: [String: Any], _ key: String) -> Int { object[key] as? Int ?? Int(object[key] as? Double ?? -1) }

    /// Installed on demand plus sent in the background covers every lacking page, with no more extra than
    /// the pages sent on both channels.
    static func expectEachPageOnce(_ post: [String: Any]) {
        let covered = number(post, "demand_pages") + number(post, "background_pages")
        let lacking = number(post, "lacking_pages")
        #expect(covered >= lacking && covered <= lacking + number(post, "sent_twice"), "\(post)")
    }

    @Test func postCopyMovesAWorkloadDirtyingFlatOutAndVerifies() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let receiver = try lab.startReceiver(port: port, ["--once"])
        let source = try lab.startSource(regionSize: "32MiB", ["--fill", "random", "--dirty-rate", "max"])
        let path = lab.directory + "/report.json"
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--mode", "post-copy", "--report", path])
        #expect(migrate.status == 0, "\(migrate.standardOutput) \(migrate.standardError)")
        source.waitUntilExit()
        #expect(source.terminationStatus == 0, "the source exits once the destination holds every page")
        let report = try Self.report(path)
        #expect(report["mode"] as? String == "post-copy")
        #expect(report["verified"] as? Bool == true, "\(report)")
        #expect(report["source_digest"] as? String == report["destination_digest"] as? String)
        let post = try #require(report["post_copy"] as? [String: Any])
        // Every page but the header (sent with the switch-over) was lacking; each went out once, except pages
        // asked for on demand while the background had them on the way (sent twice, installed once).
        #expect(Self.number(post, "lacking_pages") == 32 * 256 - 1)
        Self.expectEachPageOnce(post)
        #expect(Self.number(post, "switch_round") == 0)
        let rounds = try #require(report["rounds"] as? [[String: Any]])
        #expect(rounds.map { $0["phase"] as? String } == ["switch", "background"], "no pre-copy round")
        // The workload runs on, whole: its invariants hold, and the record says the move is over.
        let verify = try runFerry(["verify", "--control", lab.socket("b")])
        #expect(verify.status == 0, "\(verify.standardOutput) \(verify.standardError)")
        let record = try String(contentsOfFile: lab.shared + "/ferry-owner.json", encoding: .utf8)
        #expect(record.contains("\"generation\":2"), "\(record)")
        #expect(!record.contains("postCopySource"), "the record must no longer say post-copy: \(record)")
        #expect(lab.log("b").contains("post-copy complete"), "\(lab.log("b"))")
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        receiver.waitUntilExit()
    }

    /// A workload dirtying its whole 8 MiB region faster than a 40 Mbit/s link drains it never converges;
    /// `--on-stall post-copy` and `--mode hybrid` move it once the stall shows, and lose nothing.
    @Test(arguments: [["--on-stall", "post-copy"], ["--mode", "hybrid"]])
    func aStallSwitchesToPostCopy(flags: [String]) throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let receiver = try lab.startReceiver(port: port, ["--once"])
        let source = try lab.startSource(regionSize: "8MiB", ["--dirty-rate", "5000"])
        let path = lab.directory + "/report.json"
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--max-bandwidth", "40mbit", "--report", path] + flags)
        #expect(migrate.status == 0, "\(migrate.standardOutput) \(migrate.standardError)")
        source.waitUntilExit()
        let report = try Self.report(path)
        #expect(report["stall"] as? String == "post-copy", "\(migrate.standardOutput)")
        #expect(report["mode"] as? String == "hybrid")
        #expect(report["verified"] as? Bool == true)
        let post = try #require(report["post_copy"] as? [String: Any])
        #expect(Self.number(post, "switch_round") >= 1, "it switched after pre-copy rounds: \(post)")
        Self.expectEachPageOnce(post)
        #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        receiver.waitUntilExit()
    }

    /// The source's link cut a quarter into the background stream (a test hook): both sides keep what they
    /// hold, the source reconnects, the destination says which pages it holds, and the rest follows.
    @Test func aLinkCutDuringPostCopyIsReconnectedAndNothingIsLost() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let receiver = try lab.startReceiver(port: port, ["--once"])
        let source = try lab.startSource(regionSize: "32MiB", ["--fill", "random", "--dirty-rate", "max"], environment: ["FERRY_TEST_FAULT": "post-copy:cut"])
        let path = lab.directory + "/report.json"
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--mode", "post-copy", "--report", path])
        #expect(migrate.status == 0, "\(migrate.standardOutput) \(migrate.standardError)\n\(lab.log("a"))\n\(lab.log("b"))")
        source.waitUntilExit()
        let report = try Self.report(path)
        #expect(report["verified"] as? Bool == true)
        let post = try #require(report["post_copy"] as? [String: Any])
        #expect(Self.number(post, "recoveries") == 1, "\(post)")
        #expect(lab.log("a").contains("test fault: cut at post-copy"))
        #expect(lab.log("b").contains("the source reconnected"), "\(lab.log("b"))")
        #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        receiver.waitUntilExit()
    }

    /// The source killed during post-copy: the pages only it held are gone, so the move cannot complete. The
    /// destination does not crash and does not invent pages: it says so, and `--resume` refuses.
    @Test func theSourceKilledDuringPostCopyLeavesTheDestinationSayingSo() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let receiver = try lab.startReceiver(port: port, ["--once"])
        _ = try lab.startSource(regionSize: "32MiB", ["--fill", "random", "--dirty-rate", "max"], environment: ["FERRY_TEST_FAULT": "post-copy:kill"])
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--mode", "post-copy"])
        #expect(migrate.status != 0, "the source died mid-way: \(migrate.standardOutput)")
        var status = ""
        for _ in 0..<100 {
            status = try runFerry(["status", "--control", lab.socket("b"), "--json"]).standardOutput
            if status.contains("INTERRUPTED") { break }
            usleep(100_000)
        }
        #expect(status.contains("INTERRUPTED"), "\(status)\n\(lab.log("b"))")
        #expect(status.contains("post_copy_pages_left"))
        #expect(receiver.isRunning, "the destination waits, it does not crash")
        let resume = try runFerry(["run", "--resume", "--owner-gone", "--shared-dir", lab.shared, "--control", lab.socket("r")])
        #expect(resume.status != 0 && resume.standardError.contains("post-copy migration"), "\(resume.standardError)")
        // Stopping it does not hang on a workload thread that waits for a page that never comes.
        #expect(try runFerry(["stop", "--control", lab.socket("b")]).status == 0)
        #expect(EmbeddingTests.waitForExit(receiver, seconds: 10), "the destination exits when stopped")
    }

    /// The destination killed during post-copy: the source keeps reconnecting for --recover-within, then
    /// gives up and says so, and keeps its region (the pages are nowhere else).
    @Test func theDestinationKilledDuringPostCopyIsGivenUpOnAfterTheRecoveryWindow() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let receiver = try lab.startReceiver(port: port, ["--once"])
        let source = try lab.startSource(regionSize: "32MiB", ["--fill", "random", "--dirty-rate", "max"])
        // 32 MiB at 40 Mbit/s takes about 7 s: the destination dies a second into it.
        let receiverLog = lab.directory + "/b.log"
        let killer = Thread {
            for _ in 0..<200 {
                if ((try? String(contentsOfFile: receiverLog, encoding: .utf8)) ?? "").contains("switched to post-copy") { break }
                usleep(50_000)
            }
            usleep(1_000_000)
            kill(receiver.processIdentifier, SIGKILL)
        }
        killer.start()
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--mode", "post-copy",
                                    "--max-bandwidth", "40mbit", "--recover-within", "3s", "--timeout", "2s"])
        #expect(migrate.status == 1, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(migrate.standardError.contains("could not reach the destination again within 3 s"), "\(migrate.standardError)")
        #expect(migrate.standardError.contains("keep this process up"))
        #expect(source.isRunning, "the source keeps the pages it alone holds")
    }

    /// Each side killed, or its link cut, at the switch-over (record committed, "running" not yet heard): as in
    /// pre-copy, the claim of generation 2 decides who runs the workload, and exactly one does.
    @Test(arguments: [("source", "cut"), ("destination", "kill"), ("destination", "cut")])
    func aFaultAtTheSwitchOverLeavesExactlyOneOwner(side: String, action: String) throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let fault = ["FERRY_TEST_FAULT": "switch-over:\(action)"]
        let receiver = try lab.startReceiver(port: port, ["--once"], environment: side == "destination" ? fault : [:])
        let source = try lab.startSource(regionSize: "16MiB", ["--fill", "random", "--dirty-rate", "2000"], environment: side == "source" ? fault : [:])
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--mode", "post-copy",
                                    "--timeout", "3s", "--recover-within", "20s"])
        let record = try String(contentsOfFile: lab.shared + "/ferry-owner.json", encoding: .utf8)
        if side == "destination" && action == "cut" {
            // The destination claimed and runs generation 2; the source reconnects and sends it the rest.
            #expect(migrate.status == 0, "\(migrate.standardOutput) \(migrate.standardError)\n\(lab.log("a"))\n\(lab.log("b"))")
            source.waitUntilExit()
            #expect(record.contains("\"generation\":2"), "\(record)")
            #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
            _ = try runFerry(["stop", "--control", lab.socket("b")])
        } else {
            // The destination never claimed generation 2: the source took the workload back as generation 3.
            #expect(migrate.status == 1, "\(migrate.standardOutput) \(migrate.standardError)")
            #expect(migrate.standardError.contains("took it back"), "\(migrate.standardError)")
            #expect(record.contains("\"generation\":3") && !record.contains("postCopySource"), "\(record)")
            let verify = try runFerry(["verify", "--control", lab.socket("a")])
            #expect(verify.status == 0, "nothing lost on the source: \(verify.standardOutput) \(verify.standardError)")
            _ = try runFerry(["stop", "--control", lab.socket("a")])
            source.waitUntilExit()
        }
        receiver.waitUntilExit()
    }

    @Test func theDemoMovesAWorkloadByPostCopy() throws {
        let report = "/tmp/ferry-demo-postcopy-\(getpid()).json"
        defer { unlink(report) }
        let run = try runFerry(["demo", "--mode", "post-copy", "--region-size", "64MiB", "--dirty-rate", "max", "--warmup", "0.3s", "--report", report])
        #expect(run.status == 0, "\(run.standardOutput)\n\(run.standardError)")
        let object = try Self.report(report)
        #expect(object["mode"] as? String == "post-copy")
        #expect(object["verified"] as? Bool == true && object["destination_verify"] as? Bool == true)
    }

    @Test func resumeIsRefusedWhileTheRecordSaysPostCopy() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let source = try lab.startSource()
        _ = try runFerry(["stop", "--control", lab.socket("a")])
        source.waitUntilExit()
        // As a source writes it at a post-copy switch-over: the owner runs the workload, the source holds pages.
        let path = lab.shared + "/ferry-owner.json"
        var record = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        record["postCopySource"] = "elsewhere:4242"
        try JSONSerialization.data(withJSONObject: record).write(to: URL(fileURLWithPath: path))
        let resume = try runFerry(["run", "--resume", "--owner-gone", "--shared-dir", lab.shared, "--control", lab.socket("r")])
        #expect(resume.status != 0)
        #expect(resume.standardError.contains("post-copy migration from elsewhere:4242"), "\(resume.standardError)")
        #expect(resume.standardError.contains("neither side alone holds the workload"))
    }
}
