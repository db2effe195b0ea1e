#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryAuth
import FerryMigration
import FerryRegion
import FerrySystem
import FerryTransport
import FerryWire

/// Options shared by the commands that host a workload.
private let hostingOptions = [
    OptionSpec("shared-dir", "DIR", "The shared mount both hosts see: the workload's files and the ownership record.", default: "required"),
    OptionSpec("control", "SOCKET", "Unix socket to control this process through.", default: "required"),
    OptionSpec("key", "FILE", "Pre-shared key (mode 0600) both hosts must hold; 'ferry run' creates it when absent.", default: "DIR/ferry.key on the shared mount"),
    OptionSpec("dirty-rate", "PAGES/S", "Pace of the workload's steps (each dirties 2-3 pages); 0 = idle, max = flat out.", default: "1000"),
]

private func keyPath(_ arguments: ParsedArguments, sharedDirectory: String) -> String {
    arguments.string("key") ?? sharedDirectory + "/ferry.key"
}

private func blockServer(_ arguments: ParsedArguments) throws(UsageError) -> Endpoint? {
    guard let text = arguments.string("source") else { return nil }
    guard let endpoint = Endpoint(text) else { throw UsageError("--source \(text): expected ADDR:PORT") }
    return endpoint
}

private func controlPath(_ arguments: ParsedArguments) throws(UsageError) -> String { try arguments.required("control") }

/// `--timeout`: how long a silent peer is waited for, above zero (and at most a day).
private func streamTimeout(_ arguments: ParsedArguments) throws(UsageError) -> Double {
    let seconds = try arguments.seconds("timeout", default: 30)
    guard seconds > 0, seconds <= 86400 else {
        throw UsageError("--timeout \(arguments.string("timeout") ?? ""): expected a duration above 0 and at most 24h, like 30s")
    }
    return seconds
}

private func sharedDirectory(_ arguments: ParsedArguments) throws -> String {
    let path = try arguments.required("shared-dir")
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
        throw CommandFailure(status: .usage, message: "--shared-dir \(path) is not a directory; create it (on the shared mount) first")
    }
    return path
}

