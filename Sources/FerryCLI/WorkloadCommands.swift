#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryAuth
import FerryMigration
import FerryRegion
import FerryWorkloads
import FerrySystem
import FerryTransport
import FerryWire

/// Options shared by the commands that host a workload.
private let hostingOptions = [
    OptionSpec("shared-dir", "DIR", "The shared mount both hosts see: the workload's files and the ownership record.", default: "required"),
    OptionSpec("control", "SOCKET", "Unix socket to control this process through.", default: "required"),
    OptionSpec("key", "FILE", "Pre-shared key (mode 0600) both hosts must hold; 'ferry run' creates it when absent.", default: "DIR/ferry.key on the shared mount"),
    OptionSpec("io-timeout", "DURATION", "The I/O timeout T every lease time derives from (as sanlock's): the lease is renewed every T, an owner whose renewals failed for 6T stops writing and is killed (its watchdog kills it even when it is stopped or frozen), and another host takes over after seeing the lease unchanged for 8T on its own clock. Give every host the same value.", default: "2s, or FERRY_IO_TIMEOUT"),
    OptionSpec("huge-pages", "on|off", "Back the region with transparent huge pages where the kernel allows them (tracking stays exact per 4 KiB page: a written huge page is split). Off by default: on the VMs measured, fresh huge pages cost more to populate than base pages once the host took the memory back.", default: "off"),
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

/// `--huge-pages on|off`: back the region with transparent huge pages where the kernel allows them.
private func hugePagesChoice(_ arguments: ParsedArguments) throws(UsageError) -> Bool {
    switch arguments.string("huge-pages", default: "off") {
    case "on": return true
    case "off": return false
    case let other: throw UsageError("--huge-pages \(other): expected on or off")
    }
}

/// `--base`: the region's fixed address, in hex.
private func regionBase(_ arguments: ParsedArguments) throws(UsageError) -> UInt {
    let text = arguments.string("base", default: "0x7e0000000000")
    guard let base = UInt(text.hasPrefix("0x") ? String(text.dropFirst(2)) : text, radix: 16) else {
        throw UsageError("--base \(text): expected a hexadecimal address such as 0x7e0000000000")
    }
    return base
}

/// `--io-timeout` (else `FERRY_IO_TIMEOUT`, else 2 s): the lease's times derive from it.
private func leaseTiming(_ arguments: ParsedArguments) throws(UsageError) -> LeaseTiming {
    guard arguments.string("io-timeout") != nil else { return .fromEnvironment }
    let seconds = try arguments.seconds("io-timeout", default: LeaseTiming.defaultIOTimeout)
    guard seconds >= 0.05, seconds <= 3600 else {
        throw UsageError("--io-timeout \(arguments.string("io-timeout") ?? ""): expected a duration from 50ms to 1h, like 2s")
    }
    return LeaseTiming(ioTimeout: seconds)
}

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

/// Serves the agent's control socket until it finishes, then reports how it ended.
private func serveUntilFinished(_ agent: MigrationAgent, control: String, command: String) -> ExitStatus {
    agent.waitUntilFinished()
    agent.closeControl()
    printLine("ferry \(command): \(agent.lastMigration ?? agent.role.rawValue)")
    return agent.failed ? .failure : .success
}

/// `ferry run`: start a workload in a region at a fixed address and keep it running until it migrates away.
struct RunCommand: Command {
    static let path = ["run"]
    static let summary = "Start a workload in a migratable region and serve its control socket."
    static let discussion = """
        The process runs until the workload migrates away ('ferry migrate') or is stopped.
        With --resume it restarts the workload of a shared directory whose only owner died, from what the shared mount
        holds (possible for download, whose blocks are in its file; not for hotset, whose state lived only in memory).
        The pace (--dirty-rate) is the workload's own: it is kept in the region, and the workload keeps it after every
        migration and resume.
        """
    static let options = [
        OptionSpec("workload", "NAME", "download or hotset.", default: "hotset"),
        OptionSpec("region-size", "SIZE", "Size of the region (at most the memory available on this host).", default: "256MiB"),
        OptionSpec("base", "ADDRESS", "Fixed address of the region (hex).", default: "0x7e0000000000"),
        OptionSpec("fill", "MODE", "What the region holds before the loop starts: none, zero, random, text (compressible, text-like).", default: "none"),
        OptionSpec("writes", "KIND", "hotset: what a step writes: page (rewrites a whole page) or few (a few bytes of it, its version and checksum: what deltas shrink).", default: "page"),
        OptionSpec("seed", "N", "Seed of the workload's deterministic data.", default: "1"),
        OptionSpec("dirty-rate", "PAGES/S", "Pace of the workload's steps (each dirties 2-3 pages); 0 = idle, max = flat out. With --resume: the recorded pace unless given.", default: "1000"),
        OptionSpec("source", "ADDR:PORT", "download: fetch the blocks from 'ferry serve-blocks' there (the business network) instead of generating them."),
        OptionSpec("resume", nil, "Restart the workload recorded in --shared-dir after its owner died (workload, address, size, seed and pace come from the record)."),
        OptionSpec("owner-gone", nil, "With --resume: the recorded owner is on another host that you know is down: take over at once instead of watching its lease for 8 × the I/O timeout first."),
    ] + hostingOptions

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let directory = try sharedDirectory(arguments)
        let control = try controlPath(arguments)
        guard let kind = WorkloadKind(rawValue: arguments.string("workload", default: "hotset")) else {
            throw UsageError("--workload: expected download or hotset")
        }
        guard let fill = RegionFill(rawValue: arguments.string("fill", default: "none")) else {
            throw UsageError("--fill: expected none, zero, random or text")
        }
        let writes = arguments.string("writes", default: "page")
        guard ["page", "few"].contains(writes) else { throw UsageError("--writes \(writes): expected page or few") }
        let base = try regionBase(arguments)
        let size = try arguments.bytes("region-size", default: 256 << 20)
        let seed = UInt64(try arguments.integer("seed", default: 1, range: 0...Int.max))
        let rate = try arguments.stepRate("dirty-rate", default: 1000)
        let server = try blockServer(arguments)
        let key = keyPath(arguments, sharedDirectory: directory)
        _ = try PresharedKey.createIfAbsent(at: key)
        // Before the region is mapped: the agent forks the lease watchdog.
        let agent = MigrationAgent(sharedDirectory: directory, keyPath: key, timing: try leaseTiming(arguments), watchdog: true)
        let note: String
        if arguments.has("resume") {
            let pace = arguments.string("dirty-rate") == nil ? nil : rate
            let resumer = ShippedWorkloads.resumer(sharedDirectory: directory, blockServer: server, stepsPerSecond: pace)
            let (host, generation) = try agent.resume(ownerGone: arguments.has("owner-gone"), with: resumer) { printLine("ferry run: \($0)") }
            let recovered = (host.workload as? DownloadWorkload)?.recovery.map { ": \($0)" } ?? ""
            note = "resumed \(host.workload.workloadName) at step \(host.stepCount) from the shared mount\(recovered), in \(host.workload.region.layout), generation \(generation)"
        } else {
            guard server == nil || kind == .download else { throw UsageError("--source is for the download workload") }
            try agent.ensureVacant()
            let region = try MigratableRegion.create(layout: RegionLayout(base: base, byteCount: size), hugePages: try hugePagesChoice(arguments))
            let options = WorkloadOptions(sharedDirectory: directory, fill: fill, seed: seed, stepsPerSecond: rate, fewByteWrites: writes == "few")
            let workload: any Workload = if let server {
                try DownloadWorkload(creating: region, options: options, source: NetworkBlockSource(server: server, seed: seed))
            } else {
                try kind.create(in: region, options: options)
            }
            _ = try agent.start(workload, seed: seed, run: ShippedWorkloads.run)
            note = "\(kind) in \(region.layout), generation 1"
        }
        let pace = agent.host?.stepsPerSecond ?? rate
        // Said before the control socket appears: whoever waits for the socket finds the line in the log.
        printLine("ferry run: \(note), \(pace.isFinite ? "\(Int(pace))" : "max") steps/s, control \(control), pid \(getpid())")
        try agent.serveControl(at: control)
        return serveUntilFinished(agent, control: control, command: "run")
    }
}

