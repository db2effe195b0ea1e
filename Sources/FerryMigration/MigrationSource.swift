#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerrySystem
public import FerryTracking
public import FerryTransport
import FerryRegion
import Synchronization
import FerryWire
public import FerryAuth

/// How a migration runs: where to, and when to stop iterating.
public struct MigrationOptions: Sendable {
    public var destination: Endpoint
    /// The pre-shared key the destination challenges us for before it accepts any state.
    public var key: PresharedKey
    /// Local address to connect from, so the stream uses the migration network.
    public var bindAddress: String?
    /// A cap on the predicted pause (seconds). Iterating goes on while another round makes the pause
    /// meaningfully shorter, and stops when it would not, if the pause is within the cap; over it, the
    /// `onStall` policy decides. nil: no cap, the shortest pause the link allows (with `onStall` abort or
    /// throttle, which need a bound, `defaultStallCap`).
    public var downtimeTarget: Double?
    /// The cap that `onStall` abort and throttle use when no `downtimeTarget` is given.
    public static let defaultStallCap = 0.05
    /// The pause is short enough that another round cannot make it meaningfully shorter (the pause's fixed
    /// costs, a pause at a safe point, the handoff, dwarf it).
    public static let negligiblePause = 0.0005
    public var maximumRounds = 30
    /// Give up iterating after sending this many times the region.
    public var maximumSentRatio = 10.0
    public var maximumBytesPerSecond: Double?
    public var tracker: TrackerChoice = .auto
    public var timeoutSeconds = 30.0
    /// When the destination's copy is proven identical: before the handoff, or after it.
    public var verification = VerificationMode.strict
    /// What to do when the workload dirties memory faster than the link drains it.
    public var onStall = StallPolicy.force
    /// Whether the stream is sealed (AES-256-GCM, the default) or plain after the handshake.
    public var encryption = StreamEncryption.aes256gcm
    /// Pre-copy (the default), post-copy, or pre-copy switching to post-copy when it stalls.
    public var mode = MigrationMode.preCopy
    /// Post-copy: how long to keep reconnecting when a link breaks after the switch-over (default 5 minutes).
    public var recoverWithinSeconds = 300.0
    /// Whether page data is compressed: by default only while it makes the stream faster (`auto`).
    public var compression = CompressionChoice.auto
    /// The cache of pages as last sent, against which pages sent again go as deltas when that is smaller
    /// (0: no deltas). 64 MiB by default, as QEMU's XBZRLE cache.
    public var deltaCacheBytes = 64 << 20

    public init(destination: Endpoint, key: PresharedKey) {
        self.destination = destination
        self.key = key
    }
}

/// How a migration moves the workload: before its pages, or after.
public enum MigrationMode: String, Sendable, CaseIterable {
    /// Rounds of pages while the workload runs, then a pause for the last one (the default).
    case preCopy = "pre-copy"
    /// The workload moves at once and its pages follow, on demand and in the background: a pause of a few
    /// milliseconds whatever it dirties; until every page arrived, neither side alone holds it.
    case postCopy = "post-copy"
    /// Pre-copy while it converges, post-copy when it stalls (the same as `--on-stall post-copy`).
    case hybrid
}

/// What a migration does when it does not converge (the pages left stop shrinking, or the round or byte
/// limit is reached while the predicted pause is still over the target).
public enum StallPolicy: String, Sendable, CaseIterable {
    /// Stop and copy anyway; the report gives the real, longer downtime.
    case force
    /// Give up: the workload keeps running on the source, nothing lost, and the report says why.
    case abort
    /// Slow the workload's steps until a round's dirtying fits the downtime target (auto-converge), then
    /// stop; the report says by how much (`throttle_percent`). At the round limit it stops anyway.
    case throttle
    /// Switch to post-copy: the workload moves now and the pages it lacks follow.
    case postCopy = "post-copy"
}

/// When a migration compares the destination's region with the paused source's.
public enum VerificationMode: String, Sendable, CaseIterable {
    /// Before the handoff: the digests must match or the workload stays on the source. Safest; the
    /// source's digest pass (and the destination's, for pages it holds) counts in the downtime. The default.
    case strict
    /// After the handoff: the destination resumes at once and the paused source's digest is compared with
    /// the one the destination kept as pages arrived; a mismatch is reported loudly but the move stands.
    case audit
}

/// The source side of a migration: streams the region of a running workload to a destination, pauses it
/// for the last round, checks the destination's copy, and hands ownership over.
///
/// Guarantee: if `migrate` throws, the workload runs on this host exactly as before (it was resumed, the
/// ownership record still names this process). If it returns `.completed`, the destination owns and runs
/// the workload and this host's loop is stopped for good.
public final class MigrationSource: Sendable {
    public let host: WorkloadHost
    public let sharedDirectory: String
    public let generation: UInt64

    /// The post-copy phase under way, if any (for `redirect(to:)`).
    private let postCopy = Mutex<PostCopySource?>(nil)

    /// During post-copy: the pages not sent yet (nil before the switch-over).
    public var postCopyPagesUnsent: Int? { postCopy.withLock { $0 }?.pagesUnsent }

