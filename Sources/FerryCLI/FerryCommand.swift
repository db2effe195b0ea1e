#if canImport(Glibc)
import Glibc
#endif
import FerryMigration

/// The `ferry` executable: dispatches to a subcommand, prints help and usage errors, sets the exit status.
public enum FerryCommand {
    static let commands: [any Command.Type] = [
        RunCommand.self, ReceiveCommand.self, MigrateCommand.self, StatusCommand.self, VerifyCommand.self,
        StopCommand.self, ProbeCommand.self, PlanCommand.self, KeygenCommand.self, ServeBlocksCommand.self, DemoCommand.self, BenchTrackingCommand.self, BenchTransferCommand.self, BenchMigrationCommand.self, BenchMoveCommand.self, BenchTCPSinkCommand.self,
    ]

    static var overview: String {
        var text = """
            ferry: live-migrate the memory of a running Linux process to another host.

            Usage: ferry <command> [options]     (ferry <command> --help for its options)

            Commands:

            """
        let labels = commands.map { "  " + $0.path.joined(separator: " ") }
        let width = (labels.map(\.count).max() ?? 0) + 2
        for (label, command) in zip(labels, commands) { text += label.padding(to: width) + command.summary + "\n" }
        text += """

            Exit status: 0 success; 1 the operation failed; 2 the peer refused; 64 bad usage;
            69 something needed is unavailable here.
            """
        return text
    }

    /// Runs `ferry` with the process's arguments and exits.
    public static func main() async -> Never {
        // A peer or control client that went away must be an error from write(2), not a silent death.
        signal(SIGPIPE, SIG_IGN)
        let status = await run(Array(CommandLine.arguments.dropFirst()))
        exit(status.rawValue)
    }

    /// Runs `ferry` with `arguments` (without the program name) and returns its exit status.
    public static func run(_ arguments: [String]) async -> ExitStatus {
        if arguments.isEmpty || arguments == ["--help"] || arguments == ["-h"] || arguments == ["help"] {
            printLine(overview)
            return arguments.isEmpty ? .usage : .success
        }
        // The longest command path that prefixes the arguments.
        let match = commands
            .filter { arguments.starts(with: $0.path) }
            .max { $0.path.count < $1.path.count }
        guard let command = match else {
            let group = commands.filter { $0.path.first == arguments[0] }
            if !group.isEmpty {
                let names = group.map { $0.path.joined(separator: " ") }.joined(separator: ", ")
                printError("ferry: '\(arguments.joined(separator: " "))' is not a command; did you mean one of: \(names)?")
            } else {
                printError("ferry: unknown command '\(arguments[0])'. Run 'ferry --help' for the list.")
            }
            return .usage
        }
        let rest = Array(arguments.dropFirst(command.path.count))
        if rest.contains("--help") || rest.contains("-h") {
            printLine(command.help)
            return .success
        }
        do {
            let parsed = try ParsedArguments(rest, options: command.options)
            return try await command.run(parsed)
        } catch let error as UsageError {
            printError("ferry \(command.path.joined(separator: " ")): \(error)\nRun 'ferry \(command.path.joined(separator: " ")) --help' for usage.")
            return .usage
        } catch let error as AgentError {
            printError("ferry \(command.path.joined(separator: " ")): \(error)")
            return error.isUsage ? .usage : .failure
        } catch let error as CommandFailure {
            printError("ferry \(command.path.joined(separator: " ")): \(error.message)")
            return error.status
        } catch {
            printError("ferry \(command.path.joined(separator: " ")): \(error)")
            return .failure
        }
    }
}

/// A command's failure with the exit status it maps to and a message saying what happened and what to do.
struct CommandFailure: Error {
    let status: ExitStatus
    let message: String
}
