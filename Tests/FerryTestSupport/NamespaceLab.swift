import Foundation
import Dispatch
import Synchronization

/// Helpers for tests that build network namespaces (`demo/two-hosts.sh`): prerequisites, running a script
/// with a deadline, and removing what a run left behind.
public enum NamespaceLab {
    /// Why the namespace lab cannot run here, or nil when it can (root, and `ip`, `tc`, `jq` on the PATH).
    public static let missingPrerequisite: String? = {
        if geteuid() != 0 { return "needs root (network namespaces, veth pairs, tc)" }
        for tool in ["ip", "tc", "jq"] where executablePath(tool) == nil { return "needs \(tool) on the PATH" }
        return nil
    }()

    /// True when the lab can run; prints the reason when it cannot, so a skipped test says why.
    public static func available(_ test: String) -> Bool {
        guard let reason = missingPrerequisite else { return true }
        print("\(test) skipped: \(reason)")
        return false
    }

    /// The full path of `tool` on the PATH.
    public static func executablePath(_ tool: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        return path.split(separator: ":").map { "\($0)/\(tool)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// The namespaces `demo/two-hosts.sh` names after its process id.
    public static func namespaces(ofScript pid: Int32) -> [String] {
        ["ferry-srv-\(pid)", "ferry-a-\(pid)", "ferry-b-\(pid)"]
    }

    /// Kills what still runs in the script's namespaces (by process id) and deletes them. Safe to call when
    /// the script already cleaned up.
    public static func removeNamespaces(ofScript pid: Int32) {
        let existing = run("/bin/sh", ["-c", "ip netns list"], deadline: 10).output
        for name in namespaces(ofScript: pid) where existing.contains(name) {
            let pids = run("/bin/sh", ["-c", "ip netns pids \(name)"], deadline: 10).output
            // A GlusterFS client (`--shared glusterfs`) the script did not get to unmount: its mount point is its
            // last argument; detach it so that nothing waits on a dead client.
            for line in pids.split(separator: "\n") {
                guard let child = Int32(line),
                      let command = FileManager.default.contents(atPath: "/proc/\(child)/cmdline") else { continue }
                let arguments = command.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
                if arguments.first?.hasSuffix("glusterfs") == true, let mount = arguments.last, mount.hasPrefix("/tmp/ferry-two-hosts.") {
                    _ = run("/bin/umount", ["-l", mount], deadline: 10)
                }
            }
            for line in pids.split(separator: "\n") { if let child = Int32(line) { kill(child, SIGKILL) } }
            _ = run("/bin/sh", ["-c", "ip netns del \(name)"], deadline: 10)
        }
    }

    /// The result of a process run with `run(_:_:environment:deadline:onStart:)`.
    public struct Result: Sendable {
        public let status: Int32
        public let output: String
        public let timedOut: Bool
    }

    /// Runs `executable` with its output and errors merged; sends SIGTERM when `deadline` seconds pass, and SIGKILL
    /// five seconds later. `onStart` gets the child's pid as soon as it runs (to clean up after it).
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], deadline: Double,
                           onStart: (Int32) -> Void = { _ in }) -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do { try process.run() } catch { return Result(status: -1, output: "could not start \(executable): \(error)", timedOut: false) }
        onStart(process.processIdentifier)
        let timedOut = Atomic<Bool>(false)
        let pid = process.processIdentifier
        // Both signals are cancelled once the child is reaped, so they never reach a reused pid.
        let terminate = DispatchWorkItem {
            timedOut.store(true, ordering: .relaxed)
            kill(pid, SIGTERM)
        }
        let forceKill = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + deadline, execute: terminate)
        DispatchQueue.global().asyncAfter(deadline: .now() + deadline + 5, execute: forceKill)
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        terminate.cancel()
        forceKill.cancel()
        return Result(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self),
                      timedOut: timedOut.load(ordering: .relaxed))
    }
}
