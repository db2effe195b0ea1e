import FerryRegion
import FerryTestSupport
import FerryWorkloads
import FerrySystem
import Testing

/// Offsets from the documented layout (`RegionHeader`, `HotsetWorkload`).
private let stateOffset = RegionHeader.stateOffset
private let ledgerOffset = stateOffset + 0x00
private let headOffset = stateOffset + 0x10
private let aggregateOffset = stateOffset + 0x18

@Suite struct HotsetTests {
    @Test func stepsKeepEveryInvariant() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 120, pages: 40))
            let hotset = try HotsetWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory, seed: 3))
            #expect(hotset.workingSetPages == 40 - 2)
            #expect(hotset.verify().passed)
            try hotset.steps(600)
            try hotset.flush()
            let report = hotset.verify()
            #expect(report.passed, "\(report)")
            #expect(hotset.stepCount == 600)
            #expect(hotset.ledger == 600)
            #expect((0..<hotset.workingSetPages).reduce(0) { $0 + hotset.version(ofPage: $1) } == 600)
            #expect(report.checksByName["list"]?.passed == true)
            #expect(report.summary.contains("all"))
        }
    }

    @Test func workingSetOptionBoundsTheWrittenPages() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 121, pages: 40))
            let hotset = try HotsetWorkload(
                creating: region, options: WorkloadOptions(sharedDirectory: directory, workingSetPages: 5))
            try hotset.steps(100)
            #expect(hotset.verify().passed)
            let resident = residentPages(region.range)
            // Header, list, and the 5 working-set pages; nothing after them.
            #expect(resident[7...].allSatisfy { !$0 })
            #expect(throws: WorkloadError.self) {
                _ = try HotsetWorkload(
                    creating: region, options: WorkloadOptions(sharedDirectory: directory, workingSetPages: 39))
            }
        }
    }

    @Test func corruptPageByteIsNamed() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 122, pages: 24))
            let hotset = try HotsetWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
            try hotset.steps(200)
            let page = (0..<hotset.workingSetPages).first { hotset.version(ofPage: $0) > 0 }!
            let offset = Int(hotset.address(ofPage: page) - region.range.start) + 1000
            poke(region, offset, peek(region, offset, as: UInt8.self) ^ 0x40)
            let report = hotset.verify()
            #expect(!report.passed)
            let pages = try #require(report.checksByName["pages"])
            #expect(!pages.passed)
            #expect(pages.detail.hasPrefix("page \(page) "), "\(pages.detail)")
            #expect(pages.detail.contains("checksum"))
            #expect(report.checksByName["ledger"]?.passed == true)
        }
    }

    @Test func corruptVersionBreaksTheLedgerInvariant() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 123, pages: 24))
            let hotset = try HotsetWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
            try hotset.steps(100)
            poke(region, ledgerOffset, UInt64(101))
            let report = hotset.verify()
            #expect(report.checksByName["ledger"]?.passed == false)
            #expect(report.checksByName["ledger"]?.detail.contains("ledger total 101") == true)
            #expect(report.checksByName["pages"]?.passed == true)
            #expect(report.summary.contains("FAILED"))
        }
    }

    @Test func corruptListPointerIsNamed() throws {
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: 124, pages: 24))
            let hotset = try HotsetWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
            try hotset.steps(50)
            // Follow the list three nodes from the head, then point the third one outside the region.
            var address = UInt(peek(region, headOffset, as: UInt64.self))
            for _ in 0..<2 { address = UInt(peek(region, Int(address - region.range.start), as: UInt64.self)) }
            let offset = Int(address - region.range.start)
            let saved = peek(region, offset, as: UInt64.self)
            poke(region, offset, UInt64(region.range.end + 4096))
            var report = hotset.verify()
            var list = try #require(report.checksByName["list"])
            #expect(!list.passed)
            #expect(list.detail.contains("node #2"), "\(list.detail)")
            #expect(list.detail.contains("outside the region"))

            // Inside the region but not a node: named too.
            poke(region, offset, UInt64(region.range.start + 8))
            report = hotset.verify()
            list = try #require(report.checksByName["list"])
            #expect(list.detail.contains("not a node slot"), "\(list.detail)")

            // A cycle.
            poke(region, offset, peek(region, headOffset, as: UInt64.self))
            #expect(hotset.verify().checksByName["list"]?.detail.contains("cycle") == true)

            poke(region, offset, saved)
            #expect(hotset.verify().passed)

            poke(region, aggregateOffset, peek(region, aggregateOffset, as: UInt64.self) &+ 1)
            #expect(hotset.verify().checksByName["list aggregate"]?.passed == false)
        }
    }

    @Test func migrationToTheSameAddressContinuesTheWorkload() throws {
        try withTemporaryDirectory { directory in
            let layout = testLayout(slot: 125, pages: 48)
            let bytes: [UInt8]
            let expectedLedger: UInt64
            do {
                let region = try MigratableRegion.create(layout: layout)
                let source = try HotsetWorkload(
                    creating: region, options: WorkloadOptions(sharedDirectory: directory, fill: .random, seed: 77))
                try source.steps(300)
                try source.flush()
                #expect(source.verify().passed)
                bytes = snapshot(region)
                expectedLedger = source.ledger
            }
            // The source's region is gone; the destination maps the same address and receives the bytes.
            let region = try restore(bytes, layout: layout)
            let destination = try WorkloadKind.attach(to: region, sharedDirectory: directory)
            #expect(destination is HotsetWorkload)
            #expect(destination.stepCount == 300)
            #expect(destination.verify().passed, "\(destination.verify())")
            try destination.steps(300)
            let report = destination.verify()
            #expect(report.passed, "\(report)")
            #expect((destination as? HotsetWorkload)?.ledger == expectedLedger + 300)
        }
    }

    @Test func attachingAtADifferentAddressBreaksPointers() throws {
        // The absolute pointers are what make the same base necessary: restored elsewhere, verify says so.
        try withTemporaryDirectory { directory in
            let bytes: [UInt8]
            do {
                let region = try MigratableRegion.create(layout: testLayout(slot: 126, pages: 24))
                let hotset = try HotsetWorkload(creating: region, options: WorkloadOptions(sharedDirectory: directory))
                try hotset.steps(10)
                bytes = snapshot(region)
            }
            let elsewhere = try restore(bytes, layout: testLayout(slot: 127, pages: 24))
            let hotset = try HotsetWorkload(attaching: elsewhere, sharedDirectory: directory)
            let list = try #require(hotset.verify().checksByName["list"])
            #expect(!list.passed)
            #expect(list.detail.contains("the list head points to"))
        }
    }
}

@Suite struct StepFootprintTests {
    /// Pages whose bytes differ between two snapshots.
    private func changedPages(_ before: [UInt8], _ after: [UInt8]) -> Int {
        let page = Kernel.pageSize
        return stride(from: 0, to: before.count, by: page).filter { before[$0..<$0 + page] != after[$0..<$0 + page] }.count
    }

    @Test(arguments: WorkloadKind.allCases)
    func eachStepWritesAFixedSmallNumberOfPages(kind: WorkloadKind) throws {
        try #require(Kernel.pageSize == 4096)
        try withTemporaryDirectory { directory in
            let region = try MigratableRegion.create(layout: testLayout(slot: kind == .hotset ? 40 : 41, pages: 40))
            let workload = try kind.create(in: region, options: WorkloadOptions(sharedDirectory: directory))
            var maximum = 0
            for _ in 0..<20 {
                let before = snapshot(region)
                try workload.step()
                maximum = max(maximum, changedPages(before, snapshot(region)))
            }
            #expect(maximum == (kind == .hotset ? 3 : 2))
        }
    }
}
