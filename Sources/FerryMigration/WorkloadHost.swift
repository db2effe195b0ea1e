#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import FerryRegion
import Synchronization

/// Runs a workload's steps on a thread of its own at a set pace, and stops it at safe points on request.
///
/// Between two steps is a safe point: `pause()` returns only once the loop has reached one and flushed the
/// workload's files, and no step runs until `resume()`. `stop()` ends the loop for good.
public final class WorkloadHost: Sendable {
    public let workload: any Workload
    /// Steps per second the loop aims for (each step dirties a few pages); 0 means idle (no steps at all,
    /// the region stays as it is), `.infinity` as fast as it can.
    public let stepsPerSecond: Double

    private enum Phase { case running, pauseRequested, paused, stopRequested, stopped }
    private struct State {
        var phase = Phase.running
        var lastError: String?
        /// Fraction of the pace the loop runs at, 0 < f ≤ 1 (auto-converge throttling).
        var throttle = 1.0
        /// A pace that replaces `stepsPerSecond` while set (auto-converge of a flat-out loop too).
        var pace: Double?
    }
    private let state = Mutex(State())
    private let changed = NSCondition()

    /// Starts the loop at once.
    public init(workload: any Workload, stepsPerSecond: Double) {
        self.workload = workload
        self.stepsPerSecond = stepsPerSecond
        let thread = Thread { [self] in self.loop() }
        thread.name = "ferry-workload"
        thread.start()
    }

    /// The step counter in the region.
    public var stepCount: UInt64 { workload.stepCount }
    public var isPaused: Bool { state.withLock { $0.phase == .paused } }
    public var isStopped: Bool { state.withLock { $0.phase == .stopped } }
    /// The error that stopped the loop, if one did.
    public var lastError: String? { state.withLock { $0.lastError } }

    /// Runs the loop at `stepsPerSecond` instead of its own pace until called with nil.
    public func setPace(_ stepsPerSecond: Double?) { state.withLock { $0.pace = stepsPerSecond } }

    /// Slows the loop to `fraction` of its pace (1 = full speed).
    public func setThrottle(_ fraction: Double) { state.withLock { $0.throttle = Swift.max(0.001, Swift.min(1, fraction)) } }
    public var throttle: Double { state.withLock { $0.throttle } }

    /// Waits until the loop sits at a safe point with its files flushed. Returns false if it had stopped.
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

    /// Ends the loop at the next safe point and waits for it.
    public func stop() {
        changed.lock()
        defer { changed.unlock() }
        state.withLock { if $0.phase != .stopped { $0.phase = .stopRequested } }
        changed.broadcast()
        while !state.withLock({ $0.phase == .stopped }) { changed.wait() }
    }

    private func loop() {
        let clock = ContinuousClock()
        var next = clock.now
        while true {
            // Safe point.
            changed.lock()
            var phase = state.withLock { $0.phase }
            if phase == .pauseRequested {
                do { try workload.flush() } catch { state.withLock { $0.lastError = "\(error)" } }
                state.withLock { $0.phase = .paused }
                changed.broadcast()
                while state.withLock({ $0.phase == .paused }) { changed.wait() }
                phase = state.withLock { $0.phase }
                next = clock.now
            }
            if phase == .stopRequested {
                try? workload.flush()
                state.withLock { $0.phase = .stopped }
                changed.broadcast()
                changed.unlock()
                return
            }
            changed.unlock()

            let pace = state.withLock { $0.pace } ?? stepsPerSecond
            if pace == 0 {
                usleep(1000)  // idle: only safe points
                continue
            }
            if pace.isFinite {
                let now = clock.now
                if next > now {
                    // Sleep in slices of at most a millisecond, so a pause request is seen promptly.
                    usleep(UInt32(Swift.min(next - now, .milliseconds(1)).microsecondsValue))
                    continue
                }
                if now - next > .milliseconds(100) { next = now }  // fell far behind: don't burst to catch up
            }
            do {
                try workload.step()
            } catch {
                changed.lock()
                state.withLock { $0.lastError = "\(error)"; $0.phase = .stopped }
                changed.broadcast()
                changed.unlock()
                return
            }
            if pace.isFinite {
                next = next.advanced(by: .seconds(1 / (pace * state.withLock { $0.throttle })))
            }
        }
    }
}

extension Duration {
    var secondsValue: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    var microsecondsValue: Double { secondsValue * 1e6 }
}
