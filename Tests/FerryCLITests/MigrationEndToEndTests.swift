import FerryTestSupport
import FerrySystem
import FerryTransport
import FerryWire
import Foundation
import Testing

/// Live migrations between real `ferry` processes over loopback TCP.
@Suite(.serialized) struct MigrationEndToEndTests {
    @Test(arguments: ["hotset", "download"])
    func demoMigratesAndVerifiesAWorkloadThatKeepsWriting(workload: String) throws {
        let report = "/tmp/ferry-demo-report-\(getpid())-\(workload).json"
        defer { unlink(report) }
        let run = try runFerry(["demo", "--workload", workload, "--region-size", "64MiB", "--dirty-rate", "2000",
                                "--warmup", "0.5s", "--report", report])
        #expect(run.status == 0, "\(run.standardOutput)\n\(run.standardError)")
        let data = try #require(FileManager.default.contents(atPath: report))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["outcome"] as? String == "completed")
        #expect(object["verified"] as? Bool == true)
        #expect(object["destination_verify"] as? Bool == true)
        #expect((object["downtime_ms"] as? Double ?? 0) > 0)
        let rounds = try #require(object["rounds"] as? [[String: Any]])
        #expect(rounds.first?["round"] as? Int == 0)
        #expect(rounds.last?["final"] as? Bool == true)
    }

