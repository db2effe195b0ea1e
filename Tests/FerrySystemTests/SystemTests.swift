import FerrySystem
import Foundation
import Testing

/// The system layer on real mappings and real syscalls.
@Suite struct SystemTests {
    @Test func aFixedMappingNeverReplacesWhatIsThere() throws {
        let first = try AnonymousMapping(byteCount: 1 << 20)
        let taken = first.range.start
        first.range.baseAddress.storeBytes(of: 0xFE, as: UInt8.self)
        #expect {
            _ = try AnonymousMapping(byteCount: 1 << 20, at: taken)
        } throws: { error in
            let error = error as? SystemCallError
            return error?.errno == .exists && error?.call == "mmap" && error?.subject.hasPrefix("0x\(String(taken, radix: 16))") == true
        }
        #expect(first.range.baseAddress.load(as: UInt8.self) == 0xFE, "the existing mapping is untouched")
        // Once it is gone, the same address can be mapped exactly.
        let range = first.release()
        munmap(range.baseAddress, range.byteCount)
        let again = try AnonymousMapping(byteCount: 1 << 20, at: taken)
        #expect(again.range.start == taken && again.range.pageCount == (1 << 20) / Kernel.pageSize)
    }

    @Test func aFailedCallSaysWhichCallOnWhatAndTheErrno() {
        #expect {
            _ = try systemCall("open", subject: "/nonexistent/ferry") { open("/nonexistent/ferry", O_RDONLY) }
        } throws: { error in
            let error = error as? SystemCallError
            return error?.errno == Errno(rawValue: ENOENT) && "\(error!)".contains("open on /nonexistent/ferry failed")
                && "\(error!)".contains("ENOENT")
        }
    }

    @Test func pagesAndAddressesOfARange() {
        let range = MemoryRange(start: 0x7e00_0000_0000, byteCount: 16 * 4096, pageSize: 4096)
        #expect(range.pageCount == 16 && range.end == 0x7e00_0001_0000)
        #expect(range.address(ofPage: 3) == 0x7e00_0000_3000)
        #expect(range.pageIndex(of: 0x7e00_0000_3fff) == 3)
        #expect(range.pageIndex(of: range.end) == nil && range.pageIndex(of: range.start - 1) == nil)
        #expect("\(range)" == "0x7e0000000000+64 KiB")
    }

    @Test func theGeneratorIsDeterministicPerSeed() {
        var a = SplitMix64(seed: 42)
        var b = SplitMix64(seed: 42)
        var c = SplitMix64(seed: 43)
        let first = (0..<100).map { _ in a.next() }
        #expect(first == (0..<100).map { _ in b.next() })
        #expect(first != (0..<100).map { _ in c.next() })
        #expect(Set(first).count == 100)
    }
}
