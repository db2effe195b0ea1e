#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import FerryRegion
import Synchronization

/// The safe points of a running workload: where it can be paused (files flushed), resumed, slowed down, or
/// ended for good, whoever runs its loop.
///
/// Two ways to run a workload, one gate:
/// - `init(workload:stepsPerSecond:)` runs a stepped `Workload` on a thread of its own, calling `step()` at the
///   workload's pace, with a safe point before every step;
/// - `init(program:)` is for a program that runs its own loop and calls `safePoint()` between units of work
///   (the embedding API, `ferry_safe_point`).
///
/// Guarantees: `pause()` returns only once the loop sits at a safe point with the workload's files flushed,
/// and nothing runs until `resume()` or `stop()`; after `stop()` returns the loop never runs again.
public final class WorkloadHost: Sendable {
    public let workload: any MigratableWorkload
    /// The workload's own pace in steps per second (0 idle, `.infinity` flat out); nil: the program paces itself.
    public let stepsPerSecond: Double?

    /// What `safePoint()` tells the loop.
    public enum SafePointOutcome: Sendable { case proceed, stopped }

    /// Why the loop was stopped.
    public enum StopReason: Sendable {
        /// Asked to (`ferry stop`), or the program ended the loop itself.
        case requested
        /// The workload was handed over to another host: it runs there now.
        case handedOver
        /// Another process took the workload over (the ownership record moved past this one).
        case fenced
        /// A step failed (`lastError` says how).
        case failed
    }

    private enum Phase { case running, pauseRequested, paused, stopRequested, stopped }
    private struct State {
        var phase = Phase.running
        var lastError: String?
        /// Fraction of the pace the loop runs at, 0 < f ≤ 1 (auto-converge throttling).
        var throttle = 1.0
        /// A pace that replaces `stepsPerSecond` while set (auto-converge of a flat-out loop too).
        var pace: Double?
        /// Whether stopping flushes the workload's files (not after a handoff: they belong to the new owner).
        var flushOnStop = true
        var stopReason: StopReason?
        /// When the next step may start (paced loops only); touched by the loop thread alone.
        var next: ContinuousClock.Instant?
    }
    private let state = Mutex(State())
    private let changed = NSCondition()

    /// Runs a stepped workload on a thread of its own.
    /// - Parameters:
    ///   - stepsPerSecond: the pace; nil takes the one the region header records (flat out if none).
    ///   - paused: false starts the loop at once; true starts its thread waiting at its first safe point, as if
    ///     paused there: no step runs until `resume()`, and `stop()` ends it without one (a destination builds
    ///     the host before the commit, so starting a thread is not part of the pause).
    public init(workload: any Workload, stepsPerSecond: Double? = nil, paused: Bool = false) {
        self.workload = workload
        self.stepsPerSecond = stepsPerSecond ?? workload.region.header.stepsPerSecond ?? .infinity
        if paused { state.withLock { $0.phase = .paused } }
        let thread = Thread { [self] in
            while safePoint() == .proceed {
                do {
                    try workload.step()
                } catch {
                    changed.lock()
                    state.withLock { $0.lastError = "\(error)"; $0.phase = .stopped; $0.stopReason = .failed }
                    changed.broadcast()
                    changed.unlock()
                    return
                }
            }
        }
        thread.name = "ferry-workload"
        thread.start()
    }

    /// For a program whose own thread runs the loop and calls `safePoint()` between units of work.
    public init(program workload: any MigratableWorkload) {
        self.workload = workload
        self.stepsPerSecond = nil
    }

    /// The step counter in the region.
    public var stepCount: UInt64 { workload.stepCount }
    public var isPaused: Bool { state.withLock { $0.phase == .paused } }
    public var isStopped: Bool { state.withLock { $0.phase == .stopped } }
    /// Why the loop stopped; nil while it has not.
    public var stopReason: StopReason? { state.withLock { $0.phase == .stopped ? $0.stopReason : nil } }
    /// The error that stopped the loop or failed a flush, if one did.
    public var lastError: String? { state.withLock { $0.lastError } }

    /// Runs the loop at `stepsPerSecond` instead of its own pace until called with nil.
    public func setPace(_ stepsPerSecond: Double?) { state.withLock { $0.pace = stepsPerSecond } }

    /// Slows the loop to `fraction` of its pace (1 = full speed).
    public func setThrottle(_ fraction: Double) { state.withLock { $0.throttle = Swift.max(0.001, Swift.min(1, fraction)) } }
    public var throttle: Double { state.withLock { $0.throttle } }

