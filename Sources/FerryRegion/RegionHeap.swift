import FerrySystem

/// A memory allocator whose whole state lives inside the memory it manages, so that the memory can be
/// copied byte for byte to another process, mapped at the same address, and allocation continue there.
///
/// Guarantees:
/// - Every piece of metadata (the heap header, block sizes, free lists, top pointer, statistics) is stored
///   in `base ..< base + byteCount`; the struct itself holds only the two bounds. Stored pointers are
///   absolute addresses, valid because the memory is always mapped at the same `base`.
/// - Pages are written only when their bytes are handed out: formatting writes the header (the first
///   ~2 KiB) and nothing else, and the space above the highest block ever handed out (`top`) is never
///   touched, so the untouched pages of a fresh mapping stay unfaulted (and cost nothing to migrate).
/// - Every pointer returned is 16-byte aligned and stays valid, with its contents, until freed.
/// - A failed `allocate` or `reallocate` returns nil and leaves the heap unchanged.
/// - `free`, `reallocate` and `usableSize` check, in constant time, that they are given a live block of
///   this heap, and stop the process with a message (like glibc's `free(): invalid pointer`) when not.
///
/// Small requests (up to 1 KiB) are served from exact-size free lists in constant time.
///
/// Not synchronised: the heap is a view of shared bytes, and callers must serialise every call on the
/// same memory (one thread at a time, or their own lock). That is why it is `@unchecked Sendable`.
///
/// Byte layout (native byte order; both hosts must share the architecture, which must be 64-bit):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0x000 | 8 | magic, the ASCII bytes `FERRYHP1` |
/// | 0x008 | 4 | layout version (`HeapLayout.version` = 1) |
/// | 0x00C | 4 | header size in bytes (`HeapLayout.headerBytes`) |
/// | 0x010 | 8 | base address the heap was formatted at |
/// | 0x018 | 8 | byte count the heap was formatted over |
/// | 0x020 | 8 | top: address of the first byte never handed out (or handed back to the wilderness) |
/// | 0x028 | 8 | high water: the highest top ever |
/// | 0x030 | 32 | statistics: allocated (usable) bytes, live blocks, free bytes, free blocks |
/// | 0x060 | 32 | bitmap of non-empty bins, 256 bits |
/// | 0x080 | 2048 | 256 bin heads: absolute address of the first free block, 0 when empty |
/// | 0x888 | … | blocks, from here up to top |
///
/// A block starts with an 8-byte header word: its size (a multiple of 16, at least 32) ORed with bit 0
/// (this block is in use) and bit 1 (the previous block is in use). The payload follows the header and is
/// 16-byte aligned; a live block's usable size is its size minus 8. A free block holds, after its header,
/// the next and previous block of its bin's list (absolute addresses, 0 at the ends), and repeats its size
/// in its last 8 bytes (the footer). Bins 0 ... 62 hold exactly the sizes 32, 48, ... 1024; the bins above
/// split each power of two into four ranges. No two free blocks are adjacent, and the block below top is
/// always in use (a freed block next to top merges into it).
public struct RegionHeap: @unchecked Sendable {
    /// Address of the heap's first byte (its header).
    let start: UInt
    /// One past the heap's last byte.
    let end: UInt

