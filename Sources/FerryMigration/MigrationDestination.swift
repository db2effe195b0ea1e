#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import FerryRegion
public import FerryTransport
import FerrySystem
import FerryTracking
import FerryWire
public import FerryAuth

/// The workloads a receiving process can run, and how it runs one that arrived. The engine knows no workload
/// by name: a `ferry receive` passes the shipped ones, an embedding program its own.
public struct ReceivableWorkloads: Sendable {
    /// The names a hello may carry; any other is refused before anything is mapped.
    public var names: [String]
    /// Attaches the workload of a region that arrived complete (validating its header, reopening its
    /// files); runs nothing yet, so a workload that cannot start here is never claimed.
    public var attach: @Sendable (MigratableRegion) throws -> any MigratableWorkload
    /// Builds the attached workload's host with nothing running: a stepped workload's loop waits at its first
    /// safe point (`WorkloadHost(workload:paused: true)`), a program's loop starts when `receive` returns. The
    /// destination builds it before the commit and resumes it once this process owns the generation.
    public var run: @Sendable (any MigratableWorkload) -> WorkloadHost

    public init(
        names: [String], attach: @escaping @Sendable (MigratableRegion) throws -> any MigratableWorkload,
        run: @escaping @Sendable (any MigratableWorkload) -> WorkloadHost
    ) {
        self.names = names
        self.attach = attach
        self.run = run
    }
}

/// Where a destination's region comes from.
public enum DestinationMemory: Sendable {
    /// Mapped when the hello is accepted, then populated by a `RegionPopulator` running ahead of the stream
    /// (a page frame waits only where it catches up); `hugePages`: backed by transparent huge pages where
    /// the kernel allows them.
    case onArrival(hugePages: Bool)
    /// Taken from a standby reservation made before any migration arrived: nothing is left to set up.
    case reserved(RegionReservation)
}

/// The destination side: checks a source's hello, rebuilds the region at the same address from the
/// stream, proves it matches, and takes the workload over at the ownership commit.
public enum MigrationDestination {
    /// What a successful receive hands over: the workload, running.
    public struct Received: Sendable {
        public let host: WorkloadHost
        public let generation: UInt64
        public let source: String
        /// The workload's step counter when it took over here.
        public let startStep: UInt64
        /// A post-copy migration still under way: the pages this side lacks.
        let postCopy: PostCopyDestination?

        /// Pages still to arrive from the source (post-copy), 0 once the move is over.
        public var pagesLeft: Int { postCopy?.pagesLeft ?? 0 }
        /// Why post-copy stopped before every page arrived, if it did.
        public var postCopyInterruption: String? { postCopy?.interruption }
    }