/// `ferry run`: start a workload in a region at a fixed address and keep it running until it migrates away.
struct RunCommand: Command {
    static let path = ["run"]
    static let summary = "Start a workload in a migratable region and serve its control socket."
    static let discussion = """
        The process runs until the workload migrates away ('ferry migrate') or is stopped.
        With --resume it restarts the workload of a shared directory whose only owner died, from what the shared mount
        holds (possible for download, whose blocks are in its file; not for hotset, whose state lived only in memory).
        """
    static let options = [
        OptionSpec("workload", "NAME", "download or hotset.", default: "hotset"),
        OptionSpec("region-size", "SIZE", "Size of the region.", default: "256MiB"),
        OptionSpec("base", "ADDRESS", "Fixed address of the region (hex).", default: "0x7e0000000000"),
        OptionSpec("fill", "MODE", "What the region holds before the loop starts: none, zero, random.", default: "none"),
        OptionSpec("seed", "N", "Seed of the workload's deterministic data.", default: "1"),
        OptionSpec("source", "ADDR:PORT", "download: fetch the blocks from 'ferry serve-blocks' there (the business network) instead of generating them."),
        OptionSpec("resume", nil, "Restart the workload recorded in --shared-dir after its owner died (workload, address, size and seed come from the record)."),
        OptionSpec("owner-gone", nil, "With --resume: the recorded owner is on another host that you know is down, even though it renewed its claim less than 10 s ago."),
    ] + hostingOptions

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let directory = try sharedDirectory(arguments)
        let control = try controlPath(arguments)
        guard let kind = WorkloadKind(rawValue: arguments.string("workload", default: "hotset")) else {
            throw UsageError("--workload: expected download or hotset")
        }
        guard let fill = RegionFill(rawValue: arguments.string("fill", default: "none")) else {
            throw UsageError("--fill: expected none, zero or random")
        }
        let baseText = arguments.string("base", default: "0x7e0000000000")
        guard let base = UInt(baseText.hasPrefix("0x") ? String(baseText.dropFirst(2)) : baseText, radix: 16) else {
            throw UsageError("--base \(baseText): expected a hexadecimal address such as 0x7e0000000000")
        }
        let size = try arguments.bytes("region-size", default: 256 << 20)
        let seed = UInt64(try arguments.integer("seed", default: 1, range: 0...Int.max))
        let rate = try arguments.stepRate("dirty-rate", default: 1000)
        let blockSource = try blockServer(arguments).map { server -> any BlockSource in NetworkBlockSource(server: server, seed: seed) }
        let key = keyPath(arguments, sharedDirectory: directory)
        _ = try PresharedKey.createIfAbsent(at: key)
        let started: (workload: any Workload, generation: UInt64, note: String)
        if arguments.has("resume") {
            started = try resume(in: directory, ownerGone: arguments.has("owner-gone"), source: blockServer(arguments))
        } else {
            if let record = try OwnershipRecord.read(in: directory) {
                throw CommandFailure(status: .failure, message: "\(directory) already has an ownership record (generation \(record.generation), owner \(record.owner)): a workload lives there; use another shared directory, 'ferry run --resume' if its owner died, or remove \(OwnershipRecord.fileName) if no host runs it")
            }
            guard blockSource == nil || kind == .download else { throw UsageError("--source is for the download workload") }
            OwnershipClaim.removeClaims(before: .max, in: directory)  // left by a record that was removed
            let region = try MigratableRegion.create(layout: RegionLayout(base: base, byteCount: size))
            let options = WorkloadOptions(sharedDirectory: directory, fill: fill, seed: seed)
            let workload: any Workload = if let blockSource {
                try DownloadWorkload(creating: region, options: options, source: blockSource)
            } else {
                try kind.create(in: region, options: options)
            }
            guard try OwnershipClaim.claim(1, in: directory, by: OwnershipRecord.thisProcess) else {
                throw CommandFailure(status: .failure, message: "another process claimed generation 1 in \(directory) at the same time; use another shared directory")
            }
            try OwnershipRecord(generation: 1, owner: OwnershipRecord.thisProcess, workload: kind.rawValue, regionBase: UInt64(base), regionBytes: size, seed: seed)
                .write(in: directory)
            started = (workload, 1, "\(kind) in \(region.layout)")
        }
        let process = WorkloadProcess(sharedDirectory: directory, stepsPerSecond: rate, keyPath: key)
        process.adopt(WorkloadHost(workload: started.workload, stepsPerSecond: rate), generation: started.generation)
        try process.serveControl(at: control)
        printLine("ferry run: \(started.note), generation \(started.generation), \(rate.isFinite ? "\(Int(rate))" : "max") steps/s, control \(control), pid \(getpid())")
        process.finished.wait()
        unlink(control)
        printLine("ferry run: \(process.state.withLock { $0.lastMigration ?? $0.role.rawValue })")
        return process.exitStatus.withLock { $0 }
    }

    /// Restarts the workload recorded in `directory` whose owner died: claims the next generation (so neither
    /// a late destination nor a second resume can run it too) and rebuilds the workload from its files.
    static func resume(in directory: String, ownerGone: Bool, source: Endpoint?) throws -> (workload: any Workload, generation: UInt64, note: String) {
        guard let record = try OwnershipRecord.read(in: directory) else {
            throw CommandFailure(status: .failure, message: "nothing to resume in \(directory): it has no ownership record; start a workload with 'ferry run' (without --resume)")
        }
        guard let kind = WorkloadKind(rawValue: record.workload) else {
            throw CommandFailure(status: .failure, message: "the record in \(directory) names the workload '\(record.workload)', which this build does not know; use the ferry build that started it")
        }
        guard let base = record.regionBase, let bytes = record.regionBytes, let seed = record.seed else {
            throw CommandFailure(status: .failure, message: "the record in \(directory) was written by an older ferry and lacks the region's address, size and seed; resume is not possible with it")
        }
        // Who runs the current generation: its claim. Without one, the source committed it but nobody ran it.
        var generation = record.generation
        if let owner = OwnershipClaim.owner(of: record.generation, in: directory) {
            switch processIsAlive(owner) {
            case true?:
                throw CommandFailure(status: .failure, message: "generation \(record.generation) runs in \(owner) on this host, which is alive: nothing to resume; use 'ferry status' on its control socket")
            case nil where !ownerGone:
                // Another host: its owner renews the claim every second while it lives.
                let silent = OwnershipClaim.secondsSinceRenewal(of: record.generation, in: directory) ?? .infinity
                if silent < Self.ownerLeaseSeconds {
                    throw CommandFailure(status: .failure, message: "generation \(record.generation) is owned by \(owner) on another host, which renewed its claim \(String(format: "%.0f", silent)) s ago (owners renew it every second): it looks alive. If that host is down for good, repeat with --owner-gone")
                }
                printLine("ferry run: the owner of generation \(record.generation), \(owner), has not renewed its claim for \(String(format: "%.0f", silent)) s; taking over")
            default:
                break  // dead on this host, or declared gone
            }
            generation += 1
        }
        guard kind.canResumeFromSharedFiles else {
            throw CommandFailure(status: .failure, message: "cannot resume: the \(kind) workload of generation \(record.generation) kept its whole state in the memory of its owner (\(OwnershipClaim.owner(of: record.generation, in: directory) ?? record.owner)), and nothing on the shared mount holds it; that state is lost. Start a new workload with 'ferry run' in another shared directory (or remove \(OwnershipRecord.fileName) here)")
        }
        guard try OwnershipClaim.claim(generation, in: directory, by: OwnershipRecord.thisProcess) else {
            throw CommandFailure(status: .failure, message: "generation \(generation) was claimed by \(OwnershipClaim.owner(of: generation, in: directory) ?? "another process") first; the workload runs there")
        }
        let workload: any Workload
        let region: MigratableRegion
        do {
            region = try MigratableRegion.create(layout: RegionLayout(base: UInt(base), byteCount: bytes))
            workload = try kind.resume(
                in: region, options: WorkloadOptions(sharedDirectory: directory, seed: seed),
                blockSource: source.map { NetworkBlockSource(server: $0, seed: seed) })
        } catch {
            unlink(OwnershipClaim.path(generation, in: directory))  // never ran: let the next attempt claim it
            throw error
        }
        var next = record
        next.generation = generation
        next.owner = OwnershipRecord.thisProcess
        next.changedAt = Date().timeIntervalSince1970
        try next.write(in: directory)
        OwnershipClaim.removeClaims(before: generation, in: directory)
        let recovered = (workload as? DownloadWorkload)?.recovery.map { ": \($0)" } ?? ""
        return (workload, generation, "resumed \(kind) at step \(workload.stepCount) from the shared mount\(recovered), in \(region.layout)")
    }

    /// How long an owner on another host must have been silent (not renewed its claim) to count as gone.
    static let ownerLeaseSeconds = 10.0

    /// Whether the process `host:pid` (a claim's owner) is alive, when it is on this host; nil for another host.
    static func processIsAlive(_ owner: String) -> Bool? {
        let identity = owner.split(separator: " ").first.map(String.init) ?? owner
        let parts = identity.split(separator: ":")
        guard parts.count == 2, let pid = pid_t(parts[1]) else { return nil }
        guard String(parts[0]) == OwnershipRecord.thisProcess.split(separator: ":").first.map(String.init) else { return nil }
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        // A killed process its parent has not reaped yet is a zombie: dead, though kill(2) still finds it.
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.range(of: ") ", options: .backwards) else { return true }
        return !stat[close.upperBound...].hasPrefix("Z")
    }
}

