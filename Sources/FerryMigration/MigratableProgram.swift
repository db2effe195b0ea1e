import Foundation
import FerryAuth
public import FerryRegion
import FerrySystem
public import FerryTransport

/// How a program embedding Ferry starts or receives its workload (the Swift form of `ferry_options`).
public struct ProgramOptions: Sendable {
    /// The workload's name, stored in the region header; a receiver accepts only this name.
    public var name: String
    /// The region's fixed address.
    public var base: UInt = RegionLayout.defaultBase
    /// The region's size in bytes (a page multiple); ignored by `receive`, which takes the source's.
    public var size: Int = 64 << 20
    /// The shared mount: ownership record, claims, key.
    public var sharedDirectory: String
    /// The control socket (`ferry status|verify|stop|migrate --control PATH`).
    public var control: String
    /// `receive` only: where to accept the migration stream.
    public var listen: Endpoint?
    /// The pre-shared key file; nil: `<sharedDirectory>/ferry.key` (`start` creates it 0600 when absent).
    public var keyPath: String?
    /// `receive` only: a second key also accepted (key rotation without downtime).
    public var nextKeyPath: String?
    /// `receive` only: when above 0, a standby destination: this many bytes at `base` are mapped and populated
    /// before any migration arrives, so the move needs no set-up (a region at another base or larger is refused).
    public var reserve = 0
    /// How long a silent source is waited for before an attempt is abandoned.
    public var timeoutSeconds = 30.0

    public init(name: String, sharedDirectory: String, control: String) {
        self.name = name
        self.sharedDirectory = sharedDirectory
        self.control = control
    }
}

/// A program's own migratable workload: the Swift API that `ferry.h` wraps.
///
/// The program keeps the state it wants to move in `workload`'s heap (pointers stay valid: the region is mapped
/// at the same address everywhere), records its entry point with `workload.root`, and calls `safePoint()`
/// between units of work on one thread. Ownership (claims, the lease, fencing), the control socket and the
/// migrations themselves are the `agent`'s, exactly as for `ferry run`: a process that cannot renew its lease
/// for 6 × the I/O timeout (`FERRY_IO_TIMEOUT`, 2 s by default) is killed by the agent's enforcer thread, so
/// that another host may take the workload over (the embedding runs no watchdog child).
public final class MigratableProgram: Sendable {
    public let agent: MigrationAgent
    public let host: WorkloadHost
    public let workload: EmbeddedWorkload

    private init(agent: MigrationAgent, host: WorkloadHost) {
        self.agent = agent
        self.host = host
        workload = host.workload as! EmbeddedWorkload  // the only kind `start` and `receive` run
    }

    /// Starts a fresh workload: maps a zeroed region (refused if larger than the memory available), claims
    /// generation 1 on the shared mount, creates the key if absent, and serves the control socket.
    /// - Throws: `AgentError`; nothing is mapped or claimed then.
    public static func start(_ options: ProgramOptions) throws(AgentError) -> MigratableProgram {
        try validate(options)
        do { _ = try PresharedKey.createIfAbsent(at: keyPath(options)) } catch { throw .key(error) }
        let agent = MigrationAgent(sharedDirectory: options.sharedDirectory, keyPath: options.keyPath)
        try agent.ensureVacant()
        let region: MigratableRegion
        let workload: EmbeddedWorkload
        do {
            region = try MigratableRegion.create(layout: RegionLayout(base: options.base, byteCount: options.size))
        } catch { throw .region(error) }
        do { workload = try EmbeddedWorkload(creating: region, name: options.name) } catch { throw .workload(error) }
        let host = try agent.start(workload) { WorkloadHost(program: $0) }
        do {
            try agent.serveControl(at: options.control)
        } catch {
            agent.stop()
            throw error
        }
        return MigratableProgram(agent: agent, host: host)
    }

    /// Serves the control socket and waits on `options.listen` until a migration of `options.name` commits
    /// here; failed attempts are logged to standard error and the next one awaited.
    /// - Returns: the program, now owning the next generation; nil if `ferry stop` ended the wait.
    /// - Throws: `AgentError` when the address or the control socket cannot be used.
    public static func receive(_ options: ProgramOptions) throws(AgentError) -> MigratableProgram? {
        guard let endpoint = options.listen else { throw .usage("listen: the receiver needs an ADDR:PORT to accept migrations on") }
        try validate(options)
        let listener: Listener
        do { listener = try Listener(on: endpoint) } catch { throw .listen(error) }
        var memory = DestinationMemory.onArrival(hugePages: false)
        if options.reserve > 0 {
            do { memory = .reserved(try RegionReservation(layout: RegionLayout(base: options.base, byteCount: options.reserve))) } catch { throw .region(error) }
        }
        let agent = MigrationAgent(sharedDirectory: options.sharedDirectory, keyPath: options.keyPath, nextKeyPath: options.nextKeyPath)
        try agent.serveControl(at: options.control)
        let name = options.name
        let workloads = ReceivableWorkloads(
            names: [name], attach: { region in try EmbeddedWorkload(attaching: region, name: name) },
            run: { WorkloadHost(program: $0) })
        agent.receive(on: listener, timeoutSeconds: options.timeoutSeconds, once: false, workloads: workloads, memory: memory) { message in
            FileHandle.standardError.write(Data("ferry receive (\(name)): \(message)\n".utf8))
        }
        guard agent.waitUntilRunningOrFinished() == .running, let host = agent.host else {
            agent.waitUntilFinished()  // `ferry stop` gets its reply before the program may exit
            agent.closeControl()
            return nil
        }
        return MigratableProgram(agent: agent, host: host)
    }

    /// What the safe point tells the program.
    public enum SafePointResult: Sendable {
        /// Go on with the next unit of work.
        case proceed
        /// The workload runs elsewhere now: end without touching the region.
        case moved
        /// `ferry stop` ended the workload (files flushed).
        case stopped
        /// Another process took the workload over: end without touching the region.
        case fenced
    }

    /// The safe point: counts it, and while a migration (or `ferry verify`, or `ferry stop`) wants the workload
    /// paused, flushes it and waits here until that is decided.
    public func safePoint() -> SafePointResult {
        workload.countSafePoint()
        switch host.safePoint() {
        case .proceed: return .proceed
        case .stopped:
            switch host.stopReason {
            case .handedOver?: return .moved
            case .fenced?: return .fenced
            default: return .stopped
            }
        }
    }

    /// The ownership generation this process holds.
    public var generation: UInt64 { agent.generation }

    /// Ends Ferry's part. If the workload still runs here, its files are flushed and it ends here (the record
    /// keeps naming this process's generation). Stops the control socket and waits for a reply in flight.
    public func close() {
        if !host.isStopped {
            try? workload.flush()
            host.finish()
        }
        agent.stop()
        agent.waitUntilFinished()
        agent.closeControl()
    }

    private static func keyPath(_ options: ProgramOptions) -> String { options.keyPath ?? options.sharedDirectory + "/ferry.key" }

    private static func validate(_ options: ProgramOptions) throws(AgentError) {
        guard RegionHeader.isValidName(options.name) else {
            throw .usage("name: the workload name \"\(options.name)\" must be 1 to \(RegionHeader.maximumNameLength) UTF-8 bytes")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: options.sharedDirectory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw .sharedMount("\(options.sharedDirectory) is not a directory; create it (on the shared mount) first")
        }
        guard !options.control.isEmpty else { throw .usage("control: a control socket path is required") }
    }
}
