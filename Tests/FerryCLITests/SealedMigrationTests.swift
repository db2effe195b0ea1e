import FerryTestSupport
import Foundation
import Testing

/// Migrations between real `ferry` processes through an attacker on the path (`TamperingRelay`): the sealed
/// stream shows nothing of the region, every change to it fails the migration before the handoff, the source
/// runs on and verifies, and the receiver takes the next honest migration.
@Suite struct SealedMigrationTests {
    /// A download's region holds its blocks, each starting with the magic `FERRYBK1`.
    static let blockMagic = Data("FERRYBK1".utf8)

    @Test(arguments: ["aes-256-gcm", "none"])
    func theSealedStreamShowsNothingOfTheRegion(encryption: String) throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        try lab.startSource(workload: "download", regionSize: "8MiB", ["--dirty-rate", "2000"])
        _ = try lab.startReceiver(port: port, ["--once"])
        let relay = try TamperingRelay(targetPort: port, attack: nil)
        usleep(300_000)  // some blocks in the region
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(relay.port)", "--encryption", encryption])
        #expect(migrate.status == 0, "\(migrate.standardError)")
        #expect(migrate.standardOutput.contains("encryption \(encryption)"))
        #expect(lab.log("b").contains(encryption == "none" ? "plain, not encrypted" : "sealed, aes-256-gcm"), "\(lab.log("b"))")
        let wire = Data(relay.capturedBytes)
        #expect(wire.count > 100_000)
        #expect((wire.range(of: Self.blockMagic) != nil) == (encryption == "none"), "sealed, no block of the region shows on the wire; plain, they do")
        #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
    }

    @Test(arguments: TamperingRelay.Attack.allCases)
    func aTamperedStreamFailsBeforeTheHandoffAndTheNextHonestMigrationSucceeds(attack: TamperingRelay.Attack) throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let source = try lab.startSource(regionSize: "8MiB", ["--fill", "random", "--dirty-rate", "1000"])
        let receiver = try lab.startReceiver(port: port)
        let relay = try TamperingRelay(targetPort: port, attack: attack, unit: 5)
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(relay.port)", "--timeout", "5s"])
        #expect(relay.didAttack)
        #expect(migrate.status == 1, "\(attack): \(migrate.standardOutput) \(migrate.standardError)")
        let named = attack == .cutMidUnit ? "closed the connection" : "failed authentication"
        #expect(lab.log("b").contains(named), "\(attack): the receiver names it: \(lab.log("b"))")
        #expect(source.isRunning && receiver.isRunning)
        let verify = try runFerry(["verify", "--control", lab.socket("a")])
        #expect(verify.status == 0, "the source runs on, intact: \(verify.standardOutput)")
        let status = try runFerry(["status", "--control", lab.socket("a"), "--json"])
        #expect(status.standardOutput.contains("\"generation\" : 1"), "no handoff happened")
        // The receiver is not poisoned: the next, honest migration straight to it succeeds.
        let honest = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)"])
        #expect(honest.status == 0, "\(honest.standardError)")
        #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
        _ = try runFerry(["stop", "--control", lab.socket("b")])
    }

    /// Key rotation without downtime: a receiver given the next key takes a source that already moved to it.
    @Test func aReceiverWithTheNextKeyTakesASourceThatHoldsIt() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        let old = lab.directory + "/old.key"
        let new = lab.directory + "/new.key"
        #expect(try runFerry(["keygen", old]).status == 0)
        #expect(try runFerry(["keygen", new]).status == 0)
        try lab.startSource(regionSize: "8MiB", ["--key", new])
        _ = try lab.startReceiver(port: port, ["--key", old, "--next-key", new, "--once"])
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)"])
        #expect(migrate.status == 0, "\(migrate.standardError) \(lab.log("b"))")
        #expect(try runFerry(["verify", "--control", lab.socket("b")]).status == 0)
    }
}
