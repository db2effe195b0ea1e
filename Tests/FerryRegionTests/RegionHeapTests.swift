#if canImport(Glibc)
import Glibc
#endif
@testable import FerryRegion
import FerrySystem
import FerryTestSupport
import Testing

/// The heap tests' fixed addresses, 256 GiB above the region tests' slots: `defaultBase + (256 + slot) GiB`.
private func heapTestAddress(slot: Int) -> UInt {
    RegionLayout.defaultBase + UInt(256 + slot) << 30
}

/// The `index`-th 8-byte word of the pattern a block filled with `seed` holds.
private func patternWord(_ seed: UInt64, _ index: Int) -> UInt64 {
    (seed ^ UInt64(index) &* 0xD6E8_FEB8_6659_FD93) &* 0x9E37_79B9_7F4A_7C15 | 1
}

/// Fills `count` bytes at `pointer` with the pattern of `seed`.
private func fillPattern(_ pointer: UnsafeMutableRawPointer, count: Int, seed: UInt64) {
    let words = count / 8
    for index in 0..<words {
        pointer.storeBytes(of: patternWord(seed, index), toByteOffset: index * 8, as: UInt64.self)
    }
    let last = patternWord(seed, words)
    for byte in 0..<count % 8 {
        pointer.storeBytes(of: UInt8(truncatingIfNeeded: last >> (8 * byte)), toByteOffset: words * 8 + byte, as: UInt8.self)
    }
}

/// The offset of the first byte of `count` at `pointer` that differs from the pattern of `seed`, or nil.
private func patternMismatch(_ pointer: UnsafeMutableRawPointer, count: Int, seed: UInt64) -> Int? {
    let words = count / 8
    for index in 0..<words where pointer.load(fromByteOffset: index * 8, as: UInt64.self) != patternWord(seed, index) {
        return index * 8
    }
    let last = patternWord(seed, words)
    for byte in 0..<count % 8
    where pointer.load(fromByteOffset: words * 8 + byte, as: UInt8.self) != UInt8(truncatingIfNeeded: last >> (8 * byte)) {
        return words * 8 + byte
    }
    return nil
}

private func pointer(_ address: UInt) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: address)! }

/// How many pages of `byteCount` bytes at `base` are resident (`mincore`).
private func residentPageCount(_ base: UnsafeMutableRawPointer, byteCount: Int) -> Int {
    var vector = [UInt8](repeating: 0, count: (byteCount + Kernel.pageSize - 1) / Kernel.pageSize)
    let result = mincore(base, byteCount, &vector)
    precondition(result == 0, "mincore failed: \(Errno.current)")
    return vector.count(where: { $0 & 1 != 0 })
}

/// A heap driven by random operations next to a model of what it must hold.
private struct Storm {
    struct Block {
        var address: UInt
        /// Bytes requested, all of them filled with the pattern of `seed`.
        var size: Int
        var seed: UInt64
    }

    var heap: RegionHeap
    var random: SplitMix64
    var blocks: [Block] = []
    var nextSeed: UInt64 = 1
    /// Requests refused because the heap was full.
    var refusals = 0
    var operations = 0
    /// Most live blocks the storm keeps.
    var liveLimit = 3000

    init(heap: RegionHeap, seed: UInt64) {
        self.heap = heap
        random = SplitMix64(seed: seed)
    }

    /// A size from 0 to ~40 KiB, mostly small.
    mutating func randomSize() -> Int {
        switch random.next() % 100 {
        case 0..<70: Int(random.next() % 257)
        case 70..<92: Int(random.next() % 4097)
        default: Int(random.next() % 40_001)
        }
    }

    mutating func freshSeed() -> UInt64 {
        defer { nextSeed += 1 }
        return nextSeed &* 0x1000_0000_01B3
    }

    /// Runs `count` random operations, verifying everything every `verifyEvery` of them.
    mutating func run(_ count: Int, verifyEvery: Int) throws {
        for _ in 0..<count {
            let roll = random.next() % 100
            if blocks.count < 20 || (roll < 45 && blocks.count < liveLimit) {
                try allocateOne()
            } else if roll < 75 {
                try freeOne()
            } else {
                try reallocateOne()
            }
            operations += 1
            if operations % verifyEvery == 0 { try verify() }
        }
    }

