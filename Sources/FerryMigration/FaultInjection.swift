#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryTransport
import Synchronization

/// The phases of a migration where the fault-matrix tests break one side.
public enum MigrationPhase: String, Sendable, CaseIterable {
    /// The hello and the destination's resource check.
    case hello
    /// Round 0, after its first frame.
    case fullCopy = "full-copy"
    /// A dirty round while the workload still runs (round 1).
    case dirtyRound = "dirty-round"
    /// The final round, with the workload paused.
    case stopAndCopy = "stop-and-copy"
    /// The digests compared (strict), before the ownership record is renamed.
    case afterVerify = "after-verify"
    /// The record renamed (source) or the commit frame received (destination), before "running".
    case afterCommit = "after-commit"
    /// Post-copy, a quarter of the region into the background stream (source).
    case postCopy = "post-copy"
    /// Post-copy, the switch-over: the record committed, before the `postCopy` frame (source); the frame
    /// received, before the workload is claimed and run (destination).
    case switchOver = "switch-over"
}

/// Test-only fault injection, compiled into debug builds only (`FERRY_TEST_HOOKS`, see Package.swift): with
/// `FERRY_TEST_FAULT=PHASE:ACTION` in its environment, a debug `ferry` process breaks itself when its side of a
/// migration reaches `PHASE` (a `MigrationPhase` raw value). `kill` sends itself SIGKILL (the host dies:
/// nothing is cleaned up); `cut` shuts the migration connection down in both directions and carries on (the
/// link dies). Without the variable this does nothing; in a release build (what `libFerry.so` and `ferry` ship
/// as) it does not exist, so no stray variable can break an embedding program.
enum FaultInjection {
    #if FERRY_TEST_HOOKS
    enum Action: String { case kill, cut }

    static let planned: (phase: MigrationPhase, action: Action)? = {
        guard let text = ProcessInfo.processInfo.environment["FERRY_TEST_FAULT"] else { return nil }
        let parts = text.split(separator: ":").map(String.init)
        guard parts.count == 2, let phase = MigrationPhase(rawValue: parts[0]), let action = Action(rawValue: parts[1]) else {
            FileHandle.standardError.write(Data("ferry: FERRY_TEST_FAULT=\(text) is not PHASE:kill or PHASE:cut; ignored\n".utf8))
            return nil
        }
        return (phase, action)
    }()

    /// Breaks this process or `link` if the planned fault is at `phase`.
    /// Whether the planned fault happened already: it breaks a process once.
    static let fired = Mutex(false)

    static func reached(_ phase: MigrationPhase, link: Connection) {
        guard let planned, planned.phase == phase, !fired.withLock({ let was = $0; $0 = true; return was }) else { return }
        FileHandle.standardError.write(Data("ferry: test fault: \(planned.action.rawValue) at \(phase.rawValue)\n".utf8))
        switch planned.action {
        case .kill: kill(getpid(), SIGKILL)
        case .cut: link.shutdown()
        }
    }
    #else
    /// Release builds: no fault can be injected.
    @inline(__always)
    static func reached(_ phase: MigrationPhase, link: Connection) {}
    #endif
}
