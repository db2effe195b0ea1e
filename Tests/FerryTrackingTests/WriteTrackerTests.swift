#if canImport(Glibc)
import Glibc
#endif
import FerrySystem
import FerryTestSupport
import FerryTracking
import Foundation
import Testing

/// The backends that work on this machine; on Linux 6.18 as root that is all three, and the tests
/// below must run for each (a missing one is reported by `everyBackendIsAvailableHere`).
let availableBackends = TrackerBackend.allCases.filter { $0.probe().isAvailable }

@Suite struct WriteTrackerTests {
    @Test func everyBackendIsAvailableHere() throws {
        for backend in TrackerBackend.allCases {
            let probe = backend.probe()
            if backend == .uffdAsync && !Kernel.isAtLeast(6, 7) {
                print("skip: uffd-async needs Linux 6.7, this is \(Kernel.release)")
                continue
            }
            #expect(probe.isAvailable, "\(backend): \(probe.reason)")
        }
        let (auto, probes) = try TrackerChoice.auto.resolve()
        #expect(auto == availableBackends.first)
        #expect(probes.last?.backend == auto)
    }

    @Test(arguments: availableBackends, Backing.allCases)
    func collectReturnsExactlyTheWrittenPages(backend: TrackerBackend, backing: Backing) throws {
        let mapping = try backing.mapping(byteCount: 2048 * Kernel.pageSize)
        let range = mapping.range
        // Half the range is populated before arming, half is never touched: both must be tracked.
        memset(range.baseAddress, 0x5A, range.byteCount / 2)
        try backing.requireHugePages(range.pages(0, count: range.pageCount / 2))
        let tracker = try WriteTracker(range: range, backend: backend)
        defer { tracker.stop() }
        try tracker.arm()

        var random = SplitMix64(seed: 42)
        for round in 0..<5 {
            var written = Set<Int>()
            for _ in 0..<(50 + round * 40) { written.insert(Int(random.next() % UInt64(range.pageCount))) }
            written.formUnion(700..<(716 + round))  // a contiguous run too
            for page in written {
                let offset = page * range.pageSize + Int(random.next() % UInt64(range.pageSize))
                range.baseAddress.storeBytes(of: UInt8(truncatingIfNeeded: round + 1), toByteOffset: offset, as: UInt8.self)
            }
            let dirty = try tracker.collect()
            #expect(Array(dirty) == written.sorted(), "round \(round)")
            #expect(try tracker.collect().isEmpty, "a collect with no writes in between reports nothing")
        }
        // Reading is never reported.
        var sum = 0
        for page in 0..<range.pageCount { sum &+= Int(range.baseAddress.load(fromByteOffset: page * range.pageSize, as: UInt8.self)) }
        #expect(sum > 0)
        #expect(try tracker.collect().isEmpty)
    }

    @Test(arguments: availableBackends, Backing.allCases)
    func preCopyShadowEqualsRegionAfterConcurrentWriters(backend: TrackerBackend, backing: Backing) throws {
        let mapping = try backing.mapping(byteCount: 64 << 20)
        let range = mapping.range
        if backing == .hugePages { try backing.populate(range) }
        let shadow = try AnonymousMapping(byteCount: range.byteCount)
        let tracker = try WriteTracker(range: range, backend: backend)
        defer { tracker.stop() }

        // Pre-copy: arm, copy everything once, then keep copying what collect reports.
        try tracker.arm()
        memcpy(shadow.range.baseAddress, range.baseAddress, range.byteCount)
        let writers = RandomWriters(count: 2, range: range)
        func copy(_ dirty: DirtyPages) {
            for run in dirty.runs {
                let offset = run.first * range.pageSize
                memcpy(shadow.range.baseAddress + offset, range.baseAddress + offset, run.count * range.pageSize)
            }
        }
        var rounds = 0
        var pagesCopied = 0
        let started = ContinuousClock.now
        while rounds < 2000 || ContinuousClock.now - started < .seconds(2) {
            let dirty = try tracker.collect()
            copy(dirty)
            rounds += 1
            pagesCopied += dirty.pageCount
            if ContinuousClock.now - started > .seconds(30) { break }
        }
        let writes = writers.stop()
        copy(try tracker.collect())

        #expect(rounds >= 2000, "only \(rounds) collect rounds ran")
        #expect(writes > 1_000, "the writers made only \(writes) writes")
        #expect(pagesCopied > 0)
        let differing = (0..<range.pageCount).filter { page in
            memcmp(shadow.range.baseAddress + page * range.pageSize, range.baseAddress + page * range.pageSize, range.pageSize) != 0
        }
        #expect(differing.isEmpty, "\(differing.count) pages differ after \(rounds) rounds, first: \(differing.prefix(5))")
        print("\(backend), \(backing.rawValue): \(rounds) rounds, \(writes) writes, \(pagesCopied) pages copied, 0 bytes differ")
    }

