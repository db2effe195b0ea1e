public import FerrySystem

/// Why a tracker could not be created, armed, collected or stopped.
public enum TrackingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A system call failed; the error names the call, its subject and `errno`.
    case systemCall(SystemCallError)
    /// The requested backend does not work on this kernel or in this process.
    case unavailable(TrackerBackend, reason: String)
    /// `auto` found no backend that works here.
    case noBackendAvailable([BackendAvailability])
    /// The mprotect backend's fixed table of tracked ranges is full.
    case tooManyTrackedRanges(limit: Int)
    /// The tracker was used after `stop()`.
    case stopped
    /// `collect()` or a kernel-write preparation was called before `arm()`.
    case notArmed
    /// A page run lies outside the tracked range.
    case pageOutOfRange(PageRun, pageCount: Int)

    public var description: String {
        switch self {
        case .systemCall(let error):
            "\(error)"
        case .unavailable(let backend, let reason):
            "the \(backend) tracker cannot be used here: \(reason)"
        case .noBackendAvailable(let probes):
            "no write tracker works here (" + probes.map { "\($0.backend): \($0.reason)" }.joined(separator: "; ")
                + ")"
        case .tooManyTrackedRanges(let limit):
            "the mprotect tracker handles at most \(limit) ranges per process; stop one first"
        case .stopped:
            "the tracker was already stopped"
        case .notArmed:
            "the tracker is not armed yet: call arm() first"
        case .pageOutOfRange(let run, let count):
            "pages \(run) lie outside the tracked range of \(count) pages"
        }
    }
}

extension SystemCallError {
    var tracking: TrackingError { .systemCall(self) }
}