    mutating func allocateOne() throws {
        let size = randomSize()
        let before = heap.statistics
        // Now and then through reallocate(nil, ...), which must behave the same.
        let result = random.next() % 10 == 0 ? heap.reallocate(nil, to: size) : heap.allocate(size)
        guard let result else {
            refusals += 1
            #expect(heap.statistics == before, "a refused allocation must leave the heap unchanged")
            return
        }
        let address = UInt(bitPattern: result)
        try #require(address % 16 == 0, "block \(address) of \(size) bytes is not 16-byte aligned")
        try #require(heap.usableSize(result) >= size)
        let seed = freshSeed()
        fillPattern(result, count: size, seed: seed)
        blocks.append(Block(address: address, size: size, seed: seed))
    }

    mutating func freeOne() throws {
        let index = Int(random.next() % UInt64(blocks.count))
        let block = blocks[index]
        try checkPattern(block)
        blocks.swapAt(index, blocks.count - 1)
        blocks.removeLast()
        if random.next() % 10 == 0 {
            #expect(heap.reallocate(pointer(block.address), to: 0) == nil, "reallocate to 0 frees and returns nil")
        } else {
            heap.free(pointer(block.address))
        }
    }

    mutating func reallocateOne() throws {
        let index = Int(random.next() % UInt64(blocks.count))
        let old = blocks[index]
        try checkPattern(old)
        var newSize = randomSize()
        if newSize == 0 { newSize = 1 }  // 0 frees: exercised in freeOne
        let before = heap.statistics
        guard let result = heap.reallocate(pointer(old.address), to: newSize) else {
            refusals += 1
            #expect(heap.statistics == before, "a refused reallocate must leave the heap unchanged")
            try checkPattern(old)
            return
        }
        let kept = min(old.size, newSize)
        if let offset = patternMismatch(result, count: kept, seed: old.seed) {
            Issue.record("reallocate \(old.size) -> \(newSize) lost the contents at offset \(offset)")
            throw StormFailure()
        }
        try #require(UInt(bitPattern: result) % 16 == 0)
        try #require(heap.usableSize(result) >= newSize)
        let seed = freshSeed()
        fillPattern(result, count: newSize, seed: seed)
        blocks[index] = Block(address: UInt(bitPattern: result), size: newSize, seed: seed)
    }

    func checkPattern(_ block: Block) throws {
        if let offset = patternMismatch(pointer(block.address), count: block.size, seed: block.seed) {
            Issue.record("block 0x\(String(block.address, radix: 16)) (\(block.size) bytes) changed at offset \(offset)")
            throw StormFailure()
        }
    }

    /// The heap checks, no two blocks overlap, every block holds its pattern, the statistics match.
    func verify() throws {
        let check = heap.check()
        try #require(check.passed, "after \(operations) operations: \(check)")
        let statistics = heap.statistics
        let lowest = UInt(bitPattern: heap.base) + UInt(statistics.headerBytes) + 8
        let highest = UInt(bitPattern: heap.base) + UInt(statistics.topOffset)
        var usableTotal = 0
        var previousEnd = lowest - 8
        for block in blocks.sorted(by: { $0.address < $1.address }) {
            let usable = heap.usableSize(pointer(block.address))
            try #require(usable >= block.size && usable < block.size + 48, "usable size \(usable) for \(block.size)")
            // Each block's header lies in the 8 bytes before it.
            try #require(block.address - 8 >= previousEnd, "block 0x\(String(block.address, radix: 16)) overlaps")
            try #require(block.address >= lowest && block.address + UInt(usable) <= highest)
            previousEnd = block.address + UInt(usable)
            usableTotal += usable
            try checkPattern(block)
        }
        #expect(statistics.liveBlocks == blocks.count)
        #expect(statistics.allocatedBytes == usableTotal)
        #expect(
            statistics.allocatedBytes + statistics.overheadBytes + statistics.freeBytes
                == statistics.topOffset - statistics.headerBytes)
        #expect(statistics.highWaterOffset >= statistics.topOffset && statistics.highWaterOffset <= statistics.capacity)
    }
}

