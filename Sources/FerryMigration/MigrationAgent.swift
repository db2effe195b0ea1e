#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CShims
import FerryAuth
public import FerryRegion
import FerrySystem
import FerryTracking
public import FerryTransport
import FerryWire
import Synchronization

/// The part of a process that owns a migratable workload: it claims and renews ownership on the shared mount,
/// fences itself when another process took the workload over, serves the control socket (`ferry status`,
/// `verify`, `migrate`, `stop`), moves the workload away, receives one, and resumes one whose owner died.
///
/// `ferry run`, `ferry receive` and every program embedding Ferry (`ferry_start`, `ferry_receive`) go through
/// it, so all of them keep the same promise: this process runs the workload only while it holds the claim of
/// the generation the ownership record names (see `OwnershipRecord` for the state machine), and it stops
/// within a second when the record moves past it.
public final class MigrationAgent: Sendable {
    /// What this process is doing with the workload.
    public enum Role: String, Sendable {
        /// Waiting for a migration to arrive.
        case waiting
        case running
        /// Moving the workload away (it still runs here until the pause).
        case migrating
        /// The workload now runs elsewhere; this process must not touch the region.
        case migratedAway = "migrated-away"
        /// Stopped by `ferry stop` (files flushed), or a receive that gave up.
        case stopped
        /// Another process took the workload over (the record moved past this process's generation).
        case fenced
    }

    struct State {
        var role = Role.waiting
        var host: WorkloadHost?
        var generation: UInt64 = 0
        var lastMigration: String?
        var failed = false
        var control: ControlServer?
        /// Control requests that may finish the agent (`migrate`, `stop`) and have not replied yet.
        var pendingReplies = 0
        /// A post-copy migration that brought the workload here: the pages still to arrive.
        var incoming: MigrationDestination.Received?
        /// The migration under way from here, if any.
        var outgoing: MigrationSource?
        /// While this process owns the workload: the fence its shared files' writes pass, and when its last
        /// good lease renewal started (the enforcer's and the fence's deadlines run from there).
        var fence: WriteFence?
        var lastGoodRenewal: ContinuousClock.Instant?
        var leaseCounter: UInt64 = 0
        var renewalError: String?
        /// What this process saw of the current generation's lease (any role).
        var observed: LeaseObserver?
        /// Past a post-copy switch-over that did not complete: the destination owns the workload and this
        /// process only holds pages it lacks.
        var servesPagesOnly = false

        /// Whether this process runs the workload, so that its lease is enforced: not past a post-copy
        /// switch-over, where the destination owns it and this process only serves pages, writing nothing
        /// shared (killing it would lose those pages).
        var leaseEnforced: Bool {
            (role == .running || role == .migrating) && !servesPagesOnly && outgoing?.postCopyPagesUnsent == nil
        }
    }

    /// The shared mount: ownership record, claims, key, the workload's files.
    public let sharedDirectory: String
    /// The pre-shared key file.
    public let keyPath: String
    /// A second key a receiver also accepts (rotation: sources move to it, then it becomes the only one).
    public let nextKeyPath: String?
    let state = Mutex(State())
    private let changed = NSCondition()

    /// The lease's times, all derived from one I/O timeout (`LeaseTiming`).
    public let timing: LeaseTiming
    /// The watchdog child's command pipe (write end) and pid, when one runs.
    private let watchdog: (commands: CInt, pid: pid_t)?

    /// An agent for workloads kept in `sharedDirectory`; `keyPath` nil means `<sharedDirectory>/ferry.key`.
    /// Starts the ownership thread (lease renewal, fencing, observing) and the lease enforcer thread, both idle
    /// until a workload runs here.
    /// - Parameters:
    ///   - timing: the lease's times (`FERRY_IO_TIMEOUT` by default).
    ///   - watchdog: also start a watchdog child process, which kills this process (SIGKILL) when its lease
    ///     was not renewed for `timing.ownerDeadline`, even while it is stopped or frozen. It is forked here, so
    ///     create the agent before mapping large memory (`ferry run` and `ferry receive` do).
    public init(sharedDirectory: String, keyPath: String? = nil, nextKeyPath: String? = nil,
                timing: LeaseTiming = .fromEnvironment, watchdog: Bool = false) {
        self.sharedDirectory = sharedDirectory
        self.keyPath = keyPath ?? sharedDirectory + "/ferry.key"
        self.nextKeyPath = nextKeyPath
        self.timing = timing
        self.watchdog = watchdog ? Self.startWatchdog(deadline: timing.ownerDeadline, directory: sharedDirectory) : nil
        let watch = Thread { [self] in watchOwnership() }
        watch.name = "ferry-ownership"
        watch.start()
        let enforcer = Thread { [self] in enforceLease() }
        enforcer.name = "ferry-lease-enforcer"
        enforcer.start()
    }

    private let watchdogUnreachable = Mutex(false)

    /// The watchdog's pid, if one runs.
    public var watchdogPID: Int32? { watchdog?.pid }