    /// During post-copy: reconnect now, to `destination` when given (`ferry migrate --recover [--to]`). Returns
    /// false when no post-copy phase is under way.
    public func redirect(to destination: Endpoint?) -> Bool {
        guard let server = postCopy.withLock({ $0 }) else { return false }
        server.redirect(to: destination)
        return true
    }

    public init(host: WorkloadHost, sharedDirectory: String, generation: UInt64) {
        self.host = host
        self.sharedDirectory = sharedDirectory
        self.generation = generation
    }

    /// Pages per `pageData` frame at most (4 MiB with 4 KiB pages).
    static let pagesPerFrame = 1024

    /// `progress` sees each round when it ends; `live`, a round in progress a few times a second.
    public func migrate(
        _ options: MigrationOptions, progress: @Sendable (MigrationReport.Round) -> Void,
        live: @Sendable (MigrationReport.Live) -> Void = { _ in }
    ) -> MigrationReport {
        let start = ContinuousClock.now
        let region = host.workload.region
        let range = region.range
        var report = MigrationReport(
            outcome: .failed, reason: nil, tracker: "\(options.tracker)", workload: host.workload.workloadName,
            region_bytes: range.byteCount, destination: options.destination.description, total_seconds: 0,
            downtime_ms: nil, setup_seconds: nil, bytes_sent: 0, verify: options.verification.rawValue, verified: false, rounds: [])
        var paused = false
        var committed = false
        /// Past a post-copy switch-over: the destination runs the workload and this region holds pages it lacks.
        var postCopyStarted = false
        var connection: Connection?
        var tracker: WriteTracker?
        var tokenPath: String?
        defer {
            tracker?.stop()
            if let tokenPath { unlink(tokenPath) }
            if !committed && paused { host.resume() }
        }
        func finished(_ report: MigrationReport) -> MigrationReport {
            var report = report
            report.total_seconds = (ContinuousClock.now - start).secondsValue
            report.bytes_sent = connection?.byteCounts.sent ?? 0
            return report
        }
        do {
            let chosen = try options.tracker.resolve().backend
            report.tracker = chosen.rawValue
            let activeTracker = try WriteTracker(range: range, backend: chosen)
            tracker = activeTracker
            let link = try Connection.connect(
                to: options.destination, from: options.bindAddress, maximumBytesPerSecond: options.maximumBytesPerSecond,
                timeoutSeconds: options.timeoutSeconds)
            connection = link

            // 0. Prove we hold the key (and check the destination does) before anything else is said.
            do throws(AuthError) {
                try PeerAuthentication.proveToDestination(on: link, key: options.key, encryption: options.encryption)
                report.encryption = options.encryption.rawValue
            } catch {
                if case .refused(_, let refusal) = error { throw MigrationError.refused(refusal) }
                throw MigrationError.authentication(error)
            }

            // 1. Hello and the destination's resource check, with a one-time token on the shared mount.
            let token = (0..<4).map { _ in String(UInt64.random(in: 0...UInt64.max), radix: 16) }.joined()
            let tokenName = ".ferry-token-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            tokenPath = sharedDirectory + "/" + tokenName
            do { try SharedFile.writeNew(tokenPath!, contents: Array(token.utf8), durable: false) } catch {
                throw MigrationError.sharedMount("cannot write the one-time token file: \(error); is the shared directory mounted, writable and not full?")
            }
            // Post-copy may happen (asked for, or the answer to a stall): the destination then keeps per-page
            // hashes as pages arrive (the digest is compared at the end), and an urgent channel is opened.
            let onStall = options.mode == .hybrid ? StallPolicy.postCopy : options.onStall
            let usesPostCopy = options.mode == .postCopy || onStall == .postCopy
            report.mode = options.mode == .preCopy && onStall == .postCopy ? MigrationMode.hybrid.rawValue : options.mode.rawValue
            let info = try region.readHeader()
            try link.send(.hello(Hello(
                protocolVersion: wireProtocolVersion, buildIdentity: ProgramIdentity.buildIdentity(), architecture: Kernel.architecture,
                pageSize: UInt32(range.pageSize), regionBase: UInt64(range.start), regionSize: UInt64(range.byteCount),
                workloadName: info.workloadName, layoutVersion: info.layoutVersion, sharedMountToken: tokenName,
                sharedMountTokenValue: token, generation: generation, auditVerification: options.verification == .audit || usesPostCopy,
                images: ProgramIdentity.currentImages(), fixedLayout: ProgramIdentity.fixedLayoutRequested)))
            FaultInjection.reached(.hello, link: link)
            switch try link.receive(while: "waiting for the resource check") {
            case .helloReply(.accepted(let setup)): report.setup_seconds = setup
            case .helloReply(.refused(let refusal)): throw MigrationError.refused(refusal)
            case .abort(let reason): throw MigrationError.aborted("the destination: \(reason)")
            case let other: throw MigrationError.protocolViolation("expected the reply to hello, got \(other)")
            }

            // The urgent channel for demand faults, opened now so the switch-over does not wait for it.
            var urgentLink: Connection?
            let urgentToken = (0..<16).map { _ in UInt8.random(in: 0...255) }
            let peer = PostCopySource.Peer(
                destination: options.destination, bindAddress: options.bindAddress, key: options.key, encryption: options.encryption,
                maximumBytesPerSecond: options.maximumBytesPerSecond, timeoutSeconds: options.timeoutSeconds)
            if usesPostCopy {
                try link.send(.urgentChannel(token: urgentToken))
                let opened = try peer.connect()
                try opened.send(.urgentChannel(token: urgentToken))
                urgentLink = opened
            }

            /// The post-copy switch-over (DESIGN §3.3 step 7): pause, tell the destination which of its pages are
            /// stale, commit the record in its post-copy state, let the destination run, then serve what it lacks
            /// until it holds every page, and compare the digests.
            func switchToPostCopy(dirty: DirtyPages?, round: Int, predicted: Double) throws -> MigrationReport {
                guard let urgent = urgentLink else { throw MigrationError.protocolViolation("post-copy without an urgent channel") }
                let (next, prepared) = try prepareSuccessor(owner: "destination \(link.peer)", postCopySource: OwnershipRecord.thisProcess)
                defer { if !committed { prepared.discard() } }
                var timer = try pauseAtSafePoint()
                paused = true
                let pauseStart = timer.start
                let stale: DirtyPages
                if let dirty {
                    let final = try activeTracker.collect()
                    stale = DirtyPages(unorderedRuns: dirty.runs + final.runs)
                } else {
                    stale = .all(pageCount: range.pageCount)
                }
                timer.parts.final_collect_ms = timer.lap()
                // The header page goes now, with the switch: the destination reads it first, to attach the
                // workload, and would otherwise fault on it inside the pause.
                let lacking = DirtyPages(unorderedRuns: stale.runs.compactMap { run in
                    run.first == 0 ? (run.count > 1 ? PageRun(first: 1, count: run.count - 1) : nil) : run
                })
                try link.batched {
                    try link.sendPages(of: range, first: 0, count: 1)
                    for run in lacking.runs { try link.send(.discardPages(firstPage: UInt64(run.first), pageCount: UInt64(run.count))) }
                }
                guard let still = try OwnershipRecord.read(in: sharedDirectory), still.generation == generation else {
                    throw MigrationError.sharedMount("the ownership record changed during the migration; another host may own the workload")
                }
                try prepared.commit()
                committed = true
                postCopyStarted = true
                report.generation = next.generation
                timer.parts.handoff_ms = timer.lap()
                let server = PostCopySource(range: range, lacking: lacking, generation: next.generation, token: urgentToken, peer: peer)
                postCopy.withLock { $0 = server }
                defer { postCopy.withLock { $0 = nil } }
                server.startServing(on: urgent)
                let switched = ContinuousClock.now
                var linkAfterSwitch: Connection? = link
                do {
                    FaultInjection.reached(.switchOver, link: link)
                    try link.send(.postCopy(generation: next.generation, token: urgentToken))
                    switch try link.receive(while: "waiting for the destination to run the workload") {
                    case .running(let step): report.step_at_handoff = step
                    case let other: throw MigrationError.protocolViolation("expected running, got \(other)")
                    }
                } catch {
                    // The switch-over broke before the destination said it runs the workload. As in pre-copy, the
                    // claim of g+1 decides: unclaimed, the destination never ran it and this source takes it back
                    // (g+2); claimed, the destination runs it and needs the pages only this region holds.
                    server.stop()
                    var settled = try settleUnacknowledgedHandoff(next, after: error, report: report)
                    if settled.outcome != .completed {
                        postCopyStarted = false
                        return settled
                    }
                    settled.reason = nil
                    report = settled
                    linkAfterSwitch = nil
                    FileHandle.standardError.write(Data("ferry: the switch-over broke (\(Self.describe(error))) after the destination claimed the workload; reconnecting to send it the pages it lacks\n".utf8))
                }
                host.stop(flush: false, reason: .handedOver)
                timer.parts.resume_ack_ms = timer.lap()
                report.downtime_ms = (ContinuousClock.now - pauseStart).secondsValue * 1000
                report.downtime_parts = timer.parts
                if dirty != nil { report.stall = "post-copy" }
                let record = MigrationReport.Round(
                    round: round, pages: 1, zero_pages: 0, bytes: range.pageSize, seconds: (ContinuousClock.now - pauseStart).secondsValue,
                    dirty_pages: lacking.pageCount, bandwidth_mbps: 0, dirty_rate: 0, predicted_downtime_ms: predicted * 1000, final: true,
                    phase: "switch")
                report.rounds.append(record)
                progress(record)

                // The background stream (reconnecting if a link breaks), then both digests: ours of the frozen
                // region, theirs of what it installed.
                let resident = try ResidentPages.runs(of: range)
                var holdsMemory = [Bool](repeating: false, count: range.pageCount)
                for run in resident.runs { for page in run.first..<run.end { holdsMemory[page] = true } }
                let backgroundStart = ContinuousClock.now
                let outcome = try server.complete(
                    link: linkAfterSwitch, urgent: urgent, resident: holdsMemory, round: round + 1, recoverWithin: options.recoverWithinSeconds,
                    log: { FileHandle.standardError.write(Data("ferry: \($0)\n".utf8)) })
                let complete = (ContinuousClock.now - switched).secondsValue
                let backgroundSeconds = (ContinuousClock.now - backgroundStart).secondsValue
                let backgroundBytes = server.sentCounts.backgroundPages * range.pageSize
                let background = MigrationReport.Round(
                    round: round + 1, pages: server.sentCounts.backgroundPages, zero_pages: 0, bytes: backgroundBytes, seconds: backgroundSeconds,
                    dirty_pages: lacking.pageCount, bandwidth_mbps: Double(backgroundBytes) / Swift.max(backgroundSeconds, 1e-6) / 1e6,
                    dirty_rate: 0, predicted_downtime_ms: 0, final: false, phase: "background")
                report.rounds.append(background)
                progress(background)
                let ours = RegionDigest.compute(range, resident: resident, threads: RegionDigest.defaultThreads)
                report.source_digest = String(ours, radix: 16)
                let theirs = outcome.destinationDigest
                let demandPages = outcome.demandPages
                let buckets = outcome.latencyBuckets
                report.destination_digest = String(theirs, radix: 16)
                report.verified = theirs == ours
                if theirs != ours {
                    report.reason = "POST-COPY AUDIT FAILED: the destination's pages (digest \(String(theirs, radix: 16))) differ from the frozen source region (\(String(ours, radix: 16))); run 'ferry verify' on the destination now"
                }
                let counts = server.sentCounts
                report.post_copy = MigrationReport.PostCopy(
                    switch_round: round, lacking_pages: lacking.pageCount, demand_pages: Int(demandPages),
                    background_pages: counts.backgroundPages, sent_twice: counts.sentTwice, recoveries: counts.recoveries, complete_seconds: complete,
                    latency_buckets_us: buckets, latency_p50_us: Self.percentile(0.5, of: buckets),
                    latency_p99_us: Self.percentile(0.99, of: buckets))
                report.outcome = .completed
                return report
            }
            if options.mode == .postCopy {
                return finished(try switchToPostCopy(dirty: nil, round: 0, predicted: 0))
            }

            // 2. Full copy, with tracking armed first so nothing written meanwhile is missed.
            try activeTracker.arm()
            let resident = try ResidentPages.runs(of: range)
            var roundStart = ContinuousClock.now
            let sender = try PageSender(
                range: range, compression: options.compression, deltaCacheBytes: options.deltaCacheBytes, pagesPerFrame: Self.pagesPerFrame)
            report.compression = options.compression.rawValue
            report.delta_cache_bytes = options.deltaCacheBytes
            var sent = try sendRound(
                number: 0, pages: resident, allPages: range.pageCount, link: link, sender: sender, range: range, final: false, predicted: 0, live: live)
            var roundSeconds = (ContinuousClock.now - roundStart).secondsValue
            var bandwidth = Double(sent.bytes) / Swift.max(roundSeconds, 1e-6)
            var record = MigrationReport.Round(
                round: 0, pages: sent.pages, zero_pages: sent.zeroPages, bytes: sent.bytes, seconds: roundSeconds,
                dirty_pages: range.pageCount, bandwidth_mbps: bandwidth / 1e6, dirty_rate: 0, predicted_downtime_ms: 0, final: false)
            record.encoded(sender.tally)
            report.rounds.append(record)
            progress(record)

            // 3. Dirty rounds until the rest fits in the downtime target.
            var originalPace: Double?
            var round = 1
            var totalSent = sent.bytes
            var stalledRounds = 0
            var previousDirty = Int.max
            var stepsAtRoundStart = host.stepCount
            let cap = options.downtimeTarget ?? (onStall == .force ? Double.infinity : MigrationOptions.defaultStallCap)
            while true {
                roundStart = ContinuousClock.now
                let dirty = try activeTracker.collect()
                let dirtyRate = Double(dirty.pageCount) / Swift.max(roundSeconds, 1e-6)
                // What the dirty pages cost on the wire: less than a page each with deltas and compression.
                let expectedBytes = sender.expectedBytes(of: dirty)
                let bytesPerPage = dirty.pageCount > 0 ? expectedBytes / Double(dirty.pageCount) : Double(range.pageSize)
                let predicted = expectedBytes / Swift.max(bandwidth, 1)
                let stepsPerSecond = Double(host.stepCount - stepsAtRoundStart) / Swift.max(roundSeconds, 1e-6)
                stepsAtRoundStart = host.stepCount
                let exhausted = round >= options.maximumRounds
                    || Double(totalSent) >= options.maximumSentRatio * Double(range.byteCount)
                // Not converging: the pages left are not shrinking (by a tenth a round) while the pause they
                // predict is still over the target — the workload dirties memory as fast as the link drains it.
                let shrinking = Double(dirty.pageCount) <= 0.9 * Double(previousDirty)
                stalledRounds = predicted > cap && !shrinking ? stalledRounds + 1 : 0
                previousDirty = dirty.pageCount
                let stalled = exhausted || stalledRounds >= 2
                // Would one more round make the pause meaningfully shorter? While it is sent (at least a
                // millisecond: a round has fixed costs), the workload dirties pages at the rate just seen.
                let nextPages = Swift.min(Double(dirty.pageCount), dirtyRate * Swift.max(predicted, 0.001))
                let nextPredicted = nextPages * bytesPerPage / Swift.max(bandwidth, 1)
                let worthAnotherRound = shrinking && predicted > MigrationOptions.negligiblePause
                    && nextPredicted < 0.75 * predicted && predicted - nextPredicted >= MigrationOptions.negligiblePause
                if stalled && predicted > cap {
                    let why = String(
                        format: "%d pages still dirty after %d rounds; the workload dirties %.1f MB/s against a link of %.1f MB/s, a pause of %.0f ms against a target of %.0f ms",
                        dirty.pageCount, round, dirtyRate * Double(range.pageSize) / 1e6, bandwidth / 1e6, predicted * 1000, cap * 1000)
                    switch onStall {
                    case .postCopy:
                        return finished(try switchToPostCopy(dirty: dirty, round: round, predicted: predicted))
                    case .abort:
                        report.stall = "abort"
                        throw MigrationError.notConverging(why + "; aborted as asked (--on-stall abort)")
                    case .throttle where !exhausted:
                        // Auto-converge: slow the workload so one round's worth of dirtying fits half the target
                        // (the other half is left for the pause's fixed costs: verify, handoff, resume).
                        // The next round sends what is dirty now (`predicted` seconds); whatever the workload dirties
                        // meanwhile is the round after, so that is what must fit: pages per second = affordable pages
                        // ÷ that time (a step dirties about one page of the working set).
                        let affordable = 0.5 * cap * bandwidth / Double(range.pageSize)
                        let pace = Swift.max(1, Swift.min(stepsPerSecond * 0.5, affordable / Swift.max(predicted, 1e-3)))
                        host.setPace(pace)
                        report.stall = "throttle"
                        report.throttle_percent = Swift.max(report.throttle_percent ?? 0, 100 * (1 - pace / Swift.max(originalPace ?? stepsPerSecond, 1)))
                        if originalPace == nil { originalPace = stepsPerSecond }
                        stalledRounds = 0
                    case .force, .throttle:
                        report.stall = report.stall ?? "force"
                    }
                }
                if (!worthAnotherRound && predicted <= cap) || exhausted || (stalled && onStall == .force) {
                    report.predicted_downtime_ms = predicted * 1000
                    // Without a cap, a long pause that no round can shorten (the workload dirties memory as fast
                    // as the link drains it) is still a stall, handled by stopping: say so.
                    if options.downtimeTarget == nil, predicted > MigrationOptions.defaultStallCap, nextPredicted >= 0.75 * predicted {
                        report.stall = report.stall ?? "force"
                    }
                    // The next ownership record is written and synced now; the handoff only renames it.
                    let (next, prepared) = try prepareSuccessor(owner: "destination \(link.peer)", postCopySource: nil)
                    defer { if !committed { prepared.discard() } }

                    // 5. Stop-and-copy: pause at a safe point (files flushed), collect what is left, send it all.
                    var timer = try pauseAtSafePoint()
                    paused = true
                    let pauseStart = timer.start
                    let final = try activeTracker.collect()
                    let merged = DirtyPages(unorderedRuns: dirty.runs + final.runs)
                    timer.parts.final_collect_ms = timer.lap()
                    sent = try sendRound(
                        number: round, pages: merged, allPages: nil, link: link, sender: sender, range: range, final: true, predicted: predicted, live: live)
                    timer.parts.final_send_ms = timer.lap()
                    let finalSeconds = (ContinuousClock.now - pauseStart).secondsValue
                    record = MigrationReport.Round(
                        round: round, pages: sent.pages, zero_pages: sent.zeroPages, bytes: sent.bytes, seconds: finalSeconds,
                        dirty_pages: merged.pageCount, bandwidth_mbps: Double(sent.bytes) / Swift.max(finalSeconds, 1e-6) / 1e6,
                        dirty_rate: dirtyRate, predicted_downtime_ms: predicted * 1000, final: true)
                    record.encoded(sender.tally)
                    report.rounds.append(record)
                    // Shown once the pause is over (a progress line is a write to the control socket), or on the
                    // way out if the handoff fails.
                    let finalRound = record
                    var finalRoundShown = false
                    defer { if !finalRoundShown { progress(finalRound) } }

                    // Our digest is of the paused region: what it holds now, read from memory (pages that hold
                    // no memory count as zero), never what we sent, so an untracked write shows.
                    func sourceDigest() throws -> UInt64 {
                        let digest = try Self.withInjectedUntrackedWrite(range) { () throws -> UInt64 in
                            try RegionDigest.computeFromMemory(range, threads: RegionDigest.defaultThreads)
                        }
                        report.source_digest = String(digest, radix: 16)
                        return digest
                    }
                    func destinationDigest(while what: String) throws -> UInt64 {
                        switch try link.receive(while: what) {
                        case .digest(let algorithm, _) where algorithm != RegionDigest.algorithm:
                            throw MigrationError.protocolViolation("the destination's digest is \(algorithm), not \(RegionDigest.algorithm); run the same ferry build on both hosts")
                        case .digest(_, let value) where RegionDigest.value(of: value) != nil:
                            let digest = RegionDigest.value(of: value)!
                            report.destination_digest = String(digest, radix: 16)
                            return digest
                        case let other: throw MigrationError.protocolViolation("expected a digest, got \(other)")
                        }
                    }
                    if options.verification == .strict {
                        // Verify before the handoff: the destination's digest against ours, computed meanwhile.
                        try link.send(.digestRequest)
                        let ours = try sourceDigest()
                        let theirs = try destinationDigest(while: "waiting for the destination's digest")
                        guard theirs == ours else {
                            try? link.send(.abort(reason: "digest mismatch"))
                            throw MigrationError.digestMismatch(source: ours, destination: theirs)
                        }
                        report.verified = true
                        timer.parts.verify_ms = timer.lap()
                        FaultInjection.reached(.afterVerify, link: link)
                    }

                    // 6. Handoff: the atomic rename of the record is the commit point.
                    guard let still = try OwnershipRecord.read(in: sharedDirectory), still.generation == generation else {
                        throw MigrationError.sharedMount("the ownership record changed during the migration; another host may own the workload")
                    }
                    try prepared.rename()
                    committed = true
                    timer.parts.handoff_ms = timer.lap()
                    report.generation = next.generation
                    FaultInjection.reached(.afterCommit, link: link)
                    do {
                        try link.send(.commit(generation: next.generation))
                        switch try link.receive(while: "waiting for the destination to run the workload") {
                        case .running(let step): report.step_at_handoff = step
                        case let other: throw MigrationError.protocolViolation("expected running, got \(other)")
                        }
                    } catch {
                        // Still paused here, with the region intact: whoever claims g+1 first runs it.
                        prepared.syncDirectory()
                        return finished(try settleUnacknowledgedHandoff(next, after: error, report: report))
                    }
                    timer.parts.resume_ack_ms = timer.lap()
                    report.downtime_ms = (ContinuousClock.now - pauseStart).secondsValue * 1000
                    progress(finalRound)
                    finalRoundShown = true
                    // The workload runs on the destination: the pause is over. Now the record's directory is synced
                    // (as the destination syncs its claim): the rename is the commit point either way, and a failed
                    // sync does not undo it (`syncDirectory` warns). So the pause holds no durable operation.
                    host.stop(flush: false, reason: .handedOver)
                    prepared.syncDirectory()
                    timer.parts.record_sync_ms = timer.lap()
                    report.downtime_parts = timer.parts
                    report.outcome = .completed
                    if options.verification == .audit {
                        // Audit after the fact: the destination runs already; its digest is of the region as it
                        // resumed, ours of the region as we stopped. They must match; if not, say so loudly.
                        let theirs = try destinationDigest(while: "waiting for the destination's audit digest")
                        let ours = try sourceDigest()
                        report.verified = theirs == ours
                        if theirs != ours {
                            report.reason = "AUDIT FAILED: the destination resumed with a region that differs from the paused source (digest \(String(theirs, radix: 16)) ≠ \(String(ours, radix: 16))); a write was not tracked. Run 'ferry verify' on the destination now."
                        }
                    }
                    return finished(report)
                }
                sent = try sendRound(
                    number: round, pages: dirty, allPages: nil, link: link, sender: sender, range: range, final: false, predicted: predicted, live: live)
                totalSent += sent.bytes
                roundSeconds = (ContinuousClock.now - roundStart).secondsValue
                if sent.bytes > 64 * range.pageSize { bandwidth = Double(sent.bytes) / Swift.max(roundSeconds, 1e-6) }
                record = MigrationReport.Round(
                    round: round, pages: sent.pages, zero_pages: sent.zeroPages, bytes: sent.bytes, seconds: roundSeconds,
                    dirty_pages: dirty.pageCount, bandwidth_mbps: bandwidth / 1e6, dirty_rate: dirtyRate,
                    predicted_downtime_ms: predicted * 1000, final: false)
                record.encoded(sender.tally)
                report.rounds.append(record)
                progress(record)
                round += 1
            }
        } catch {
            report.reason = Self.describe(error)
            if postCopyStarted {
                // The destination may run the workload and wait for pages only this region holds: keep it.
                report.reason = "post-copy interrupted after the switch-over: \(Self.describe(error)); the destination may be running the workload and waiting for pages only this process holds: keep this process up"
                report.outcome = .failed
                return finished(report)
            }
            if committed {
                // Past the commit this source never runs generation g again: either the destination runs g+1
                // (it acknowledged, or claimed it) or settling who runs it failed on the shared mount; then
                // the claim files there tell, and 'ferry run --resume' restarts it if nobody does.
                if !host.isStopped { host.stop(flush: false, reason: .handedOver) }
                report.outcome = .completed
                return finished(report)
            }
            if error is TransportError {
                connection?.shutdown()  // the link itself failed: an abort frame would only wait for it again
            } else {
                try? connection?.send(.abort(reason: report.reason ?? "source failed"))
            }
            switch error as? MigrationError {
            case .refused?, .notConverging?: report.outcome = .aborted
            default: report.outcome = .failed
            }
            if paused || report.stall == "throttle" { host.setPace(nil) }
            return finished(report)
        }
    }