    @Test(arguments: availableBackends, Backing.allCases)
    func kernelWriteIntoTheRangeIsTrackedOrFailsAsDocumented(backend: TrackerBackend, backing: Backing) throws {
        let mapping = try backing.mapping(byteCount: 16 * Kernel.pageSize)
        let range = mapping.range
        if backing == .hugePages { try backing.populate(range) }
        let tracker = try WriteTracker(range: range, backend: backend)
        defer { tracker.stop() }
        try tracker.arm()

        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let message = Array("written by the kernel".utf8)
        #expect(write(fds[1], message, message.count) == message.count)

        let target = range.baseAddress + 5 * range.pageSize + 100
        let got = read(fds[0], target, message.count)
        switch tracker.kernelWrites {
        case .tracked:
            #expect(got == message.count)
            #expect(Array(try tracker.collect()) == [5])
        case .failsWithEFAULT:
            #expect(got == -1 && errno == EFAULT, "read into a protected page must fail with EFAULT")
            // The data stays in the pipe; after preparing the page the same read succeeds and is reported.
            try tracker.prepareForKernelWrite(PageRun(first: 5, count: 1))
            #expect(read(fds[0], target, message.count) == message.count)
            #expect(Array(try tracker.collect()) == [5])
        }
        #expect(Array(UnsafeRawBufferPointer(start: target, count: message.count)) == message)
    }

    /// On THP, tracking stays per base page: a one-byte write reports its 4 KiB page, not the 2 MiB page
    /// around it, and leaves the other huge pages whole.
    @Test(arguments: availableBackends)
    func oneByteWrittenIntoAHugePageReportsOnlyItsBasePage(backend: TrackerBackend) throws {
        let huge = TransparentHugePages.size ?? 2 << 20
        let mapping = try Backing.hugePages.mapping(byteCount: 3 * huge)
        let range = mapping.range
        let perHuge = huge / range.pageSize  // 512
        // Huge pages 0 and 1 hold memory; huge page 2 was only read (the huge zero page, where the kernel uses it).
        let held = range.pages(0, count: 2 * perHuge)
        try Backing.hugePages.populate(held)
        var sum = 0
        for page in stride(from: 2 * perHuge, to: range.pageCount, by: 64) {
            sum &+= Int(range.baseAddress.load(fromByteOffset: page * range.pageSize, as: UInt8.self))
        }
        #expect(sum == 0)
        let tracker = try WriteTracker(range: range, backend: backend)
        defer { tracker.stop() }
        try tracker.arm()
        try Backing.hugePages.requireHugePages(held)  // arming protects whole huge pages, it splits none

        let inSecond = perHuge + 188  // page 700: inside huge page 1, neither at its start nor its end
        range.baseAddress.storeBytes(of: 0xA1, toByteOffset: inSecond * range.pageSize + 1234, as: UInt8.self)
        #expect(Array(try tracker.collect()) == [inSecond])
        #expect(try TransparentHugePages.backedBytes(in: range.pages(0, count: perHuge)) == perHuge * range.pageSize,
                "a write into huge page 1 must leave huge page 0 whole")

