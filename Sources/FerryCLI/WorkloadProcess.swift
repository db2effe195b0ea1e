#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryAuth
import FerryMigration
import FerryRegion
import FerrySystem
import FerryTracking
import FerryTransport
import Synchronization

/// The long-lived process behind `ferry run` and `ferry receive`: it owns the running workload (if any)
/// and answers the control socket (`status`, `verify`, `migrate`, `stop`).
final class WorkloadProcess: Sendable {
    enum Role: String { case waiting, running, migrating, migratedAway = "migrated-away", stopped }

    struct State {
        var role = Role.waiting
        var host: WorkloadHost?
        var generation: UInt64 = 0
        var lastMigration: String?
    }

    let sharedDirectory: String
    let stepsPerSecond: Double
    /// Where the pre-shared key lives (default: `ferry.key` on the shared mount).
    let keyPath: String
    let state = Mutex(State())
    /// Signalled when the process should exit (migrated away, stopped, or a `--once` receive failed).
    let finished = DispatchSemaphore(value: 0)
    /// The exit status once `finished` is signalled.
    let exitStatus = Mutex(ExitStatus.success)

    init(sharedDirectory: String, stepsPerSecond: Double, keyPath: String) {
        self.sharedDirectory = sharedDirectory
        self.stepsPerSecond = stepsPerSecond
        self.keyPath = keyPath
        let watch = Thread { [self] in watchOwnership() }
        watch.name = "ferry-ownership"
        watch.start()
    }

    /// Once a second while this process owns the workload: renews its claim (the heartbeat `ferry run
    /// --resume` on another host reads), and checks that the record still names its generation. If the record
    /// moved on while the workload runs here (someone resumed it elsewhere, believing this process dead), the
    /// workload stops at once and the process exits 1: two owners never overlap for more than a second.
    private func watchOwnership() {
        while true {
            usleep(1_000_000)
            let (role, generation) = state.withLock { ($0.role, $0.generation) }
            switch role {
            case .stopped, .migratedAway: return
            case .waiting: continue
            case .running, .migrating: OwnershipClaim.renew(generation, in: sharedDirectory)
            }
            // An unreadable or missing record is not proof of another owner: act only on a newer generation.
            guard role == .running, let record = try? OwnershipRecord.read(in: sharedDirectory), record.generation > generation else { continue }
            let fenced = state.withLock { state -> WorkloadHost? in
                guard state.role == .running, state.generation == generation else { return nil }  // a migration began meanwhile
                state.role = .stopped
                state.lastMigration = "fenced: the ownership record names generation \(record.generation) (\(record.owner)), not this process's \(generation); the workload was stopped here"
                return state.host
            }
            guard let host = fenced else { continue }
            host.stop()
            printError("ferry: the ownership record in \(sharedDirectory) moved to generation \(record.generation) (\(record.owner)) while this process ran generation \(generation): another process owns the workload now; stopped it here")
            exitStatus.withLock { $0 = .failure }
            finished.signal()
            return
        }
    }

    func adopt(_ host: WorkloadHost, generation: UInt64) {
        state.withLock {
            $0.host = host
            $0.generation = generation
            $0.role = .running
        }
    }

    func serveControl(at path: String) throws {
        try ControlChannel.serve(at: path) { [self] request, reply in
            let command = request["command"] as? String ?? ""
            switch command {
            case "status": reply(status())
            case "verify": reply(verify())
            case "migrate":
                let result = migrate(request, progress: reply)
                reply(result)
                // Only after the reply: the process exits once `finished` is signalled.
                if result["ok"] as? Bool == true { finished.signal() }
            case "stop":
                let host = state.withLock { state -> WorkloadHost? in
                    state.role = .stopped
                    return state.host
                }
                host?.stop()
                reply(["event": "result", "ok": true])
                finished.signal()
            default: reply(["event": "result", "ok": false, "error": "unknown control command '\(command)'"])
            }
        }
    }

    func status() -> ControlChannel.Message {
        let (role, host, generation, last) = state.withLock { ($0.role, $0.host, $0.generation, $0.lastMigration) }
        var message: ControlChannel.Message = ["event": "result", "ok": true, "role": role.rawValue, "pid": Int(getpid()), "generation": Int(generation)]
        if let host {
            message["workload"] = type(of: host.workload).name
            message["step"] = Int(host.stepCount)
            message["region_base"] = "0x" + String(host.workload.region.range.start, radix: 16)
            message["region_bytes"] = host.workload.region.range.byteCount
            message["steps_per_second"] = stepsPerSecond.isFinite ? stepsPerSecond as any Sendable : "max"
            message["throttle"] = host.throttle
            if let error = host.lastError { message["error"] = error }
        }
        if let last { message["last_migration"] = last }
        return message
    }