    /// Serves one migration on `connection`. Returns the running workload after the commit; throws on any
    /// refusal or failure, after which nothing of the attempt remains mapped here.
    /// `memory` says where the region comes from.
    public static func receive(
        on connection: Connection, sharedDirectory: String, keys: [PresharedKey], workloads: ReceivableWorkloads,
        memory: DestinationMemory = .onArrival(hugePages: false), acceptUrgent: (() throws -> Connection)? = nil,
        log: @escaping @Sendable (String) -> Void
    ) throws -> Received {
        // Nothing is accepted from a peer that has not proven it holds the pre-shared key.
        let encryption: StreamEncryption
        do throws(AuthError) {
            encryption = try PeerAuthentication.challengeSource(on: connection, keys: keys)
        } catch {
            log("\(error)")
            throw MigrationError.authentication(error)
        }
        let hello: Hello
        switch try connection.receive(while: "waiting for hello") {
        case .hello(let value): hello = value
        case let other: throw MigrationError.protocolViolation("expected hello, got \(other)")
        }
        FaultInjection.reached(.hello, link: connection)
        let setupStart = ContinuousClock.now
        let region: MigratableRegion
        do {
            region = try check(hello, sharedDirectory: sharedDirectory, workloads: workloads.names, memory: memory)
        } catch let refusal as Refusal {
            log("refused \(connection.peer): \(refusal.reason)")
            try? connection.send(.helloReply(.refused(refusal)))
            throw MigrationError.refused(refusal)
        }
        // A fresh mapping is populated alongside the stream, from its first page on (a post-copy switch-over
        // that comes first finds nothing to undo); a standby one is populated already.
        var populator: RegionPopulator?
        // Whatever ends this attempt, the populator lets go of the region (at once after a handoff: the
        // pages it did not reach are zero and fault in when the workload first touches them).
        var handedOver = false
        defer {
            if let populator {
                let done = handedOver ? populator.stop() : populator.cancel()
                log(String(format: "populated %@ of %@ alongside the stream in %.3f s%@; the stream waited %.3f s for it%@",
                           "\(ByteCount(done.populatedBytes))", "\(ByteCount(region.range.byteCount))", done.seconds,
                           done.complete ? "" : " (stopped there)", done.waitedSeconds,
                           done.error.map { "; populating failed: \($0)" } ?? ""))
            }
        }
        let setupSeconds = (ContinuousClock.now - setupStart).secondsValue
        try connection.send(.helloReply(.accepted(setupSeconds: setupSeconds)))
        log("accepted \(hello.workloadName) from \(connection.peer): \(ByteCount(Int(hello.regionSize))) at 0x\(String(hello.regionBase, radix: 16)), \(region.populateSeconds == nil ? "mapped" : "taken from the reservation") in \(String(format: "%.3f", setupSeconds)) s; stream \(encryption == .none ? "plain, not encrypted" : "sealed, \(encryption)")")

        let range = region.range
        // Until the full copy ends, every page is fresh (zero) and arrives exactly once: zero ranges need no writing.
        var fullCopyDone = false
        // Per-page hashes kept as pages land (hashed from the region right after each frame is applied), so the
        // digest is ready at once: in the pause for strict, the moment the workload resumes for audit. The pause
        // then holds one pass over memory, the source's (which must read its memory then, to see untracked writes).
        let audit = hello.auditVerification
        var incremental = IncrementalDigest(pageCount: range.pageCount, pageSize: range.pageSize)
        var finalRoundApplied = false
        // The workload attached and its host built, paused at its first safe point: done after the final round,
        // while the source renames the record, so the pause holds neither (a workload that cannot start here
        // fails before the commit, and the source resumes it).
        // The shared directory is held open too, for the claim and the record's read.
        var ready: (workload: any MigratableWorkload, host: WorkloadHost, directory: SharedDirectory)?
        defer { if !handedOver, let ready { ready.host.stop(flush: false, wait: false) } }
        func prepare() throws -> (workload: any MigratableWorkload, host: WorkloadHost, directory: SharedDirectory) {
            if let ready { return ready }
            let directory: SharedDirectory
            do { directory = try SharedDirectory(sharedDirectory) } catch {
                throw MigrationError.sharedMount("cannot open the shared directory: \(error)")
            }
            let workload = try workloads.attach(region)
            let prepared = (workload, workloads.run(workload), directory)
            ready = prepared
            return prepared
        }
        // Runs the workload as `generation` if this process wins its claim and the record names that generation.
        func takeOver(_ generation: UInt64, why: String) throws -> Received {
            // Attached first (it runs no step): if the workload cannot start here, we must not hold its claim,
            // or the source would see it claimed and stop, and nobody would run it.
            let (workload, host, directory) = try prepare()
            // Created, not yet synced: `settleClaim` syncs it right after "running" (out of the pause).
            guard try OwnershipClaim.claim(generation, in: directory, by: OwnershipRecord.thisProcess, durable: false) else {
                throw MigrationError.aborted("the source took generation \(generation) back before this host claimed it; the workload runs there; this copy is discarded")
            }
            // Read after the claim, it settles both questions: the source committed `generation` (the record holds
            // it), and it did not take the workload back meanwhile (the record would have moved past it, and the
            // source may have removed its claim of `generation` already, which let ours be created).
            let record: OwnershipRecord?
            do { record = try OwnershipRecord.read(in: directory) } catch {
                OwnershipClaim.release(generation, in: sharedDirectory)
                throw error
            }
            guard let record, record.generation == generation else {
                OwnershipClaim.release(generation, in: sharedDirectory)
                let found = record.map { "holds generation \($0.generation)" } ?? "is missing"
                throw MigrationError.aborted("the source announced generation \(generation) but the ownership record in \(sharedDirectory) \(found); this copy is discarded")
            }
            let step = workload.stepCount
            handedOver = true
            host.resume()
            log("\(why); running \(hello.workloadName) at step \(step), generation \(generation)")
            return Received(host: host, generation: generation, source: connection.peer, startStep: step, postCopy: nil)
        }
        /// After "running" (out of the pause): the claim made durable, and the claims of older generations removed.
        /// A claim that cannot be synced is said loudly; the workload runs on (the claim exists: undoing the handoff
        /// now could leave it with no owner).
        func settleClaim(_ generation: UInt64) {
            do {
                try OwnershipClaim.makeDurable(generation, in: sharedDirectory)
            } catch {
                log("WARNING: \(error); the claim exists, so no other process can take generation \(generation), but a crash of the shared mount's server before it is synced could lose it")
            }
            OwnershipClaim.removeClaims(before: generation, in: sharedDirectory)
        }
        // Post-copy: the urgent channel (a second connection, for demand faults) and the stale pages.
        var urgent: (link: Connection, token: [UInt8])?
        var stale: [PageRun] = []
        var fullCopyPhaseReached = false
        let decoder = PageDecoder()
        while true {
            let frame: Frame
            do {
                frame = try connection.receive(while: "receiving the region")
            } catch {
                // The link broke. If it broke after the last round, the source may already have committed
                // (renamed the record to the next generation) before its commit frame reached us: then the
                // workload is ours and we must run it, or nobody would.
                if finalRoundApplied, let record = try? OwnershipRecord.read(in: sharedDirectory),
                   record.generation == hello.generation + 1 {
                    let received = try takeOver(record.generation, why: "the link to \(connection.peer) broke after the commit (\(error))")
                    settleClaim(record.generation)
                    return received
                }
                throw error
            }
            switch frame {
            case .pageData(let first, let count), .encodedPages(let first, let count, _, _):
                // (One page before any round is the header a post-copy switch-over sends ahead: no full copy.)
                if populator == nil && region.populateSeconds == nil && !fullCopyDone && (urgent == nil || count > 1) {
                    populator = RegionPopulator(region: region)
                }
                populator?.wait(untilPopulated: (Int(first) + Int(count)) * range.pageSize)
                if case .encodedPages(_, _, let encoding, let byteCount) = frame {
                    try decoder.receive(into: range, first: first, count: count, encoding: encoding, byteCount: byteCount, from: connection)
                } else {
                    try connection.receivePages(into: range, first: first, count: count)
                }
                incremental.update(range, first: Int(first), count: Int(count))
                if !fullCopyDone && !fullCopyPhaseReached {
                    fullCopyPhaseReached = true
                    FaultInjection.reached(.fullCopy, link: connection)
                }
            case .zeroPages(let first, let count):
                guard count > 0, first < UInt64(range.pageCount), count <= UInt64(range.pageCount) - first else {
                    throw MigrationError.protocolViolation("zero pages \(first)+\(count) lie outside the region")
                }
                if fullCopyDone { memset(range.baseAddress + Int(first) * range.pageSize, 0, Int(count) * range.pageSize) }
                incremental.zero(first: Int(first), count: Int(count))
            case .roundEnd(let summary):
                if summary.final {
                    FaultInjection.reached(.stopAndCopy, link: connection)
                } else if summary.round == 1 {
                    FaultInjection.reached(.dirtyRound, link: connection)
                }
                fullCopyDone = true
                if summary.final { finalRoundApplied = true }
                try connection.send(.roundAck(round: summary.round))
                if summary.final {
                    // The region is complete: attach now, while the source renames the record. The record holds
                    // the source's generation, or the next one if the source committed already (reading it here
                    // also warms the path the takeover reads it on).
                    let current = try OwnershipRecord.read(in: prepare().directory)?.generation
                    guard let current, current == hello.generation || current == hello.generation + 1 else {
                        throw MigrationError.sharedMount("the ownership record in \(sharedDirectory) \(current.map { "holds generation \($0)" } ?? "is missing"), but the source runs generation \(hello.generation); another process may own the workload")
                    }
                }
            case .digestRequest:
                let digest = incremental.digest
                try connection.send(.digest(algorithm: RegionDigest.algorithm, value: RegionDigest.bytes(of: digest)))
                FaultInjection.reached(.afterVerify, link: connection)
            case .commit(let generation):
                FaultInjection.reached(.afterCommit, link: connection)
                let received = try takeOver(generation, why: "committed by \(connection.peer)")
                try? connection.send(.running(step: received.startStep))
                settleClaim(generation)
                if audit {
                    // The per-page hashes were taken as the pages landed, so this is the region as it resumed,
                    // although the workload runs now.
                    try? connection.send(.digest(algorithm: RegionDigest.algorithm, value: RegionDigest.bytes(of: incremental.digest)))
                }
                return received
            case .urgentChannel(let token):
                guard urgent == nil, let acceptUrgent else {
                    throw MigrationError.protocolViolation("the source opens an urgent channel this receiver cannot take")
                }
                let candidate = try acceptUrgent()
                do throws(AuthError) {
                    _ = try PeerAuthentication.challengeSource(on: candidate, keys: keys)
                } catch {
                    throw MigrationError.authentication(error)
                }
                guard case .urgentChannel(let presented) = try candidate.receive(while: "opening the urgent channel"), presented == token else {
                    throw MigrationError.protocolViolation("the urgent channel from \(candidate.peer) did not present this migration's token")
                }
                urgent = (candidate, token)
            case .discardPages(let first, let count):
                guard first < UInt64(range.pageCount), count <= UInt64(range.pageCount) - first else {
                    throw MigrationError.protocolViolation("stale pages \(first)+\(count) lie outside the region")
                }
                stale.append(PageRun(first: Int(first), count: Int(count)))
            case .postCopy(let generation, let token):
                let digest = incremental
                guard let urgent, urgent.token == token else {
                    throw MigrationError.protocolViolation("a post-copy switch-over without this migration's urgent channel or per-page hashes")
                }
                FaultInjection.reached(.switchOver, link: connection)
                // Nothing may populate a range in missing mode: a populated page would never fault.
                populator?.cancel()
                let session = try PostCopyDestination(
                    region: region, lacking: stale, digest: digest, main: connection, urgent: urgent.link, token: token, log: log)
                let started = try takeOver(generation, why: "switched to post-copy by \(connection.peer), \(stale.reduce(0) { $0 + $1.count }) pages to fetch")
                // Claimed and running: from here a broken link is the source's to reconnect, not a failed move.
                try? connection.send(.running(step: started.startStep))
                settleClaim(generation)
                let directory = sharedDirectory
                let finisher = Thread {
                    do {
                        _ = try session.finish(sharedDirectory: directory, generation: generation, log: log)
                    } catch {
                        session.interrupted("\(error)")
                        log("post-copy failed: \(error); the workload lacks \(session.pagesLeft) pages: threads touching them wait (never a wrong zero page); they are only on the source")
                    }
                }
                finisher.name = "ferry-postcopy-background"
                finisher.start()
                return Received(host: started.host, generation: generation, source: connection.peer, startStep: started.startStep, postCopy: session)
            case .abort(let reason):
                throw MigrationError.aborted("the source: \(reason)")
            case let other:
                throw MigrationError.protocolViolation("unexpected \(other) while receiving the region")
            }
        }
    }

