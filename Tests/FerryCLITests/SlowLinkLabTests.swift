import FerryTestSupport
import Foundation
import Testing

/// Fewer bytes across the two-host lab's 100 Mbit/s migration link (a tc token bucket): text-like memory
/// compressed by `--compress auto`, and a few-byte re-writer that converges with deltas and cannot without.
@Suite(.serialized) struct SlowLinkLabTests {
    static let lab = TwoHostLabTests()

    static func total(_ report: [String: Any], _ key: String) -> Double {
        (report["rounds"] as? [[String: Any]] ?? []).reduce(0) { $0 + TwoHostLabTests.number($1, key) }
    }

    /// 32 MiB of text at 100 Mbit/s with the default `--compress auto`: well under the region's bytes go on the wire,
    /// and the full copy takes well under bytes × 8 ÷ rate (bar: half of it for 256 MiB, measured in the README).
    @Test(.enabled(if: NamespaceLab.available("SlowLinkLabTests.textCrossesA100MbitLinkCompressed"), "needs root, ip, tc and jq"),
          .timeLimit(.minutes(2)))
    func textCrossesA100MbitLinkCompressed() throws {
        let (result, report) = try Self.lab.runLab(["--region-size", "32MiB", "--fill", "text", "--dirty-rate", "0", "--migration-rate", "100mbit"])
        #expect(result.status == 0 && report["verified"] as? Bool == true, "\(result.output)")
        #expect(result.output.contains("verify: all invariants hold"), "\(result.output)")
        let region = Double(32 << 20)
        // zstd sends about a third of the region; `auto` picks lz4 (about 0.55) when the suite loads both cores,
        // which its own measurements then rightly prefer. Random bytes would send all of it.
        #expect(TwoHostLabTests.number(report, "bytes_sent") < 0.6 * region, "\(result.output)")
        #expect(Self.total(report, "compressed_saved_bytes") > 0.4 * region, "\(result.output)")
        let expected = region * 8 / 100e6
        let fullCopy = TwoHostLabTests.number((report["rounds"] as? [[String: Any]])?.first, "seconds")
        #expect(fullCopy < 0.75 * expected, "full copy \(fullCopy) s against \(expected) s for the bytes as they are\n\(result.output)")
    }

    /// A hotset changing a few bytes of every page of its 16 MiB, flat out, over 100 Mbit/s: with deltas it
    /// converges (no stall) and the report shows the bytes saved; without, it cannot and aborts as asked.
    @Test(.enabled(if: NamespaceLab.available("SlowLinkLabTests.deltasMakeAFewByteRewriterConverge"), "needs root, ip, tc and jq"),
          .timeLimit(.minutes(3)))
    func deltasMakeAFewByteRewriterConverge() throws {
        let common = ["--region-size", "16MiB", "--fill", "random", "--dirty-rate", "max", "--writes", "few", "--migration-rate", "100mbit",
                      "--downtime-target", "300ms", "--on-stall", "abort", "--verify", "audit"]
        let (withResult, with) = try Self.lab.runLab(common)
        #expect(withResult.status == 0 && with["outcome"] as? String == "completed", "\(withResult.output)")
        #expect(with["stall"] == nil || with["stall"] is NSNull, "\(withResult.output)")
        #expect(withResult.output.contains("verify: all invariants hold"), "\(withResult.output)")
        #expect(Self.total(with, "delta_saved_bytes") > Double(8 << 20), "\(withResult.output)")

        let (withoutResult, without) = try Self.lab.runLab(common + ["--delta-cache", "0"])
        #expect(without["outcome"] as? String == "aborted" && without["stall"] as? String == "abort", "\(withoutResult.output)")
        #expect(withoutResult.output.contains("the workload must still run here"), "\(withoutResult.output)")
        #expect(Self.total(without, "delta_pages") == 0)
    }
}