/// `ferry receive`: wait for a migration, then run the workload here.
struct ReceiveCommand: Command {
    static let path = ["receive"]
    static let summary = "Wait for a migration on the migration network, then run the workload here."
    static let options = [
        OptionSpec("listen", "ADDR:PORT", "Address to accept the migration stream on.", default: "required"),
        OptionSpec("once", nil, "Exit (status 1) if the first migration attempt fails, instead of waiting for the next."),
        OptionSpec("timeout", "DURATION", "How long a silent source is waited for (in the handshake or mid-stream) before the attempt is abandoned; the receiver then waits for the next one.", default: "30s"),
        OptionSpec("source", "ADDR:PORT", "download: after the move, fetch blocks from 'ferry serve-blocks' there (as this host reaches it)."),
    ] + hostingOptions

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let directory = try sharedDirectory(arguments)
        let control = try controlPath(arguments)
        let listenText = try arguments.required("listen")
        guard let endpoint = Endpoint(listenText) else { throw UsageError("--listen \(listenText): expected ADDR:PORT") }
        let rate = try arguments.stepRate("dirty-rate", default: 1000)
        let timeout = try streamTimeout(arguments)
        let listener = try Listener(on: endpoint)
        let key = keyPath(arguments, sharedDirectory: directory)
        let process = WorkloadProcess(sharedDirectory: directory, stepsPerSecond: rate, keyPath: key)
        try process.serveControl(at: control)
        printLine("ferry receive: listening on \(listener.endpoint), control \(control), pid \(getpid())")
        let once = arguments.has("once")
        let server = try blockServer(arguments)
        let blockSource = server.map(Self.blockSourceFactory)
        // Accept on a thread of its own, so 'ferry stop' ends the process even while it waits.
        let acceptor = Thread {
            while true {
                do {
                    let connection = try listener.accept(connectionTimeoutSeconds: timeout)
                    do {
                        // Loaded per attempt: the key may appear on the shared mount after we started.
                        let presharedKey: PresharedKey
                        do {
                            presharedKey = try PresharedKey(loadingFrom: key)
                        } catch {
                            try? connection.send(.helloReply(.refused(Refusal(
                                code: .authentication, reason: "the destination has no usable key: \(error)"))))
                            throw error
                        }
                        let received = try MigrationDestination.receive(
                            on: connection, sharedDirectory: directory, key: presharedKey, stepsPerSecond: rate,
                            blockSource: blockSource
                        ) { printLine("ferry receive: \($0)") }
                        process.adopt(received.host, generation: received.generation)
                        return
                    } catch {
                        printError("ferry receive: migration from \(connection.peer) failed: \(error)")
                        if once {
                            process.exitStatus.withLock { $0 = .failure }
                            process.finished.signal()
                            return
                        }
                    }
                } catch {
                    printError("ferry receive: \(error)")
                    process.exitStatus.withLock { $0 = .failure }
                    process.finished.signal()
                    return
                }
            }
        }
        acceptor.start()
        process.finished.wait()
        unlink(control)
        printLine("ferry receive: \(process.state.withLock { $0.lastMigration ?? $0.role.rawValue })")
        return process.exitStatus.withLock { $0 }
    }
}