    func verify() -> ControlChannel.Message {
        guard let host = state.withLock({ $0.role == .running ? $0.host : nil }) else {
            return ["event": "result", "ok": false, "error": "no workload runs in this process (\(state.withLock { $0.role.rawValue }))"]
        }
        guard host.pause() else { return ["event": "result", "ok": false, "error": "the workload loop has stopped: \(host.lastError ?? "unknown")"] }
        defer { host.resume() }
        let report = host.workload.verify()
        // This process must hold the current generation: the record names it, and the claim is ours.
        let generation = state.withLock { $0.generation }
        let recordOK = (try? OwnershipRecord.read(in: sharedDirectory))??.generation == generation
        let ownerOK = recordOK && OwnershipClaim.owner(of: generation, in: sharedDirectory) == OwnershipRecord.thisProcess
        return [
            "event": "result", "ok": report.passed && ownerOK, "step": Int(host.stepCount), "summary": report.summary,
            "report": report.description, "owner_generation_matches": ownerOK,
        ]
    }

    func migrate(_ request: ControlChannel.Message, progress: @escaping @Sendable (ControlChannel.Message) -> Void) -> ControlChannel.Message {
        guard let to = request["to"] as? String, let endpoint = Endpoint(to) else {
            return ["event": "result", "ok": false, "status": Int(ExitStatus.usage.rawValue), "error": "'to' must be HOST:PORT"]
        }
        let claimed = state.withLock { state -> (WorkloadHost, UInt64)? in
            guard state.role == .running, let host = state.host else { return nil }
            state.role = .migrating
            return (host, state.generation)
        }
        guard let (host, generation) = claimed else {
            return ["event": "result", "ok": false, "status": Int(ExitStatus.failure.rawValue), "error": "no workload runs here to migrate (\(state.withLock { $0.role.rawValue }))"]
        }
        let key: PresharedKey
        do throws(KeyError) {
            key = try PresharedKey(loadingFrom: keyPath)
        } catch {
            state.withLock { $0.role = .running }
            return ["event": "result", "ok": false, "status": Int(ExitStatus.failure.rawValue), "error": "\(error)"]
        }
        var options = MigrationOptions(destination: endpoint, key: key)
        if let value = request["downtime_target"] as? Double { options.downtimeTarget = value }
        if let value = request["max_rounds"] as? Int { options.maximumRounds = value }
        if let value = request["max_bandwidth"] as? Double { options.maximumBytesPerSecond = value }
        if let value = request["bind"] as? String { options.bindAddress = value }
        if let value = request["timeout"] as? Double, value > 0 { options.timeoutSeconds = value }
        if let value = request["tracker"] as? String, let choice = TrackerChoice(value) { options.tracker = choice }
        if let value = request["verify"] as? String, let mode = VerificationMode(rawValue: value) { options.verification = mode }
        if let value = request["on_stall"] as? String, let policy = StallPolicy(rawValue: value) { options.onStall = policy }
        let source = MigrationSource(host: host, sharedDirectory: sharedDirectory, generation: generation)
        let report = source.migrate(options) { round in
            progress([
                "event": "progress", "round": round.round, "pages": round.pages, "zero_pages": round.zero_pages,
                "bytes": round.bytes, "seconds": round.seconds, "bandwidth_mbps": round.bandwidth_mbps,
                "dirty_rate": round.dirty_rate, "predicted_downtime_ms": round.predicted_downtime_ms, "final": round.final,
            ])
        }
        let completed = report.outcome == .completed
        state.withLock {
            $0.role = completed ? .migratedAway : .running
            if completed { $0.host = nil }
            // A source that took the workload back after a lost handoff runs it under a new generation.
            if !completed, let generation = report.generation { $0.generation = generation }
            $0.lastMigration = "\(report.outcome.rawValue)\(report.reason.map { ": \($0)" } ?? "")"
        }
        let encoded = ((try? JSONSerialization.jsonObject(with: JSONEncoder().encode(report))) as? [String: any Sendable]) ?? [:]
        // A refusal by the destination exits 2; a migration given up on (non-convergence) or failed exits 1.
        let status: ExitStatus = completed ? .success : (report.outcome == .aborted && report.stall == nil ? .refused : .failure)
        return ["event": "result", "ok": completed, "status": Int(status.rawValue), "report": encoded, "error": report.reason ?? ""]
    }
}