    /// The first byte of the managed memory.
    public var base: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: start)! }
    /// The number of bytes managed, the header included.
    public var byteCount: Int { Int(end - start) }

    private init(start: UInt, end: UInt) {
        self.start = start
        self.end = end
    }

    /// Formats a fresh heap over `byteCount` bytes at `base`, replacing whatever was there.
    ///
    /// Only the header (the first ~2 KiB) is written; the rest of the memory is neither read nor written
    /// until it is handed out, so a fresh mapping's untouched pages stay unfaulted. The memory does not
    /// have to be zero-filled.
    ///
    /// - Parameters:
    ///   - base: the first byte; 16-byte aligned. It must stay mapped, at this address, while the heap is used.
    ///   - byteCount: how many bytes to manage, at least `RegionHeap.minimumByteCount`.
    /// - Returns: the heap, empty.
    public static func format(at base: UnsafeMutableRawPointer, byteCount: Int) -> RegionHeap {
        let start = UInt(bitPattern: base)
        precondition(start % 16 == 0, "RegionHeap.format: base \(hex(start)) is not 16-byte aligned")
        precondition(
            byteCount >= minimumByteCount && byteCount <= HeapLayout.maximumByteCount,
            "RegionHeap.format: \(byteCount) bytes is outside \(minimumByteCount) ... \(HeapLayout.maximumByteCount)")
        precondition(start <= UInt.max - UInt(byteCount), "RegionHeap.format: base + byteCount overflows")
        let heap = RegionHeap(start: start, end: start + UInt(byteCount))
        heap.storeField(0, HeapLayout.magic)
        heap.storeField(HeapLayout.Offset.version, UInt(HeapLayout.version) | UInt(HeapLayout.headerBytes) << 32)
        heap.storeField(HeapLayout.Offset.base, start)
        heap.storeField(HeapLayout.Offset.byteCount, UInt(byteCount))
        for offset in stride(from: HeapLayout.Offset.top, to: HeapLayout.headerBytes, by: 8) {
            heap.storeField(offset, 0)
        }
        heap.top = heap.firstBlock
        heap.highWater = heap.firstBlock
        return heap
    }

    /// Attaches to a heap formatted earlier at `base`, possibly in another process whose bytes were copied
    /// here; it continues exactly where that heap was.
    ///
    /// Only the header is validated (in constant time); `check()` validates every block.
    ///
    /// - Parameters:
    ///   - base: where the heap was formatted; it must be mapped at that same address.
    ///   - byteCount: the byte count it was formatted over.
    /// - Throws: `RegionError.malformedHeader` naming the field when the magic, the version, the recorded
    ///   base or byte count, or the top pointer do not match.
    public init(attachingAt base: UnsafeMutableRawPointer, byteCount: Int) throws(RegionError) {
        let start = UInt(bitPattern: base)
        guard start % 16 == 0, byteCount >= Self.minimumByteCount, byteCount <= HeapLayout.maximumByteCount,
            start <= UInt.max - UInt(byteCount)
        else {
            throw .malformedHeader("no heap can lie at \(hex(start))+\(byteCount) (alignment or size)")
        }
        self.init(start: start, end: start + UInt(byteCount))
        if let problem = headerProblem() {
            throw .malformedHeader("heap at \(hex(start)): \(problem)")
        }
    }

    /// The smallest byte count a heap can be formatted over: its header and one minimum block.
    public static let minimumByteCount = HeapLayout.headerBytes + Int(HeapLayout.minimumBlock) + 8

    // MARK: - Allocation

    /// Allocates a block of at least `byteCount` bytes, 16-byte aligned, with unspecified contents.
    ///
    /// - Parameter byteCount: zero or more; 0 gives a valid block of the minimum size.
    /// - Returns: the block, or nil (the heap unchanged) when no free space is large enough.
    public func allocate(_ byteCount: Int) -> UnsafeMutableRawPointer? {
        precondition(byteCount >= 0, "RegionHeap.allocate: negative byte count \(byteCount)")
        guard byteCount <= self.byteCount else { return nil }
        guard let block = takeBlock(Self.blockSize(forRequest: byteCount)) else { return nil }
        return UnsafeMutableRawPointer(bitPattern: block + 8).unsafelyUnwrapped
    }

    /// Resizes a block, with C `realloc` semantics.
    ///
    /// - Parameters:
    ///   - pointer: a live block of this heap, or nil to allocate.
    ///   - byteCount: the new size; 0 frees the block and returns nil.
    /// - Returns: the block, in place when it can shrink or grow there (into free space or top that follows
    ///   it), otherwise a new block holding the old contents up to the smaller of the two sizes. Nil when no
    ///   space is large enough: then the old block is untouched and still valid.
    public func reallocate(_ pointer: UnsafeMutableRawPointer?, to byteCount: Int) -> UnsafeMutableRawPointer? {
        guard let pointer else { return allocate(byteCount) }
        let block = liveBlock(pointer, operation: "reallocate")
        if byteCount == 0 {
            release(block)
            return nil
        }
        precondition(byteCount >= 0, "RegionHeap.reallocate: negative byte count \(byteCount)")
        guard byteCount <= self.byteCount else { return nil }
        let wanted = Self.blockSize(forRequest: byteCount)
        let header = load(block)
        let size = header & HeapLayout.sizeMask
        if wanted <= size {
            shrink(block, header: header, to: wanted)
            return pointer
        }
        let next = block + size
        let top = self.top
        if next == top {
            if end - block >= wanted {
                store(block, header & HeapLayout.flagMask | wanted)
                setTop(block + wanted)
                allocatedBytes += wanted - size
                return pointer
            }
        } else {
            let nextHeader = load(next)
            let nextSize = nextHeader & HeapLayout.sizeMask
            if nextHeader & HeapLayout.inUse == 0 && size + nextSize >= wanted {
                takeFree(next, size: nextSize)
                let total = size + nextSize
                if total - wanted >= HeapLayout.minimumBlock {
                    store(block, header & HeapLayout.flagMask | wanted)
                    makeFree(block + wanted, size: total - wanted)  // the block after it is in use
                    allocatedBytes += wanted - size
                } else {
                    store(block, header & HeapLayout.flagMask | total)
                    store(block + total, load(block + total) | HeapLayout.previousInUse)
                    allocatedBytes += total - size
                }
                return pointer
            }
        }
        guard let moved = takeBlock(wanted) else { return nil }
        let destination = UnsafeMutableRawPointer(bitPattern: moved + 8).unsafelyUnwrapped
        destination.copyMemory(from: pointer, byteCount: Int(size) - 8)
        release(block)
        return destination
    }

    /// Frees a block, merging it with free neighbours (and into top when it is the highest block).
    ///
    /// - Parameter pointer: a live block of this heap, or nil (nothing happens). Anything else — a pointer
    ///   freed before, never returned by this heap, or into the middle of a block — stops the process.
    public func free(_ pointer: UnsafeMutableRawPointer?) {
        guard let pointer else { return }
        release(liveBlock(pointer, operation: "free"))
    }

    /// How many bytes of the live block at `pointer` may be used (at least what was asked for).
    public func usableSize(_ pointer: UnsafeMutableRawPointer) -> Int {
        Int(load(liveBlock(pointer, operation: "usableSize")) & HeapLayout.sizeMask) - 8
    }

    /// The heap's figures, as recorded in its header.
    public var statistics: HeapStatistics {
        HeapStatistics(
            capacity: byteCount, headerBytes: HeapLayout.headerBytes,
            allocatedBytes: Int(bitPattern: allocatedBytes), liveBlocks: Int(bitPattern: liveBlocks),
            freeBytes: Int(bitPattern: freeBytes), freeBlocks: Int(bitPattern: freeBlocks),
            topOffset: Int(bitPattern: top &- start), highWaterOffset: Int(bitPattern: highWater &- start))
    }

    // MARK: - Blocks

    /// The block size that serves a request of `byteCount` bytes (at most the heap's size).
    @inline(__always)
    static func blockSize(forRequest byteCount: Int) -> UInt {
        max((UInt(byteCount) + 8 + 15) & HeapLayout.sizeMask, HeapLayout.minimumBlock)
    }

    /// The bin a free block of `size` bytes belongs in.
    @inline(__always)
    static func binIndex(blockSize size: UInt) -> Int {
        if size <= HeapLayout.largestExactBlock { return Int(size >> 4) - 2 }
        let log = UInt.bitWidth - 1 - size.leadingZeroBitCount
        return HeapLayout.exactBinCount + (log - 10) << 2 + Int(size >> UInt(log - 2) & 3)
    }

    /// Finds a block of `size` bytes (a valid block size), marks it in use and updates the statistics.
    @inline(__always)
    private func takeBlock(_ size: UInt) -> UInt? {
        var bin = Self.binIndex(blockSize: size)
        if size <= HeapLayout.largestExactBlock {
            let head = binHead(bin)
            if head != 0 {
                unlink(head, bin: bin)
                store(head, size | HeapLayout.inUse | HeapLayout.previousInUse)
                store(head + size, load(head + size) | HeapLayout.previousInUse)
                freeBytes -= size
                freeBlocks -= 1
                allocatedBytes += size - 8
                liveBlocks += 1
                return head
            }
        } else {
            // The bin holds a range of sizes: the first one that fits.
            var candidate = binHead(bin)
            while candidate != 0 {
                if load(candidate) & HeapLayout.sizeMask >= size {
                    unlink(candidate, bin: bin)
                    return use(candidate, size: size)
                }
                candidate = load(candidate + 8)
            }
        }
        bin += 1
        if let larger = firstNonEmptyBin(from: bin) {
            let head = binHead(larger)
            unlink(head, bin: larger)
            return use(head, size: size)
        }
        let top = self.top
        guard end - top >= size else { return nil }
        // The block below top is always in use.
        store(top, size | HeapLayout.inUse | HeapLayout.previousInUse)
        setTop(top + size)
        allocatedBytes += size - 8
        liveBlocks += 1
        return top
    }

    /// Marks the free block `block`, already unlinked and at least `size` bytes, in use for `size` bytes,
    /// returning the rest to a bin when it makes a block of its own.
    @inline(__always)
    private func use(_ block: UInt, size: UInt) -> UInt {
        let blockSize = load(block) & HeapLayout.sizeMask
        let rest = blockSize - size
        // The previous block of a free block is in use; the next one is too, and is not top.
        if rest >= HeapLayout.minimumBlock {
            store(block, size | HeapLayout.inUse | HeapLayout.previousInUse)
            store(block + size, rest | HeapLayout.previousInUse)
            store(block + blockSize - 8, rest)
            insert(block + size, size: rest)
            freeBytes -= size
            allocatedBytes += size - 8
        } else {
            store(block, blockSize | HeapLayout.inUse | HeapLayout.previousInUse)
            store(block + blockSize, load(block + blockSize) | HeapLayout.previousInUse)
            freeBytes -= blockSize
            freeBlocks -= 1
            allocatedBytes += blockSize - 8
        }
        liveBlocks += 1
        return block
    }

    /// Frees the live block `block`: merges it with free neighbours or into top, and bins the result.
    @inline(__always)
    private func release(_ block: UInt) {
        let header = load(block)
        let size = header & HeapLayout.sizeMask
        allocatedBytes -= size - 8
        liveBlocks -= 1
        // Cleared even when the header ends up inside a merged block, so a second free is caught.
        store(block, header & ~HeapLayout.inUse)
        var merged = block
        var mergedSize = size
        if header & HeapLayout.previousInUse == 0 {
            let previousSize = load(block - 8)
            merged = block - previousSize
            mergedSize += previousSize
            takeFree(merged, size: previousSize)
        }
        let next = block + size
        if next == top {
            top = merged
            return
        }
        makeFree(merged, size: mergedSize + absorbFollowing(next))
    }

    /// Takes the free block `block` of `size` bytes off its bin and out of the free totals.
    @inline(__always)
    private func takeFree(_ block: UInt, size: UInt) {
        unlink(block, bin: Self.binIndex(blockSize: size))
        freeBytes -= size
        freeBlocks -= 1
    }

    /// For a block about to become free that ends at `next` (below top): takes `next` in if it is free and
    /// returns its size; otherwise marks it as following a free block and returns 0.
    @inline(__always)
    private func absorbFollowing(_ next: UInt) -> UInt {
        let nextHeader = load(next)
        guard nextHeader & HeapLayout.inUse == 0 else {
            store(next, nextHeader & ~HeapLayout.previousInUse)
            return 0
        }
        let nextSize = nextHeader & HeapLayout.sizeMask
        takeFree(next, size: nextSize)
        return nextSize
    }

    /// Shrinks the live block `block` to `size` bytes when the rest makes a block of its own, which is
    /// merged with what follows it (free space or top).
    private func shrink(_ block: UInt, header: UInt, to size: UInt) {
        let oldSize = header & HeapLayout.sizeMask
        let rest = oldSize - size
        guard rest >= HeapLayout.minimumBlock else { return }
        store(block, header & HeapLayout.flagMask | size)
        allocatedBytes -= rest
        let next = block + oldSize
        if next == top {
            top = block + size
            return
        }
        makeFree(block + size, size: rest + absorbFollowing(next))
    }

    /// Writes a free block's header and footer, bins it and counts it. Its previous block is in use; the
    /// caller has cleared the next block's previous-in-use bit.
    @inline(__always)
    private func makeFree(_ block: UInt, size: UInt) {
        store(block, size | HeapLayout.previousInUse)
        store(block + size - 8, size)
        insert(block, size: size)
        freeBytes += size
        freeBlocks += 1
    }

    /// The block of the payload `pointer`, after checking that it is a live block of this heap.
    @inline(__always)
    private func liveBlock(_ pointer: UnsafeMutableRawPointer, operation: StaticString) -> UInt {
        let payload = UInt(bitPattern: pointer)
        let top = self.top
        guard payload & 15 == 0, payload > firstBlock, payload < top else {
            invalidPointer(operation, payload, "it is not inside the heap's allocated space or not aligned")
        }
        let block = payload - 8
        let header = load(block)
        guard header & HeapLayout.inUse != 0 else {
            invalidPointer(operation, payload, "it is not a live block (freed already, or never allocated)")
        }
        let size = header & HeapLayout.sizeMask
        guard size >= HeapLayout.minimumBlock, size <= top - block,
            block + size == top || load(block + size) & HeapLayout.previousInUse != 0
        else {
            invalidPointer(operation, payload, "its block header is damaged (size \(size))")
        }
        return block
    }

    @inline(never)
    private func invalidPointer(_ operation: StaticString, _ payload: UInt, _ reason: String) -> Never {
        // fatalError rather than preconditionFailure: the message must survive -O and -Ounchecked builds.
        fatalError("RegionHeap.\(operation)(): invalid pointer \(hex(payload)): \(reason)")
    }

    // MARK: - Free lists

    @inline(__always)
    private func binHead(_ bin: Int) -> UInt { load(start + UInt(HeapLayout.Offset.bins + bin << 3)) }

    @inline(__always)
    private func setBinHead(_ bin: Int, _ block: UInt) {
        store(start + UInt(HeapLayout.Offset.bins + bin << 3), block)
    }

    @inline(__always)
    private func bitmapWord(_ word: Int) -> UInt { load(start + UInt(HeapLayout.Offset.bitmap + word << 3)) }

    @inline(__always)
    private func setBitmapWord(_ word: Int, _ value: UInt) {
        store(start + UInt(HeapLayout.Offset.bitmap + word << 3), value)
    }

    /// The first non-empty bin at or above `bin`.
    @inline(__always)
    private func firstNonEmptyBin(from bin: Int) -> Int? {
        var word = bin >> 6
        guard word < HeapLayout.bitmapWords else { return nil }
        var bits = bitmapWord(word) & (~0 << UInt(bin & 63))
        while bits == 0 {
            word += 1
            guard word < HeapLayout.bitmapWords else { return nil }
            bits = bitmapWord(word)
        }
        return word << 6 + bits.trailingZeroBitCount
    }

    /// Puts the free block `block` at the head of its bin.
    @inline(__always)
    private func insert(_ block: UInt, size: UInt) {
        let bin = Self.binIndex(blockSize: size)
        let head = binHead(bin)
        store(block + 8, head)
        store(block + 16, 0)
        if head != 0 {
            store(head + 16, block)
        } else {
            setBitmapWord(bin >> 6, bitmapWord(bin >> 6) | 1 << UInt(bin & 63))
        }
        setBinHead(bin, block)
    }

    /// Takes the free block `block` out of bin `bin`.
    @inline(__always)
    private func unlink(_ block: UInt, bin: Int) {
        let next = load(block + 8)
        let previous = load(block + 16)
        if previous != 0 {
            store(previous + 8, next)
        } else {
            setBinHead(bin, next)
            if next == 0 { setBitmapWord(bin >> 6, bitmapWord(bin >> 6) & ~(1 << UInt(bin & 63))) }
        }
        if next != 0 { store(next + 16, previous) }
    }

    // MARK: - Header fields

    /// The first block's address.
    var firstBlock: UInt { start + UInt(HeapLayout.headerBytes) }

    var top: UInt {
        @inline(__always) get { load(start + UInt(HeapLayout.Offset.top)) }
        @inline(__always) nonmutating set { store(start + UInt(HeapLayout.Offset.top), newValue) }
    }

    var highWater: UInt {
        get { load(start + UInt(HeapLayout.Offset.highWater)) }
        nonmutating set { store(start + UInt(HeapLayout.Offset.highWater), newValue) }
    }

    @inline(__always)
    private func setTop(_ newTop: UInt) {
        top = newTop
        if newTop > highWater { highWater = newTop }
    }

    private var allocatedBytes: UInt {
        @inline(__always) get { load(start + UInt(HeapLayout.Offset.allocatedBytes)) }
        @inline(__always) nonmutating set { store(start + UInt(HeapLayout.Offset.allocatedBytes), newValue) }
    }

    private var liveBlocks: UInt {
        @inline(__always) get { load(start + UInt(HeapLayout.Offset.liveBlocks)) }
        @inline(__always) nonmutating set { store(start + UInt(HeapLayout.Offset.liveBlocks), newValue) }
    }

    private var freeBytes: UInt {
        @inline(__always) get { load(start + UInt(HeapLayout.Offset.freeBytes)) }
        @inline(__always) nonmutating set { store(start + UInt(HeapLayout.Offset.freeBytes), newValue) }
    }

    private var freeBlocks: UInt {
        @inline(__always) get { load(start + UInt(HeapLayout.Offset.freeBlocks)) }
        @inline(__always) nonmutating set { store(start + UInt(HeapLayout.Offset.freeBlocks), newValue) }
    }

    @inline(__always)
    private func load(_ address: UInt) -> UInt {
        UnsafeRawPointer(bitPattern: address).unsafelyUnwrapped.load(as: UInt.self)
    }

    @inline(__always)
    private func store(_ address: UInt, _ value: UInt) {
        UnsafeMutableRawPointer(bitPattern: address).unsafelyUnwrapped.storeBytes(of: value, as: UInt.self)
    }

    private func storeField(_ offset: Int, _ value: UInt) { store(start + UInt(offset), value) }

    // MARK: - Checking

    /// What is wrong with the header, or nil: magic, version, recorded bounds, top and high water.
    private func headerProblem() -> String? {
        let magic = load(start)
        guard magic == HeapLayout.magic else {
            return "bad magic \(hex(magic)) (expected \(hex(HeapLayout.magic)), \"FERRYHP1\"): no heap was formatted here"
        }
        let versionAndSize = load(start + UInt(HeapLayout.Offset.version))
        guard versionAndSize & 0xFFFF_FFFF == UInt(HeapLayout.version) else {
            return "layout version \(versionAndSize & 0xFFFF_FFFF), this build understands \(HeapLayout.version)"
        }
        guard versionAndSize >> 32 == UInt(HeapLayout.headerBytes) else {
            return "header size \(versionAndSize >> 32), expected \(HeapLayout.headerBytes)"
        }
        let recordedBase = load(start + UInt(HeapLayout.Offset.base))
        guard recordedBase == start else {
            return "it was formatted at \(hex(recordedBase)), not here: it must be mapped at the same address"
        }
        let recordedCount = load(start + UInt(HeapLayout.Offset.byteCount))
        guard recordedCount == UInt(byteCount) else {
            return "it was formatted over \(recordedCount) bytes, not \(byteCount)"
        }
        let top = self.top
        guard top >= firstBlock, top <= end, (top - firstBlock) % 16 == 0 else {
            return "top \(hex(top)) is misaligned or outside \(hex(firstBlock)) ... \(hex(end))"
        }
        let highWater = self.highWater
        guard highWater >= top, highWater <= end else {
            return "high water \(hex(highWater)) is below top \(hex(top)) or past the end \(hex(end))"
        }
        return nil
    }

    /// Walks every block and every free list and reports whether the heap is consistent.
    ///
    /// It reads only the header and the bytes below top, validating every size and link before following
    /// it, so it terminates and does not fault on any contents. Time and memory grow with the number of
    /// blocks: meant for verification (`ferry verify`) and tests, not for every operation.
    ///
    /// - Returns: the figures when the heap is consistent; otherwise the first problem found, with the
    ///   address it concerns.
    public func check() -> HeapCheck {
        if let problem = headerProblem() { return .failure(problem, at: start) }
        let top = self.top
        let minimum = HeapLayout.minimumBlock

        // Every bin: bitmap bit, links, sizes. `binned` maps each listed block to its bin.
        var binned: [UInt: Int] = [:]
        for bin in 0..<HeapLayout.binCount {
            let head = binHead(bin)
            let bit = bitmapWord(bin >> 6) >> UInt(bin & 63) & 1 != 0
            if bit != (head != 0) {
                return .failure(
                    "bitmap bit \(bin) is \(bit ? "set" : "clear") but bin \(bin) is \(head == 0 ? "empty" : "not empty")",
                    at: start + UInt(HeapLayout.Offset.bitmap + (bin >> 6) << 3))
            }
            var previous: UInt = 0
            var block = head
            while block != 0 {
                let linkAddress = previous == 0 ? start + UInt(HeapLayout.Offset.bins + bin << 3) : previous + 8
                guard block >= firstBlock, block < top, (block - firstBlock) % 16 == 0, top - block >= minimum
                else {
                    return .failure(
                        "free-list link of bin \(bin) at \(hex(linkAddress)) points to \(hex(block)), "
                            + "which is not a block inside the heap", at: linkAddress)
                }
                guard binned[block] == nil else {
                    return .failure(
                        "free-list link of bin \(bin) at \(hex(linkAddress)) points to \(hex(block)) again "
                            + "(a cycle, or a block in two lists)", at: linkAddress)
                }
                let header = load(block)
                let size = header & HeapLayout.sizeMask
                guard header & HeapLayout.inUse == 0 else {
                    return .failure("block at \(hex(block)) is in use but on the free list of bin \(bin)", at: block)
                }
                guard size >= minimum, size <= top - block, header & 0b1100 == 0 else {
                    return .failure(
                        "free block at \(hex(block)) in bin \(bin) has an impossible size \(hex(header))", at: block)
                }
                let right = Self.binIndex(blockSize: size)
                guard right == bin else {
                    return .failure(
                        "free block at \(hex(block)) of size \(size) is in the wrong bin \(bin) (belongs in bin \(right))",
                        at: block)
                }
                let back = load(block + 16)
                guard back == previous else {
                    return .failure(
                        "free-list link of block \(hex(block)) in bin \(bin) does not point back: its previous "
                            + "link is \(hex(back)), not \(hex(previous))", at: block + 16)
                }
                binned[block] = bin
                previous = block
                block = load(block + 8)
            }
        }

        // Every block, from the first to top.
        var live: UInt = 0
        var allocated: UInt = 0
        var free: UInt = 0
        var freeSize: UInt = 0
        var previousFree = false
        var previousBlock: UInt = 0
        var block = firstBlock
        while block < top {
            let header = load(block)
            let size = header & HeapLayout.sizeMask
            guard header & 0b1100 == 0 else {
                return .failure("block at \(hex(block)) has a misaligned size \(hex(header & ~3))", at: block)
            }
            guard size >= minimum else {
                return .failure("block at \(hex(block)) has size \(size), below the minimum \(minimum)", at: block)
            }
            guard size <= top - block else {
                return .failure(
                    "block at \(hex(block)) of size \(size) runs past top \(hex(top))", at: block)
            }
            let inUse = header & HeapLayout.inUse != 0
            if !inUse && previousFree {
                return .failure(
                    "two adjacent free blocks at \(hex(previousBlock)) and \(hex(block)) were not merged", at: block)
            }
            guard (header & HeapLayout.previousInUse != 0) == !previousFree else {
                return .failure(
                    "block at \(hex(block)) says the previous block is \(previousFree ? "in use" : "free") "
                        + "but it is \(previousFree ? "free" : "in use")", at: block)
            }
            if inUse {
                live += 1
                allocated += size - 8
            } else {
                let footer = load(block + size - 8)
                guard footer == size else {
                    return .failure(
                        "free block at \(hex(block)) has size \(size) but its footer says \(footer)",
                        at: block + size - 8)
                }
                guard block + size != top else {
                    return .failure("free block at \(hex(block)) touches top and was not merged into it", at: block)
                }
                guard binned.removeValue(forKey: block) != nil else {
                    return .failure(
                        "free block at \(hex(block)) of size \(size) is missing from its bin "
                            + "\(Self.binIndex(blockSize: size))", at: block)
                }
                free += 1
                freeSize += size
            }
            previousFree = !inUse
            previousBlock = block
            block += size
        }
        if let stray = binned.min(by: { $0.key < $1.key }) {
            return .failure(
                "bin \(stray.value) lists \(hex(stray.key)), which is not the start of a block", at: stray.key)
        }

        let recorded = statistics
        let figures: [(String, Int, UInt)] = [
            ("live blocks", recorded.liveBlocks, live), ("allocated bytes", recorded.allocatedBytes, allocated),
            ("free blocks", recorded.freeBlocks, free), ("free bytes", recorded.freeBytes, freeSize),
        ]
        for (name, said, found) in figures where UInt(bitPattern: said) != found {
            return .failure(
                "the statistics say \(said) \(name) but the blocks hold \(found)",
                at: start + UInt(HeapLayout.Offset.allocatedBytes))
        }
        return HeapCheck(passed: true, detail: recorded.description, address: nil)
    }
}

