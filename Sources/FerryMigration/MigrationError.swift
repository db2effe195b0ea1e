public import FerryTransport
public import FerryWire
public import FerryTracking
public import FerryRegion
public import FerryAuth

/// Why a migration did not complete. Before the ownership commit every one of these leaves the workload
/// running on the source, unchanged.
public enum MigrationError: Error, CustomStringConvertible, Sendable {
    case refused(Refusal)
    case authentication(AuthError)
    case transport(TransportError)
    case tracking(TrackingError)
    case region(RegionError)
    case workload(WorkloadError)
    case sharedMount(String)
    case digestMismatch(source: UInt64, destination: UInt64)
    case aborted(String)
    case protocolViolation(String)
    case notConverging(String)

    public var description: String {
        switch self {
        case .refused(let refusal): "\(refusal)"
        case .authentication(let error): "\(error)"
        case .transport(let error): "\(error)"
        case .tracking(let error): "write tracking failed: \(error)"
        case .region(let error): "\(error)"
        case .workload(let error): "\(error)"
        case .sharedMount(let reason): "shared mount: \(reason)"
        case .digestMismatch(let source, let destination):
            "the destination's region differs from the source's (digest \(String(destination, radix: 16)) ≠ \(String(source, radix: 16))): a write was not tracked; the workload stays on the source"
        case .aborted(let reason): "aborted: \(reason)"
        case .protocolViolation(let reason): "protocol violation: \(reason)"
        case .notConverging(let reason): "not converging: \(reason)"
        }
    }
}