        // Its neighbour in the same (by now split) huge page, and a page of the untouched huge page 0.
        range.baseAddress.storeBytes(of: 0xA2, toByteOffset: (inSecond + 1) * range.pageSize, as: UInt8.self)
        range.baseAddress.storeBytes(of: 0xA3, toByteOffset: 3 * range.pageSize + 7, as: UInt8.self)
        #expect(Array(try tracker.collect()) == [3, inSecond + 1])
        // A page of the huge page that was only read.
        let inThird = 2 * perHuge + 511
        range.baseAddress.storeBytes(of: 0xA4, toByteOffset: inThird * range.pageSize + 4095, as: UInt8.self)
        #expect(Array(try tracker.collect()) == [inThird])
        #expect(try tracker.collect().isEmpty)

        // The bytes are where they were written, and nothing else changed.
        let expected: [Int: UInt8] = [
            inSecond * range.pageSize + 1234: 0xA1, (inSecond + 1) * range.pageSize: 0xA2, 3 * range.pageSize + 7: 0xA3,
            inThird * range.pageSize + 4095: 0xA4,
        ]
        let zeros = [UInt8](repeating: 0, count: range.pageSize)
        for (offset, value) in expected { #expect(range.baseAddress.load(fromByteOffset: offset, as: UInt8.self) == value) }
        for (offset, _) in expected { range.baseAddress.storeBytes(of: 0, toByteOffset: offset, as: UInt8.self) }
        let changed = (0..<range.pageCount).filter { memcmp(range.baseAddress + $0 * range.pageSize, zeros, range.pageSize) != 0 }
        #expect(changed.isEmpty, "pages \(changed.prefix(5)) hold bytes nobody wrote")
    }

    @Test(arguments: availableBackends)
    func aSegfaultOutsideTheRangeStillKillsTheProcess(backend: TrackerBackend) async {
        disableBacktracesInChildProcesses()
        await #expect(processExitsWith: .signal(SIGSEGV)) { [backend] in
            let mapping = try AnonymousMapping(byteCount: 16 * Kernel.pageSize)
            let tracker = try WriteTracker(range: mapping.range, backend: backend)
            try tracker.arm()
            mapping.range.baseAddress.storeBytes(of: 1, as: UInt8.self)  // handled: inside the range
            // A write to a read-only page elsewhere (SEGV_ACCERR, like ours) must still crash.
            let readOnly = mmap(nil, Kernel.pageSize, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
            readOnly.storeBytes(of: 1, as: UInt8.self)
        }
        await #expect(processExitsWith: .signal(SIGSEGV)) { [backend] in
            let mapping = try AnonymousMapping(byteCount: 16 * Kernel.pageSize)
            let tracker = try WriteTracker(range: mapping.range, backend: backend)
            try tracker.arm()
            // An unmapped address (SEGV_MAPERR).
            UnsafeMutableRawPointer(bitPattern: 0x10)!.storeBytes(of: 1, as: UInt8.self)
        }
    }

    /// Writes every other page of 1 GiB under the mprotect backend and checks every one is reported.
    /// Un-protecting them one by one would need ~2 VMAs per page, far past vm.max_map_count (65,530).
    static func everyOtherPageOfOneGiBIsReported(splitBudget: Int?) throws -> TrackerStatistics {
        let mapping = try AnonymousMapping(byteCount: 1 << 30)
        let range = mapping.range
        let tracker = try WriteTracker(range: range, backend: .mprotect, mprotectSplitBudget: splitBudget)
        defer { tracker.stop() }
        try tracker.arm()
        for page in stride(from: 0, to: range.pageCount, by: 2) {
            range.baseAddress.storeBytes(of: 0xAB, toByteOffset: page * range.pageSize, as: UInt8.self)
        }
        let dirty = try tracker.collect()
        let missed = stride(from: 0, to: range.pageCount, by: 2).filter { !dirty.contains($0) }
        #expect(missed.isEmpty, "\(missed.count) written pages not reported")

        // After the fallback, per-page precision is back.
        for page in [1, 3, 1000, range.pageCount - 1] {
            range.baseAddress.storeBytes(of: 0xCD, toByteOffset: page * range.pageSize, as: UInt8.self)
        }
        #expect(Array(try tracker.collect()) == [1, 3, 1000, range.pageCount - 1])
        return tracker.statistics
    }

    @Test func mprotectFallsBackBeforeExhaustingMaxMapCount() throws {
        let statistics = try Self.everyOtherPageOfOneGiBIsReported(splitBudget: nil)
        #expect(statistics.fallbacks >= 1, "expected the whole-range fallback")
    }

    @Test func mprotectSurvivesTheKernelRefusingMoreMaps() async {
        // With no budget the kernel's ENOMEM is what stops the splits. That exhausts the process's maps,
        // which would starve other tests of memory: so it runs in a child process of its own.
        disableBacktracesInChildProcesses()
        await #expect(processExitsWith: .success) {
            let statistics = try Self.everyOtherPageOfOneGiBIsReported(splitBudget: .max)
            if statistics.fallbacks < 1 { exit(3) }
        }
    }

    @Test(arguments: availableBackends)
    func stopLiftsProtectionAndRefusesFurtherUse(backend: TrackerBackend) throws {
        let mapping = try AnonymousMapping(byteCount: 8 * Kernel.pageSize)
        let tracker = try WriteTracker(range: mapping.range, backend: backend)
        try tracker.arm()
        tracker.stop()
        tracker.stop()
        mapping.range.baseAddress.storeBytes(of: 9, toByteOffset: 3 * Kernel.pageSize, as: UInt8.self)
        #expect(throws: TrackingError.stopped) { try tracker.collect() }
    }

    @Test func collectBeforeArmIsAnError() throws {
        let mapping = try AnonymousMapping(byteCount: 8 * Kernel.pageSize)
        let tracker = try WriteTracker(range: mapping.range, backend: .mprotect)
        defer { tracker.stop() }
        #expect(throws: TrackingError.notArmed) { try tracker.collect() }
    }
}