/// `ferry receive`: wait for a migration, then run the workload here.
struct ReceiveCommand: Command {
    static let path = ["receive"]
    static let summary = "Wait for a migration on the migration network, then run the workload here."
    static let discussion = """
        The workload runs here at the pace it had on the source (kept in its region).
        """
    static let options = [
        OptionSpec("listen", "ADDR:PORT", "Address to accept the migration stream on.", default: "required"),
        OptionSpec("once", nil, "Exit (status 1) if the first migration attempt fails, instead of waiting for the next."),
        OptionSpec("timeout", "DURATION", "How long a silent source is waited for (in the handshake or mid-stream) before the attempt is abandoned; the receiver then waits for the next one.", default: "30s"),
        OptionSpec("source", "ADDR:PORT", "download: after the move, fetch blocks from 'ferry serve-blocks' there (as this host reaches it)."),
        OptionSpec("next-key", "FILE", "Also accept sources holding this key (rotation without downtime: give the sources the new key, then make it the only one with --key)."),
        OptionSpec("reserve", "SIZE", "Standby: map and populate a region of SIZE at --base now, before any migration arrives, so the move needs no set-up; a region at another base or larger is refused."),
        OptionSpec("base", "ADDRESS", "With --reserve: where the reserved region starts (hex).", default: "0x7e0000000000"),
    ] + hostingOptions

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let directory = try sharedDirectory(arguments)
        let control = try controlPath(arguments)
        let listenText = try arguments.required("listen")
        guard let endpoint = Endpoint(listenText) else { throw UsageError("--listen \(listenText): expected ADDR:PORT") }
        let timeout = try streamTimeout(arguments)
        // Before the reservation is mapped: the agent forks the lease watchdog.
        let agent = MigrationAgent(sharedDirectory: directory, keyPath: keyPath(arguments, sharedDirectory: directory), nextKeyPath: arguments.string("next-key"),
                                   timing: try leaseTiming(arguments), watchdog: true)
        let listener: Listener
        do { listener = try Listener(on: endpoint) } catch { throw AgentError.listen(error) }
        let hugePages = try hugePagesChoice(arguments)
        var memory = DestinationMemory.onArrival(hugePages: hugePages)
        if arguments.string("reserve") != nil {
            let layout = RegionLayout(base: try regionBase(arguments), byteCount: try arguments.bytes("reserve", default: 0))
            printLine("ferry receive: reserving \(layout) (mapping and populating it now)")
            let reservation: RegionReservation
            do { reservation = try RegionReservation(layout: layout, hugePages: hugePages) } catch { throw AgentError.region(error) }
            memory = .reserved(reservation)
            printLine("ferry receive: reserved \(layout) in \(String(format: "%.3f", reservation.populateSeconds)) s")
        }
        try agent.serveControl(at: control)
        printLine("ferry receive: listening on \(listener.endpoint), control \(control), pid \(getpid())")
        agent.receive(
            on: listener, timeoutSeconds: timeout, once: arguments.has("once"),
            workloads: ShippedWorkloads.receivable(sharedDirectory: directory, blockServer: try blockServer(arguments)),
            memory: memory
        ) { printLine("ferry receive: \($0)") }
        return serveUntilFinished(agent, control: control, command: "receive")
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
        OptionSpec("downtime-target", "DURATION", "A cap on the pause: iterating stops when another round would not make the predicted pause meaningfully shorter and it is within the cap; over it, --on-stall decides. Without it, the shortest pause the link allows (abort and throttle then cap at 50ms)."),
        OptionSpec("max-rounds", "N", "At most this many dirty rounds.", default: "30"),
        OptionSpec("max-bandwidth", "RATE", "Cap the stream, e.g. 100mbit or 200MB/s."),
        OptionSpec("timeout", "DURATION", "How long a silent destination is waited for before the attempt is abandoned (the workload stays on the source); keep it above the destination's set-up time for the region.", default: "30s"),
        OptionSpec("tracker", "NAME", "auto, uffd-async, uffd-sync or mprotect.", default: "auto"),
        OptionSpec("mode", "MODE", "pre-copy (rounds, then a pause for the last); post-copy (move at once, the pages follow on demand and in the background: a pause of a few ms whatever the workload dirties); hybrid (pre-copy, post-copy if it stalls).", default: "pre-copy"),
        OptionSpec("recover-within", "DURATION", "Post-copy: how long to keep reconnecting when a link breaks after the switch-over.", default: "5m"),
        OptionSpec("recover", nil, "Post-copy under way from this process: reconnect now (to --to, when given, e.g. over another network)."),
        OptionSpec("on-stall", "POLICY", "When it does not converge: force (stop anyway), abort (stay on the source), throttle (slow the workload), post-copy (move now, fetch the rest).", default: "force"),
        OptionSpec("verify", "MODE", "strict: compare digests before the handoff (in the downtime); audit: after it, while the destination already runs.", default: "strict"),
        OptionSpec("encryption", "MODE", "aes-256-gcm: seal every frame (confidential, tamper-evident); none: plain after the authenticated handshake, for a migration network you trust.", default: "aes-256-gcm"),
        OptionSpec("compress", "CODEC", "auto: compress page data only while the link is slower than the compressor and the data compresses (measured as the stream runs); none; zstd; lz4. Zero pages are never sent as data.", default: "auto"),
        OptionSpec("delta-cache", "SIZE", "Pages kept as last sent, so that a page sent again goes as the bytes that changed when that is smaller (XBZRLE); 0 turns deltas off.", default: "64MiB"),
        OptionSpec("report", "FILE", "Write the JSON report to FILE."),
    ]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let control = try arguments.required("control")
        if arguments.has("recover") {
            var request: ControlChannel.Message = ["command": "recover"]
            if let to = arguments.string("to") {
                guard Endpoint(to) != nil else { throw UsageError("--to \(to): expected ADDR:PORT") }
                request["to"] = to
            }
            let result = try ControlChannel.request(request, at: control) { _ in }
            guard result["ok"] as? Bool == true else {
                printError("ferry migrate --recover: \(result["error"] as? String ?? "refused")")
                return .failure
            }
            printLine("ferry migrate --recover: \(result["summary"] as? String ?? "reconnecting")")
            return .success
        }
        let verify = arguments.string("verify", default: "strict")
        guard VerificationMode(rawValue: verify) != nil else { throw UsageError("--verify \(verify): expected strict or audit") }
        let encryption = arguments.string("encryption", default: "aes-256-gcm")
        guard StreamEncryption(rawValue: encryption) != nil else { throw UsageError("--encryption \(encryption): expected aes-256-gcm or none") }
        let onStall = arguments.string("on-stall", default: "force")
        guard StallPolicy(rawValue: onStall) != nil else { throw UsageError("--on-stall \(onStall): expected force, abort, throttle or post-copy") }
        let mode = arguments.string("mode", default: "pre-copy")
        guard MigrationMode(rawValue: mode) != nil else { throw UsageError("--mode \(mode): expected pre-copy, post-copy or hybrid") }
        let compress = arguments.string("compress", default: "auto")
        guard CompressionChoice(rawValue: compress) != nil else { throw UsageError("--compress \(compress): expected auto, none, zstd or lz4") }
        let to = try arguments.required("to")
        guard Endpoint(to) != nil else { throw UsageError("--to \(to): expected ADDR:PORT") }
        var request: ControlChannel.Message = [
            "compress": compress, "delta_cache": arguments.string("delta-cache") == "0" ? 0 : try arguments.bytes("delta-cache", default: 64 << 20),
            "command": "migrate", "to": to,
            "max_rounds": try arguments.integer("max-rounds", default: 30, range: 1...10_000),
            "tracker": arguments.string("tracker", default: "auto"), "verify": verify, "on_stall": onStall,
            "timeout": try streamTimeout(arguments), "encryption": encryption, "mode": mode,
            "recover_within": try arguments.seconds("recover-within", default: 300),
        ]
        if arguments.string("downtime-target") != nil { request["downtime_target"] = try arguments.seconds("downtime-target", default: 0) }
        if let rate = try arguments.rate("max-bandwidth") { request["max_bandwidth"] = rate }
        if let bind = arguments.string("bind") { request["bind"] = bind }
        printLine(progressHeader)
        let printer = ProgressPrinter()
        let result = try ControlChannel.request(request, at: control) { printer.show($0) }
        let report = result["report"] as? [String: Any] ?? [:]
        if let path = arguments.string("report"), let data = try? JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys]) {
            try data.write(to: URL(fileURLWithPath: path))
        }
        let outcome = report["outcome"] as? String ?? "failed"
        if outcome == "completed" {
            let downtime = report["downtime_ms"] as? Double ?? 0
            let total = report["total_seconds"] as? Double ?? 0
            let predicted = (report["predicted_downtime_ms"] as? Double).map { String(format: " (last pages predicted %.1f ms)", $0) } ?? ""
            printLine(String(format: "completed: downtime %.1f ms%@, total %.2f s, %@ sent, verified %@ (%@), encryption %@", downtime, predicted, total,
                             ByteCount(report["bytes_sent"] as? Int ?? 0).description, (report["verified"] as? Bool ?? false) ? "yes" : "NO",
                             report["post_copy"] == nil ? verify : "when every page arrived", report["encryption"] as? String ?? encryption))
            let rounds = report["rounds"] as? [[String: Any]] ?? []
            let saved = { (key: String) in rounds.reduce(0) { $0 + ($1[key] as? Int ?? 0) } }
            if saved("compressed_saved_bytes") > 0 || saved("delta_saved_bytes") > 0 {
                printLine("fewer bytes: compression (\(report["compression"] as? String ?? compress)) saved \(ByteCount(saved("compressed_saved_bytes"))) on \(saved("compressed_pages")) pages, deltas saved \(ByteCount(saved("delta_saved_bytes"))) on \(saved("delta_pages")) pages")
            }
            if let post = report["post_copy"] as? [String: Any] {
                let number = { (key: String) -> Double in post[key] as? Double ?? Double(post[key] as? Int ?? 0) }
                printLine(String(format: "post-copy from round %d: %d pages lacking, %d fetched on demand, %d in the background, every page there after %.2f s; demand faults p50 %@, p99 %@",
                                 Int(number("switch_round")), Int(number("lacking_pages")), Int(number("demand_pages")), Int(number("background_pages")),
                                 number("complete_seconds"), post["latency_p50_us"].map { "≤ \($0) µs" } ?? "–", post["latency_p99_us"].map { "≤ \($0) µs" } ?? "–"))
            }
            if let stall = report["stall"] as? String {
                let throttle = report["throttle_percent"] as? Double
                printLine("did not converge by itself: handled with \(stall)" + (throttle.map { String(format: ", the workload slowed by %.0f %%", $0) } ?? ""))
            }
            if let parts = report["downtime_parts"] as? [String: Any] {
                let names = ["pause_ms", "final_collect_ms", "final_send_ms", "verify_ms", "handoff_ms", "resume_ack_ms"]
                printLine("downtime parts: " + names.map { String(format: "%@ %.2f", String($0.dropLast(3)), parts[$0] as? Double ?? 0) }.joined(separator: ", ") + " ms"
                          + ((parts["record_sync_ms"] as? Double).map { String(format: "; after it, the record's sync %.2f ms", $0) } ?? ""))
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
            let keys = ["role", "workload", "step", "generation", "region_base", "region_bytes", "steps_per_second", "pid", "post_copy", "last_migration", "error"]
            for key in keys { if let value = result[key] { printLine("\(key.padding(to: 18))\(value)") } }
            for line in ownershipLines(result) { printLine(line) }
        }
        return .success
    }
}