    /// The next generation's record, owned by `owner`, written and synced beside the current one (the handoff
    /// then only renames it): the slow part of a handoff, done while the workload still runs.
    private func prepareSuccessor(owner: String, postCopySource: String?) throws -> (OwnershipRecord, PreparedOwnershipRecord) {
        guard let current = try OwnershipRecord.read(in: sharedDirectory), current.generation == generation else {
            throw MigrationError.sharedMount("the ownership record no longer names generation \(generation); another host may own the workload")
        }
        let next = current.successor(owner: owner, postCopySource: postCopySource)
        return (next, try next.prepare(in: sharedDirectory))
    }

    /// Times the parts of a pause, from its start.
    struct PauseTimer {
        let start = ContinuousClock.now
        var parts = MigrationReport.DowntimeParts()
        private var mark = ContinuousClock.now

        /// Milliseconds since the previous lap (or the start).
        mutating func lap() -> Double {
            let now = ContinuousClock.now
            defer { mark = now }
            return (now - mark).secondsValue * 1000
        }
    }

    /// Every pause begins so: the workload's files are flushed while it still runs (the flush at the safe
    /// point then has only the last few writes left: the download's fsync was most of its pause), then it
    /// pauses at a safe point; the timer has `pause_ms`.
    private func pauseAtSafePoint() throws -> PauseTimer {
        host.flushAhead()
        var timer = PauseTimer()
        guard host.pause() else { throw MigrationError.aborted("the workload stopped: \(host.lastError ?? "unknown")") }
        timer.parts.pause_ms = timer.lap()
        return timer
    }