@Suite struct ResidentPagesTests {
    @Test(arguments: availableBackends)
    func onlyTouchedPagesAreResidentEvenUnderWriteProtection(backend: TrackerBackend) throws {
        let mapping = try AnonymousMapping(byteCount: 512 * Kernel.pageSize)
        let range = mapping.range
        for page in [3, 4, 100, 511] { range.baseAddress.storeBytes(of: 1, toByteOffset: page * range.pageSize, as: UInt8.self) }
        let tracker = try WriteTracker(range: range, backend: backend)
        defer { tracker.stop() }
        // Arming write-protects never-touched pages too (uffd-wp markers read as swap entries in pagemap).
        try tracker.arm()
        #expect(Array(try ResidentPages.runs(of: range)) == [3, 4, 100, 511])
    }

    /// A dense region with holes at its edges and inside: exactly the touched pages, as runs (more runs than one
    /// PAGEMAP_SCAN vector holds, so the scan continues where it stopped).
    @Test func denseRegionsWithHolesAreReportedExactly() throws {
        let pages = 4096
        let mapping = try AnonymousMapping(byteCount: pages * Kernel.pageSize)
        let range = mapping.range
        // Touched: everything but page 0, the last page, every 7th page from 1000 to 3000, and 2000..<2100.
        let untouched = Set([0, pages - 1] + Array(stride(from: 1000, to: 3000, by: 7)) + Array(2000..<2100))
        for page in 0..<pages where !untouched.contains(page) {
            range.baseAddress.storeBytes(of: 1, toByteOffset: page * range.pageSize, as: UInt8.self)
        }
        let resident = try ResidentPages.runs(of: range)
        #expect(Array(resident) == (0..<pages).filter { !untouched.contains($0) })
        #expect(resident.runs.count > 256)
    }
}
