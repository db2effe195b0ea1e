/// Parsing of the quantities people type: sizes, durations and rates, written the way people and `tc`
/// write them.
public enum Units {
    /// `4096`, `64KiB`, `256MiB`, `1GiB`, `1.5G`, `100MB` (SI) → bytes. Binary prefixes (KiB, MiB, GiB,
    /// TiB, and bare K, M, G, T) are powers of 1024; KB, MB, GB, TB are powers of 1000.
    public static func bytes(_ text: String) -> Int? {
        guard let (number, unit) = split(text) else { return nil }
        let factors: [String: Double] = [
            "": 1, "b": 1,
            "k": 0x1p10, "kib": 0x1p10, "m": 0x1p20, "mib": 0x1p20, "g": 0x1p30, "gib": 0x1p30,
            "t": 0x1p40, "tib": 0x1p40,
            "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
        ]
        guard let factor = factors[unit.lowercased()] else { return nil }
        let value = number * factor
        guard value >= 0, value < 1e18, value == value.rounded() else { return nil }
        return Int(value)
    }

    /// `50ms`, `2s`, `1.5s`, `250us`, `1m` → seconds. A bare number is seconds.
    public static func seconds(_ text: String) -> Double? {
        guard let (number, unit) = split(text), number >= 0 else { return nil }
        let factors: [String: Double] = ["": 1, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "m": 60, "min": 60]
        return factors[unit.lowercased()].map { number * $0 }
    }

    /// `100mbit`, `1gbit`, `512kbit`, `200MB/s`, `1GiB/s` → bytes per second. Bit rates use SI prefixes
    /// as `tc` does (`1mbit` = 1,000,000 bit/s); `X/s` rates take any size from `bytes(_:)`.
    public static func bytesPerSecond(_ text: String) -> Double? {
        let lower = text.lowercased()
        if lower.hasSuffix("/s") { return bytes(String(text.dropLast(2))).map(Double.init) }
        guard let (number, unit) = split(text), number > 0 else { return nil }
        let bits: [String: Double] = ["bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12, "bps": 8]
        guard let factor = bits[unit.lowercased()] else { return nil }
        return number * factor / 8
    }

    /// `2000`, `2k`, `1.5k` → a count.
    public static func count(_ text: String) -> Double? {
        guard let (number, unit) = split(text), number >= 0 else { return nil }
        switch unit.lowercased() {
        case "": return number
        case "k": return number * 1e3
        case "m": return number * 1e6
        default: return nil
        }
    }

    private static func split(_ text: String) -> (Double, String)? {
        let trimmed = text.trimmingWhitespace()
        let numberPart = trimmed.prefix { $0.isNumber || $0 == "." }
        guard !numberPart.isEmpty, let number = Double(numberPart) else { return nil }
        return (number, String(trimmed.dropFirst(numberPart.count)).trimmingWhitespace())
    }
}

extension String {
    func trimmingWhitespace() -> String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