/// What `RegionHeap.check()` found.
public struct HeapCheck: Hashable, Sendable, CustomStringConvertible {
    /// Whether the heap is consistent.
    public let passed: Bool
    /// The heap's figures when it passed; the first problem found, with its address, when not.
    public let detail: String
    /// The address of the first problem, nil when the check passed.
    public let address: UInt?

    static func failure(_ problem: String, at address: UInt) -> HeapCheck {
        HeapCheck(passed: false, detail: problem, address: address)
    }

    public var description: String { passed ? "heap consistent: \(detail)" : "heap damaged: \(detail)" }
}

/// A heap's figures, as recorded in its header.
public struct HeapStatistics: Hashable, Sendable, CustomStringConvertible {
    /// Bytes managed, the heap's header included.
    public var capacity: Int
    /// Bytes before the first block (the heap's header).
    public var headerBytes: Int
    /// Usable bytes of the live blocks (the sum of their `usableSize`).
    public var allocatedBytes: Int
    /// Blocks allocated and not freed.
    public var liveBlocks: Int
    /// Bytes in free blocks below top, ready for reuse.
    public var freeBytes: Int
    /// Free blocks below top.
    public var freeBlocks: Int
    /// Offset of top: bytes from here to `capacity` are not in any block.
    public var topOffset: Int
    /// The highest top ever: bytes from here on were never written by the heap.
    public var highWaterOffset: Int

