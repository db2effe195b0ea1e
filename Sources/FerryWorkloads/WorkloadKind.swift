public import FerryRegion
public import FerrySystem

/// The workloads this build ships, by the name stored in the region header.
public enum WorkloadKind: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    case download
    case hotset

    /// The implementing type.
    public var type: any Workload.Type {
        switch self {
        case .download: DownloadWorkload.self
        case .hotset: HotsetWorkload.self
        }
    }

    /// Creates this workload fresh in `region`.
    public func create(in region: MigratableRegion, options: WorkloadOptions) throws(WorkloadError) -> any Workload {
        try type.init(creating: region, options: options)
    }

    /// Whether the workload's progress survives its process in files on the shared mount, so that
    /// `resume(in:options:blockSource:)` can rebuild it after the process died.
    public var canResumeFromSharedFiles: Bool {
        switch self {
        case .download: true
        case .hotset: false
        }
    }

    /// Rebuilds this workload in a fresh `region` from the files a dead process left under
    /// `options.sharedDirectory` (see `DownloadWorkload.init(resuming:options:source:)`).
    /// - Parameter blockSource: a `download`'s block source; nil for the deterministic one.
    /// - Throws: `WorkloadError.notResumable` when `canResumeFromSharedFiles` is false or there is no file,
    ///   or what the workload's resuming initialiser throws.
    public func resume(
        in region: MigratableRegion, options: WorkloadOptions, blockSource: (any BlockSource)? = nil
    ) throws(WorkloadError) -> any Workload {
        switch self {
        case .download:
            return try DownloadWorkload(resuming: region, options: options, source: blockSource)
        case .hotset:
            throw .notResumable(
                workload: rawValue, path: nil,
                reason: "its whole state lived only in the memory of the process that died")
        }
    }

    /// Attaches to whatever workload `region`'s header names, giving a `download` the block source
    /// `blockSource` makes for its seed.
    public static func attach(
        to region: MigratableRegion, sharedDirectory: String, blockSource: (@Sendable (UInt64) -> any BlockSource)?
    ) throws(WorkloadError) -> any Workload {
        guard let blockSource else { return try attach(to: region, sharedDirectory: sharedDirectory) }
        let info: RegionHeaderInfo
        do { info = try region.readHeader() } catch { throw .region(error) }
        guard info.workloadName == DownloadWorkload.name else { return try attach(to: region, sharedDirectory: sharedDirectory) }
        return try DownloadWorkload(attaching: region, sharedDirectory: sharedDirectory, source: blockSource(info.seed))
    }

    /// Attaches to whatever workload `region`'s header names.
    /// - Throws: `WorkloadError.region` for a bad header, `.unknownWorkload` for a name this build does not
    ///   know, or what the workload's `init(attaching:sharedDirectory:)` throws.
    public static func attach(to region: MigratableRegion, sharedDirectory: String) throws(WorkloadError) -> any Workload {
        let info: RegionHeaderInfo
        do { info = try region.readHeader() } catch { throw .region(error) }
        guard let kind = WorkloadKind(rawValue: info.workloadName) else { throw .unknownWorkload(info.workloadName) }
        return try kind.type.init(attaching: region, sharedDirectory: sharedDirectory)
    }

    /// The smallest region this workload fits in.
    public func minimumRegionSize(pageSize: Int = Kernel.pageSize) -> Int { type.minimumRegionSize(pageSize: pageSize) }

    public var description: String { rawValue }
}

