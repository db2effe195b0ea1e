#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerrySystem
import FerryTracking
import Testing

/// userfaultfd missing mode as a post-copy destination uses it, on real mappings and real faults.
@Suite struct MissingPageFaultsTests {
    @Test func aReaderBlocksUntilThePageIsInstalledAndSeesItWhole() throws {
        let mapping = try AnonymousMapping(byteCount: 16 * Kernel.pageSize)
        let range = mapping.range
        let faults = try MissingPageFaults(range: range)
        nonisolated(unsafe) let base = range.baseAddress
        let page = 5
        let done = DispatchSemaphore(value: 0)
        let seen = UnsafeMutablePointer<UInt64>.allocate(capacity: 2)
        defer { seen.deallocate() }
        nonisolated(unsafe) let output = seen
        let reader = Thread {
            let words = (base + page * Kernel.pageSize).assumingMemoryBound(to: UInt64.self)
            output[0] = words[0]
            output[1] = words[Kernel.pageSize / 8 - 1]
            done.signal()
        }
        reader.start()
        // The reader's touch is reported as a fault on page 5, and it does not run on meanwhile.
        #expect(try faults.nextFault() == page)
        #expect(done.wait(timeout: .now() + .milliseconds(200)) == .timedOut, "the reader must wait for the page")
        let words = [UInt64](repeating: 0x0DDB_A11C_AFE0_0001, count: Kernel.pageSize / 8)
        let installed = try words.withUnsafeBytes { try faults.install(first: page, count: 1, from: $0.baseAddress!) }
        #expect(installed == 1)
        #expect(done.wait(timeout: .now() + .seconds(10)) == .success)
        #expect(seen[0] == 0x0DDB_A11C_AFE0_0001 && seen[1] == 0x0DDB_A11C_AFE0_0001)
        // Installing again keeps the first copy (and wakes nobody wrongly).
        let other = [UInt64](repeating: 7, count: Kernel.pageSize / 8)
        #expect(try other.withUnsafeBytes { try faults.install(first: page, count: 1, from: $0.baseAddress!) } == 0)
        #expect(base.load(fromByteOffset: page * Kernel.pageSize, as: UInt64.self) == 0x0DDB_A11C_AFE0_0001)
        // A run over present and absent pages installs only the absent ones.
        let run = [UInt64](repeating: 9, count: 3 * Kernel.pageSize / 8)
        #expect(try run.withUnsafeBytes { try faults.install(first: page - 1, count: 3, from: $0.baseAddress!) } == 2)
        #expect(base.load(fromByteOffset: (page - 1) * Kernel.pageSize, as: UInt64.self) == 9)
        #expect(base.load(fromByteOffset: page * Kernel.pageSize, as: UInt64.self) == 0x0DDB_A11C_AFE0_0001)
        #expect(base.load(fromByteOffset: (page + 1) * Kernel.pageSize, as: UInt64.self) == 9)
        try faults.unregister()
        // An ordinary mapping again: an absent page reads as zero without a fault to serve.
        #expect(base.load(fromByteOffset: 12 * Kernel.pageSize, as: UInt64.self) == 0)
    }

    @Test func aKernelWriteIntoAnAbsentPageWaitsForItToo() throws {
        let mapping = try AnonymousMapping(byteCount: 8 * Kernel.pageSize)
        let range = mapping.range
        let faults = try MissingPageFaults(range: range)
        var ends: [CInt] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        let message = Array("written by the kernel".utf8)
        #expect(write(ends[1], message, message.count) == message.count)
        nonisolated(unsafe) let target = range.baseAddress + 3 * Kernel.pageSize + 100
        let readEnd = ends[0]
        let finished = DispatchSemaphore(value: 0)
        let result = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        defer { result.deallocate() }
        nonisolated(unsafe) let output = result
        let reader = Thread {
            output.pointee = read(readEnd, target, message.count)
            finished.signal()
        }
        reader.start()
        // read(2) copies into the absent page inside the kernel: the fault comes to us, not EFAULT.
        #expect(try faults.nextFault() == 3)
        #expect(try faults.installZero(first: 3, count: 1) == 1)
        #expect(finished.wait(timeout: .now() + .seconds(10)) == .success)
        #expect(result.pointee == message.count)
        #expect(Array(UnsafeRawBufferPointer(start: target, count: message.count)) == message)
        // The rest of the zero page is zero.
        #expect(range.baseAddress.load(fromByteOffset: 3 * Kernel.pageSize, as: UInt64.self) == 0)
    }

    @Test func stopWaitingEndsAWaitForFaults() throws {
        let mapping = try AnonymousMapping(byteCount: 4 * Kernel.pageSize)
        let faults = try MissingPageFaults(range: mapping.range)
        faults.stopWaiting()
        #expect(try faults.nextFault() == nil)
    }
}
