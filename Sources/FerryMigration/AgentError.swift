public import FerryRegion
public import FerryAuth
public import FerryTransport

/// Why a process could not start, resume, receive or serve a migratable workload. Each case says what
/// happened and what to do; `isUsage` tells a bad request from a failure.
public enum AgentError: Error, CustomStringConvertible, Sendable {
    /// A setting is missing or malformed.
    case usage(String)
    /// The shared directory already holds a workload (its ownership record).
    case alreadyOwned(directory: String, generation: UInt64, owner: String)
    /// Resuming is not possible (nothing recorded, owner alive, state only in memory, claim lost).
    case cannotResume(String)
    /// The shared mount failed (missing, unwritable, a record or claim unreadable).
    case sharedMount(String)
    /// The control socket failed.
    case control(String)
    /// The region could not be mapped or is damaged.
    case region(RegionError)
    /// The workload could not be created or attached.
    case workload(WorkloadError)
    /// The pre-shared key file is unusable.
    case key(KeyError)
    /// The migration address cannot be listened on.
    case listen(TransportError)
    /// The call does not fit the workload's state (it moved away, was stopped, or is not running here).
    case state(String)

    /// Whether the request itself was wrong (a usage error), rather than something failing.
    public var isUsage: Bool { if case .usage = self { true } else { false } }

    public var description: String {
        switch self {
        case .usage(let reason): reason
        case let .alreadyOwned(directory, generation, owner):
            "\(directory) already has an ownership record (generation \(generation), owner \(owner)): a workload lives there; use another shared directory, 'ferry run --resume' if its owner died, or remove \(OwnershipRecord.fileName) if no host runs it"
        case .cannotResume(let reason): reason
        case .sharedMount(let reason): "shared mount: \(reason)"
        case .control(let reason): reason
        case .region(let error): "\(error)"
        case .workload(let error): "\(error)"
        case .key(let error): "\(error)"
        case .listen(let error): "cannot listen for migrations: \(error); pick a free ADDR:PORT on this host's migration network"
        case .state(let reason): reason
        }
    }
}