    /// The upper bound, in microseconds, of the bucket holding the `quantile` of a log2 latency histogram.
    static func percentile(_ quantile: Double, of buckets: [UInt64]) -> Double? {
        let total = buckets.reduce(0, +)
        guard total > 0 else { return nil }
        var seen: UInt64 = 0
        for (index, count) in buckets.enumerated() {
            seen += count
            if Double(seen) >= quantile * Double(total) { return Double(UInt64(1) << UInt64(index + 1)) }
        }
        return nil
    }

    /// How long a source that lost the link after the commit waits before it claims the generation itself:
    /// time for a destination holding the final round to see the link close and claim it first.
    static let reclaimGraceSeconds = 1.0

    /// After the commit, the link broke (or the destination died) before "running" arrived. The claim of
    /// g+1 decides: if the destination claimed it, it runs the workload and this loop stops for good; if not,
    /// claiming it ourselves bars the destination from ever running it, and the workload resumes here as
    /// generation g+2.
    private func settleUnacknowledgedHandoff(_ committed: OwnershipRecord, after error: any Error, report: MigrationReport) throws -> MigrationReport {
        var report = report
        let why = Self.describe(error)
        Thread.sleep(forTimeInterval: Self.reclaimGraceSeconds)
        let me = OwnershipRecord.thisProcess
        if try OwnershipClaim.claim(committed.generation, in: sharedDirectory, by: "\(me) (taken back by the source)") {
            let back = committed.successor(owner: me)
            guard try OwnershipClaim.claim(back.generation, in: sharedDirectory, by: me) else {
                throw MigrationError.sharedMount("generation \(back.generation) was claimed by another process while this source took the workload back; this source stops; 'ferry status' on that process, or the claim files on the shared mount, say who runs it")
            }
            try back.write(in: sharedDirectory)
            OwnershipClaim.removeClaims(before: back.generation, in: sharedDirectory)
            host.setPace(nil)  // undo any throttling
            host.resume()
            report.generation = back.generation
            report.outcome = .failed
            report.reason = "the destination never confirmed that it runs the workload (\(why)) and had not claimed generation \(committed.generation); the source took it back as generation \(back.generation) and runs it again"
        } else {
            host.stop(flush: false, reason: .handedOver)
            report.outcome = .completed
            report.reason = "the link broke before the destination's 'running' (\(why)), but the destination had claimed generation \(committed.generation): it runs the workload"
        }
        return report
    }