    @Test func tenHopsLoseNothingAndKeepTheAddress() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        var current = try lab.startSource(regionSize: "32MiB", ["--fill", "random", "--dirty-rate", "3000"], name: "a0")
        var control = lab.socket("a0")
        for hop in 1...10 {
            let port = 7400 + Int(getpid() % 500) + hop
            let name = "hop\(hop)"
            let next = try lab.startReceiver(port: port, ["--once"], name: name)
            usleep(300_000)
            let migrate = try runFerry(["migrate", "--control", control, "--to", "127.0.0.1:\(port)"])
            #expect(migrate.status == 0, "hop \(hop): \(migrate.standardOutput) \(migrate.standardError)")
            current.waitUntilExit()
            #expect(current.terminationStatus == 0, "the source of hop \(hop) must exit cleanly after handing over")
            control = lab.socket(name)
            current = next
            let verify = try runFerry(["verify", "--control", control])
            #expect(verify.status == 0, "hop \(hop): \(verify.standardOutput) \(verify.standardError)")
            // Mapped at the source's address in the new process.
            let maps = try String(contentsOfFile: "/proc/\(next.processIdentifier)/maps", encoding: .utf8)
            #expect(maps.contains("7e0000000000-7e0002000000"), "hop \(hop): the region is not at 0x7e0000000000")
        }
        _ = try runFerry(["stop", "--control", control])
        current.waitUntilExit()
    }

    @Test func destinationRefusesAnotherSharedDirectoryAndTheSourceKeepsRunning() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let otherShared = lab.directory + "/other"
        try FileManager.default.createDirectory(atPath: otherShared, withIntermediateDirectories: true)
        let port = 7950 + Int(getpid() % 40)
        let source = try lab.startSource(["--key", lab.directory + "/ferry.key"])
        let destination = try lab.startReceiver(port: port, ["--shared-dir", otherShared, "--key", lab.directory + "/ferry.key"])
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)"])
        #expect(migrate.status == 2, "a refusal exits 2: \(migrate.standardError)")
        #expect(migrate.standardError.contains("same shared directory"))
        let status = try runFerry(["status", "--control", lab.socket("a"), "--json"])
        #expect(status.standardOutput.contains("\"role\" : \"running\""))
        #expect(try runFerry(["verify", "--control", lab.socket("a")]).status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("a")])
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        source.waitUntilExit()
        destination.waitUntilExit()
    }

    @Test func auditModeResumesAtOnceAndStillComparesTheDigests() throws {
        let report = "/tmp/ferry-audit-report-\(getpid()).json"
        defer { unlink(report) }
        let run = try runFerry(["demo", "--region-size", "64MiB", "--dirty-rate", "2000", "--warmup", "0.3s", "--verify", "audit",
                                "--downtime-target", "5ms", "--report", report])
        #expect(run.status == 0, "\(run.standardOutput)\n\(run.standardError)")
        let data = try #require(FileManager.default.contents(atPath: report))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["verify"] as? String == "audit")
        #expect(object["verified"] as? Bool == true)
        #expect(object["source_digest"] as? String == object["destination_digest"] as? String)
        let parts = try #require(object["downtime_parts"] as? [String: Double])
        #expect(parts["verify_ms"] == 0, "audit verifies after the handoff, outside the downtime")
        #expect((parts["final_send_ms"] ?? 0) > 0 && (parts["resume_ack_ms"] ?? 0) > 0)
    }

    @Test func anAuditMismatchIsReportedLoudly() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = 7860 + Int(getpid() % 40)
        let source = try lab.startSource(environment: ["FERRY_TEST_UNTRACKED_WRITE": "1"])
        let destination = try lab.startReceiver(port: port, ["--once"])
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--verify", "audit"])
        #expect(migrate.status == 1, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(migrate.standardError.contains("AUDIT FAILED"))
        // The move stands (the destination owns generation 2); the source has exited.
        source.waitUntilExit()
        let status = try runFerry(["status", "--control", lab.socket("b"), "--json"])
        #expect(status.standardOutput.contains("\"generation\" : 2"))
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        destination.waitUntilExit()
    }

    @Test func benchMigrationSweepsRatesAndDrawsTheCharts() throws {
        let json = "/tmp/ferry-bench-migration-\(getpid()).json"
        let svg = "/tmp/ferry-bench-migration-\(getpid()).svg"
        defer { unlink(json); unlink(svg) }
        let run = try runFerry(["bench", "migration", "--region-size", "16MiB", "--dirty-rates", "0,3000", "--warmup", "0.3s",
                                "--json", json, "--svg", svg])
        #expect(run.status == 0, "\(run.standardOutput) \(run.standardError)")
        let data = try #require(FileManager.default.contents(atPath: json))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let points = try #require(object["points"] as? [[String: Any]])
        #expect(points.map { $0["dirty_rate"] as? Double } == [0, 3000])
        for point in points {
            #expect(point["verify"] as? String == "strict", "the default, as for ferry migrate")
            #expect((point["downtime_ms"] as? Double ?? 0) > 0)
            #expect((point["sent_ratio"] as? Double ?? 0) >= 1)
        }
        let chart = try String(contentsOfFile: svg, encoding: .utf8)
        #expect(chart.hasPrefix("<svg") && chart.contains("polyline") && chart.contains("figure 3.1-13"))
    }

    @Test func benchTransferComparesFerryWithRawTCP() throws {
        let path = "/tmp/ferry-bench-transfer-\(getpid()).json"
        defer { unlink(path) }
        let run = try runFerry(["bench", "transfer", "--region-size", "32MiB", "--runs", "1", "--json", path])
        #expect(run.status == 0, "\(run.standardError)")
        let data = try #require(FileManager.default.contents(atPath: path))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        for key in ["ferry_gbps", "raw_tcp_gbps", "ratio", "untouched_seconds", "zero_seconds"] {
            #expect((object[key] as? Double ?? 0) > 0, "\(key)")
        }
        #expect(object["region_bytes"] as? Int == 32 << 20)
    }

    /// The pace is the workload's: the destination runs it at the rate it had on the source, and `ferry
    /// receive` has no pace of its own.
    @Test func theWorkloadKeepsItsPaceAcrossAMigration() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = 7740 + Int(getpid() % 20)
        try lab.startSource(regionSize: "8MiB", ["--dirty-rate", "345"])
        _ = try lab.startReceiver(port: port, ["--once"])
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)"])
        #expect(migrate.status == 0, "\(migrate.standardError)")
        let status = try runFerry(["status", "--control", lab.socket("b"), "--json"])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [String: Any])
        #expect(object["steps_per_second"] as? Double == 345, "\(status.standardOutput)")
        // And it really runs at that pace there: about 345 steps a second (wide bounds: the machine is shared).
        let before = object["step"] as? Int ?? 0
        usleep(1_000_000)
        let after = try #require(try JSONSerialization.jsonObject(with: Data(runFerry(["status", "--control", lab.socket("b"), "--json"]).standardOutput.utf8)) as? [String: Any])
        let steps = (after["step"] as? Int ?? 0) - before
        #expect(steps > 100 && steps < 800, "\(steps) steps in a second at 345 steps/s")
        let oldOption = try runFerry(["receive", "--listen", "127.0.0.1:1", "--shared-dir", lab.shared, "--control", lab.socket("x"), "--dirty-rate", "10"])
        #expect(oldOption.status == 64, "ferry receive takes the pace from the workload, not an option")
        _ = try runFerry(["stop", "--control", lab.socket("b")])
    }

    /// A region larger than the host's memory is refused before anything is mapped or claimed, with the figures.
    @Test func aRegionLargerThanTheMemoryIsRefusedWithTheFigures() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let run = try runFerry(["run", "--region-size", "1TiB", "--shared-dir", lab.shared, "--control", lab.socket("a")])
        #expect(run.status == 1)
        #expect(run.standardError.contains("the region needs 1 TiB but this host has only"), "\(run.standardError)")
        #expect(!FileManager.default.fileExists(atPath: lab.shared + "/ferry-owner.json"), "nothing claimed")
    }

    /// A workload dirtying its whole 8 MiB region faster than a 40 Mbit/s (5 MB/s) link drains it.
    @Test(arguments: ["abort", "force", "throttle"])
    func aWorkloadThatCannotConvergeIsHandledAsTheUserChose(policy: String) throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = 7700 + Int(getpid() % 30) + ["abort", "force", "throttle"].firstIndex(of: policy)!
        let source = try lab.startSource(regionSize: "8MiB", ["--dirty-rate", "5000"])
        let destination = try lab.startReceiver(port: port, ["--once"])
        let reportPath = lab.directory + "/report.json"
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--max-bandwidth", "40mbit",
                                    "--on-stall", policy, "--report", reportPath])
        let data = try #require(FileManager.default.contents(atPath: reportPath))
        let report = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(report["stall"] as? String == policy, "\(migrate.standardOutput) \(migrate.standardError)")
        switch policy {
        case "abort":
            #expect(migrate.status == 1)
            #expect(report["outcome"] as? String == "aborted")
            #expect(migrate.standardError.contains("not converging"))
            #expect(try runFerry(["verify", "--control", lab.socket("a")]).status == 0, "nothing lost on the source")
            let status = try runFerry(["status", "--control", lab.socket("a"), "--json"])
            #expect(status.standardOutput.contains("\"generation\" : 1"))
            _ = try runFerry(["stop", "--control", lab.socket("a")])
            source.waitUntilExit()
            destination.terminate()
        case "force":
            #expect(migrate.status == 0)
            #expect((report["downtime_ms"] as? Double ?? 0) > 500, "forced: the real, long pause is reported")
            #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
            _ = try runFerry(["stop", "--control", lab.socket("b")])
        default:
            #expect(migrate.status == 0)
            #expect((report["throttle_percent"] as? Double ?? 0) > 0)
            #expect((report["downtime_ms"] as? Double ?? .infinity) < 200, "throttled until the pause fits (target 50 ms, plus verify)")
            #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
            _ = try runFerry(["stop", "--control", lab.socket("b")])
        }
    }

    @Test func aDownloadFromABlockServerReconnectsFromTheDestination() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let base = 7660 + Int(getpid() % 30)
        let server = try lab.start(["serve-blocks", "--listen", "127.0.0.1:\(base)", "--quiet"], log: "server")
        usleep(300_000)
        let source = try lab.startSource(workload: "download", ["--dirty-rate", "2000", "--source", "127.0.0.1:\(base)"])
        let destination = try lab.startReceiver(port: base + 1, ["--source", "127.0.0.1:\(base)", "--once"])
        usleep(500_000)
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(base + 1)"])
        #expect(migrate.status == 0, "\(migrate.standardError)")
        source.waitUntilExit()
        func step() throws -> Int {
            let status = try runFerry(["status", "--control", lab.socket("b"), "--json"])
            let object = try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [String: Any]
            return object?["step"] as? Int ?? -1
        }
        let first = try step()
        usleep(500_000)
        #expect(try step() > first, "the destination keeps fetching blocks from the server")
        let verify = try runFerry(["verify", "--control", lab.socket("b")])
        #expect(verify.status == 0, "every block exactly once, in order: \(verify.standardOutput)")
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        destination.waitUntilExit()
        server.terminate()
    }

    @Test func theDigestCatchesAnUntrackedWriteAndTheSourceKeepsRunning() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = 7900 + Int(getpid() % 40)
        let source = try lab.startSource(environment: ["FERRY_TEST_UNTRACKED_WRITE": "1"])
        let destination = try lab.startReceiver(port: port)
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)"])
        #expect(migrate.status == 1, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(migrate.standardError.contains("differs from the source"))
        let status = try runFerry(["status", "--control", lab.socket("a"), "--json"])
        #expect(status.standardOutput.contains("\"role\" : \"running\""))
        #expect(status.standardOutput.contains("\"generation\" : 1"))
        #expect(try runFerry(["verify", "--control", lab.socket("a")]).status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("a")])
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        source.waitUntilExit()
        destination.waitUntilExit()
    }

    @Test func aSourceWithAnotherKeyIsRefusedBeforeAnyPageAndLogged() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = 7820 + Int(getpid() % 40)
        let otherKey = lab.directory + "/other.key"
        let source = try lab.startSource(["--key", otherKey])
        // The destination's key is the default one on the shared mount, which only it holds.
        let destination = try lab.startReceiver(port: port)
        _ = try runFerry(["status", "--control", lab.socket("b")])
        try "0123456789abcdef0123456789abcdef".write(toFile: lab.shared + "/ferry.key", atomically: false, encoding: .utf8)
        chmod(lab.shared + "/ferry.key", 0o600)
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)"])
        #expect(migrate.status == 2, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(migrate.standardError.contains("key"))
        #expect(try runFerry(["verify", "--control", lab.socket("a")]).status == 0, "the source runs on, unchanged")
        let log = lab.log("b")
        #expect(log.contains("refused 127.0.0.1:"), "the refusal names the peer: \(log)")
        let status = try runFerry(["status", "--control", lab.socket("b"), "--json"])
        #expect(status.standardOutput.contains("\"role\" : \"waiting\""), "no state was accepted")
        // A raw peer without the key gets no further than the challenge.
        let hello = Hello(buildIdentity: "t", architecture: "x86_64", pageSize: 4096, regionBase: 0x7e00_0000_0000, regionSize: 1 << 20,
                          workloadName: "hotset", layoutVersion: 2, sharedMountToken: "t", sharedMountTokenValue: "t", generation: 1)
        let answer = try RawPeer.exchangeWithoutKey(port: port, hello: hello)
        guard case .helloReply(.refused(let refusal)) = answer else { Issue.record("expected a refusal, got \(answer)"); return }
        #expect(refusal.code == .authentication)
        _ = try runFerry(["stop", "--control", lab.socket("a")])
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        source.waitUntilExit()
        destination.waitUntilExit()
    }

    @Test func hostileFramesAreRefusedAndTheReceiverTakesTheNextMigration() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = 7620 + Int(getpid() % 30)
        let destination = try lab.startReceiver(port: port)
        let key = lab.shared + "/ferry.key"
        try "secret".write(toFile: lab.shared + "/token", atomically: true, encoding: .utf8)
        let hello = Hello(buildIdentity: "test", architecture: "x86_64", pageSize: 4096, regionBase: 0x7e00_0000_0000,
                          regionSize: 16 << 20, workloadName: "hotset", layoutVersion: 2, sharedMountToken: "token",
                          sharedMountTokenValue: "secret", generation: 1)
        func expectClosed(_ connection: Connection, _ what: String) {
            #expect(throws: (any Error).self, "\(what): the receiver must drop the connection") {
                while true { _ = try connection.receive(while: what) }
            }
        }
        // A frame from the wrong phase where hello belongs.
        let early = try RawPeer.authenticatedSession(port: port, keyPath: key)
        try early.send(.zeroPages(firstPage: 0, pageCount: 1))
        expectClosed(early, "page frames before hello")
        // A second hello in the middle of the stream.
        let twice = try RawPeer.authenticatedSession(port: port, keyPath: key)
        try twice.send(.hello(hello))
        guard case .helloReply(.accepted) = try twice.receive(while: "hello") else { Issue.record("hello refused"); return }
        try twice.send(.hello(hello))
        expectClosed(twice, "a second hello")
        // Pages past the end of the region.
        let past = try RawPeer.authenticatedSession(port: port, keyPath: key)
        try past.send(.hello(hello))
        _ = try past.receive(while: "hello")
        try past.send(.zeroPages(firstPage: UInt64(16 << 20) / 4096, pageCount: 1))
        expectClosed(past, "pages outside the region")
        // Random bytes after authenticating.
        let noise = try RawPeer.authenticatedSession(port: port, keyPath: key)
        var random = SplitMix64(seed: 99)
        let bytes = (0..<4096).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        try bytes.withUnsafeBytes { try noise.sendBytes($0) }
        expectClosed(noise, "random bytes")
        #expect(destination.isRunning)
        let log = lab.log("b")
        #expect(log.contains("expected hello") && log.contains("unexpected") && log.contains("outside the region"), "\(log)")

        // Nothing of those attempts stays mapped: a real migration to the same receiver succeeds.
        let (migrate, verify) = try lab.migrateAFreshWorkload(toReceiverOn: port)
        #expect(migrate.status == 0, "\(migrate.standardError)")
        #expect(verify.status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        destination.waitUntilExit()
    }

    /// Every resource check refuses with its cause and what to do; the receiver then waits for the next source.
    @Test func destinationRefusesEachFailedResourceCheckWithItsCauseAndFix() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let destination = try lab.startReceiver(port: port)
        try "secret".write(toFile: lab.shared + "/token", atomically: true, encoding: .utf8)
        // A real clash: an address the receiving process has mapped already (its own executable's first mapping).
        let maps = try String(contentsOfFile: "/proc/\(destination.processIdentifier)/maps", encoding: .utf8)
        let taken = try #require(maps.split(separator: "\n").first.flatMap { UInt64($0.prefix { $0 != "-" }, radix: 16) })
        let good = Hello(buildIdentity: "test", architecture: "x86_64", pageSize: 4096, regionBase: 0x7e00_0000_0000, regionSize: 1 << 20,
                         workloadName: "hotset", layoutVersion: 2, sharedMountToken: "token", sharedMountTokenValue: "secret", generation: 1)
        func variant(_ change: (inout Hello) -> Void) -> Hello {
            var hello = good
            change(&hello)
            return hello
        }
        let cases: [(String, Hello, Refusal.Code, String)] = [
            ("protocol version", variant { $0.protocolVersion = 99 }, .protocolVersion, "same ferry build"),
            ("architecture", variant { $0.architecture = "riscv64" }, .architecture, "between architectures"),
            ("page size", variant { $0.pageSize = 65536 }, .pageSize, "page size"),
            ("workload", variant { $0.workloadName = "database" }, .workload, "program that started it"),
            ("build", variant { $0.images = [ImageIdentity(path: "/usr/bin/ferry", buildID: [1, 2, 3], loadAddress: 0)] }, .build,
             "start the receiver from the same build"),
            ("layout version", variant { $0.layoutVersion = 99 }, .layoutVersion, "same ferry version"),
            ("shared mount", variant { $0.sharedMountTokenValue = "another mount" }, .sharedMount, "same shared directory"),
            ("memory", variant { $0.regionSize = 1 << 46 }, .memory, "free memory or pick a larger host"),
            ("address in use", variant { $0.regionBase = taken }, .address, "start the workload with another --base"),
        ]
        let key = lab.shared + "/ferry.key"
        for (name, hello, code, fix) in cases {
            let reply = try RawPeer.exchange(port: port, hello: hello, keyPath: key)
            guard case .helloReply(.refused(let refusal)) = reply else { Issue.record("\(name): expected a refusal, got \(reply)"); continue }
            #expect(refusal.code == code, "\(name): \(refusal)")
            #expect(refusal.reason.contains(fix), "\(name): the refusal must say what to do: \(refusal.reason)")
            #expect(lab.log("b").contains(refusal.reason), "\(name): the refusal is logged")
        }
        #expect(destination.isRunning, "the receiver waits for the next migration after a refusal")
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        destination.waitUntilExit()
    }
}
