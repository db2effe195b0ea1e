#if canImport(Glibc)
import Glibc
#endif

/// Exit statuses scripts can rely on.
public enum ExitStatus: Int32, Sendable {
    /// Done, and everything checked held.
    case success = 0
    /// The operation ran and failed (a check did not hold, a migration aborted or failed).
    case failure = 1
    /// The peer refused (resource check, authentication); the workload still runs where it was.
    case refused = 2
    /// Bad usage: unknown option, malformed value (`EX_USAGE`).
    case usage = 64
    /// Something the command needs is not available here, e.g. no write tracker works (`EX_UNAVAILABLE`).
    case unavailable = 69
}

/// One `ferry` subcommand: its help and what it does.
protocol Command: Sendable {
    /// Words after `ferry`, e.g. `["bench", "tracking"]`.
    static var path: [String] { get }
    static var summary: String { get }
    /// Positional part of the synopsis, e.g. `[--region-size SIZE]` is generated from `options`.
    static var positionalUsage: String { get }
    static var discussion: String { get }
    static var options: [OptionSpec] { get }
    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus
}

extension Command {
    static var positionalUsage: String { "" }
    static var discussion: String { "" }

    static var help: String {
        var text = "ferry \(path.joined(separator: " ")): \(summary)\n\nUsage: ferry \(path.joined(separator: " "))"
        if !positionalUsage.isEmpty { text += " \(positionalUsage)" }
        if !options.isEmpty { text += " [options]" }
        text += "\n"
        if !discussion.isEmpty { text += "\n\(discussion)\n" }
        let all = options + [OptionSpec("help", nil, "Show this help.")]
        text += "\nOptions:\n"
        let labels = all.map { "  --\($0.name)" + ($0.value.map { " \($0)" } ?? "") }
        let width = (labels.map(\.count).max() ?? 0) + 2
        for (label, option) in zip(labels, all) {
            var line = label.padding(to: width) + option.help
            if let defaultValue = option.defaultValue { line += " (default: \(defaultValue))" }
            text += line + "\n"
        }
        return text
    }
}

extension String {
    func padding(to width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}

/// Writes to standard error, unbuffered, for progress and diagnostics.
func printError(_ message: String) {
    var text = message
    if !text.hasSuffix("\n") { text += "\n" }
    _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
}

/// Writes a line to standard output at once (unbuffered), so progress shows up in pipes too.
func printLine(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(STDOUT_FILENO, $0, strlen($0)) }
}
