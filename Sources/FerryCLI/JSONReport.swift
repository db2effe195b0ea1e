import Foundation

/// Writing reports as JSON files: one encoder configuration for every command.
enum JSONReport {
    /// Encodes `value` with snake_case keys as written in the types, sorted, pretty-printed, and writes it
    /// atomically to `path` (`-` means standard output).
    static func write(_ value: some Encodable, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        if path == "-" {
            // The throwing write: a reader that went away (`| head`) is an error, not a trap.
            do {
                try FileHandle.standardOutput.write(contentsOf: data + Data("\n".utf8))
            } catch {
                throw CommandFailure(status: .failure, message: "cannot write the report to standard output: \(error.localizedDescription)")
            }
        } else {
            do {
                try data.write(to: URL(fileURLWithPath: path), options: .atomic)
            } catch {
                throw CommandFailure(status: .failure, message: "cannot write the report to \(path): \(error.localizedDescription)")
            }
        }
    }
}

/// Statistics over repeated measurements.
enum Statistics {
    /// The median of `values` (the mean of the middle two for an even count); 0 for none.
    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return 0 }
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}

extension Double {
    /// Formats with a fixed number of decimals.
    func formatted(decimals: Int) -> String { String(format: "%.\(decimals)f", self) }
}
