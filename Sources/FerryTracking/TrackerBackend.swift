import FerrySystem

/// The write-tracking mechanisms Ferry implements (see DESIGN §3.1).
public enum TrackerBackend: String, CaseIterable, Hashable, Sendable, Codable, CustomStringConvertible {
    /// userfaultfd write-protect with `UFFD_FEATURE_WP_ASYNC`: the kernel resolves faults itself and
    /// `PAGEMAP_SCAN` reports and re-protects written pages atomically. Linux 6.7+. Tracks kernel writes.
    case uffdAsync = "uffd-async"
    /// userfaultfd write-protect with a handler thread that records each page and lifts its protection.
    /// Linux 5.7+. Tracks kernel writes when the process may open a full userfaultfd (root), otherwise
    /// kernel writes fail with `EFAULT`.
    case uffdSync = "uffd-sync"
    /// `mprotect` read-only plus a `SIGSEGV` handler. Any Linux. Kernel writes fail with `EFAULT`.
    case mprotect

    public var description: String { rawValue }

    /// Preference order of `auto`.
    public static let preferred: [TrackerBackend] = [.uffdAsync, .uffdSync, .mprotect]

    /// Checks whether this backend works in this process on this kernel, by setting it up on a scratch page.
    public func probe() -> BackendAvailability {
        do {
            switch self {
            case .uffdAsync: try UffdAsyncMechanism.probe()
            case .uffdSync: try UffdSyncMechanism.probe()
            case .mprotect: try MprotectMechanism.probe()
            }
            return BackendAvailability(backend: self, isAvailable: true, reason: availableReason)
        } catch {
            return BackendAvailability(backend: self, isAvailable: false, reason: "\(error)")
        }
    }

    private var availableReason: String {
        switch self {
        case .uffdAsync: "userfaultfd WP_ASYNC and PAGEMAP_SCAN work (Linux \(Kernel.release))"
        case .uffdSync: "userfaultfd write-protect works"
        case .mprotect: "always works"
        }
    }
}

/// What a backend's probe found.
public struct BackendAvailability: Hashable, Sendable {
    public let backend: TrackerBackend
    public let isAvailable: Bool
    /// Why it can or cannot be used here, for a person.
    public let reason: String
}

/// Which backend to use: a named one, or the best that works here.
public enum TrackerChoice: Hashable, Sendable, CustomStringConvertible {
    case auto
    case backend(TrackerBackend)

    /// Parses `auto`, `uffd-async`, `uffd-sync` or `mprotect`.
    public init?(_ text: String) {
        if text == "auto" {
            self = .auto
        } else if let backend = TrackerBackend(rawValue: text) {
            self = .backend(backend)
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .auto: "auto"
        case .backend(let backend): backend.rawValue
        }
    }

    /// Resolves `auto` to the first backend in `TrackerBackend.preferred` whose probe succeeds.
    /// - Returns: the backend and every probe made, so a caller can say why the others were not picked.
    public func resolve() throws(TrackingError) -> (backend: TrackerBackend, probes: [BackendAvailability]) {
        switch self {
        case .backend(let backend):
            let probe = backend.probe()
            guard probe.isAvailable else { throw .unavailable(backend, reason: probe.reason) }
            return (backend, [probe])
        case .auto:
            var probes: [BackendAvailability] = []
            for backend in TrackerBackend.preferred {
                let probe = backend.probe()
                probes.append(probe)
                if probe.isAvailable { return (backend, probes) }
            }
            throw .noBackendAvailable(probes)
        }
    }
}

/// How a backend treats writes the kernel makes into the tracked range on the process's behalf, such as
/// `read(2)` or `recv(2)` into a protected page.
public enum KernelWriteBehavior: String, Hashable, Sendable {
    /// The write succeeds and its page is reported by the next collect.
    case tracked
    /// The system call fails with `EFAULT` (a pipe keeps its data; a datagram is lost). Call
    /// `WriteTracker.prepareForKernelWrite(_:)` on the pages first: it un-protects them and marks them dirty.
    case failsWithEFAULT
}
