@testable import FerryCLI
import Testing

@Suite struct UnitsTests {
    @Test(arguments: [
        ("4096", 4096), ("64KiB", 65536), ("256MiB", 256 << 20), ("1GiB", 1 << 30), ("1G", 1 << 30),
        ("1.5GiB", 3 << 29), ("100MB", 100_000_000), ("2 MiB", 2 << 20),
    ])
    func sizes(text: String, bytes: Int) {
        #expect(Units.bytes(text) == bytes)
    }

    @Test(arguments: ["", "abc", "1.5", "-1GiB", "1XB", "GiB"])
    func badSizes(text: String) {
        #expect(Units.bytes(text) == nil)
    }

    @Test func durations() {
        #expect(Units.seconds("50ms") == 0.05)
        #expect(Units.seconds("2s") == 2)
        #expect(Units.seconds("1.5") == 1.5)
        #expect(Units.seconds("250us")! - 0.000_25 < 1e-12)
        #expect(Units.seconds("fast") == nil)
    }

    @Test func ratesAreWrittenAsTcWritesThem() {
        #expect(Units.bytesPerSecond("100mbit") == 12_500_000)
        #expect(Units.bytesPerSecond("1gbit") == 125_000_000)
        #expect(Units.bytesPerSecond("200MB/s") == 200_000_000)
        #expect(Units.bytesPerSecond("1GiB/s") == Double(1 << 30))
        #expect(Units.bytesPerSecond("100") == nil)
    }

    @Test func argumentsParseOptionsFlagsAndPositionals() throws {
        let options = [OptionSpec("size", "SIZE", "a size"), OptionSpec("verbose", nil, "a flag")]
        let parsed = try ParsedArguments(["word", "--size", "1GiB", "--verbose", "--size=2GiB"], options: options)
        #expect(parsed.positionals == ["word"])
        #expect(parsed.has("verbose"))
        #expect(try parsed.bytes("size", default: 0) == 2 << 30)
        #expect(throws: UsageError.self) { try ParsedArguments(["--nope"], options: options) }
        #expect(throws: UsageError.self) { try ParsedArguments(["--size"], options: options) }
        #expect(throws: UsageError.self) { try ParsedArguments(["--size", "big"], options: options).bytes("size", default: 0) }
    }
}