extension ReceiveCommand {
    /// Makes the `download` workload's block source for its seed, fetching from `server`.
    static func blockSourceFactory(_ server: Endpoint) -> @Sendable (UInt64) -> any BlockSource {
        { seed in NetworkBlockSource(server: server, seed: seed) }
    }
}

/// `ferry migrate`: tell a running workload to move.
struct MigrateCommand: Command {
    static let path = ["migrate"]
    static let summary = "Live-migrate the workload of a running ferry process to a destination."
    static let options = [
        OptionSpec("control", "SOCKET", "Control socket of the source process.", default: "required"),
        OptionSpec("to", "ADDR:PORT", "Where 'ferry receive' listens.", default: "required"),
        OptionSpec("bind", "ADDR", "Local address to send from (keeps the stream on the migration network)."),
        OptionSpec("downtime-target", "DURATION", "Stop iterating when the predicted pause is this short.", default: "50ms"),
        OptionSpec("max-rounds", "N", "At most this many dirty rounds.", default: "30"),
        OptionSpec("max-bandwidth", "RATE", "Cap the stream, e.g. 100mbit or 200MB/s."),
        OptionSpec("timeout", "DURATION", "How long a silent destination is waited for before the attempt is abandoned (the workload stays on the source); keep it above the destination's set-up time for the region.", default: "30s"),
        OptionSpec("tracker", "NAME", "auto, uffd-async, uffd-sync or mprotect.", default: "auto"),
        OptionSpec("on-stall", "POLICY", "When it does not converge: force (stop anyway), abort (stay on the source), throttle (slow the workload).", default: "force"),
        OptionSpec("verify", "MODE", "strict: compare digests before the handoff (in the downtime); audit: after it, while the destination already runs.", default: "strict"),
        OptionSpec("report", "FILE", "Write the JSON report to FILE."),
    ]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let control = try arguments.required("control")
        let verify = arguments.string("verify", default: "strict")
        guard VerificationMode(rawValue: verify) != nil else { throw UsageError("--verify \(verify): expected strict or audit") }
        let onStall = arguments.string("on-stall", default: "force")
        guard StallPolicy(rawValue: onStall) != nil else { throw UsageError("--on-stall \(onStall): expected force, abort or throttle") }
        let to = try arguments.required("to")
        guard Endpoint(to) != nil else { throw UsageError("--to \(to): expected ADDR:PORT") }
        var request: ControlChannel.Message = [
            "command": "migrate", "to": to,
            "downtime_target": try arguments.seconds("downtime-target", default: 0.05),
            "max_rounds": try arguments.integer("max-rounds", default: 30, range: 1...10_000),
            "tracker": arguments.string("tracker", default: "auto"), "verify": verify, "on_stall": onStall,
            "timeout": try streamTimeout(arguments),
        ]
        if let rate = try arguments.rate("max-bandwidth") { request["max_bandwidth"] = rate }
        if let bind = arguments.string("bind") { request["bind"] = bind }
        printLine(progressHeader)
        let result = try ControlChannel.request(request, at: control) { printLine(progressLine($0)) }
        let report = result["report"] as? [String: Any] ?? [:]
        if let path = arguments.string("report"), let data = try? JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys]) {
            try data.write(to: URL(fileURLWithPath: path))
        }
        let outcome = report["outcome"] as? String ?? "failed"
        if outcome == "completed" {
            let downtime = report["downtime_ms"] as? Double ?? 0
            let total = report["total_seconds"] as? Double ?? 0
            printLine(String(format: "completed: downtime %.1f ms, total %.2f s, %@ sent, verified %@ (%@)", downtime, total,
                             ByteCount(report["bytes_sent"] as? Int ?? 0).description, (report["verified"] as? Bool ?? false) ? "yes" : "NO",
                             verify))
            if let stall = report["stall"] as? String {
                let throttle = report["throttle_percent"] as? Double
                printLine("did not converge by itself: handled with \(stall)" + (throttle.map { String(format: ", the workload slowed by %.0f %%", $0) } ?? ""))
            }
            if let parts = report["downtime_parts"] as? [String: Any] {
                let names = ["pause_ms", "final_collect_ms", "final_send_ms", "verify_ms", "handoff_ms", "resume_ack_ms"]
                printLine("downtime parts: " + names.map { String(format: "%@ %.2f", String($0.dropLast(3)), parts[$0] as? Double ?? 0) }.joined(separator: ", ") + " ms")
            }
            if report["verified"] as? Bool != true {
                printError("ferry migrate: \(report["reason"] as? String ?? "the audit digest did not match")")
                return .failure
            }
            return .success
        }
        printError("ferry migrate: \(outcome): \(result["error"] as? String ?? "unknown error"); the workload keeps running on the source")
        return ExitStatus(rawValue: Int32(result["status"] as? Int ?? 1)) ?? .failure
    }
}

