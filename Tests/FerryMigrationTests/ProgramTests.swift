import FerryMigration
import FerryRegion
import FerrySystem
import Foundation
import Synchronization
import Testing

/// The Swift embedding API (`MigratableProgram`) on real regions, control sockets and shared directories, in
/// this process. Moving a program between processes is tested with the C programs (`EmbeddingTests`).
@Suite struct ProgramTests {
    static func options(slot: Int, name: String = "prog") throws -> (ProgramOptions, String) {
        let directory = "/tmp/ferry-program-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var options = ProgramOptions(name: name, sharedDirectory: directory, control: directory + "/control.sock")
        options.base = 0x7c00_0000_0000 + UInt(slot) << 32
        options.size = 4 << 20
        return (options, directory)
    }

    /// A list of `count` nodes allocated in the program's heap: each node holds its index and the next node.
    static func buildList(_ workload: EmbeddedWorkload, count: Int) -> UnsafeMutableRawPointer {
        var head: UnsafeMutableRawPointer?
        for index in (0..<count).reversed() {
            let node = workload.allocate(16)!
            node.storeBytes(of: UInt64(index), as: UInt64.self)
            node.storeBytes(of: UInt64(UInt(bitPattern: head)), toByteOffset: 8, as: UInt64.self)
            head = node
        }
        return head!
    }

    static func sum(_ head: UnsafeMutableRawPointer?) -> UInt64 {
        var total: UInt64 = 0
        var node = head
        while let current = node {
            total += current.load(as: UInt64.self)
            node = UnsafeMutableRawPointer(bitPattern: UInt(current.load(fromByteOffset: 8, as: UInt64.self)))
        }
        return total
    }

    @Test func aStartedProgramOwnsGenerationOneAnswersItsControlSocketAndStopsAtItsSafePoint() throws {
        let (options, directory) = try Self.options(slot: 1)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let program = try MigratableProgram.start(options)
        #expect(program.generation == 1)
        #expect(try OwnershipClaim.owner(of: 1, in: directory) == OwnershipRecord.thisProcess)
        #expect(try OwnershipRecord.read(in: directory)?.workload == "prog")
        let head = Self.buildList(program.workload, count: 100)
        program.workload.root = head
        #expect(program.workload.region.range.pageIndex(of: UInt(bitPattern: head)) != nil, "the heap lies in the region")

        // The program's loop: a safe point after each change, until something ends it.
        let ended = Mutex<MigratableProgram.SafePointResult?>(nil)
        let headAddress = UInt(bitPattern: head)
        let loop = Thread {
            let head = UnsafeMutableRawPointer(bitPattern: headAddress)!
            var counter: UInt64 = 0
            while true {
                counter += 1
                head.storeBytes(of: counter, toByteOffset: 0, as: UInt64.self)  // node 0 holds a running counter
                let result = program.safePoint()
                if result != .proceed {
                    ended.withLock { $0 = result }
                    return
                }
                usleep(200)
            }
        }
        loop.start()
        let verifyCalls = Atomic<Int>(0)
        program.workload.setCallbacks { callbacks in
            callbacks.verify = {
                verifyCalls.add(1, ordering: .relaxed)
                return (true, "list of 100 nodes")
            }
        }

        let status = try ControlChannel.request(["command": "status"], at: options.control) { _ in }
        #expect(status["role"] as? String == "running")
        #expect(status["workload"] as? String == "prog")
        #expect(status["generation"] as? Int == 1)
        let verify = try ControlChannel.request(["command": "verify"], at: options.control) { _ in }
        #expect(verify["ok"] as? Bool == true, "\(verify)")
        #expect(verifyCalls.load(ordering: .relaxed) == 1)
        #expect((verify["report"] as? String ?? "").contains("heap"), "Ferry's heap check runs with the program's")
        #expect(program.workload.stepCount > 0, "every safe point is counted in the region")

        _ = try ControlChannel.request(["command": "stop"], at: options.control) { _ in }
        for _ in 0..<200 where ended.withLock({ $0 }) == nil { usleep(10_000) }
        #expect(ended.withLock { $0 } == .stopped)
        program.close()
        #expect(!FileManager.default.fileExists(atPath: options.control), "closing removes the control socket")
    }

    @Test func aFailingVerifyCallbackOrADamagedRootFailsVerify() throws {
        let (options, directory) = try Self.options(slot: 2)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let program = try MigratableProgram.start(options)
        defer { program.close() }
        program.workload.root = Self.buildList(program.workload, count: 10)
        #expect(program.workload.verify().passed)
        program.workload.setCallbacks { $0.verify = { (false, "node 3 is unreachable") } }
        let report = program.workload.verify()
        #expect(!report.passed)
        #expect(report.checksByName["program"]?.detail == "node 3 is unreachable")
        program.workload.setCallbacks { $0.verify = nil }
        program.workload.root = UnsafeMutableRawPointer(bitPattern: 0x1000)
        #expect(program.workload.verify().checksByName["root"]?.passed == false)
    }

    @Test func theHeapSurvivesAttachingTheSameBytes() throws {
        let (options, directory) = try Self.options(slot: 3)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let layout = RegionLayout(base: options.base, byteCount: options.size)
        var saved: [UInt8] = []
        do {
            let region = try MigratableRegion.create(layout: layout)
            let workload = try EmbeddedWorkload(creating: region, name: "copy")
            workload.root = Self.buildList(workload, count: 500)
            saved = Array(UnsafeRawBufferPointer(start: region.baseAddress, count: region.range.byteCount))
        }  // unmapped here, as on a source that handed over
        let region = try MigratableRegion.reserve(layout: layout, populate: false)
        saved.withUnsafeBytes { region.baseAddress.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let attached = try EmbeddedWorkload(attaching: region, name: "copy")
        #expect(Self.sum(attached.root) == UInt64(499 * 500 / 2))
        #expect(attached.verify().passed)
        // The heap goes on where it was: new blocks never overlap the list.
        let fresh = attached.allocate(64)!
        var node = attached.root
        while let current = node {
            #expect(abs(current.distance(to: fresh)) >= 16)
            node = UnsafeMutableRawPointer(bitPattern: UInt(current.load(fromByteOffset: 8, as: UInt64.self)))
        }
        #expect(throws: WorkloadError.self) { _ = try EmbeddedWorkload(attaching: region, name: "other") }
    }

    @Test func startRefusesARegionLargerThanTheMemoryAndAnOccupiedDirectory() throws {
        var (options, directory) = try Self.options(slot: 4)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let available = try #require(Kernel.availableMemory())
        options.size = (available / Kernel.pageSize + 1) * Kernel.pageSize + (1 << 30)
        do {
            _ = try MigratableProgram.start(options)
            Issue.record("a region of \(options.size) bytes started with \(available) available")
        } catch {
            guard case .region(.insufficientMemory(let required, let reported)) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(required == options.size && reported > 0)
            #expect("\(error)".contains("make the region smaller"))
        }
        #expect(try OwnershipRecord.read(in: directory) == nil, "nothing was claimed")

        options.size = 4 << 20
        let first = try MigratableProgram.start(options)
        defer { first.close() }
        options.control = directory + "/second.sock"
        options.base += 1 << 30
        #expect(throws: AgentError.self) { _ = try MigratableProgram.start(options) }
    }
}
