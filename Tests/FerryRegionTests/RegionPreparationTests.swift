#if canImport(Glibc)
import Glibc
#endif
import FerryRegion
import FerryTestSupport
import FerrySystem
import Testing

/// The destination's set-up: populating alongside the stream, and a standby reservation.
@Suite struct RegionPreparationTests {
    /// How many of the pages in `[offset, offset + count)` of `range` are present (`mincore`); nil when
    /// part of it is not mapped at all.
    static func residentPages(_ range: MemoryRange, offset: Int = 0, count: Int? = nil) -> Int? {
        let count = count ?? range.byteCount - offset
        var vector = [UInt8](repeating: 0, count: count / range.pageSize)
        guard mincore(range.baseAddress + offset, count, &vector) == 0 else { return nil }
        return vector.reduce(0) { $0 + Int($1 & 1) }
    }

    @Test func thePopulatorMakesEveryPagePresentWithoutChangingAByte() throws {
        let pages = 8192  // 32 MiB
        let region = try MigratableRegion.reserve(layout: testLayout(slot: 20, pages: pages), populate: false)
        #expect(Self.residentPages(region.range) == 0)
        // Pages written before and while it runs keep what was written: populating only faults pages in.
        let written = [0, 1, 777, 4096, pages - 1]
        for page in written { region.bytes.store(UInt64(page) &* 0x9E37_79B9_7F4A_7C15, at: page * Kernel.pageSize + 8) }
        let populator = RegionPopulator(region: region, threads: 2, chunkBytes: 1 << 20)
        populator.wait(untilPopulated: 3 << 20)
        #expect(populator.populatedBytes >= 3 << 20)
        #expect(Self.residentPages(region.range, count: 3 << 20) == (3 << 20) / Kernel.pageSize)
        populator.wait(untilPopulated: region.range.byteCount)
        let summary = populator.cancel()
        #expect(summary.complete && summary.error == nil)
        #expect(summary.populatedBytes == region.range.byteCount)
        #expect(Self.residentPages(region.range) == pages)
        for page in written {
            #expect(region.bytes.load(UInt64.self, at: page * Kernel.pageSize + 8) == UInt64(page) &* 0x9E37_79B9_7F4A_7C15)
        }
        // Every other word reads as zero, as in a fresh mapping.
        #expect(region.bytes.load(UInt64.self, at: 5 * Kernel.pageSize) == 0)
    }

    @Test func cancellingStopsThePopulatorPartWay() throws {
        let region = try MigratableRegion.reserve(layout: testLayout(slot: 21, pages: 262_144), populate: false)  // 1 GiB
        let populator = RegionPopulator(region: region, threads: 1, chunkBytes: 1 << 20)
        let summary = populator.cancel()
        #expect(!summary.complete, "cancelled at once, it cannot have populated 1 GiB")
        #expect(summary.populatedBytes < region.range.byteCount)
        usleep(50_000)
        #expect(populator.populatedBytes == summary.populatedBytes, "the thread must have stopped")
        // A writer waiting for pages it will never get returns at once.
        populator.wait(untilPopulated: region.range.byteCount)
        #expect(Self.residentPages(region.range)! <= summary.populatedBytes / Kernel.pageSize + 256)
    }

    @Test func aReservationIsPresentBeforeAndHandedOverOnceToARegionThatFits() throws {
        let reserved = testLayout(slot: 22, pages: 4096)  // 16 MiB
        let reservation = try RegionReservation(layout: reserved)
        #expect(reservation.isAvailable)
        #expect(Self.residentPages(reserved.range) == 4096, "a standby reservation is populated before any migration")

        // Another base, or a larger region, does not fit; the reservation stays.
        var elsewhere = reserved
        elsewhere.base += UInt(Kernel.pageSize)
        #expect(throws: RegionError.reservationMismatch(reserved: reserved, wanted: elsewhere)) { try reservation.take(for: elsewhere) }
        let larger = RegionLayout(base: reserved.base, byteCount: reserved.byteCount * 2)
        do throws(RegionError) {
            _ = try reservation.take(for: larger)
            Issue.record("a larger region must not fit")
        } catch {
            #expect(error.description.contains("--reserve 32 MiB"), "\(error)")
        }
        #expect(reservation.isAvailable)

        // A smaller region at the same base takes it; the tail is unmapped.
        let wanted = RegionLayout(base: reserved.base, byteCount: reserved.byteCount / 4)
        let region = try reservation.take(for: wanted)
        #expect(region.range.start == wanted.base && region.range.byteCount == wanted.byteCount)
        #expect(region.populateSeconds == 0)
        #expect(Self.residentPages(region.range) == 1024)
        #expect(Self.residentPages(reserved.range, offset: wanted.byteCount, count: Kernel.pageSize) == nil, "the tail must be unmapped")
        region.bytes.store(UInt64(42), at: 64)
        #expect(region.bytes.load(UInt64.self, at: 64) == 42)
        #expect(!reservation.isAvailable)
        #expect(throws: RegionError.reservationTaken(reserved)) { try reservation.take(for: wanted) }
    }

    @Test func aReservationLargerThanTheHostIsRefusedBeforeMapping() throws {
        let available = try #require(Kernel.availableMemory())
        let layout = RegionLayout(base: testLayout(slot: 23, pages: 1).base, byteCount: (available / Kernel.pageSize + 1) * Kernel.pageSize)
        do throws(RegionError) {
            _ = try RegionReservation(layout: layout)
            Issue.record("a reservation beyond MemAvailable must be refused")
        } catch {
            guard case .insufficientMemory = error else { Issue.record("\(error)"); return }
        }
        #expect(Self.residentPages(testLayout(slot: 23, pages: 1).range) == nil, "nothing may stay mapped")
    }
}
