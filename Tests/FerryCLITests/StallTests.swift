import FerryTestSupport
import FerryTransport
import FerryWire
import Foundation
import Testing

/// `--timeout`: a peer that goes silent is given up on after that long, not after the 30 s default, and
/// the process on the other end goes on.
@Suite(.serialized) struct StallTests {
    @Test func aTimeoutThatIsNotAboveZeroIsAUsageError() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        for value in ["0s", "0", "soon"] {
            let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:1", "--timeout", value])
            #expect(migrate.status == 64, "migrate --timeout \(value): \(migrate.standardError)")
            #expect(migrate.standardError.contains("--timeout \(value)"), "\(migrate.standardError)")
            let receive = try runFerry(["receive", "--listen", "127.0.0.1:0", "--shared-dir", lab.shared, "--control", lab.socket("b"),
                                        "--timeout", value])
            #expect(receive.status == 64, "receive --timeout \(value): \(receive.standardError)")
        }
        #expect(!FileManager.default.fileExists(atPath: lab.socket("b")), "a usage error starts nothing")
        for command in ["migrate", "receive"] {
            let help = try runFerry([command, "--help"])
            #expect(help.standardOutput.contains("--timeout DURATION") && help.standardOutput.contains("silent"), "\(help.standardOutput)")
        }
    }

    /// A source that is accepted, starts a frame and then sends nothing more, without closing.
    @Test func aSourceThatStallsMidFrameIsDroppedAfterTheTimeoutAndTheReceiverTakesTheNextMigration() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = 8100 + Int(getpid() % 50)
        let destination = try lab.startReceiver(port: port, ["--timeout", "1s"])
        let key = lab.shared + "/ferry.key"
        try "secret".write(toFile: lab.shared + "/token", atomically: true, encoding: .utf8)
        let hello = Hello(buildIdentity: "test", architecture: "x86_64", pageSize: 4096, regionBase: 0x7e00_0000_0000,
                          regionSize: 16 << 20, workloadName: "hotset", layoutVersion: 2, sharedMountToken: "token",
                          sharedMountTokenValue: "secret", generation: 1)
        let logPath = lab.directory + "/b.log"

        /// Sends hello, then `partial`, then stalls; returns the peer as the receiver named it.
        func stall(_ what: String, sending partial: [UInt8], expectLog phase: String) throws {
            let session = try RawPeer.authenticatedSession(port: port, keyPath: key)
            try session.send(.hello(hello))
            guard case .helloReply(.accepted) = try session.receive(while: "hello") else { Issue.record("\(what): hello refused"); return }
            try partial.withUnsafeBytes { try session.sendBytes($0) }
            let start = ContinuousClock.now
            // Our side would wait 30 s: the receiver must end it well before, by closing.
            let ended = #expect(throws: TransportError.self, "\(what): the receiver must drop the connection") {
                while true { _ = try session.receive(while: what) }
            }
            let elapsed = (ContinuousClock.now - start) / .seconds(1)
            if case .closed = ended {} else { Issue.record("\(what): expected the receiver to close, got \(String(describing: ended))") }
            // SO_RCVTIMEO counts from the last byte: up to two periods when the stall is inside one recv.
            #expect(elapsed >= 0.9 && elapsed < 5, "\(what): dropped after \(elapsed) s with --timeout 1s")
            let log = try String(contentsOfFile: logPath, encoding: .utf8)
            let accepted = log.split(separator: "\n").last { $0.contains("accepted hotset from ") }
            let peer = try #require(accepted?.split(separator: " ").first { $0.hasPrefix("127.0.0.1:") }?.dropLast(), "\(log)")
            #expect(log.contains("migration from \(peer) failed: the peer \(peer) sent nothing for 1.0 s while \(phase) (timeout)"), "\(what): \(log)")
            #expect(destination.isRunning, "\(what): the receiver goes on")
        }

        // The first bytes of a page frame's header.
        let header = FrameCodec.encode(.pageData(firstPage: 0, pageCount: 8))
        try stall("part of a frame header", sending: Array(header.prefix(3)), expectLog: "receiving the region")
        // A whole header announcing 8 pages, then 4 of them.
        try stall("half of the pages", sending: header + [UInt8](repeating: 0x5A, count: 4 * 4096), expectLog: "receiving pages")

        let status = try runFerry(["status", "--control", lab.socket("b"), "--json"])
        #expect(status.standardOutput.contains("\"role\" : \"waiting\""), "nothing of the stalled attempts was adopted")
        // Nothing of those attempts stays mapped: a real migration to the same receiver succeeds.
        let (migrate, verify) = try lab.migrateAFreshWorkload(toReceiverOn: port, ["--timeout", "10s"])
        #expect(migrate.status == 0, "\(migrate.standardError)")
        #expect(verify.status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        destination.waitUntilExit()
    }

    /// `ferry migrate --timeout` reaches the source's connection: a destination that accepts and then says
    /// nothing (not even the key challenge) fails the attempt after that long, and the workload stays.
    @Test func migrateGivesUpOnASilentDestinationAfterItsTimeout() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let listener = try Listener(on: Endpoint(host: "127.0.0.1", port: 0))
        let source = try lab.startSource()
        // Accept and hold the connection open without a word until the attempt is over.
        let held = Thread { _ = try? listener.accept(timeoutSeconds: 20).receive(while: "holding the connection") }
        held.start()
        let start = ContinuousClock.now
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(listener.endpoint.port)", "--timeout", "1s"])
        let elapsed = (ContinuousClock.now - start) / .seconds(1)
        #expect(migrate.status != 0, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(migrate.standardError.contains("sent nothing for 1.0 s") && migrate.standardError.contains("(timeout)"), "\(migrate.standardError)")
        #expect(elapsed < 10, "gave up after \(elapsed) s with --timeout 1s")
        let status = try runFerry(["status", "--control", lab.socket("a"), "--json"])
        #expect(status.standardOutput.contains("\"role\" : \"running\""))
        #expect(try runFerry(["verify", "--control", lab.socket("a")]).status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("a")])
        source.waitUntilExit()
    }
}