    /// Bytes of block headers spent on the live blocks.
    public var overheadBytes: Int { liveBlocks * 8 }
    /// Bytes that can still be handed out: free blocks and the space above top.
    public var availableBytes: Int { freeBytes + capacity - topOffset }

    public var description: String {
        "\(liveBlocks) live blocks (\(ByteCount(allocatedBytes))), \(freeBlocks) free blocks (\(ByteCount(freeBytes))), "
            + "top at +\(ByteCount(topOffset)), high water +\(ByteCount(highWaterOffset)) of \(ByteCount(capacity))"
    }
}

/// The heap's on-memory constants (see `RegionHeap` for the layout).
enum HeapLayout {
    /// `FERRYHP1`, read as a little-endian word.
    static let magic: UInt = 0x3150_4859_5252_4546
    static let version: UInt32 = 1

    enum Offset {
        static let version = 0x08
        static let base = 0x10
        static let byteCount = 0x18
        static let top = 0x20
        static let highWater = 0x28
        static let allocatedBytes = 0x30
        static let liveBlocks = 0x38
        static let freeBytes = 0x40
        static let freeBlocks = 0x48
        static let bitmap = 0x60
        static let bins = 0x80
    }

    static let binCount = 256
    static let bitmapWords = binCount / 64
    /// Bins of one exact size each: 32, 48, ... `largestExactBlock`.
    static let exactBinCount = 63
    static let largestExactBlock: UInt = 1024
    /// Where the first block's header lies: the first payload is 16-byte aligned.
    static let headerBytes = Offset.bins + binCount * 8 + 8
    static let minimumBlock: UInt = 32
    /// Large enough for any address space, small enough that every size has a bin.
    static let maximumByteCount = 1 << 56

    static let inUse: UInt = 1
    static let previousInUse: UInt = 2
    static let flagMask: UInt = 15
    static let sizeMask: UInt = ~15
}

private func hex(_ value: UInt) -> String { "0x" + String(value, radix: 16) }
