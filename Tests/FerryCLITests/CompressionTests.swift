import FerryTestSupport
import Foundation
import Testing

/// Fewer bytes on the wire, for real, between two `ferry` processes on loopback: compressed text, random bytes
/// left as they are, and deltas that make a few-byte re-writer converge on a link it out-dirties without them.
/// Every migration is verified by the destination's `ferry verify` and the digests.
@Suite(.serialized) struct CompressionTests {
    /// Migrates a fresh source started with `run` to a fresh receiver with `migrate`; returns the report, the
    /// verification's exit status (nil when nothing runs on the receiver) and the migrate command's output.
    func migrate(run: [String], regionSize: String = "16MiB", migrate options: [String], warmUp: Double = 0)
        throws -> (report: [String: Any], verified: Int32?, output: String)
    {
        let lab = try Lab()
        defer { lab.tearDown() }
        let port = Lab.freePort()
        _ = try lab.startReceiver(port: port)
        try lab.startSource(regionSize: regionSize, run)
        if warmUp > 0 { usleep(UInt32(warmUp * 1e6)) }
        let path = lab.directory + "/report.json"
        let result = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)", "--report", path] + options)
        let report = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path)))) as? [String: Any] ?? [:]
        let verified = report["outcome"] as? String == "completed" ? try runFerry(["verify", "--control", lab.socket("b")]).status : nil
        return (report, verified, result.standardOutput + result.standardError)
    }

    static func rounds(_ report: [String: Any]) -> [[String: Any]] { report["rounds"] as? [[String: Any]] ?? [] }
    static func total(_ report: [String: Any], _ key: String) -> Int { rounds(report).reduce(0) { $0 + ($1[key] as? Int ?? 0) } }

    /// Text-like memory compresses with either codec (zstd to under half, lz4, faster and weaker, to under three
    /// quarters); the destination's copy is identical and its workload's invariants hold.
    @Test(arguments: [("zstd", 0.5), ("lz4", 0.75)])
    func textCompressesAndArrivesIdentical(codec: String, atMost fraction: Double) throws {
        let (report, verified, output) = try migrate(run: ["--fill", "text", "--dirty-rate", "200"], migrate: ["--compress", codec])
        #expect(report["outcome"] as? String == "completed", "\(output)")
        #expect(report["verified"] as? Bool == true && verified == 0, "\(output)")
        #expect(report["compression"] as? String == codec)
        let region = report["region_bytes"] as? Int ?? 0
        let sent = report["bytes_sent"] as? Int ?? .max
        #expect(Double(sent) < fraction * Double(region), "\(sent) bytes sent for a \(region)-byte text region")
        #expect(Double(Self.total(report, "compressed_saved_bytes")) > (1 - fraction) * Double(region), "\(Self.rounds(report))")
    }

    /// Random bytes do not compress: they go as they are, with nothing lost, even when a codec is forced.
    @Test func randomBytesAreSentAsTheyAre() throws {
        let (report, verified, output) = try migrate(run: ["--fill", "random", "--dirty-rate", "0"], migrate: ["--compress", "zstd"])
        #expect(report["outcome"] as? String == "completed" && verified == 0, "\(output)")
        #expect(Self.total(report, "compressed_pages") == 0, "\(Self.rounds(report))")
        let region = report["region_bytes"] as? Int ?? 0
        #expect((report["bytes_sent"] as? Int ?? 0) >= region, "random bytes cannot be sent in fewer bytes than they take")
    }

    /// On a slow link `auto` compresses text: measured, not assumed (the link is capped by `--max-bandwidth`).
    @Test func autoCompressesTextOnASlowLink() throws {
        let (report, verified, output) = try migrate(
            run: ["--fill", "text", "--dirty-rate", "0"], regionSize: "32MiB", migrate: ["--max-bandwidth", "100mbit"])
        #expect(report["outcome"] as? String == "completed" && verified == 0, "\(output)")
        let region = report["region_bytes"] as? Int ?? 0
        // The first megabytes go as they are while the link is measured; most of the rest compressed.
        #expect(Self.total(report, "compressed_pages") * 4096 > region / 2, "\(Self.rounds(report))")
        #expect((report["bytes_sent"] as? Int ?? .max) < region * 3 / 4, "\(Self.rounds(report))")
    }

    /// A workload that changes a few bytes of every page of its 16 MiB, flat out, against a 50 Mbit/s cap: without
    /// deltas every round resends the whole set and the migration cannot converge (it aborts, as asked, and the
    /// workload stays on the source); with deltas the pages go as their changed bytes and it converges.
    @Test func deltasMakeAFewByteRewriterConvergeWhereItCannotWithout() throws {
        let run = ["--fill", "random", "--dirty-rate", "max", "--writes", "few"]
        let link = ["--max-bandwidth", "50mbit", "--downtime-target", "300ms", "--on-stall", "abort", "--compress", "none"]
        let without = try migrate(run: run, migrate: link + ["--delta-cache", "0"], warmUp: 0.5)
        #expect(without.report["outcome"] as? String == "aborted", "\(without.output)")
        #expect(without.output.contains("not converging"), "\(without.output)")
        #expect(Self.total(without.report, "delta_pages") == 0)

        let with = try migrate(run: run, migrate: link, warmUp: 0.5)
        #expect(with.report["outcome"] as? String == "completed", "\(with.output)")
        #expect(with.report["verified"] as? Bool == true && with.verified == 0, "\(with.output)")
        #expect(with.report["stall"] == nil || with.report["stall"] is NSNull, "\(with.report)")
        let rounds = Self.rounds(with.report)
        #expect(Self.total(with.report, "delta_pages") > 2000, "\(rounds)")
        #expect(Self.total(with.report, "delta_saved_bytes") > 8 << 20, "\(rounds)")
        // Each page changed 16 bytes: its delta is a few dozen bytes, not 4 KiB.
        let dirtyRounds = rounds.dropFirst()
        let pages = dirtyRounds.reduce(0) { $0 + ($1["pages"] as? Int ?? 0) }
        let bytes = dirtyRounds.reduce(0) { $0 + ($1["bytes"] as? Int ?? 0) }
        #expect(pages > 0 && bytes / pages < 256, "\(bytes) bytes for \(pages) pages")
    }

    @Test func badCompressionChoicesAreUsageErrors() throws {
        let bad = try runFerry(["migrate", "--control", "/nonexistent.sock", "--to", "127.0.0.1:1", "--compress", "gzip"])
        #expect(bad.status == 64 && bad.standardError.contains("--compress gzip"), "\(bad.standardError)")
        let writes = try runFerry(["run", "--shared-dir", "/tmp", "--control", "/nonexistent.sock", "--writes", "some"])
        #expect(writes.status == 64 && writes.standardError.contains("--writes some"), "\(writes.standardError)")
        let help = try runFerry(["migrate", "--help"])
        #expect(help.standardOutput.contains("--compress CODEC") && help.standardOutput.contains("--delta-cache SIZE"))
    }
}
