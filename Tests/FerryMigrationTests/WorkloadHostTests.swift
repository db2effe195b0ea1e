import FerryMigration
import FerryRegion
import FerryWorkloads
import Foundation
import Testing

/// `WorkloadHost` on a real hotset workload and its own thread: a host built paused (as a destination builds it
/// before the commit) runs no step until it is resumed, and one stopped before that never runs one.
@Suite struct WorkloadHostTests {
    static func hotset(slot: Int) throws -> (HotsetWorkload, String) {
        let directory = "/tmp/ferry-host-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let layout = RegionLayout(base: 0x7c80_0000_0000 + UInt(slot) << 32, byteCount: 2 << 20)
        let region = try MigratableRegion.create(layout: layout)
        let workload = try HotsetWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory, stepsPerSecond: 2000))
        return (workload, directory)
    }

    @Test func aHostBuiltPausedRunsNoStepUntilItIsResumed() throws {
        let (workload, directory) = try Self.hotset(slot: 0)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let host = WorkloadHost(workload: workload, paused: true)
        defer { host.stop(flush: false) }  // the thread ends before the region is released
        usleep(100_000)
        #expect(host.stepCount == 0 && host.isPaused, "a paused host ran \(host.stepCount) steps")
        host.resume()
        let deadline = ContinuousClock.now + .seconds(10)
        while host.stepCount < 20 && ContinuousClock.now < deadline { usleep(5_000) }
        #expect(host.stepCount >= 20, "the resumed host runs its steps")
        #expect(host.pause())
        #expect(workload.verify().passed)
    }

    @Test func aHostStoppedBeforeItWasResumedNeverRunsAStep() throws {
        let (workload, directory) = try Self.hotset(slot: 1)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let host = WorkloadHost(workload: workload, paused: true)
        host.stop(flush: false, wait: false)  // as a destination whose migration failed after it prepared the host
        let deadline = ContinuousClock.now + .seconds(10)
        while !host.isStopped && ContinuousClock.now < deadline { usleep(1_000) }
        #expect(host.isStopped)
        usleep(50_000)
        #expect(host.stepCount == 0)
        host.resume()  // a late resume changes nothing
        usleep(50_000)
        #expect(host.stepCount == 0 && host.isStopped)
    }
}