/// `ferry status`: what a ferry process is doing.
struct StatusCommand: Command {
    static let path = ["status"]
    static let summary = "Show what a ferry process runs (role, workload, step, generation)."
    static let options = [
        OptionSpec("control", "SOCKET", "Control socket of the process.", default: "required"),
        OptionSpec("json", nil, "Print the status as JSON."),
    ]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let result = try ControlChannel.request(["command": "status"], at: try arguments.required("control")) { _ in }
        if arguments.has("json") {
            var clean = result
            clean.removeValue(forKey: "event")
            let data = try JSONSerialization.data(withJSONObject: clean, options: [.prettyPrinted, .sortedKeys])
            printLine(String(decoding: data, as: UTF8.self))
        } else {
            let keys = ["role", "workload", "step", "generation", "region_base", "region_bytes", "steps_per_second", "pid", "last_migration", "error"]
            for key in keys { if let value = result[key] { printLine("\(key.padding(to: 18))\(value)") } }
        }
        return .success
    }
}

/// `ferry verify`: prove the workload's invariants.
struct VerifyCommand: Command {
    static let path = ["verify"]
    static let summary = "Pause the workload at a safe point, prove its invariants, let it go on."
    static let options = [OptionSpec("control", "SOCKET", "Control socket of the process running the workload.", default: "required")]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let result = try ControlChannel.request(["command": "verify"], at: try arguments.required("control")) { _ in }
        if let report = result["report"] as? String { printLine(report) }
        if let error = result["error"] as? String { printError("ferry verify: \(error)") }
        let ok = result["ok"] as? Bool ?? false
        if result["owner_generation_matches"] as? Bool == false { printError("ferry verify: this process does not hold the current generation (the ownership record or its claim on the shared mount names another)") }
        printLine(ok ? "verify: all invariants hold" : "verify: FAILED")
        return ok ? .success : .failure
    }
}

/// `ferry stop`: end a ferry process's workload and the process.
struct StopCommand: Command {
    static let path = ["stop"]
    static let summary = "Stop the workload of a ferry process (files flushed) and let the process exit."
    static let options = [OptionSpec("control", "SOCKET", "Control socket of the process.", default: "required")]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        _ = try ControlChannel.request(["command": "stop"], at: try arguments.required("control")) { _ in }
        return .success
    }
}
