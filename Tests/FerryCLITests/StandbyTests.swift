import FerryTestSupport
import Foundation
import Testing

/// A standby destination (`ferry receive --reserve`) and the defaults a user gets without flags.
@Suite struct StandbyTests {
    @Test func aReservedReceiverRefusesARegionThatDoesNotFitAndTakesOneThatDoes() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let receiver = try lab.startReceiver(port: port, ["--reserve", "32MiB"])
        #expect(lab.log("b").contains("reserved 0x7e0000000000+32 MiB"), "\(lab.log("b"))")
        // The reservation is mapped and present before any migration arrives.
        let maps = try String(contentsOfFile: "/proc/\(receiver.processIdentifier)/maps", encoding: .utf8)
        #expect(maps.contains("7e0000000000-7e0002000000"), "the reservation is not mapped")

        // Larger than the reservation: refused with the cause and the fix; the source runs on.
        let large = try lab.startSource(regionSize: "48MiB", ["--dirty-rate", "2000"], name: "large")
        let refused = try runFerry(["migrate", "--control", lab.socket("large"), "--to", "127.0.0.1:\(port)"])
        #expect(refused.status == 2, "a refusal exits 2: \(refused.standardOutput) \(refused.standardError)")
        #expect(refused.standardError.contains("does not fit this receiver's reservation"), "\(refused.standardError)")
        #expect(refused.standardError.contains("--reserve 48 MiB"), "\(refused.standardError)")
        #expect(try runFerry(["verify", "--control", lab.socket("large")]).status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("large")])
        large.waitUntilExit()
        unlink(lab.shared + "/ferry-owner.json")  // that workload ended here: nobody runs it

        // A region that fits moves into the reserved memory, with nothing left to set up.
        let (migrate, verify) = try lab.migrateAFreshWorkload(toReceiverOn: port, ["--verify", "audit"])
        #expect(migrate.status == 0, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(verify.status == 0, "\(verify.standardOutput) \(verify.standardError)")
        #expect(lab.log("b").contains("taken from the reservation"), "\(lab.log("b"))")
        #expect(!lab.log("b").contains("alongside the stream"), "a reserved region needs no populating")
        let after = try String(contentsOfFile: "/proc/\(receiver.processIdentifier)/maps", encoding: .utf8)
        #expect(after.contains("7e0000000000-7e0001000000"), "the 16 MiB region runs at the base, the reserved tail is unmapped:\n\(after)")
        #expect(!after.contains("7e0000000000-7e0002000000"))
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        receiver.waitUntilExit()
    }

    @Test func aReceiverWithoutAReservationPopulatesAlongsideTheStream() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let receiver = try lab.startReceiver(port: port, ["--once"])
        let source = try lab.startSource(regionSize: "64MiB", ["--fill", "random", "--dirty-rate", "2000"])
        let report = lab.directory + "/report.json"
        // No tuning flags: the default stop rule iterates while another round shortens the pause.
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--report", report])
        #expect(migrate.status == 0, "\(migrate.standardOutput) \(migrate.standardError)")
        source.waitUntilExit()
        let log = lab.log("b")
        #expect(log.contains("populated 64 MiB of 64 MiB alongside the stream"), "\(log)")
        #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: try Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        let rounds = try #require(object["rounds"] as? [[String: Any]])
        let predicted = try #require(object["predicted_downtime_ms"] as? Double)
        #expect(predicted >= 0 && predicted == rounds.last?["predicted_downtime_ms"] as? Double)
        // It stopped because another round would not have shortened the pause meaningfully, not at a
        // fixed target: the last dirty round's pages predict a short pause (the link is loopback).
        #expect(predicted < 50, "predicted \(predicted) ms: \(migrate.standardOutput)")
        // The old rule stopped at the first dirty round whose pause fit 50 ms; this one goes on unless that
        // round's pause was already negligible.
        #expect(rounds.count >= 3 || predicted <= 0.5, "\(migrate.standardOutput)")
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        receiver.waitUntilExit()
    }
}
