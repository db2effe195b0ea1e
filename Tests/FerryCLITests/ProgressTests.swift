import FerryTestSupport
import Foundation
import Testing

/// `ferry migrate` on a terminal rewrites one live line while a round is sent; elsewhere it prints only rounds.
@Suite struct ProgressTests {
    @Test func onATerminalTheRoundInProgressIsOneLineRewrittenInPlace() throws {
        guard let script = NamespaceLab.executablePath("script") else {
            print("onATerminalTheRoundInProgressIsOneLineRewrittenInPlace skipped: needs script(1) from util-linux for a pseudo-terminal")
            return
        }
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let receiver = try lab.startReceiver(port: port, ["--once"])
        let source = try lab.startSource(regionSize: "32MiB", ["--fill", "random", "--dirty-rate", "1000"])
        // 32 MiB at 80 Mbit/s: the full copy takes over 3 s, so several live updates come.
        let migrate = ["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--max-bandwidth", "80mbit"]
        let command = ([ferryExecutableURL().path] + migrate).joined(separator: " ")
        let onTerminal = NamespaceLab.run(script, ["-qec", command, "/dev/null"], deadline: 60)
        #expect(onTerminal.status == 0, "\(onTerminal.output)")
        let updates = onTerminal.output.components(separatedBy: "\r\u{1B}[K").filter { $0.hasPrefix("round 0:") }
        #expect(updates.count >= 3, "live updates of the full copy: \(onTerminal.output)")
        #expect(updates.allSatisfy { $0.contains("pages left") && $0.contains("s left") && $0.contains("MB/s") })
        // The pages done only grow.
        let done = updates.compactMap { $0.split(separator: ",").dropFirst().first.flatMap { Int($0.split(separator: " ").first ?? "") } }
        #expect(done == done.sorted(), "\(done)")
        #expect(onTerminal.output.contains("completed:"))
        source.waitUntilExit()
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        receiver.waitUntilExit()
    }

    @Test func notOnATerminalOnlyTheRoundsArePrinted() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let receiver = try lab.startReceiver(port: port, ["--once"])
        let source = try lab.startSource(regionSize: "16MiB", ["--fill", "random"])
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--max-bandwidth", "80mbit"])
        #expect(migrate.status == 0, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(!migrate.standardOutput.contains("\r"), "no in-place updates in a pipe: \(migrate.standardOutput)")
        #expect(migrate.standardOutput.contains("0         "), "the full copy's round line: \(migrate.standardOutput)")
        source.waitUntilExit()
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        receiver.waitUntilExit()
    }
}