private struct StormFailure: Error {}

/// The layout offsets and bins, for the tests that corrupt a heap on purpose.
private extension RegionHeap {
    func word(at address: UInt) -> UInt { pointer(address).load(as: UInt.self) }
    func setWord(at address: UInt, _ value: UInt) { pointer(address).storeBytes(of: value, as: UInt.self) }
    func binHeadAddress(_ bin: Int) -> UInt { start + UInt(HeapLayout.Offset.bins + 8 * bin) }
    func bitmapAddress(_ bin: Int) -> UInt { start + UInt(HeapLayout.Offset.bitmap + 8 * (bin / 64)) }
    func setBit(_ bin: Int, _ on: Bool) {
        let bit: UInt = 1 << UInt(bin % 64)
        let old = word(at: bitmapAddress(bin))
        setWord(at: bitmapAddress(bin), on ? old | bit : old & ~bit)
    }
}

@Suite struct RegionHeapTests {
    /// Seeds and heap sizes: 32 MiB is ample for the storm; in 2 MiB many requests are refused.
    @Test(arguments: [(0x5EED_0001, 32), (0xF00D_0002, 32), (0xC0FF_EE03, 2)] as [(UInt64, Int)])
    func randomStormsAgreeWithTheModel(seed: UInt64, mebibytes: Int) throws {
        let mapping = try AnonymousMapping(byteCount: mebibytes << 20)
        var storm = Storm(heap: .format(at: mapping.range.baseAddress, byteCount: mapping.range.byteCount), seed: seed)
        try storm.run(40_000, verifyEvery: 500)
        try storm.verify()
        if mebibytes >= 32 {
            #expect(storm.refusals == 0, "32 MiB is ample for the storm")
        } else {
            #expect(storm.refusals > 100, "a small heap must fill up and refuse")
        }
        // Freeing everything leaves an empty heap: all free space merged back into top.
        for block in storm.blocks {
            try storm.checkPattern(block)
            storm.heap.free(pointer(block.address))
        }
        storm.blocks.removeAll()
        try storm.verify()
        let statistics = storm.heap.statistics
        #expect(statistics.liveBlocks == 0 && statistics.freeBlocks == 0 && statistics.freeBytes == 0)
        #expect(statistics.topOffset == statistics.headerBytes)
    }

