#if canImport(Glibc)
import Glibc
#endif
import FerryRegion
import FerryTestSupport
import FerryWorkloads
import FerrySystem
import Testing

@Suite struct RegionTests {
    @Test func regionIsMappedAtExactlyItsBase() throws {
        let layout = testLayout(slot: 1, pages: 32)
        let region = try MigratableRegion.create(layout: layout)
        #expect(region.range.start == layout.base)
        #expect(region.range.byteCount == 32 * Kernel.pageSize)
        #expect(region.populateSeconds == nil)
        #expect(RegionLayout.defaultBase == 0x7e00_0000_0000)
    }

    @Test func mappingTwiceAtTheSameBaseIsAddressInUse() throws {
        let layout = testLayout(slot: 2, pages: 16)
        let region = try MigratableRegion.create(layout: layout)
        #expect(throws: RegionError.addressInUse(base: layout.base, size: layout.byteCount)) {
            _ = try MigratableRegion.reserve(layout: layout, populate: false)
        }
        // A partial overlap is a clash too.
        var overlapping = layout
        overlapping.base += UInt(8 * Kernel.pageSize)
        do throws(RegionError) {
            _ = try MigratableRegion.create(layout: overlapping)
            Issue.record("an overlapping mapping must fail")
        } catch {
            #expect(error == .addressInUse(base: overlapping.base, size: overlapping.byteCount))
            #expect(error.description.contains("--base"))
        }
        #expect(region.range.start == layout.base)
    }

    @Test func badLayoutsAreRefusedWithAReason() {
        let page = Kernel.pageSize
        #expect(throws: RegionError.self) {
            _ = try MigratableRegion.create(layout: RegionLayout(base: RegionLayout.defaultBase + 1, byteCount: page))
        }
        do throws(RegionError) {
            _ = try MigratableRegion.create(layout: RegionLayout(base: RegionLayout.defaultBase, byteCount: page + 1))
            Issue.record("an unaligned size must fail")
        } catch {
            guard case .invalidLayout(let reason) = error else { Issue.record("\(error)"); return }
            #expect(reason.contains("multiple"))
        }
    }

    @Test func reserveWithPopulateFaultsEveryPageIn() throws {
        let region = try MigratableRegion.reserve(layout: testLayout(slot: 3, pages: 64), populate: true)
        #expect(region.populateSeconds != nil)
        #expect(residentPages(region.range).allSatisfy { $0 })
        let untouched = try MigratableRegion.reserve(layout: testLayout(slot: 4, pages: 64), populate: false)
        #expect(untouched.populateSeconds == nil)
        #expect(residentPages(untouched.range).allSatisfy { !$0 })
    }

    @Test func headerRecordsTheWorkloadAndValidates() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 5, pages: 32))
            let workload = try WorkloadKind.hotset.create(
                in: region, options: WorkloadOptions(sharedDirectory: directory, seed: 0xABCD))
            try workload.steps(7)
            let info = try region.readHeader()
            #expect(info.workloadName == "hotset")
            #expect(info.layoutVersion == RegionHeader.currentLayoutVersion)
            #expect(info.stepCount == 7)
            #expect(info.seed == 0xABCD)
            #expect(info.regionSize == UInt64(region.range.byteCount))
            #expect(info.pageSize == UInt32(Kernel.pageSize))
            #expect(Array(UnsafeRawBufferPointer(start: region.baseAddress, count: 8)) == Array("FERRYRG1".utf8))
            #expect(peek(region, 0x30, as: UInt64.self) == 7)
        }
    }

    @Test func wrongMagicOrLayoutVersionIsAClearError() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 6, pages: 32))
            _ = try HotsetWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))

            poke(region, 7, UInt8(ascii: "2"))
            do throws(WorkloadError) {
                _ = try WorkloadKind.attach(to: region, sharedDirectory: directory)
                Issue.record("a wrong magic must be refused")
            } catch {
                #expect(error == .region(.notARegion(found: Array("FERRYRG2".utf8))))
                #expect(error.description.contains("FERRYRG1"))
            }
            poke(region, 7, UInt8(ascii: "1"))

            poke(region, 8, UInt32(99))
            do throws(WorkloadError) {
                _ = try HotsetWorkload(attaching: region, sharedDirectory: directory)
                Issue.record("a wrong layout version must be refused")
            } catch {
                #expect(error == .region(.unsupportedLayoutVersion(found: 99, supported: RegionHeader.currentLayoutVersion)))
                #expect(error.description.contains("same ferry build"))
            }
            #expect(throws: RegionError.unsupportedLayoutVersion(found: 99, supported: RegionHeader.currentLayoutVersion)) { try region.readHeader() }
            poke(region, 8, RegionHeader.currentLayoutVersion)
            #expect(try region.readHeader().workloadName == "hotset")
        }
    }

    @Test func wrongOrUnknownWorkloadNameIsRefused() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 7, pages: 32))
            _ = try HotsetWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
            #expect(throws: WorkloadError.wrongWorkload(expected: "download", found: "hotset")) {
                _ = try DownloadWorkload(attaching: region, sharedDirectory: directory)
            }
            // "hotset" -> "hotsex": well formed but unknown.
            poke(region, 0x10 + 5, UInt8(ascii: "x"))
            #expect(throws: WorkloadError.unknownWorkload("hotsex")) {
                _ = try WorkloadKind.attach(to: region, sharedDirectory: directory)
            }
        }
    }

    @Test func regionTooSmallForTheWorkload() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 8, pages: 4))
            #expect(throws: WorkloadError.self) {
                _ = try WorkloadKind.download.create(in: region, options: WorkloadOptions(sharedDirectory: directory))
            }
            #expect(WorkloadKind.download.minimumRegionSize() == 17 * Kernel.pageSize || Kernel.pageSize != 4096)
        }
    }

    @Test(arguments: WorkloadKind.allCases)
    func fillNoneLeavesDataPagesUntouched(kind: WorkloadKind) throws {
        try withTemporaryDirectory { directory in
            let slot = kind == .hotset ? 9 : 10
            let region = try MigratableRegion.create(layout: testLayout(slot: slot, pages: 64))
            let workload = try kind.create(in: region, options: WorkloadOptions(sharedDirectory: directory, fill: .none))
            let info = try region.readHeader()
            let firstData = Int(info.dataOffset) / Kernel.pageSize
            let resident = residentPages(region.range)
            #expect(resident[0], "the header page is written")
            // The download's ring and free area, the hotset's working set: nothing faulted in.
            #expect(resident[firstData...].allSatisfy { !$0 }, "\(resident)")
            #expect(workload.verify().passed)
        }
    }

    @Test(arguments: WorkloadKind.allCases)
    func fillZeroFaultsDataPagesInAsZeros(kind: WorkloadKind) throws {
        try withTemporaryDirectory { directory in
            let slot = kind == .hotset ? 11 : 12
            let region = try MigratableRegion.create(layout: testLayout(slot: slot, pages: 64))
            let workload = try kind.create(in: region, options: WorkloadOptions(sharedDirectory: directory, fill: .zero))
            let firstData = Int(try region.readHeader().dataOffset)
            #expect(residentPages(region.range).allSatisfy { $0 })
            let data = UnsafeRawBufferPointer(start: region.baseAddress + firstData, count: region.range.byteCount - firstData)
            #expect(data.allSatisfy { $0 == 0 })
            #expect(workload.verify().passed)
        }
    }

    @Test(arguments: WorkloadKind.allCases)
    func fillRandomMakesDataPagesNonZero(kind: WorkloadKind) throws {
        try withTemporaryDirectory { directory in
            let slot = kind == .hotset ? 13 : 14
            let region = try MigratableRegion.create(layout: testLayout(slot: slot, pages: 64))
            let workload = try kind.create(
                in: region, options: WorkloadOptions(sharedDirectory: directory, fill: .random, workingSetPages: 20, seed: 9))
            let info = try region.readHeader()
            #expect(info.fill == .random)
            // Every data page (download ring and free area; hotset working set and free area) is non-zero.
            let page = Kernel.pageSize
            for offset in stride(from: Int(info.dataOffset), to: region.range.byteCount, by: page) {
                let bytes = UnsafeRawBufferPointer(start: region.baseAddress + offset, count: page)
                #expect(bytes.contains { $0 != 0 }, "page at offset \(offset) is all zero")
            }
            #expect(workload.verify().passed, "\(workload.verify())")
            try workload.steps(50)
            #expect(workload.verify().passed, "\(workload.verify())")
        }
    }
}