    private static func startWatchdog(deadline: Double, directory: String) -> (commands: CInt, pid: pid_t)? {
        var ends: [CInt] = [0, 0]
        // A socket pair rather than a pipe: `send(MSG_NOSIGNAL)` to a watchdog that died is an error, not a
        // SIGPIPE that would kill a program embedding Ferry.
        guard socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue), 0, &ends) == 0 else {
            FileHandle.standardError.write(Data("ferry: cannot start the lease watchdog: socketpair: \(Errno.current)\n".utf8))
            return nil
        }
        // Neither end may leak into programs this process starts: the child keeps the read end by itself.
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
        let me = getpid()
        let message = "ferry watchdog: process \(me) did not renew its lease in \(directory) for \(String(format: "%.2f", deadline)) s (stopped, frozen or hung): killing it (SIGKILL) so another host can take the workload over\n"
        let pid = CShims_watchdog_start(ends[0], ends[1], me, CInt((deadline * 1000).rounded()), message)
        let error = Errno.current
        close(ends[0])
        guard pid > 0 else {
            close(ends[1])
            FileHandle.standardError.write(Data("ferry: cannot start the lease watchdog: fork: \(error)\n".utf8))
            return nil
        }
        return (ends[1], pid)
    }

    /// Tells the watchdog: 'a' (a good renewal: the deadline starts again) or 'd' (nothing to guard).
    private func tellWatchdog(_ command: UInt8) {
        guard let commands = watchdog?.commands else { return }
        var byte = command
        if send(commands, &byte, 1, CInt(MSG_NOSIGNAL)) != 1 && command == UInt8(ascii: "a"),
           watchdogUnreachable.withLock({ reported in defer { reported = true }; return !reported }) {
            FileHandle.standardError.write(Data("ferry: cannot reach the lease watchdog: \(Errno.current); the enforcer thread still guards the lease\n".utf8))
        }
    }

    // MARK: State

    public var role: Role { state.withLock { $0.role } }
    /// The generation this process holds (0 before it ran the workload).
    public var generation: UInt64 { state.withLock { $0.generation } }
    /// The running workload's host, if a workload runs (or migrates) here.
    public var host: WorkloadHost? { state.withLock { $0.host } }
    /// The last migration's outcome, or why the workload stopped, in words.
    public var lastMigration: String? { state.withLock { $0.lastMigration } }
    /// Whether the process should exit with a failure (fenced, a receive that gave up with `once`).
    public var failed: Bool { state.withLock { $0.failed } }
    /// Whether the agent is done: the workload moved away, was stopped or fenced.
    public var isFinished: Bool { [.migratedAway, .stopped, .fenced].contains(role) }

    /// Blocks until the agent is done (`isFinished`) and the control request that finished it has replied, so
    /// the process may exit.
    public func waitUntilFinished() {
        changed.lock()
        while !isFinished || state.withLock({ $0.pendingReplies > 0 }) { changed.wait() }
        changed.unlock()
        // The ownership and enforcer threads end within a check interval of the agent finishing: let them, so
        // that none of them is still reading the shared mount while the process exits.
        let deadline = ContinuousClock.now.advanced(by: .seconds(Swift.max(1, 4 * timing.checkInterval)))
        while threadsRunning.withLock({ $0 }) > 0 && ContinuousClock.now < deadline { usleep(2_000) }
    }

    /// The agent's own threads (ownership, enforcer) still running.
    private let threadsRunning = Mutex(2)

    /// Blocks until a workload runs here or the agent is done; returns the role then.
    public func waitUntilRunningOrFinished() -> Role {
        changed.lock()
        defer { changed.unlock() }
        while true {
            let role = self.role
            if role == .running || role == .migrating || isFinished { return role }
            changed.wait()
        }
    }

    private func update(_ body: (inout State) -> Void) {
        changed.lock()
        state.withLock { body(&$0) }
        changed.broadcast()
        changed.unlock()
    }

    /// Makes `host` this process's running workload, as `generation`: arms the fence of the workload's writes,
    /// the enforcer and the watchdog, then creates the generation's lease. The role changes first: a destination
    /// said "running" already, and `ferry status` or `verify` may ask at once. The claim is fresh, so the deadline
    /// starts now even if the lease cannot be created yet (the ownership thread retries it every renewal interval).
    func adopt(_ host: WorkloadHost, generation: UInt64) {
        let start = ContinuousClock.now
        let fence = WriteFence(lapse: "the lease of generation \(generation) was not renewed within \(String(format: "%.2g", timing.ownerDeadline)) s (6 × the I/O timeout); another host may own the workload")
        fence.extend(until: start.advanced(by: .seconds(timing.ownerDeadline)))
        host.workload.install(fence: fence)
        update {
            $0.host = host
            $0.generation = generation
            $0.role = .running
            $0.fence = fence
            $0.lastGoodRenewal = start
            $0.leaseCounter = 0
            $0.renewalError = nil
        }
        tellWatchdog(UInt8(ascii: "a"))
        let created = leaseWriter.withLock { writer -> Result<UInt64, SharedFileError> in
            do throws(SharedFileError) {
                if writer?.lease.generation != generation {  // else the ownership thread was first
                    writer = try LeaseWriter(OwnerLease(generation: generation, owner: OwnershipRecord.thisProcess, counter: 1, ioTimeout: timing.ioTimeout), in: sharedDirectory)
                }
                return .success(writer!.lease.counter)
            } catch { return .failure(error) }
        }
        switch created {
        case .success(let counter):
            state.withLock { if $0.generation == generation { $0.leaseCounter = Swift.max($0.leaseCounter, counter) } }
        case .failure(let failure):
            reportRenewalFailure("cannot create the lease of generation \(generation): \(failure)")
        }
    }

    /// The lease writer of the generation this process owns (used by the ownership thread and `adopt`).
    private let leaseWriter = Mutex<LeaseWriter?>(nil)

    // MARK: Starting

    /// Throws `AgentError.alreadyOwned` if the shared directory already holds a workload's record.
    public func ensureVacant() throws(AgentError) {
        if let record = try readRecord() {
            throw .alreadyOwned(directory: sharedDirectory, generation: record.generation, owner: record.owner)
        }
    }

    /// Starts a freshly created workload as generation 1: claims it, writes the ownership record, then runs it.
    /// - Parameters:
    ///   - seed: recorded for `resume` (the shipped workloads rebuild from it); nil for others.
    ///   - run: starts the workload's loop (a `WorkloadHost`).
    /// - Throws: `AgentError.alreadyOwned`, `.sharedMount`; nothing is claimed then.
    public func start(
        _ workload: any MigratableWorkload, seed: UInt64? = nil, run: (any MigratableWorkload) -> WorkloadHost
    ) throws(AgentError) -> WorkloadHost {
        try ensureVacant()
        OwnershipClaim.removeClaims(before: .max, in: sharedDirectory)  // left by a record that was removed
        let me = OwnershipRecord.thisProcess
        guard try sharedMount({ () throws(MigrationError) in try OwnershipClaim.claim(1, in: sharedDirectory, by: me) }) else {
            throw .sharedMount("another process claimed generation 1 in \(sharedDirectory) at the same time; use another shared directory")
        }
        let range = workload.region.range
        let record = OwnershipRecord(
            generation: 1, owner: me, workload: workload.workloadName, regionBase: UInt64(range.start),
            regionBytes: range.byteCount, seed: seed, stepsPerSecond: workload.region.header.stepsPerSecond)
        do {
            try record.write(in: sharedDirectory)
        } catch {
            OwnershipClaim.release(1, in: sharedDirectory)
            throw .sharedMount("\(error)")
        }
        let host = run(workload)
        adopt(host, generation: 1)
        return host
    }

    /// How a workload whose owner died is rebuilt from what the shared mount holds.
    public struct Resumer: Sendable {
        /// Why the workload named in the record cannot be rebuilt (nil: it can).
        public var refusal: @Sendable (OwnershipRecord) -> String?
        /// Rebuilds the workload in a fresh region mapped at the recorded address.
        public var rebuild: @Sendable (OwnershipRecord, MigratableRegion) throws -> any MigratableWorkload
        /// Starts its loop.
        public var run: @Sendable (any MigratableWorkload) -> WorkloadHost

        public init(
            refusal: @escaping @Sendable (OwnershipRecord) -> String?,
            rebuild: @escaping @Sendable (OwnershipRecord, MigratableRegion) throws -> any MigratableWorkload,
            run: @escaping @Sendable (any MigratableWorkload) -> WorkloadHost
        ) {
            self.refusal = refusal
            self.rebuild = rebuild
            self.run = run
        }
    }

    /// Restarts the workload recorded in the shared directory whose owner died: claims the next generation (so
    /// neither a late destination nor a second resume can run it too), rebuilds the workload from its files and
    /// runs it. Refuses while the recorded owner looks alive: on this host its process is checked; an owner on
    /// another host is judged by its lease: this call watches it for `timing.expiry` (8 × the I/O timeout, the
    /// longer of this process's and the owner's) on this host's monotonic clock, refuses as soon as its counter
    /// moves, and takes over only if it never did, unless `ownerGone`. No time written by another host is read.
    /// - Returns: the host and the generation it runs as.
    public func resume(ownerGone: Bool, with resumer: Resumer, log: (String) -> Void) throws(AgentError) -> (host: WorkloadHost, generation: UInt64) {
        let directory = sharedDirectory
        guard let record = try readRecord() else {
            throw .cannotResume("nothing to resume in \(directory): it has no ownership record; start a workload with 'ferry run' (without --resume)")
        }
        let currentOwner = try sharedMount { () throws(MigrationError) in try OwnershipClaim.owner(of: record.generation, in: directory) }
        // A post-copy the destination never claimed did not start there: the record's mark alone holds nothing.
        if let source = record.postCopySource, currentOwner != nil {
            throw .cannotResume("generation \(record.generation) is in a post-copy migration from \(source) to \(record.owner): neither side alone holds the workload (the source still holds pages the destination lacks), so it cannot be resumed from the shared mount; let the migration finish (both processes must stay up), see 'ferry status' on either side")
        }
        guard let base = record.regionBase, let bytes = record.regionBytes else {
            throw .cannotResume("the record in \(directory) was written by an older ferry and lacks the region's address and size; resume is not possible with it")
        }
        // Who runs the current generation: its claim. Without one, the source committed it but nobody ran it.
        var generation = record.generation
        if let owner = currentOwner {
            switch Self.processIsAlive(owner) {
            case true?:
                throw .cannotResume("generation \(record.generation) runs in \(owner) on this host, which is alive: nothing to resume; use 'ferry status' on its control socket")
            case nil where !ownerGone:
                try watchLease(of: record, owner: owner, log: log)
            default:
                break  // dead on this host, or declared gone
            }
            generation += 1
        }
        if let reason = resumer.refusal(record) {
            throw .cannotResume("cannot resume: the \(record.workload) workload of generation \(record.generation) \(reason) (its owner was \(currentOwner ?? record.owner)). Start a new workload in another shared directory (or remove \(OwnershipRecord.fileName) here)")
        }
        let me = OwnershipRecord.thisProcess
        guard try sharedMount({ () throws(MigrationError) in try OwnershipClaim.claim(generation, in: directory, by: me) }) else {
            throw .cannotResume("generation \(generation) was claimed by \((try? OwnershipClaim.owner(of: generation, in: directory)) ?? "another process") first; the workload runs there")
        }
        let workload: any MigratableWorkload
        do {
            let region = try MigratableRegion.create(layout: RegionLayout(base: UInt(base), byteCount: bytes))
            workload = try resumer.rebuild(record, region)
        } catch {
            OwnershipClaim.release(generation, in: directory)  // never ran: let the next attempt claim it
            switch error {
            case let error as RegionError: throw .region(error)
            case let error as WorkloadError: throw .workload(error)
            default: throw .cannotResume("\(error)")
            }
        }
        var next = record
        next.generation = generation
        next.owner = me
        next.changedAt = Date().timeIntervalSince1970
        do { try next.write(in: directory) } catch { throw .sharedMount("\(error)") }
        OwnershipClaim.removeClaims(before: generation, in: directory)
        let host = resumer.run(workload)
        adopt(host, generation: generation)
        return (host, generation)
    }

    /// Watches the lease of `record`'s generation, owned by `owner` on another host, for the expiry time on this
    /// host's monotonic clock; returns once it stayed unchanged that long, throws as soon as it moves.
    private func watchLease(of record: OwnershipRecord, owner: String, log: (String) -> Void) throws(AgentError) {
        let directory = sharedDirectory
        var observer = LeaseObserver()
        func look() throws(AgentError) -> Bool {
            do { return try observer.look(at: record.generation, in: directory) } catch { throw .sharedMount("cannot read the lease of generation \(record.generation): \(error)") }
        }
        _ = try look()
        // The owner's own timing, if longer, decides: it renews by its interval, not ours.
        let timing = LeaseTiming(ioTimeout: Swift.max(self.timing.ioTimeout, observer.lease?.ioTimeout ?? 0))
        let counter = observer.lease.map { "counter \($0.counter)" } ?? "no readable lease"
        log("generation \(record.generation) is owned by \(owner) on another host: watching its lease (\(counter)) for \(String(format: "%.2g", timing.expiry)) s on this host's clock before taking over (\(timing))")
        while observer.unchangedSeconds < timing.expiry {
            usleep(UInt32(Swift.max(0.005, Swift.min(timing.ioTimeout / 4, timing.expiry - observer.unchangedSeconds)) * 1e6))
            let before = observer.lease?.counter
            if try look() {
                let now = observer.lease.map { "\($0.counter)" } ?? "unreadable"
                throw .cannotResume("generation \(record.generation) is owned by \(owner) on another host, which renewed its lease while this host watched (counter \(before.map { "\($0)" } ?? "none") → \(now)): it looks alive. If that host is down for good, repeat with --owner-gone")
            }
            if let now = try readRecord(), now.generation != record.generation {
                throw .cannotResume("the ownership record moved from generation \(record.generation) to \(now.generation) (\(now.owner)) while this host watched the lease: someone else took the workload; see 'ferry status' there")
            }
        }
        log("the owner of generation \(record.generation), \(owner), has not renewed its lease (\(counter)) for \(String(format: "%.2g", observer.unchangedSeconds)) s on this host's clock; taking over")
    }

    // MARK: Receiving

    /// Accepts migrations on `listener` on a thread of its own until one commits here, then runs the workload
    /// (`waitUntilRunningOrFinished` tells when). A failed attempt is logged and the next one awaited, unless
    /// `once`: then the agent finishes, failed.
    ///
    /// With `.reserved` memory (a standby destination), a region that fits it is received into the memory
    /// populated beforehand; an attempt that took it and failed is followed by a fresh reservation.
    public func receive(
        on listener: Listener, timeoutSeconds: Double, once: Bool, workloads: ReceivableWorkloads,
        memory: DestinationMemory = .onArrival(hugePages: false), log: @escaping @Sendable (String) -> Void
    ) {
        let acceptor = Thread { [self] in
            var memory = memory
            while role == .waiting {
                do {
                    let connection = try listener.accept(connectionTimeoutSeconds: timeoutSeconds)
                    do {
                        // Loaded per attempt: the key may appear on the shared mount after we started.
                        var keys: [PresharedKey]
                        do {
                            keys = [try PresharedKey(loadingFrom: keyPath)]
                            if let nextKeyPath {
                                do { keys.append(try PresharedKey(loadingFrom: nextKeyPath)) } catch { log("the next key is not usable, accepting the current one only: \(error)") }
                            }
                        } catch {
                            try? connection.send(.helloReply(.refused(Refusal(
                                code: .authentication, reason: "the destination has no usable key: \(error)"))))
                            throw error
                        }
                        let received = try MigrationDestination.receive(
                            on: connection, sharedDirectory: sharedDirectory, keys: keys, workloads: workloads,
                            memory: memory, acceptUrgent: { try listener.accept(timeoutSeconds: timeoutSeconds, connectionTimeoutSeconds: timeoutSeconds) },
                            log: log)
                        // `ferry stop` may have ended the wait meanwhile: then nobody else runs what we claimed.
                        adopt(received.host, generation: received.generation)
                        if let session = received.postCopy {
                            update { $0.incoming = received }
                            // Until every page is here, a source whose link broke comes back on this listener.
                            acceptReconnections(on: listener, to: session, keys: keys, timeoutSeconds: timeoutSeconds, log: log)
                        }
                        return
                    } catch {
                        log("migration from \(connection.peer) failed: \(error)")
                        if case .reserved(let used) = memory, !used.isAvailable, !once {
                            // The failed attempt's region is unmapped by now: reserve the same memory again.
                            do {
                                let again = try RegionReservation(layout: used.layout, hugePages: used.hugePages)
                                memory = .reserved(again)
                                log("reserved \(used.layout) again, populated in \(String(format: "%.3f", again.populateSeconds)) s")
                            } catch {
                                memory = .onArrival(hugePages: used.hugePages)
                                log("cannot reserve \(used.layout) again (\(error)); the next migration maps its region when it arrives")
                            }
                        }
                        if once {
                            update { $0.role = .stopped; $0.failed = true; $0.lastMigration = "the migration from \(connection.peer) failed: \(error)" }
                            return
                        }
                    }
                } catch {
                    if role != .waiting { return }
                    log("\(error)")
                    update { $0.role = .stopped; $0.failed = true; $0.lastMigration = "\(error)" }
                    return
                }
            }
        }
        acceptor.name = "ferry-receive"
        acceptor.start()
    }

    /// Takes a reconnecting post-copy source's connections (authenticated, naming the session's token) until
    /// every page is here; refuses anything else meanwhile.
    private func acceptReconnections(on listener: Listener, to session: PostCopyDestination, keys: [PresharedKey],
                                     timeoutSeconds: Double, log: @escaping @Sendable (String) -> Void) {
        while !session.isFinished && role == .running {
            guard let connection = try? listener.accept(timeoutSeconds: 1, connectionTimeoutSeconds: timeoutSeconds) else { continue }
            do {
                do throws(AuthError) {
                    _ = try PeerAuthentication.challengeSource(on: connection, keys: keys)
                } catch {
                    throw MigrationError.authentication(error)
                }
                switch try connection.receive(while: "waiting for a reconnecting source") {
                case .postCopy(_, let token) where token == session.token:
                    try session.reattach(main: connection)
                    log("post-copy: the source reconnected from \(connection.peer); \(session.pagesLeft) pages to go")
                case .urgentChannel(let token) where token == session.token:
                    session.reattach(urgent: connection)
                case .hello:
                    try? connection.send(.helloReply(.refused(Refusal(
                        code: .busy, reason: "this receiver already runs a workload that is still arriving by post-copy; use another receiver"))))
                case let other:
                    throw MigrationError.protocolViolation("unexpected \(other) from \(connection.peer) during post-copy")
                }
            } catch {
                log("a connection from \(connection.peer) during post-copy was refused: \(error)")
            }
        }
    }

    // MARK: Control socket

    /// Serves `status`, `verify`, `migrate` and `stop` on the Unix socket `path` until `closeControl()`.
    public func serveControl(at path: String) throws(AgentError) {
        let server = try ControlChannel.serve(at: path) { [self] request, reply in
            let command = request["command"] as? String ?? ""
            // A request that may finish the agent holds the process until its reply is out.
            let finishing = command == "migrate" || command == "stop"
            if finishing { update { $0.pendingReplies += 1 } }
            defer { if finishing { update { $0.pendingReplies -= 1 } } }
            switch command {
            case "status": reply(status())
            case "verify": reply(verify())
            case "probe": reply(probe(request))
            case "migrate": reply(migrate(request, progress: reply))
            case "recover": reply(recover(request))
            case "stop":
                stop()
                reply(["event": "result", "ok": true])
            default: reply(["event": "result", "ok": false, "error": "unknown control command '\(command)'"])
            }
        }
        state.withLock { $0.control = server }
    }

    /// Stops serving the control socket and removes it.
    public func closeControl() {
        state.withLock { state -> ControlServer? in
            defer { state.control = nil }
            return state.control
        }?.close()
    }

    /// Ends the workload here (files flushed) and finishes the agent; a receiver stops waiting.
    public func stop() {
        let (host, incoming) = state.withLock { state -> (WorkloadHost?, MigrationDestination.Received?) in
            if ![.migratedAway, .fenced].contains(state.role) { state.role = .stopped }
            return (state.host, state.incoming)
        }
        update { _ in }
        // Pages still missing after post-copy: the workload may wait for one that never comes, so the stop
        // does not wait for its safe point (what it lacks is lost with this process either way).
        host?.stop(wait: (incoming?.pagesLeft ?? 0) == 0)
    }

    /// The `status` reply: role, pid, generation, and the workload's name, step, region and pace.
    public func status() -> ControlChannel.Message {
        let (role, host, generation, last) = state.withLock { ($0.role, $0.host, $0.generation, $0.lastMigration) }
        var message: ControlChannel.Message = ["event": "result", "ok": true, "role": role.rawValue, "pid": Int(getpid()), "generation": Int(generation)]
        if let host, ![.migratedAway, .fenced].contains(role) {
            message["workload"] = host.workload.workloadName
            message["step"] = Int(host.stepCount)
            message["region_base"] = "0x" + String(host.workload.region.range.start, radix: 16)
            message["region_bytes"] = host.workload.region.range.byteCount
            switch host.stepsPerSecond {
            case let pace? where pace.isFinite: message["steps_per_second"] = pace
            case .some: message["steps_per_second"] = "max"
            case nil: message["steps_per_second"] = "the program's own"
            }
            message["throttle"] = host.throttle
            if let error = host.lastError { message["error"] = error }
        }
        if let last { message["last_migration"] = last }
        if let outgoing = state.withLock({ $0.outgoing }), let unsent = outgoing.postCopyPagesUnsent {
            message["post_copy"] = "the workload runs on the destination, which still lacks pages this process holds (\(unsent) not sent yet); until it has them all, neither side alone holds the workload: keep this process up"
            message["post_copy_pages_left"] = unsent
        }
        if let incoming = state.withLock({ $0.incoming }), incoming.pagesLeft > 0 {
            message["post_copy"] = "from \(incoming.source): \(incoming.pagesLeft) pages still to arrive; until then neither side alone holds the workload"
                + (incoming.postCopyInterruption.map { "; INTERRUPTED: \($0)" } ?? "")
            message["post_copy_pages_left"] = incoming.pagesLeft
        }
        ownership(into: &message)
        return message
    }

    /// The shared mount's view for `status`: the record, the claims, and the current generation's lease with
    /// how long ago its counter last changed as this process saw it (its own renewal, for the owner).
    private func ownership(into message: inout ControlChannel.Message) {
        message["io_timeout"] = timing.ioTimeout
        message["lease_timing"] = "\(timing)"
        if let pid = watchdog?.pid { message["watchdog_pid"] = Int(pid) }
        let record: OwnershipRecord?
        do { record = try OwnershipRecord.read(in: sharedDirectory) } catch {
            message["record_error"] = "\(error)"
            record = nil
        }
        if let record {
            var entry: ControlChannel.Message = ["generation": Int(record.generation), "owner": record.owner, "workload": record.workload]
            if let source = record.postCopySource { entry["post_copy_source"] = source }
            message["record"] = entry
        }
        do {
            message["claims"] = try OwnershipClaim.all(in: sharedDirectory).map { ["generation": Int($0.generation), "owner": $0.owner] as ControlChannel.Message }
        } catch { message["claims_error"] = "\(error)" }
        let (role, generation, last, counter, renewalError, observed) = state.withLock {
            ($0.role, $0.generation, $0.lastGoodRenewal, $0.leaseCounter, $0.renewalError, $0.observed)
        }
        guard let current = record?.generation else { return }
        var lease: ControlChannel.Message = ["generation": Int(current)]
        if (role == .running || role == .migrating) && generation == current, let last {
            lease["owner"] = OwnershipRecord.thisProcess
            lease["counter"] = Int(counter)
            lease["seconds_since_change"] = (ContinuousClock.now - last).secondsValue
            lease["seen_by"] = "this process renews it"
        } else {
            let read = try? OwnerLease.read(current, in: sharedDirectory)
            if let found = read?.lease {
                lease["owner"] = found.owner
                lease["counter"] = Int(found.counter)
                lease["owner_io_timeout"] = found.ioTimeout
            } else {
                lease["owner"] = read == nil ? "(no lease file)" : "(lease unreadable)"
            }
            if let observed, observed.generation == current {
                let since = observed.unchangedSeconds
                lease["seconds_since_change"] = since
                lease["seen_by"] = observed.changes == 0
                    ? "this process, unchanged since it began watching (at least this long)" : "this process, on its own clock"
            } else {
                lease["seen_by"] = "not watched yet by this process"
            }
        }
        if let renewalError { lease["renewal_error"] = renewalError }
        message["lease"] = lease
    }

    /// The `verify` reply: pauses the workload at a safe point, checks its invariants and that this process
    /// holds the current generation (the record names it and the claim is ours), lets it go on.
    public func verify() -> ControlChannel.Message {
        guard let host = state.withLock({ $0.role == .running ? $0.host : nil }) else {
            return ["event": "result", "ok": false, "error": "no workload runs in this process (\(role.rawValue))"]
        }
        guard host.pause() else { return ["event": "result", "ok": false, "error": "the workload loop has stopped: \(host.lastError ?? "unknown")"] }
        defer { host.resume() }
        let report = host.workload.verify()
        let generation = self.generation
        let recordOK = (try? OwnershipRecord.read(in: sharedDirectory))??.generation == generation
        let ownerOK = recordOK && (try? OwnershipClaim.owner(of: generation, in: sharedDirectory)) == OwnershipRecord.thisProcess
        return [
            "event": "result", "ok": report.passed && ownerOK, "step": Int(host.stepCount), "summary": report.summary,
            "report": report.description, "owner_generation_matches": ownerOK,
        ]
    }

    /// The `recover` reply: during post-copy, makes the migration reconnect (to `to`, when given) now.
    func recover(_ request: ControlChannel.Message) -> ControlChannel.Message {
        guard let source = state.withLock({ $0.outgoing }) else {
            return ["event": "result", "ok": false, "error": "no migration is under way from this process; nothing to recover"]
        }
        var destination: Endpoint?
        if let to = request["to"] as? String {
            guard let endpoint = Endpoint(to) else { return ["event": "result", "ok": false, "error": "'to' must be HOST:PORT"] }
            destination = endpoint
        }
        guard source.redirect(to: destination) else {
            return ["event": "result", "ok": false, "error": "the migration from this process is not in post-copy; nothing to recover"]
        }
        return ["event": "result", "ok": true, "summary": "post-copy reconnects " + (destination.map { "to \($0)" } ?? "to the same destination") + " now"]
    }

    /// Exit statuses of a `migrate` reply, as `ferry migrate` uses them.
    public enum MigrateStatus: Int, Sendable {
        case completed = 0, failed = 1, refused = 2, usage = 64
    }

    /// The `migrate` reply: moves the workload to `request["to"]` with the settings of the request
    /// (`downtime_target`, `max_rounds`, `max_bandwidth`, `bind`, `timeout`, `tracker`, `verify`, `on_stall`,
    /// `encryption`),
    /// sending each round to `progress`. On success the agent is finished (the workload runs elsewhere).
    public func migrate(_ request: ControlChannel.Message, progress: @escaping @Sendable (ControlChannel.Message) -> Void) -> ControlChannel.Message {
        func failure(_ status: MigrateStatus, _ error: String) -> ControlChannel.Message {
            ["event": "result", "ok": false, "status": status.rawValue, "error": error]
        }
        guard let to = request["to"] as? String, let endpoint = Endpoint(to) else {
            return failure(.usage, "'to' must be HOST:PORT")
        }
        if let incoming = state.withLock({ $0.incoming }), incoming.pagesLeft > 0 {
            return failure(.failed, "the workload is still arriving by post-copy from \(incoming.source) (\(incoming.pagesLeft) pages left); migrate it once every page is here ('ferry status' shows the pages left)")
        }
        let claimed = state.withLock { state -> (WorkloadHost, UInt64)? in
            guard state.role == .running, let host = state.host else { return nil }
            state.role = .migrating
            return (host, state.generation)
        }
        guard let (host, generation) = claimed else {
            return failure(.failed, "no workload runs here to migrate (\(role.rawValue))")
        }
        if let probing = probeInProgressRefusal() {
            update { if $0.role == .migrating { $0.role = .running } }
            return failure(.failed, probing)
        }
        let key: PresharedKey
        do throws(KeyError) {
            key = try PresharedKey(loadingFrom: keyPath)
        } catch {
            update { $0.role = .running }
            return failure(.failed, "\(error)")
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
        if let value = request["encryption"] as? String, let encryption = StreamEncryption(rawValue: value) { options.encryption = encryption }
        if let value = request["mode"] as? String, let mode = MigrationMode(rawValue: value) { options.mode = mode }
        if let value = request["recover_within"] as? Double, value > 0 { options.recoverWithinSeconds = value }
        if let value = request["compress"] as? String, let choice = CompressionChoice(rawValue: value) { options.compression = choice }
        if let value = request["delta_cache"] as? Int, value >= 0 { options.deltaCacheBytes = value }
        let source = MigrationSource(host: host, sharedDirectory: sharedDirectory, generation: generation)
        update { $0.outgoing = source }
        defer { update { $0.outgoing = nil } }
        let report = source.migrate(options) { round in
            progress([
                "event": "progress", "round": round.round, "pages": round.pages, "zero_pages": round.zero_pages,
                "bytes": round.bytes, "seconds": round.seconds, "bandwidth_mbps": round.bandwidth_mbps,
                "dirty_rate": round.dirty_rate, "predicted_downtime_ms": round.predicted_downtime_ms, "final": round.final,
                "phase": round.phase ?? "",
            ])
        } live: { live in
            progress([
                "event": "live", "round": live.round, "pages_done": live.pages_done, "pages_total": live.pages_total,
                "bytes": live.bytes, "seconds": live.seconds, "rate_mbps": live.rate_mbps, "eta_seconds": live.eta_seconds,
                "predicted_downtime_ms": live.predicted_downtime_ms,
            ])
        }
        let completed = report.outcome == .completed
        let encoded = ((try? JSONSerialization.jsonObject(with: JSONEncoder().encode(report))) as? [String: any Sendable]) ?? [:]
        // A refusal by the destination exits 2; a migration given up on (non-convergence) or failed exits 1.
        let status: MigrateStatus = completed ? .completed : (report.outcome == .aborted && report.stall == nil ? .refused : .failed)
        let reply: ControlChannel.Message = ["event": "result", "ok": completed, "status": status.rawValue, "report": encoded, "error": report.reason ?? ""]
        update {
            if completed {
                $0.role = .migratedAway
            } else if report.post_copy != nil || report.reason?.hasPrefix("post-copy interrupted") == true {
                // Past a post-copy switch-over: the destination may need this region's pages; stay as we are.
                $0.servesPagesOnly = true
            } else if $0.role == .migrating {
                $0.role = .running  // a stop that came in meanwhile stands
            }
            // A source that took the workload back after a lost handoff runs it under a new generation.
            if !completed, let generation = report.generation { $0.generation = generation }
            $0.lastMigration = "\(report.outcome.rawValue)\(report.reason.map { ": \($0)" } ?? "")"
        }
        return reply
    }

    // MARK: Ownership

    /// The ownership thread. While this process owns the workload it renews the lease every
    /// `timing.renewalInterval` (a renewal counts only if it finished within the I/O timeout; each good one moves
    /// the fence's deadline on and tells the watchdog), and checks that the record still names its generation:
    /// if the record moved on while the workload runs here (someone resumed it elsewhere, believing this process
    /// dead), the fence is revoked, the workload stops at once and the agent finishes as `.fenced`. In every role
    /// it watches the current generation's lease, for `ferry status`.
    private func watchOwnership() {
        defer { threadsRunning.withLock { $0 -= 1 } }
        let clock = ContinuousClock()
        var nextRenewal = clock.now
        var nextLook = clock.now
        var observer = LeaseObserver()
        var renewing: UInt64 = 0  // the generation whose lease this thread renews
        while true {
            usleep(UInt32(timing.checkInterval * 1e6))
            let (role, generation) = state.withLock { ($0.role, $0.generation) }
            switch role {
            case .stopped, .migratedAway, .fenced:
                tellWatchdog(UInt8(ascii: "d"))
                return
            case .waiting: break
            case .running, .migrating:
                if renewing != generation {
                    // A new generation (adopted, or taken back by a source as g+2): its lease at once.
                    renewing = generation
                    nextRenewal = clock.now
                }
                if clock.now >= nextRenewal {
                    nextRenewal = clock.now.advanced(by: .seconds(timing.renewalInterval))
                    renew(generation)
                }
            }
            guard clock.now >= nextLook else { continue }
            nextLook = clock.now.advanced(by: .seconds(timing.renewalInterval))
            // An unreadable or missing record is not proof of another owner: act only on a newer generation.
            guard let record = try? OwnershipRecord.read(in: sharedDirectory) else { continue }
            if (try? observer.look(at: record.generation, in: sharedDirectory)) != nil {
                let seen = observer
                state.withLock { $0.observed = seen }
            }
            guard role == .running, record.generation != generation else { continue }
            if record.generation < generation {
                guard restoreLostCommit(found: record, generation: generation) else { continue }
            }
            let fenced = state.withLock { state -> WorkloadHost? in
                guard state.role == .running, state.generation == generation else { return nil }  // a migration began meanwhile
                state.role = .fenced
                state.failed = true
                state.lastMigration = "fenced: the ownership record names generation \(record.generation) (\(record.owner)), not this process's \(generation); the workload was stopped here"
                state.fence?.revoke("the ownership record names generation \(record.generation) (\(record.owner)), not this process's \(generation)")
                return state.host
            }
            guard let host = fenced else { continue }
            tellWatchdog(UInt8(ascii: "d"))
            // Said before the agent counts as finished: the process may exit as soon as it does.
            FileHandle.standardError.write(Data("ferry: the ownership record in \(sharedDirectory) moved to generation \(record.generation) (\(record.owner)) while this process ran generation \(generation): another process owns the workload now; stopping it here\n".utf8))
            host.stop(flush: false, reason: .fenced)
            update { _ in }
            return
        }
    }

    /// The record names a generation older than the one this process runs: the file server lost the handoff's
    /// rename (its host crashed between the rename and the directory sync, which both sides run just after
    /// "running"), perhaps this process's claim too. This process is the owner: it won its claim and the source
    /// stopped when it said "running". So it claims its generation again if that claim is gone and writes the
    /// record again, durably, long before another host could take over (that needs 8T of an unchanged lease of
    /// the older generation; this runs every T).
    /// - Returns: false when the record was restored (or restoring it failed on the mount: the next look retries);
    ///   true when another process holds this generation's claim: this process must stop.
    private func restoreLostCommit(found record: OwnershipRecord, generation: UInt64) -> Bool {
        let me = OwnershipRecord.thisProcess
        let say = { (message: String) in FileHandle.standardError.write(Data("ferry: \(message)\n".utf8)) }
        do throws(MigrationError) {
            var holder = try OwnershipClaim.owner(of: generation, in: sharedDirectory)
            if holder == nil, try OwnershipClaim.claim(generation, in: sharedDirectory, by: me) { holder = me }
            guard holder == me else {
                say("the ownership record in \(sharedDirectory) went back to generation \(record.generation) and generation \(generation), which this process runs, is claimed by \(holder ?? "another process")")
                return true
            }
            var restored = record
            restored.generation = generation
            restored.owner = me
            restored.changedAt = Date().timeIntervalSince1970
            try restored.write(in: sharedDirectory)
            say("the ownership record in \(sharedDirectory) named generation \(record.generation), older than generation \(generation), which this process runs: the file server lost the handoff's last writes; the record (and the claim) are written again")
        } catch {
            say("the ownership record in \(sharedDirectory) names generation \(record.generation), older than generation \(generation), which this process runs, and restoring it failed: \(error); retrying in \(timing.renewalInterval) s")
        }
        return false
    }

    /// One renewal of the lease of `generation` (creating the lease file if `adopt` could not). A lease whose
    /// deadline passed is lost for good, as in sanlock: a renewal after it (a process thawed after a freeze)
    /// must not revive it, since another host may have taken the workload over meanwhile.
    private func renew(_ generation: UInt64) {
        let start = ContinuousClock.now
        let lost = state.withLock { state -> WriteFence? in
            guard state.generation == generation, state.leaseEnforced, let last = state.lastGoodRenewal,
                  (start - last).secondsValue > timing.ownerDeadline else { return nil }
            return state.fence ?? WriteFence()
        }
        if let lost {
            lost.revoke("the lease of generation \(generation) lapsed (no good renewal for more than \(String(format: "%.2g", timing.ownerDeadline)) s); it is not renewed again")
            return  // the enforcer stops this process
        }
        let result = leaseWriter.withLock { writer -> Result<UInt64, SharedFileError> in
            do throws(SharedFileError) {
                if let current = writer, current.lease.generation == generation {
                    try current.renew()
                } else {
                    writer = try LeaseWriter(OwnerLease(generation: generation, owner: OwnershipRecord.thisProcess, counter: 1, ioTimeout: timing.ioTimeout), in: sharedDirectory)
                }
                return .success(writer!.lease.counter)
            } catch { return .failure(error) }
        }
        let took = (ContinuousClock.now - start).secondsValue
        switch result {
        case .success(let counter) where took <= timing.ioTimeout:
            let fence = state.withLock { state -> WriteFence? in
                guard state.generation == generation else { return nil }
                state.lastGoodRenewal = start
                state.leaseCounter = counter
                state.renewalError = nil
                return state.fence
            }
            fence?.extend(until: start.advanced(by: .seconds(timing.ownerDeadline)))
            if state.withLock({ $0.leaseEnforced }) { tellWatchdog(UInt8(ascii: "a")) }
        case .success:
            let error = String(format: "the lease renewal took %.3f s, more than the I/O timeout (%.3f s): it does not count", took, timing.ioTimeout)
            reportRenewalFailure(error)
        case .failure(let error):
            reportRenewalFailure("cannot renew the lease of generation \(generation): \(error)")
        }
    }

    private func reportRenewalFailure(_ error: String) {
        let first = state.withLock { state -> Bool in
            defer { state.renewalError = error }
            return state.renewalError == nil
        }
        if first {
            FileHandle.standardError.write(Data("ferry: \(error); this process stops if no renewal succeeds within \(String(format: "%.2g", timing.ownerDeadline)) s of the last good one\n".utf8))
        }
    }

    /// The lease enforcer, a thread of its own (a renewal hung in the kernel does not hold it up): kills this
    /// process (SIGKILL) once its last good renewal started more than `timing.ownerDeadline` ago while it owns the
    /// workload, as sanlock does with a holder that cannot renew. Other hosts take over only after
    /// `timing.expiry`, later. The watchdog child does the same when this whole process is stopped.
    private func enforceLease() {
        defer { threadsRunning.withLock { $0 -= 1 } }
        #if FERRY_TEST_HOOKS
        // Test-only (debug builds): without the enforcer, the tests show that the fencing of the files holds alone.
        if ProcessInfo.processInfo.environment["FERRY_TEST_NO_ENFORCER"] == "1" { return }
        #endif
        while true {
            usleep(UInt32(timing.checkInterval * 1e6))
            let (role, last, generation, fence, enforced) = state.withLock { ($0.role, $0.lastGoodRenewal, $0.generation, $0.fence, $0.leaseEnforced) }
            switch role {
            case .stopped, .migratedAway, .fenced: return
            case .waiting: continue
            case .running, .migrating: break
            }
            guard enforced else {
                tellWatchdog(UInt8(ascii: "d"))
                continue
            }
            guard let last else { continue }
            let silent = (ContinuousClock.now - last).secondsValue
            guard silent > timing.ownerDeadline else { continue }
            fence?.revoke("the lease of generation \(generation) was not renewed for \(String(format: "%.2f", silent)) s")
            let error = state.withLock { $0.renewalError } ?? "no renewal finished"
            FileHandle.standardError.write(Data("ferry: the lease of generation \(generation) in \(sharedDirectory) was not renewed for \(String(format: "%.2f", silent)) s (deadline \(String(format: "%.2g", timing.ownerDeadline)) s; last error: \(error)): another host may take the workload over after \(String(format: "%.2g", timing.expiry)) s; this process stops now (SIGKILL)\n".utf8))
            kill(getpid(), SIGKILL)
        }
    }

    private func readRecord() throws(AgentError) -> OwnershipRecord? {
        try sharedMount { () throws(MigrationError) in try OwnershipRecord.read(in: sharedDirectory) }
    }

    private func sharedMount<T>(_ body: () throws -> T) throws(AgentError) -> T {
        do { return try body() } catch let MigrationError.sharedMount(reason) { throw .sharedMount(reason) } catch { throw .sharedMount("\(error)") }
    }

    /// Whether the process `host:pid` (a claim's owner) is alive, when it is on this host; nil for another host.
    public static func processIsAlive(_ owner: String) -> Bool? {
        let identity = owner.split(separator: " ").first.map(String.init) ?? owner
        let parts = identity.split(separator: ":")
        guard parts.count == 2, let pid = pid_t(parts[1]) else { return nil }
        guard String(parts[0]) == OwnershipRecord.thisHost else { return nil }
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        // A killed process its parent has not reaped yet is a zombie: dead, though kill(2) still finds it.
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.range(of: ") ", options: .backwards) else { return true }
        return !stat[close.upperBound...].hasPrefix("Z")
    }
}