    /// Flushes the workload's files while it still runs, so the flush at the safe point has only the last writes
    /// left. Only a stepped workload's files can be flushed from another thread; a program flushes at its safe point.
    public func flushAhead() {
        guard stepsPerSecond != nil else { return }
        try? workload.flush()
    }

    /// Waits until the loop sits at a safe point with its files flushed. Returns false if it had stopped (or
    /// stops instead).
    @discardableResult
    public func pause() -> Bool {
        changed.lock()
        defer { changed.unlock() }
        let phase = state.withLock { state -> Phase in
            if state.phase == .running { state.phase = .pauseRequested }
            return state.phase
        }
        guard phase == .pauseRequested || phase == .paused else { return false }
        while state.withLock({ $0.phase == .pauseRequested }) { changed.wait() }
        return state.withLock { $0.phase == .paused }
    }

    /// Lets a paused loop go on.
    public func resume() {
        changed.lock()
        state.withLock { if $0.phase == .paused || $0.phase == .pauseRequested { $0.phase = .running } }
        changed.broadcast()
        changed.unlock()
    }

    /// Ends the loop at the next safe point (at once if it waits at one) and waits for it.
    /// - Parameters:
    ///   - flush: flush the workload's files on the way out; false after a handoff, when they belong to the
    ///     new owner.
    ///   - reason: what the loop is told (a program's safe point returns it).
    /// With `wait: false` it only asks, and returns at once (a loop blocked for good, on a page a post-copy
    /// source never sent, would never answer).
    public func stop(flush: Bool = true, reason: StopReason = .requested, wait: Bool = true) {
        changed.lock()
        defer { changed.unlock() }
        state.withLock {
            if $0.phase != .stopped {
                $0.phase = .stopRequested
                $0.flushOnStop = flush
                $0.stopReason = reason
            }
        }
        changed.broadcast()
        while wait && !state.withLock({ $0.phase == .stopped }) { changed.wait() }
    }

    /// Called by the loop's own thread when it ends the loop itself (a program that finished its work): the
    /// loop counts as stopped at once, without waiting for another safe point.
    public func finish() {
        changed.lock()
        state.withLock {
            if $0.phase != .stopped { $0.stopReason = .requested }
            $0.phase = .stopped
        }
        changed.broadcast()
        changed.unlock()
    }

    /// The safe point: called by the loop's own thread between two units of work. Returns at once while no
    /// pause is asked for (after waiting for the pace, if one is set); while one is, flushes the workload,
    /// waits until it is resumed or stopped, and says which.
    public func safePoint() -> SafePointOutcome {
        let clock = ContinuousClock()
        while true {
            changed.lock()
            var phase = state.withLock { $0.phase }
            if phase == .pauseRequested || phase == .paused {  // .paused: a host built paused, before its first step
                if phase == .pauseRequested {
                    do { try workload.flush() } catch { state.withLock { $0.lastError = "\(error)" } }
                    state.withLock { $0.phase = .paused }
                    changed.broadcast()
                }
                while state.withLock({ $0.phase == .paused }) { changed.wait() }
                phase = state.withLock { $0.phase }
                state.withLock { $0.next = nil }
            }
            if phase == .stopRequested {
                if state.withLock({ $0.flushOnStop }) { try? workload.flush() }
                state.withLock { $0.phase = .stopped }
                changed.broadcast()
            }
            if phase == .stopRequested || phase == .stopped {
                changed.unlock()
                return .stopped
            }
            changed.unlock()

            let (pace, throttle, next) = state.withLock { ($0.pace ?? stepsPerSecond, $0.throttle, $0.next) }
            guard let pace, pace.isFinite else { return .proceed }
            if pace == 0 {
                usleep(1000)  // idle: only safe points
                continue
            }
            let now = clock.now
            var due = next ?? now
            if due > now {
                // Sleep in slices of at most a millisecond, so a pause request is seen promptly.
                usleep(UInt32(Swift.min(due - now, .milliseconds(1)).microsecondsValue))
                continue
            }
            if now - due > .milliseconds(100) { due = now }  // fell far behind: don't burst to catch up
            let interval = 1 / (pace * throttle)
            state.withLock { $0.next = due.advanced(by: .seconds(interval)) }
            return .proceed
        }
    }
}