/// The shared mount as the process sees it: the record, the claims, the lease.
func ownershipLines(_ result: [String: Any]) -> [String] {
    var lines: [String] = []
    func number(_ value: Any?) -> Double? { (value as? Double) ?? (value as? Int).map(Double.init) }
    if let record = result["record"] as? [String: Any] {
        lines.append("record".padding(to: 18) + "generation \(record["generation"] ?? "?"), owner \(record["owner"] ?? "?"), workload \(record["workload"] ?? "?")"
            + ((record["post_copy_source"] as? String).map { ", post-copy from \($0)" } ?? ""))
    } else if let error = result["record_error"] {
        lines.append("record".padding(to: 18) + "\(error)")
    } else {
        lines.append("record".padding(to: 18) + "none")
    }
    if let claims = result["claims"] as? [[String: Any]] {
        let text = claims.map { "\($0["generation"] ?? "?"): \($0["owner"] ?? "?")" }.joined(separator: "; ")
        lines.append("claims".padding(to: 18) + (text.isEmpty ? "none" : text))
    } else if let error = result["claims_error"] {
        lines.append("claims".padding(to: 18) + "\(error)")
    }
    if let lease = result["lease"] as? [String: Any] {
        var text = "generation \(lease["generation"] ?? "?"), owner \(lease["owner"] ?? "?")"
        if let counter = lease["counter"] { text += ", counter \(counter)" }
        if let since = number(lease["seconds_since_change"]) {
            text += String(format: ", changed %.2f s ago", since) + " (\(lease["seen_by"] ?? "this process"))"
        } else if let seen = lease["seen_by"] {
            text += " (\(seen))"
        }
        if let error = lease["renewal_error"] { text += "; RENEWAL FAILING: \(error)" }
        lines.append("lease".padding(to: 18) + text)
    }
    if let timing = result["lease_timing"] { lines.append("lease timing".padding(to: 18) + "\(timing)") }
    if let watchdog = result["watchdog_pid"] { lines.append("watchdog pid".padding(to: 18) + "\(watchdog)") }
    return lines
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
