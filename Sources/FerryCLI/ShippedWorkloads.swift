import FerryMigration
import FerryRegion
import FerryTransport
import FerryWorkloads

/// The workloads `ferry` ships, plugged into the library like any program's own: how `ferry receive` attaches
/// one that arrived, how `ferry run --resume` rebuilds one from the shared mount, and how each is run.
enum ShippedWorkloads {
    /// Runs a shipped workload on Ferry's own loop, at the pace its region records.
    @Sendable static func run(_ workload: any MigratableWorkload) -> WorkloadHost { host(workload, paused: false) }

    /// The host of a shipped workload that arrived: its loop waits at its first safe point until the destination
    /// owns the generation and resumes it.
    @Sendable static func received(_ workload: any MigratableWorkload) -> WorkloadHost { host(workload, paused: true) }

    private static func host(_ workload: any MigratableWorkload, paused: Bool) -> WorkloadHost {
        guard let stepped = workload as? any Workload else { preconditionFailure("\(workload.workloadName) is not a shipped workload") }
        return WorkloadHost(workload: stepped, paused: paused)
    }

    /// What `ferry receive` accepts: download and hotset; a download fetches from `blockServer` when given.
    static func receivable(sharedDirectory: String, blockServer: Endpoint?) -> ReceivableWorkloads {
        let blockSource = blockServer.map { server in { @Sendable (seed: UInt64) -> any BlockSource in NetworkBlockSource(server: server, seed: seed) } }
        return ReceivableWorkloads(
            names: WorkloadKind.allCases.map(\.rawValue),
            attach: { region in try WorkloadKind.attach(to: region, sharedDirectory: sharedDirectory, blockSource: blockSource) },
            run: received)
    }

    /// How `ferry run --resume` rebuilds a shipped workload from its files (only `download` keeps its state there).
    /// - Parameter stepsPerSecond: the pace to run at; nil keeps the recorded one.
    static func resumer(sharedDirectory: String, blockServer: Endpoint?, stepsPerSecond: Double?) -> MigrationAgent.Resumer {
        MigrationAgent.Resumer(
            refusal: { record in
                guard let kind = WorkloadKind(rawValue: record.workload) else {
                    return "is not one this ferry build ships (\(WorkloadKind.allCases.map(\.rawValue).joined(separator: ", "))); use the program that started it"
                }
                return kind.canResumeFromSharedFiles ? nil : "kept its whole state in the memory of its owner, and nothing on the shared mount holds it; that state is lost"
            },
            rebuild: { record, region in
                let kind = WorkloadKind(rawValue: record.workload)!
                let options = WorkloadOptions(
                    sharedDirectory: sharedDirectory, seed: record.seed ?? 1, stepsPerSecond: stepsPerSecond ?? record.pace ?? 1000)
                return try kind.resume(in: region, options: options, blockSource: blockServer.map { NetworkBlockSource(server: $0, seed: options.seed) })
            },
            run: run)
    }
}