    /// The resource check of DESIGN §3.3 step 1. On success the region is mapped (or taken from the
    /// reservation); populating a fresh mapping is the caller's.
    static func check(_ hello: Hello, sharedDirectory: String, workloads: [String], memory: DestinationMemory) throws -> MigratableRegion {
        guard hello.protocolVersion == wireProtocolVersion else {
            throw Refusal(code: .protocolVersion, reason: "protocol version \(hello.protocolVersion) is not \(wireProtocolVersion); run the same ferry build on both hosts")
        }
        guard hello.architecture == Kernel.architecture else {
            throw Refusal(code: .architecture, reason: "the source is \(hello.architecture), this host is \(Kernel.architecture); memory cannot move between architectures")
        }
        guard Int(hello.pageSize) == Kernel.pageSize else {
            throw Refusal(code: .pageSize, reason: "page size \(hello.pageSize) differs from this host's \(Kernel.pageSize)")
        }
        guard workloads.contains(hello.workloadName) else {
            throw Refusal(code: .workload, reason: "this process runs \(workloads.map { "'\($0)'" }.joined(separator: " or ")), not the workload '\(hello.workloadName)'; receive it with the program that started it")
        }
        if let refusal = ProgramIdentity.refusal(sourceImages: hello.images, fixedLayout: hello.fixedLayout) { throw refusal }
        guard hello.layoutVersion == RegionHeader.currentLayoutVersion else {
            throw Refusal(code: .layoutVersion, reason: "region layout version \(hello.layoutVersion) is not this build's \(RegionHeader.currentLayoutVersion); install the same ferry version on both hosts")
        }
        let tokenPath = sharedDirectory + "/" + hello.sharedMountToken
        // Just created by the other host: a network file system may not show it at the first look.
        guard !hello.sharedMountToken.contains("/"),
              let token = try? SharedFile.contents(of: tokenPath, missingIsTransient: true),
              String(decoding: token, as: UTF8.self) == hello.sharedMountTokenValue else {
            throw Refusal(code: .sharedMount, reason: "the source's token \(hello.sharedMountToken) is not in \(sharedDirectory) here: both hosts must mount the same shared directory (pass the same mount to --shared-dir)")
        }
        let layout = RegionLayout(base: UInt(hello.regionBase), byteCount: Int(hello.regionSize))
        let hugePages: Bool
        switch memory {
        case .onArrival(let huge): hugePages = huge
        case .reserved(let reservation):
            do {
                return try reservation.take(for: layout)
            } catch {
                throw Refusal(code: reservation.misfit(layout) != nil && layout.base != reservation.layout.base ? .address : .memory, reason: "\(error)")
            }
        }
        let available = Kernel.availableMemory()
        if let available, available < Int(hello.regionSize) + MigratableRegion.memoryMargin {
            throw Refusal(code: .memory, reason: "the region needs \(ByteCount(Int(hello.regionSize))) but only \(ByteCount(available)) is available here; free memory or pick a larger host")
        }
        do {
            return try MigratableRegion.reserve(layout: layout, populate: false, hugePages: hugePages)
        } catch .addressInUse {
            throw Refusal(code: .address, reason: "the address range \(layout) is already in use in the receiving process; start the workload with another --base, or restart 'ferry receive'")
        } catch {
            throw Refusal(code: .memory, reason: "cannot map the region \(layout): \(error)")
        }
    }
}