    /// Test-only hook (debug builds only, environment `FERRY_TEST_UNTRACKED_WRITE=1`): changes one byte of the
    /// paused region behind the tracker's back while `body` runs, then restores it, as a write no tracker sees
    /// would (DMA, a second mapping). The digest check must catch it and abort the handoff. Release builds do
    /// not contain it (`FERRY_TEST_HOOKS` is defined for debug builds only).
    static func withInjectedUntrackedWrite<T>(_ range: MemoryRange, _ body: () throws -> T) rethrows -> T {
        #if FERRY_TEST_HOOKS
        guard ProcessInfo.processInfo.environment["FERRY_TEST_UNTRACKED_WRITE"] == "1" else { return try body() }
        let address = range.baseAddress + range.byteCount - 1
        let saved = address.load(as: UInt8.self)
        address.storeBytes(of: saved ^ 0x5A, as: UInt8.self)
        defer { address.storeBytes(of: saved, as: UInt8.self) }
        return try body()
        #else
        return try body()
        #endif
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case let error as TransportError: "\(error)"
        case let error as TrackingError: "write tracking: \(error)"
        case let error as RegionError: "\(error)"
        default: "\(error)"
        }
    }

    /// Sends `pages` as one round: runs of non-zero pages as page data, zero pages as zero ranges; in
    /// round 0 (`allPages` set) every page not in `pages` is a zero range without being read.
    private func sendRound(
        number: Int, pages: DirtyPages, allPages: Int?, link: Connection, sender: PageSender, range: MemoryRange, final: Bool, predicted: Double,
        live: @Sendable (MigrationReport.Live) -> Void
    ) throws -> (pages: Int, zeroPages: Int, bytes: Int) {
        let before = link.byteCounts.sent
        sender.startRound()
        var dataPages = 0
        var zeroPages = 0
        // A few times a second, how far the round is (what a live progress line shows).
        let started = ContinuousClock.now
        var lastLive = started
        let total = allPages ?? pages.pageCount
        func showProgress() {
            let now = ContinuousClock.now
            guard now - lastLive >= .milliseconds(250) else { return }
            lastLive = now
            let seconds = (now - started).secondsValue
            let bytes = link.byteCounts.sent - before
            let rate = Double(bytes) / Swift.max(seconds, 1e-6)
            let done = dataPages + zeroPages
            let bytesPerPage = done > 0 ? Double(bytes) / Double(done) : Double(range.pageSize)
            live(MigrationReport.Live(
                round: number, pages_done: done, pages_total: total, bytes: bytes, seconds: seconds, rate_mbps: rate / 1e6,
                eta_seconds: Double(Swift.max(0, total - done)) * bytesPerPage / Swift.max(rate, 1), predicted_downtime_ms: predicted * 1000))
        }
        var cursor = 0
        // The phase a test fault (FERRY_TEST_FAULT) may break, reached after the round's first frame.
        let phase: MigrationPhase? = final ? .stopAndCopy : number == 0 ? .fullCopy : number == 1 ? .dirtyRound : nil
        var phaseReached = false
        func reachPhase() {
            guard let phase, !phaseReached else { return }
            phaseReached = true
            FaultInjection.reached(phase, link: link)
        }
        func sendZero(_ first: Int, _ count: Int) throws {
            guard count > 0 else { return }
            try link.send(.zeroPages(firstPage: UInt64(first), pageCount: UInt64(count)))
            if number > 0 { sender.forget(first: first, count: count) }
            zeroPages += count
            reachPhase()
            showProgress()
        }
        // Scattered pages go out gathered: a copy each, not a write and a sealed record each.
        try link.batched {
            for run in pages.runs {
                if allPages != nil { try sendZero(cursor, run.first - cursor) }
                cursor = run.end
                try Self.forEachFrame(of: run, in: range) { first, count, isZero in
                    if isZero {
                        try sendZero(first, count)
                    } else {
                        try sender.send(first: first, count: count, round: number, on: link)
                        dataPages += count
                        reachPhase()
                        showProgress()
                    }
                }
            }
            if let allPages { try sendZero(cursor, allPages - cursor) }
            reachPhase()
            let summary = RoundSummary(round: UInt32(number), pages: UInt64(dataPages), zeroPages: UInt64(zeroPages), bytes: UInt64(dataPages * range.pageSize), final: final)
            try link.send(.roundEnd(summary))
        }
        switch try link.receive(while: "waiting for round \(number) to be applied") {
        case .roundAck(let acknowledged) where acknowledged == UInt32(number): break
        case .abort(let reason): throw MigrationError.aborted("the destination: \(reason)")
        case let other: throw MigrationError.protocolViolation("expected the acknowledgement of round \(number), got \(other)")
        }
        return (dataPages, zeroPages, link.byteCounts.sent - before)
    }

    /// Splits `run` into the frames a round sends: consecutive pages of one kind (all zero, or holding data),
    /// at most `pagesPerFrame` each, in order.
    static func forEachFrame(of run: PageRun, in range: MemoryRange, _ body: (_ first: Int, _ count: Int, _ isZero: Bool) throws -> Void) rethrows {
        var page = run.first
        while page < run.end {
            let isZero = Self.isZero(range, page: page)
            var end = page + 1
            while end < run.end && end - page < pagesPerFrame && Self.isZero(range, page: end) == isZero { end += 1 }
            try body(page, end - page, isZero)
            page = end
        }
    }

    /// Whether a page is all zeros: its first word is zero and every byte equals the one 8 bytes before it
    /// (one vectorised memcmp, no zero buffer needed).
    static func isZero(_ range: MemoryRange, page: Int) -> Bool {
        let start = range.baseAddress + page * range.pageSize
        return start.load(as: UInt64.self) == 0 && memcmp(start, start + 8, range.pageSize - 8) == 0
    }
}