    @Test func aMigratedHeapContinuesWhereItWas() throws {
        let address = heapTestAddress(slot: 0)
        let byteCount = 16 << 20
        var saved: [UInt8]
        var storm: Storm
        do {
            let source = try AnonymousMapping(byteCount: byteCount, at: address)
            storm = Storm(heap: .format(at: source.range.baseAddress, byteCount: byteCount), seed: 0xA11C_E5)
            try storm.run(20_000, verifyEvery: 1000)
            try storm.verify()
            // Only the bytes below high water were ever written: the rest is still zero, as on the destination.
            let written = storm.heap.statistics.highWaterOffset
            #expect(written < byteCount)
            saved = Array(UnsafeRawBufferPointer(start: source.range.baseAddress, count: written))
            // The source mapping is unmapped here.
        }
        let destination = try AnonymousMapping(byteCount: byteCount, at: address)
        saved.withUnsafeBytes { destination.range.baseAddress.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        storm.heap = try RegionHeap(attachingAt: destination.range.baseAddress, byteCount: byteCount)
        try storm.verify()
        try storm.run(20_000, verifyEvery: 1000)
        try storm.verify()

        // The same bytes anywhere else, or with another size, are refused.
        let elsewhere = try AnonymousMapping(byteCount: byteCount)
        saved.withUnsafeBytes { elsewhere.range.baseAddress.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        do throws(RegionError) {
            _ = try RegionHeap(attachingAt: elsewhere.range.baseAddress, byteCount: byteCount)
            Issue.record("attaching at another address must fail")
        } catch {
            guard case .malformedHeader(let reason) = error else { Issue.record("\(error)"); return }
            #expect(reason.contains("formatted at 0x\(String(address, radix: 16))"))
        }
        #expect(throws: RegionError.self) {
            _ = try RegionHeap(attachingAt: destination.range.baseAddress, byteCount: byteCount - 4096)
        }
    }

    @Test func attachingToMemoryWithoutAHeapIsMalformed() throws {
        let mapping = try AnonymousMapping(byteCount: 64 << 10)
        let base = mapping.range.baseAddress
        do throws(RegionError) {
            _ = try RegionHeap(attachingAt: base, byteCount: 64 << 10)
            Issue.record("zeroed memory holds no heap")
        } catch {
            guard case .malformedHeader(let reason) = error else { Issue.record("\(error)"); return }
            #expect(reason.contains("bad magic"))
        }
        _ = RegionHeap.format(at: base, byteCount: 64 << 10)
        base.storeBytes(of: 2, toByteOffset: HeapLayout.Offset.version, as: UInt32.self)
        do throws(RegionError) {
            _ = try RegionHeap(attachingAt: base, byteCount: 64 << 10)
            Issue.record("an unknown version must be refused")
        } catch {
            #expect(error.description.contains("layout version 2"))
        }
    }

    @Test func aFullHeapRefusesAndStaysConsistentThenEmptiesCompletely() throws {
        let byteCount = 256 << 10
        let mapping = try AnonymousMapping(byteCount: byteCount)
        var storm = Storm(heap: .format(at: mapping.range.baseAddress, byteCount: byteCount), seed: 0xF011)
        // Fill it: keep allocating, smaller and smaller, until not even a minimum block fits.
        var size = 3000
        var allocations = 0
        while true {
            let before = storm.heap.statistics
            if let block = storm.heap.allocate(size) {
                let seed = storm.freshSeed()
                fillPattern(block, count: size, seed: seed)
                storm.blocks.append(.init(address: UInt(bitPattern: block), size: size, seed: seed))
                // Free some now and then so that the full heap has holes.
                allocations += 1
                if allocations % 7 == 0 { try storm.freeOne() }
                continue
            }
            #expect(storm.heap.statistics == before, "a refused allocation must leave the heap unchanged")
            if size == 0 { break }
            size /= 2
        }
        try storm.verify()
        let full = storm.heap.statistics
        #expect(full.freeBlocks == 0, "a free block would have served the minimum request")
        #expect(full.capacity - full.topOffset < 32)
        #expect(storm.heap.reallocate(pointer(storm.blocks[0].address), to: 100_000) == nil)
        try storm.verify()

        // Free everything in random order, checking as it goes.
        while !storm.blocks.isEmpty {
            try storm.freeOne()
            if storm.blocks.count % 1000 == 0 { try storm.verify() }
        }
        try storm.verify()
        let empty = storm.heap.statistics
        #expect(empty.liveBlocks == 0 && empty.allocatedBytes == 0 && empty.freeBlocks == 0 && empty.freeBytes == 0)
        #expect(empty.topOffset == empty.headerBytes)
        #expect(empty.highWaterOffset > byteCount - 32)

        // All of it merged back: the largest possible block fits, one byte more does not.
        let largest = (byteCount - empty.headerBytes) & ~15 - 8
        #expect(storm.heap.allocate(largest + 1) == nil)
        let whole = try #require(storm.heap.allocate(largest))
        #expect(storm.heap.usableSize(whole) == largest)
        #expect(storm.heap.check().passed)
        storm.heap.free(whole)
        #expect(storm.heap.statistics == empty)
    }

    @Test func reallocateGrowsAndShrinksInPlaceAndFailsCleanly() throws {
        let byteCount = 64 << 10
        let mapping = try AnonymousMapping(byteCount: byteCount)
        let heap = RegionHeap.format(at: mapping.range.baseAddress, byteCount: byteCount)
        let a = try #require(heap.allocate(100))
        let b = try #require(heap.allocate(200))
        let c = try #require(heap.allocate(100))
        fillPattern(a, count: 100, seed: 1)
        fillPattern(c, count: 100, seed: 3)
        heap.free(b)
        #expect(heap.statistics.freeBlocks == 1)

        // Grow into the free block that follows, leaving the rest free.
        #expect(heap.reallocate(a, to: 250) == a)
        #expect(patternMismatch(a, count: 100, seed: 1) == nil)
        #expect(heap.usableSize(a) >= 250)
        #expect(heap.statistics.freeBlocks == 1)
        #expect(heap.check().passed, "\(heap.check())")
        fillPattern(a, count: 250, seed: 4)

        // Shrink in place: the tail merges with the free block after it.
        let freeBefore = heap.statistics.freeBytes
        #expect(heap.reallocate(a, to: 40) == a)
        #expect(patternMismatch(a, count: 40, seed: 4) == nil)
        #expect(heap.statistics.freeBlocks == 1)
        #expect(heap.statistics.freeBytes > freeBefore)
        #expect(heap.check().passed, "\(heap.check())")
        // A shrink too small to split off a block keeps the block as it is.
        #expect(heap.reallocate(a, to: 36) == a)
        #expect(heap.usableSize(a) == 40)

        // The highest block grows into top; shrinking it gives the tail back to top.
        let topBefore = heap.statistics.topOffset
        #expect(heap.reallocate(c, to: 5000) == c)
        #expect(heap.statistics.topOffset > topBefore)
        #expect(patternMismatch(c, count: 100, seed: 3) == nil)
        #expect(heap.reallocate(c, to: 100) == c)
        #expect(heap.statistics.topOffset == topBefore)
        #expect(heap.check().passed, "\(heap.check())")

        // Too big for any space: nil, and the old block is untouched and still valid.
        let before = heap.statistics
        #expect(heap.reallocate(a, to: 63_000) == nil)
        #expect(heap.reallocate(a, to: Int.max) == nil)
        #expect(heap.statistics == before)
        #expect(patternMismatch(a, count: 40, seed: 4) == nil)
        #expect(heap.check().passed)

        // Growing past what follows moves the block, contents and all, and frees the old place.
        let moved = try #require(heap.reallocate(a, to: 2000))
        #expect(moved != a)
        #expect(patternMismatch(moved, count: 40, seed: 4) == nil)
        #expect(heap.statistics.liveBlocks == 2)
        #expect(heap.check().passed, "\(heap.check())")

        // Size 0 gives a real minimum block.
        let empty = try #require(heap.allocate(0))
        #expect(heap.usableSize(empty) == 24)
        #expect(empty != moved && empty != c)
        heap.free(empty)
        heap.free(moved)
        heap.free(c)
        heap.free(nil)
        #expect(heap.statistics.liveBlocks == 0)
        #expect(heap.statistics.topOffset == heap.statistics.headerBytes)
    }

    /// A heap with free blocks between live ones, and a copy of its bytes to restore between corruptions.
    private static func corruptibleHeap(_ mapping: borrowing AnonymousMapping)
        -> (heap: RegionHeap, live: [UnsafeMutableRawPointer], freed: [(block: UInt, size: UInt)], bytes: [UInt8])
    {
        let heap = RegionHeap.format(at: mapping.range.baseAddress, byteCount: mapping.range.byteCount)
        var live: [UnsafeMutableRawPointer] = []
        var freed: [(block: UInt, size: UInt)] = []
        let blocks = (0..<40).map { heap.allocate(16 + 40 * $0)! }
        for (index, block) in blocks.enumerated() {
            // Every third (never two neighbours, never the highest) is freed: a bin each, they are all of
            // different sizes.
            if index % 3 == 0 && index > 0 && index < 39 {
                freed.append((UInt(bitPattern: block) - 8, UInt(heap.usableSize(block) + 8)))
                heap.free(block)
            } else {
                live.append(block)
            }
        }
        let bytes = Array(UnsafeRawBufferPointer(start: heap.base, count: heap.statistics.highWaterOffset))
        return (heap, live, freed, bytes)
    }

    @Test func checkNamesTheFirstProblem() throws {
        let mapping = try AnonymousMapping(byteCount: 1 << 20)
        let (heap, live, freed, bytes) = Self.corruptibleHeap(mapping)
        #expect(heap.check().passed, "\(heap.check())")
        #expect(heap.check().description.contains("\(live.count) live blocks"))

        // A free block alone in its bin, its neighbours, and an empty bin next to its own.
        let free = freed[0].block
        let freeSize = freed[0].size
        let bin = RegionHeap.binIndex(blockSize: freeSize)
        let next = free + freeSize
        let top = heap.start + UInt(heap.statistics.topOffset)
        let liveBlock = UInt(bitPattern: live[5]) - 8
        #expect(heap.word(at: heap.binHeadAddress(bin)) == free && heap.word(at: free + 8) == 0)
        #expect(heap.word(at: heap.binHeadAddress(bin + 1)) == 0)

        let corruptions: [(String, String, () -> Void)] = [
            ("magic", "bad magic", { heap.setWord(at: heap.start, 0x4141) }),
            ("size past top", "runs past top", {
                heap.setWord(at: liveBlock, heap.word(at: liveBlock) & 15 | (top - liveBlock + 16))
            }),
            ("misaligned size", "misaligned size", { heap.setWord(at: liveBlock, heap.word(at: liveBlock) | 8) }),
            ("footer", "footer says", { heap.setWord(at: free + freeSize - 8, freeSize + 16) }),
            ("back link", "does not point back", { heap.setWord(at: free + 16, liveBlock) }),
            ("link to a live block", "is in use but on the free list", { heap.setWord(at: free + 8, liveBlock) }),
            ("link outside", "not a block inside the heap", { heap.setWord(at: free + 8, top + 4096) }),
            ("link to itself", "a cycle", { heap.setWord(at: free + 8, free) }),
            ("link into a block", "not the start of a block", {
                // A plausible free block inside a live block's payload, linked after `free`.
                let fake = liveBlock + 32
                heap.setWord(at: fake, 32 | 2)
                heap.setWord(at: fake + 8, 0)
                heap.setWord(at: heap.binHeadAddress(0), fake)
                heap.setWord(at: fake + 16, 0)
                heap.setBit(0, true)
            }),
            ("adjacent free blocks", "two adjacent free blocks", {
                // The block after `free` marked free too (it already says its previous block is free).
                heap.setWord(at: next, heap.word(at: next) & ~1)
                heap.setWord(at: next + (heap.word(at: next) & ~15) - 8, heap.word(at: next) & ~15)
            }),
            ("previous-in-use bit", "says the previous block is", {
                heap.setWord(at: next, heap.word(at: next) | 2)
            }),
            ("missing from its bin", "missing from its bin", {
                heap.setWord(at: heap.binHeadAddress(bin), 0)
                heap.setBit(bin, false)
            }),
            ("wrong bin", "wrong bin", {
                heap.setWord(at: heap.binHeadAddress(bin), 0)
                heap.setBit(bin, false)
                heap.setWord(at: heap.binHeadAddress(bin + 1), free)
                heap.setBit(bin + 1, true)
            }),
            ("bitmap bit cleared", "bitmap bit \(bin) is clear", { heap.setBit(bin, false) }),
            ("bitmap bit set", "bitmap bit \(bin + 1) is set", { heap.setBit(bin + 1, true) }),
            ("live count", "say \(live.count + 1) live blocks", {
                heap.setWord(at: heap.start + UInt(HeapLayout.Offset.liveBlocks), UInt(live.count + 1))
            }),
            ("free bytes", "free bytes", {
                let address = heap.start + UInt(HeapLayout.Offset.freeBytes)
                heap.setWord(at: address, heap.word(at: address) + 16)
            }),
        ]
        for (name, expected, corrupt) in corruptions {
            bytes.withUnsafeBytes { heap.base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            #expect(heap.check().passed, "restored before \(name)")
            corrupt()
            let check = heap.check()
            #expect(!check.passed, "\(name) went unnoticed")
            #expect(check.detail.contains(expected), "\(name): \(check.detail)")
            #expect(check.address != nil && check.description.hasPrefix("heap damaged"))
        }
    }

    @Test func freeingWhatIsNotALiveBlockStopsTheProcess() async {
        disableBacktracesInChildProcesses()
        let doubleFree = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let mapping = try AnonymousMapping(byteCount: 64 << 10)
            let heap = RegionHeap.format(at: mapping.range.baseAddress, byteCount: 64 << 10)
            let block = heap.allocate(64)!
            _ = heap.allocate(64)
            heap.free(block)
            heap.free(block)
        }
        let insideABlock = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let mapping = try AnonymousMapping(byteCount: 64 << 10)
            let heap = RegionHeap.format(at: mapping.range.baseAddress, byteCount: 64 << 10)
            let block = heap.allocate(64)!
            _ = heap.allocate(64)
            heap.free(block + 16)
        }
        let damagedHeader = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let mapping = try AnonymousMapping(byteCount: 64 << 10)
            let heap = RegionHeap.format(at: mapping.range.baseAddress, byteCount: 64 << 10)
            let block = heap.allocate(64)!
            _ = heap.allocate(64)
            (block - 8).storeBytes(of: 1 << 20 | 3, as: UInt.self)  // a size running past top
            _ = heap.usableSize(block)
        }
        let elsewhere = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let mapping = try AnonymousMapping(byteCount: 64 << 10)
            let heap = RegionHeap.format(at: mapping.range.baseAddress, byteCount: 64 << 10)
            _ = heap.allocate(64)
            let notOurs = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 16)
            _ = heap.reallocate(notOurs, to: 128)
        }
        let expected = [
            (doubleFree, "free(): invalid pointer", "freed already"),
            (insideABlock, "free(): invalid pointer", "not a live block"),
            (damagedHeader, "usableSize(): invalid pointer", "header is damaged"),
            (elsewhere, "reallocate(): invalid pointer", "not inside the heap"),
        ]
        for (result, call, reason) in expected {
            let message = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
            #expect(message.contains(call) && message.contains(reason), "\(message)")
        }
    }

    @Test func untouchedPagesStayUnfaulted() throws {
        let byteCount = 64 << 20
        let mapping = try AnonymousMapping(byteCount: byteCount)
        let base = mapping.range.baseAddress
        // Measure the heap's touches, not transparent huge pages'.
        _ = madvise(base, byteCount, MADV_NOHUGEPAGE)
        #expect(residentPageCount(base, byteCount: byteCount) == 0)
        let heap = RegionHeap.format(at: base, byteCount: byteCount)
        #expect(residentPageCount(base, byteCount: byteCount) == 1, "formatting writes the header page only")

        var random = SplitMix64(seed: 7)
        var blocks: [UnsafeMutableRawPointer] = []
        for _ in 0..<100 {
            let size = 16 + Int(random.next() % 241)
            let block = try #require(heap.allocate(size))
            fillPattern(block, count: size, seed: 9)
            blocks.append(block)
        }
        // A big block handed out but not written, then a few more small ones above it.
        let big = try #require(heap.allocate(16 << 20))
        for _ in 0..<10 { blocks.append(try #require(heap.allocate(48))) }
        for block in blocks.prefix(50) { heap.free(block) }
        heap.free(big)
        #expect(heap.check().passed)

        // The small blocks' few pages, the header page, and the big block's first and last pages (its free-list
        // links and footer): nothing inside the big block, nothing above high water.
        let statistics = heap.statistics
        let resident = residentPageCount(base, byteCount: byteCount)
        #expect(resident <= 12, "\(resident) pages resident for \(statistics)")
        let page = Kernel.pageSize
        let bigInside = (UInt(bitPattern: big) + UInt(page)) & ~UInt(page - 1)
        #expect(residentPageCount(pointer(bigInside), byteCount: (16 << 20) - 2 * page) == 0)
        let aboveHighWater = (statistics.highWaterOffset + page - 1) & ~(page - 1)
        #expect(residentPageCount(base + aboveHighWater, byteCount: byteCount - aboveHighWater) == 0)
    }
}
