#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import FerrySystem
import Synchronization
public import FerryRegion

/// Where the download's blocks come from.
///
/// Every source must deliver exactly the bytes `DownloadBlock.write(seed:index:into:)` produces for the
/// download's seed (a server that streams them, for instance), so that `verify()` can re-derive the file.
/// A source that reads from a socket straight into `buffer` makes the kernel write into the region: with a
/// tracker whose `kernelWrites` is `.failsWithEFAULT`, call `WriteTracker.prepareForKernelWrite` first.
public protocol BlockSource: Sendable {
    /// Delivers block `index` (`DownloadBlock.size` bytes) into `buffer`, a slot of the region's receive ring.
    func receive(block index: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(WorkloadError)
}

/// The default source: generates each block from (seed, index), as if a server had sent it.
public struct DeterministicBlockSource: BlockSource {
    public let seed: UInt64
    public init(seed: UInt64) { self.seed = seed }

    public func receive(block index: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(WorkloadError) {
        DownloadBlock.write(seed: seed, index: index, into: buffer)
    }
}

/// The download's block format. A block is `size` (4096) bytes, all fields native (little-endian):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0x00 | 8 | magic, ASCII `FERRYBK1` |
/// | 0x08 | 8 | block index, `UInt64` |
/// | 0x10 | 8 | download seed, `UInt64` |
/// | 0x18 | 4 | payload length, `UInt32` (`payloadLength` = 4056) |
/// | 0x1C | 4 | reserved, 0 |
/// | 0x20 | 8 | checksum, `UInt64`: FNV-1a 64 of bytes 0x00..<0x20 followed by the payload bytes |
/// | 0x28 | 4056 | payload: 507 words of SplitMix64 seeded with `RegionRandom.mix(seed, index)` |
public enum DownloadBlock {
    public static let size = 4096
    public static let magic: [UInt8] = Array("FERRYBK1".utf8)
    public static let headerSize = 0x28
    public static let payloadLength = size - headerSize
    static let checksumOffset = 0x20

    /// Writes block `index` of the download seeded `seed` into `buffer` (at least `size` bytes).
    public static func write(seed: UInt64, index: UInt64, into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= size)
        for (offset, byte) in magic.enumerated() { buffer[offset] = byte }
        buffer.storeBytes(of: index, toByteOffset: 0x08, as: UInt64.self)
        buffer.storeBytes(of: seed, toByteOffset: 0x10, as: UInt64.self)
        buffer.storeBytes(of: UInt32(payloadLength), toByteOffset: 0x18, as: UInt32.self)
        buffer.storeBytes(of: UInt32(0), toByteOffset: 0x1C, as: UInt32.self)
        var random = RegionRandom(state: RegionRandom.mix(seed, index))
        for offset in stride(from: headerSize, to: size, by: 8) {
            buffer.storeBytes(of: random.next(), toByteOffset: offset, as: UInt64.self)
        }
        buffer.storeBytes(of: checksum(of: UnsafeRawBufferPointer(buffer)), toByteOffset: checksumOffset, as: UInt64.self)
    }

    /// The checksum the block's contents call for (not the stored field).
    public static func checksum(of block: UnsafeRawBufferPointer) -> UInt64 {
        let head = FNV1a64.hash(bytes: UnsafeRawBufferPointer(rebasing: block[0..<checksumOffset]))
        return FNV1a64.hash(bytes: UnsafeRawBufferPointer(rebasing: block[headerSize..<size]), into: head)
    }

    /// The stored checksum field.
    public static func storedChecksum(of block: UnsafeRawBufferPointer) -> UInt64 {
        block.loadUnaligned(fromByteOffset: checksumOffset, as: UInt64.self)
    }

    /// The stored index field.
    public static func storedIndex(of block: UnsafeRawBufferPointer) -> UInt64 {
        block.loadUnaligned(fromByteOffset: 0x08, as: UInt64.self)
    }

    /// What is wrong with `block` as block `index` of download `seed`, or nil if its fields and checksum
    /// are right (the content itself is compared separately).
    public static func problem(in block: UnsafeRawBufferPointer, index: UInt64, seed: UInt64) -> String? {
        guard block.count >= size else { return "it is \(block.count) bytes, not \(size)" }
        guard Array(block[0..<8]) == magic else { return "its magic is not FERRYBK1" }
        let found = storedIndex(of: block)
        guard found == index else { return "it holds block \(found)" }
        let foundSeed = block.loadUnaligned(fromByteOffset: 0x10, as: UInt64.self)
        guard foundSeed == seed else { return "it belongs to download seed 0x\(String(foundSeed, radix: 16))" }
        let length = block.loadUnaligned(fromByteOffset: 0x18, as: UInt32.self)
        guard length == payloadLength else { return "its payload length is \(length), not \(payloadLength)" }
        let stored = storedChecksum(of: block)
        let actual = checksum(of: block)
        guard stored == actual else {
            return "its checksum field is 0x\(String(stored, radix: 16)) but its contents hash to 0x\(String(actual, radix: 16))"
        }
        return nil
    }
}

/// What a download's file holds for a resumed download: the longest prefix of complete blocks that each
/// pass `DownloadBlock.problem`, and the state a region records after writing exactly those blocks.
public struct DownloadRecovery: Hashable, Sendable, CustomStringConvertible {
    /// The file scanned.
    public let path: String
    /// Blocks 0 ..< `blockCount` are intact: the index of the next block to write.
    public let blockCount: UInt64
    /// The file's length when scanned, in bytes.
    public let fileLength: UInt64
    /// FNV-1a 64 over the kept blocks' checksums, in order (`FNV1a64.offsetBasis` when none are kept).
    public let runningChecksum: UInt64
    /// The last kept block's checksum (0 when none are kept).
    public let lastChecksum: UInt64
    /// Why the bytes after the kept blocks are dropped; nil when there are none.
    public let tailProblem: String?

    /// Bytes after the last kept block, dropped on resume: `fileLength` − `blockCount` × 4096.
    public var droppedBytes: UInt64 { fileLength - blockCount * UInt64(DownloadBlock.size) }

    public var description: String {
        "block \(blockCount) next in \(path), \(droppedBytes) bytes dropped after the last complete block"
            + (tailProblem.map { " (\($0))" } ?? "")
    }
}

/// The source document's example workload: blocks "arrive" from a server into a receive buffer in the
/// region, are integrity-checked and written to a file on the shared mount.
///
/// **File**: `<sharedDirectory>/download-<seed as 16 hex digits>.dat` holds blocks 0 ..< n back to back,
/// block i at offset i × 4096, each in the `DownloadBlock` format; its length is exactly n × 4096.
///
/// **Region**: page 0 is the header (`RegionHeader`) with the state below; the receive ring of
/// `ringSlots` 4096-byte slots starts at page 1 (`dataOffset`); whatever follows the ring is free data area.
/// `WorkloadOptions.fill` applies to the whole data area, ring included (slots are overwritten as blocks
/// arrive).
///
/// | state offset | field |
/// |---|---|
/// | +0x00 | next block index n (`UInt64`) |
/// | +0x08 | file length recorded, n × 4096 (`UInt64`) |
/// | +0x10 | running checksum: FNV-1a 64 over the blocks' checksums (8 bytes each, in order), `UInt64` |
/// | +0x18 | checksum of the last block written (`UInt64`) |
///
/// Parameters: 0 block size, 1 ring slots, 2 ring offset, 3 ring bytes (page-rounded).
///
/// **Step** (dirties 2 pages with 4 KiB pages: one ring slot and the header page): receive block n into
/// slot n mod `ringSlots`, check it, `pwrite` it at n × 4096 (idempotent if redone), then record n + 1, the
/// file length and the running checksum, and increment the step counter last. On attach the file is cut
/// to n × 4096, dropping anything written after the last recorded safe point.
///
/// **Resume**: when the process that ran the download died with its region, `init(resuming:options:source:)`
/// rebuilds the region from the file alone.
public final class DownloadWorkload: Workload {
    public static let name = "download"
    /// Receive ring slots in the region.
    public static let ringSlots = 16

    public let region: MigratableRegion
    /// The download's seed (from the header).
    public let seed: UInt64
    /// The shared directory the file lives in.
    public let sharedDirectory: String
    /// The file the blocks are written to.
    public let filePath: String

    /// What `init(resuming:options:source:)` kept and dropped of the file; nil when created or attached.
    public let recovery: DownloadRecovery?

    private let file: OwnedDescriptor
    /// What every write to the file must pass (installed by the ownership agent; unarmed until then).
    private let fence = Mutex<WriteFence?>(nil)
    private let source: any BlockSource
    private let ringOffset: Int
    private let slots: Int

    private enum State {
        static let nextIndex = 0x00
        static let fileLength = 0x08
        static let runningChecksum = 0x10
        static let lastChecksum = 0x18
    }

    /// The file name of the download seeded `seed`.
    public static func fileName(seed: UInt64) -> String {
        let hex = String(seed, radix: 16)
        return "download-\(String(repeating: "0", count: 16 - hex.count))\(hex).dat"
    }

    /// Blocks read per `pread` when scanning a file (1 MiB).
    static let readChunkBlocks = 256

    static func ringBytes(pageSize: Int) -> Int {
        (ringSlots * DownloadBlock.size + pageSize - 1) / pageSize * pageSize
    }

    public static func minimumRegionSize(pageSize: Int) -> Int { pageSize + ringBytes(pageSize: pageSize) }

    public convenience init(creating region: MigratableRegion, options: WorkloadOptions) throws(WorkloadError) {
        try self.init(creating: region, options: options, source: nil)
    }

    public convenience init(attaching region: MigratableRegion, sharedDirectory: String) throws(WorkloadError) {
        try self.init(attaching: region, sharedDirectory: sharedDirectory, source: nil)
    }

    /// Creates a fresh download in `region`, truncating (or creating) its file.
    /// - Parameter source: where blocks come from; nil for `DeterministicBlockSource(seed: options.seed)`.
    public convenience init(creating region: MigratableRegion, options: WorkloadOptions, source: (any BlockSource)?) throws(WorkloadError) {
        try Self.checkFreshRegion(region, options: options)
        let path = Self.path(options.sharedDirectory, seed: options.seed)
        let file: OwnedDescriptor
        do {
            file = try Self.openShared(path, flags: O_RDWR | O_CREAT | O_TRUNC)
        } catch { throw .file(error) }
        try self.init(fresh: region, options: options, source: source, file: file, recovery: nil)
    }

    /// Sets up a fresh region (header, state words at zero blocks, fill) for `file`, already open.
    private init(fresh region: MigratableRegion, options: WorkloadOptions, source: (any BlockSource)?, file: consuming OwnedDescriptor,
                 recovery: DownloadRecovery?) throws(WorkloadError) {
        self.region = region
        seed = options.seed
        sharedDirectory = options.sharedDirectory
        filePath = Self.path(sharedDirectory, seed: seed)
        ringOffset = region.range.pageSize
        slots = Self.ringSlots
        self.source = source ?? DeterministicBlockSource(seed: seed)
        self.file = file
        self.recovery = recovery
        try initializeRegion(fill: options.fill, stepsPerSecond: options.stepsPerSecond)
    }

    /// Rebuilds a download in a fresh `region` from the file its previous owner left in
    /// `options.sharedDirectory` (seed `options.seed`), for when that owner died with its region.
    ///
    /// Keeps the longest prefix of complete blocks that each pass `DownloadBlock.problem` (see
    /// `recoverableProgress(sharedDirectory:seed:)`), cuts the file to it, and writes the state the region
    /// would hold after writing exactly those n blocks: state words, step count n, and the last
    /// min(n, `ringSlots`) blocks in their ring slots. `verify()` then passes and the next step writes
    /// block n; `recovery` says what was kept and dropped.
    /// - Parameter source: where blocks come from; nil for `DeterministicBlockSource(seed: options.seed)`.
    /// - Throws: `WorkloadError.notResumable` when the file does not exist, `.regionTooSmall`,
    ///   `.invalidOptions`, `.file`, `.sharedFileInconsistent` (the file shrank while being read), `.region`.
    ///
    /// Fencing: the file is first copied into a new file, which is renamed over it before anything else is
    /// written. A previous owner that is not dead after all (stopped, frozen, cut off) keeps writing into the
    /// file it has open, which no longer has a name: none of its bytes reach the file this download continues.
    public convenience init(resuming region: MigratableRegion, options: WorkloadOptions, source: (any BlockSource)?) throws(WorkloadError) {
        try Self.checkFreshRegion(region, options: options)
        let path = Self.path(options.sharedDirectory, seed: options.seed)
        let file = try Self.takeOver(path)
        let fd = file.rawValue
        let kept = try Self.scan(fd, path: path, seed: options.seed)
        let keptLength = kept.blockCount * UInt64(DownloadBlock.size)
        if kept.droppedBytes > 0 {
            do {
                _ = try systemCall("ftruncate", subject: path) { ftruncate(fd, off_t(keptLength)) }
            } catch { throw .file(error) }
        }
        try self.init(fresh: region, options: options, source: source, file: file, recovery: kept)
        try loadRing(blockCount: kept.blockCount)
        let header = region.header
        header.setState(State.fileLength, keptLength)
        header.setState(State.runningChecksum, kept.runningChecksum)
        header.setState(State.lastChecksum, kept.lastChecksum)
        header.setState(State.nextIndex, kept.blockCount)
        header.stepCount = kept.blockCount
    }

    /// Scans the file of download `seed` in `sharedDirectory` without changing it: what
    /// `init(resuming:options:source:)` would keep and drop.
    /// - Throws: `WorkloadError.notResumable` when the file does not exist, `.file` when it cannot be read,
    ///   `.sharedFileInconsistent` when it shrinks while being read.
    public static func recoverableProgress(sharedDirectory: String, seed: UInt64) throws(WorkloadError) -> DownloadRecovery {
        let path = path(sharedDirectory, seed: seed)
        let file = try openExisting(path, flags: O_RDONLY)
        return try scan(file.rawValue, path: path, seed: seed)
    }

    /// Attaches to a download whose region arrived from another host: reopens its file and cuts it to the
    /// length the region recorded.
    /// - Parameter source: where blocks come from; nil for `DeterministicBlockSource` with the header's seed.
    public init(attaching region: MigratableRegion, sharedDirectory: String, source: (any BlockSource)?) throws(WorkloadError) {
        let info = try attachHeader(region, workload: Self.name)
        let pageSize = region.range.pageSize
        let header = region.header
        let ringBytes = Self.ringBytes(pageSize: pageSize)
        guard info.parameters[0] == UInt64(DownloadBlock.size), info.parameters[1] == UInt64(Self.ringSlots),
            info.parameters[2] == info.dataOffset, info.parameters[3] == UInt64(ringBytes),
            info.dataOffset + info.parameters[3] <= info.regionSize
        else { throw .corruptState("the receive ring parameters \(info.parameters[0..<4]) are impossible") }
        let next = header.state(State.nextIndex)
        let (expectedLength, overflow) = next.multipliedReportingOverflow(by: UInt64(DownloadBlock.size))
        guard !overflow, expectedLength < UInt64(Int64.max), header.state(State.fileLength) == expectedLength else {
            throw .corruptState("next block \(next) does not match the recorded file length \(header.state(State.fileLength))")
        }
        self.region = region
        seed = info.seed
        self.sharedDirectory = sharedDirectory
        filePath = Self.path(sharedDirectory, seed: seed)
        ringOffset = Int(info.dataOffset)
        slots = Self.ringSlots
        self.source = source ?? DeterministicBlockSource(seed: seed)
        recovery = nil
        do {
            file = try Self.openShared(filePath, flags: O_RDWR | (next == 0 ? O_CREAT : 0))
        } catch {
            if error.errno == Errno(rawValue: ENOENT) {
                throw .sharedFileInconsistent(path: filePath, reason: "does not exist but the region has recorded \(next) blocks")
            }
            throw .file(error)
        }
        let size: Int
        do { size = try Self.fileSize(file.rawValue, path: filePath) } catch { throw .file(error) }
        guard UInt64(size) >= expectedLength else {
            throw .sharedFileInconsistent(
                path: filePath, reason: "holds \(size) bytes but the region has recorded \(expectedLength) (\(next) blocks)")
        }
        let fd = file.rawValue
        let path = filePath
        do {
            _ = try systemCall("ftruncate", subject: path) { ftruncate(fd, off_t(expectedLength)) }
        } catch { throw .file(error) }
    }

    private static func checkFreshRegion(_ region: MigratableRegion, options: WorkloadOptions) throws(WorkloadError) {
        let required = minimumRegionSize(pageSize: region.range.pageSize)
        guard region.range.byteCount >= required else {
            throw .regionTooSmall(workload: name, required: required, actual: region.range.byteCount)
        }
        guard !options.sharedDirectory.isEmpty else { throw .invalidOptions("the shared directory is empty") }
    }

    /// Writes a fresh header with the state of zero blocks, and fills the data area (ring included).
    private func initializeRegion(fill: RegionFill, stepsPerSecond: Double?) throws(WorkloadError) {
        let ringBytes = Self.ringBytes(pageSize: region.range.pageSize)
        let header = region.header
        header.initialize(
            workloadName: Self.name, seed: seed, dataOffset: ringOffset, fill: fill,
            parameters: [UInt64(DownloadBlock.size), UInt64(slots), UInt64(ringOffset), UInt64(ringBytes)],
            stepsPerSecond: stepsPerSecond)
        header.setState(State.nextIndex, 0)
        header.setState(State.fileLength, 0)
        header.setState(State.runningChecksum, FNV1a64.offsetBasis)
        header.setState(State.lastChecksum, 0)
        // The ring's slots are overwritten as blocks arrive; until then they are filled like the rest.
        do {
            try region.fill(fill, offset: ringOffset, count: region.range.byteCount - ringOffset, seed: seed)
        } catch { throw .region(error) }
    }

    /// Opens a file of the shared mount, retrying what a network file system fails transiently (`SharedFile`):
    /// `ESTALE`, and `ENOENT` unless the open may create the file (a takeover renames a new file over it).
    static func openShared(_ path: String, flags: CInt, mode: UInt32 = 0o644) throws(SystemCallError) -> OwnedDescriptor {
        do throws(SharedFileError) {
            let fd = try SharedFile.retrying(missingIsTransient: flags & O_CREAT == 0) { () throws(SharedFileError) -> CInt in
                try SharedFile.call("open", path) { open(path, flags | O_CLOEXEC, mode_t(mode)) }
            }
            return OwnedDescriptor(taking: fd)
        } catch { throw error.systemCallError }
    }

    /// A resume's takeover of the file: copies it into a new file (same mode), syncs that and renames it over
    /// the old one, so the name from now on denotes a file no earlier owner has open. Returns the new file.
    private static func takeOver(_ path: String) throws(WorkloadError) -> OwnedDescriptor {
        let old = try openExisting(path, flags: O_RDONLY)
        var status = stat()
        do { _ = try systemCall("fstat", subject: path) { fstat(old.rawValue, &status) } } catch { throw .file(error) }
        let temporary = path + ".takeover-\(getpid())"
        let fresh: OwnedDescriptor
        do { fresh = try OwnedDescriptor(opening: temporary, flags: O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, mode: UInt32(status.st_mode & 0o777)) } catch {
            throw .file(error)
        }
        let from = old.rawValue
        let to = fresh.rawValue
        do throws(SharedFileError) {
            let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: readChunkBlocks * DownloadBlock.size, alignment: 16)
            defer { chunk.deallocate() }
            var offset: off_t = 0
            while true {
                let got = try SharedFile.call("read", path) { pread(from, chunk.baseAddress, chunk.count, offset) }
                if got == 0 { break }
                try SharedFile.writeAll(to, UnsafeRawBufferPointer(rebasing: chunk[0..<got]), at: offset, path: temporary)
                offset += off_t(got)
            }
            try SharedFile.call("fsync", temporary) { fsync(to) }
            try SharedFile.rename(temporary, over: path)
        } catch {
            unlink(temporary)
            throw .file(error.systemCallError)
        }
        do throws(SharedFileError) { try SharedFile.syncDirectory(containing: path) } catch { throw .file(error.systemCallError) }
        return fresh
    }

    /// Opens the file a resume starts from; a missing file means there is nothing to resume.
    private static func openExisting(_ path: String, flags: CInt) throws(WorkloadError) -> OwnedDescriptor {
        do { return try openShared(path, flags: flags) } catch {
            if error.errno == Errno(rawValue: ENOENT) {
                throw .notResumable(workload: name, path: path, reason: "does not exist, so no progress survived")
            }
            throw .file(error)
        }
    }

    /// Reads the file in `readChunkBlocks` chunks up to its first incomplete or failing block.
    private static func scan(_ fd: CInt, path: String, seed: UInt64) throws(WorkloadError) -> DownloadRecovery {
        let size: Int
        do { size = try fileSize(fd, path: path) } catch { throw .file(error) }
        let blockSize = DownloadBlock.size
        let wholeBlocks = size / blockSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: readChunkBlocks * blockSize, alignment: 16)
        defer { buffer.deallocate() }
        var kept = 0
        var running = FNV1a64.offsetBasis
        var last: UInt64 = 0
        var tailProblem: String?
        scanning: while kept < wholeBlocks {
            let count = min(readChunkBlocks, wholeBlocks - kept)
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count * blockSize])
            let got: Int
            do { got = try readFully(fd, path: path, into: chunk, at: off_t(kept) * off_t(blockSize)) } catch {
                throw .file(error)
            }
            guard got == chunk.count else {
                throw .sharedFileInconsistent(path: path, reason: "shrank below \(size) bytes while being read for resuming")
            }
            for position in 0..<count {
                let index = UInt64(kept)
                let block = UnsafeRawBufferPointer(rebasing: chunk[position * blockSize..<(position + 1) * blockSize])
                if let problem = DownloadBlock.problem(in: block, index: index, seed: seed) {
                    tailProblem = "block \(index) at offset \(index * UInt64(blockSize)): \(problem)"
                    break scanning
                }
                last = DownloadBlock.storedChecksum(of: block)
                running = FNV1a64.hash(word: last, into: running)
                kept += 1
            }
        }
        if tailProblem == nil && size > kept * blockSize {
            tailProblem = "a partial block of \(size - kept * blockSize) bytes at offset \(kept * blockSize)"
        }
        return DownloadRecovery(
            path: path, blockCount: UInt64(kept), fileLength: UInt64(size), runningChecksum: running,
            lastChecksum: last, tailProblem: tailProblem)
    }

    /// Reads blocks max(0, n − `ringSlots`) ..< n from the file into their ring slots: at most two reads, as
    /// the ring wraps at most once.
    private func loadRing(blockCount n: UInt64) throws(WorkloadError) {
        let fd = file.rawValue
        let path = filePath
        let blockSize = DownloadBlock.size
        var index = n - min(n, UInt64(slots))
        while index < n {
            let slot = Int(index % UInt64(slots))
            let count = min(Int(n - index), slots - slot)
            let offset = off_t(index) * off_t(blockSize)
            let got = try region.bytes.withBytes(at: ringOffset + slot * blockSize, count: count * blockSize) {
                destination throws(WorkloadError) -> Int in
                do throws(SystemCallError) {
                    return try Self.readFully(fd, path: path, into: destination, at: offset)
                } catch { throw .file(error) }
            }
            guard got == count * blockSize else {
                throw .sharedFileInconsistent(path: path, reason: "shrank while being read for resuming")
            }
            index += UInt64(count)
        }
    }

    /// Reads `buffer.count` bytes at `offset`, fewer only at the end of the file; returns how many.
    static func readFully(
        _ fd: CInt, path: String, into buffer: UnsafeMutableRawBufferPointer, at offset: off_t
    ) throws(SystemCallError) -> Int {
        var done = 0
        while done < buffer.count {
            let pointer = buffer.baseAddress! + done
            let remaining = buffer.count - done
            let position = offset + off_t(done)
            let n = try systemCall("pread", subject: path) { pread(fd, pointer, remaining, position) }
            if n == 0 { break }
            done += n
        }
        return done
    }

    private static func path(_ directory: String, seed: UInt64) -> String {
        let trimmed = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
        return "\(trimmed)/\(fileName(seed: seed))"
    }

    static func fileSize(_ fd: CInt, path: String) throws(SystemCallError) -> Int {
        var status = stat()
        _ = try systemCall("fstat", subject: path) { fstat(fd, &status) }
        return Int(status.st_size)
    }

    /// Blocks written so far (the next block's index).
    public var nextIndex: UInt64 { region.header.state(State.nextIndex) }
    /// The running checksum the region records.
    public var runningChecksum: UInt64 { region.header.state(State.runningChecksum) }

    /// Receives, checks and writes the next block, then records it.
    /// - Throws: `WorkloadError.corruptBlock` when the block fails its check (nothing is recorded),
    ///   `.file` when the write fails.
    public func step() throws(WorkloadError) {
        let header = region.header
        let bytes = region.bytes
        let index = header.state(State.nextIndex)
        let slotOffset = ringOffset + Int(index % UInt64(slots)) * DownloadBlock.size
        let fd = file.rawValue
        let path = filePath
        let blockChecksum = try bytes.withBytes(at: slotOffset, count: DownloadBlock.size) {
            slot throws(WorkloadError) -> UInt64 in
            try source.receive(block: index, into: slot)
            if let problem = DownloadBlock.problem(in: UnsafeRawBufferPointer(slot), index: index, seed: seed) {
                throw .corruptBlock(index: index, reason: problem)
            }
            // The fencing token, checked right before the write: a process whose lease lapsed writes nothing.
            try fence.withLock { $0 }?.check()
            var written = 0
            while written < slot.count {
                let pointer = slot.baseAddress! + written
                let remaining = slot.count - written
                let offset = off_t(index) * off_t(DownloadBlock.size) + off_t(written)
                do throws(SystemCallError) {
                    written += try systemCall("pwrite", subject: path) { pwrite(fd, pointer, remaining, offset) }
                } catch { throw .file(error) }
            }
            return DownloadBlock.storedChecksum(of: UnsafeRawBufferPointer(slot))
        }
        header.setState(State.fileLength, (index + 1) * UInt64(DownloadBlock.size))
        header.setState(State.runningChecksum, FNV1a64.hash(word: blockChecksum, into: header.state(State.runningChecksum)))
        header.setState(State.lastChecksum, blockChecksum)
        header.setState(State.nextIndex, index + 1)
        header.stepCount += 1
    }

    public func install(fence: WriteFence) { self.fence.withLock { $0 = fence } }

    /// `fsync`s the file.
    public func flush() throws(WorkloadError) {
        let fd = file.rawValue
        do { _ = try systemCall("fsync", subject: filePath) { fsync(fd) } } catch { throw .file(error) }
    }

    /// Re-derives the whole file and checks it against the region: length, every block's index, checksum
    /// and deterministic content, and the running checksum; plus the header, the step count and the ring.
    public func verify() -> VerificationReport {
        var report = headerVerification()
        let header = region.header
        let next = header.state(State.nextIndex)
        let recordedLength = header.state(State.fileLength)
        report.record(
            "state", recordedLength == next * UInt64(DownloadBlock.size) && header.stepCount == next,
            "\(next) blocks, \(recordedLength) bytes recorded, \(header.stepCount) steps")
        verifyRing(into: &report, next: next)
        Self.verifyFile(at: filePath, seed: seed, blockCount: next, runningChecksum: header.state(State.runningChecksum), into: &report)
        return report
    }

    private func verifyRing(into report: inout VerificationReport, next: UInt64) {
        let first = next > UInt64(slots) ? next - UInt64(slots) : 0
        var problem: String?
        for index in first..<next where problem == nil {
            let offset = ringOffset + Int(index % UInt64(slots)) * DownloadBlock.size
            region.bytes.withBytes(at: offset, count: DownloadBlock.size) { slot in
                if let found = DownloadBlock.problem(in: UnsafeRawBufferPointer(slot), index: index, seed: seed) {
                    problem = "ring slot \(index % UInt64(slots)) should hold block \(index) but \(found)"
                }
            }
        }
        report.record("receive ring", problem == nil, problem ?? "the last \(next - first) blocks are in their slots")
    }

    /// Checks a download file on its own: `blockCount` blocks of download `seed`, no more, no less, each
    /// intact, deterministic and in place, with the given running checksum. `ferry verify` uses it.
    public static func verifyFile(at path: String, seed: UInt64, blockCount: UInt64, runningChecksum: UInt64) -> VerificationReport {
        var report = VerificationReport(workload: name)
        verifyFile(at: path, seed: seed, blockCount: blockCount, runningChecksum: runningChecksum, into: &report)
        return report
    }

    static func verifyFile(
        at path: String, seed: UInt64, blockCount: UInt64, runningChecksum: UInt64, into report: inout VerificationReport
    ) {
        let file: OwnedDescriptor
        do { file = try OwnedDescriptor(opening: path, flags: O_RDONLY) } catch {
            report.record("file", false, error.description)
            return
        }
        let size: Int
        do { size = try fileSize(file.rawValue, path: path) } catch {
            report.record("file", false, error.description)
            return
        }
        let blockSize = DownloadBlock.size
        let expectedSize = blockCount * UInt64(blockSize)
        report.record(
            "file length", UInt64(size) == expectedSize,
            UInt64(size) == expectedSize
                ? "\(size) bytes = \(blockCount) blocks"
                : "\(path) holds \(size) bytes (\(Double(size) / Double(blockSize)) blocks), the region records \(blockCount) blocks = \(expectedSize) bytes")

        // Every whole block in the file, in order; stop at the first bad one.
        let blocksInFile = size / blockSize
        let chunkBlocks = readChunkBlocks
        var buffer = [UInt8](repeating: 0, count: chunkBlocks * blockSize)
        var expected = [UInt8](repeating: 0, count: blockSize)
        var running = FNV1a64.offsetBasis
        var firstProblem: String?
        var index = 0
        let fd = file.rawValue
        while index < blocksInFile && firstProblem == nil {
            let count = min(chunkBlocks, blocksInFile - index)
            let offset = off_t(index) * off_t(blockSize)
            let read = buffer.withUnsafeMutableBytes { raw -> Result<Int, SystemCallError> in
                do throws(SystemCallError) {
                    let chunk = UnsafeMutableRawBufferPointer(rebasing: raw[0..<count * blockSize])
                    return .success(try readFully(fd, path: path, into: chunk, at: offset))
                } catch { return .failure(error) }
            }
            guard case let .success(got) = read, got == count * blockSize else {
                if case let .failure(error) = read { firstProblem = error.description } else { firstProblem = "\(path) shrank while being read" }
                break
            }
            buffer.withUnsafeBytes { chunk in
                expected.withUnsafeMutableBytes { model in
                    for position in 0..<count where firstProblem == nil {
                        let i = UInt64(index + position)
                        let block = UnsafeRawBufferPointer(rebasing: chunk[position * blockSize..<(position + 1) * blockSize])
                        let at = "block \(i) at offset \(i * UInt64(blockSize))"
                        if let problem = DownloadBlock.problem(in: block, index: i, seed: seed) {
                            var explanation = ""
                            if Array(block[0..<8]) == DownloadBlock.magic {
                                let found = DownloadBlock.storedIndex(of: block)
                                if found < i {
                                    explanation = " (block \(found) is duplicated)"
                                } else if found > i {
                                    explanation = found == i + 1 ? " (block \(i) is missing)" : " (blocks \(i)..<\(found) are missing)"
                                }
                            }
                            firstProblem = "\(at): \(problem)\(explanation)"
                            return
                        }
                        DownloadBlock.write(seed: seed, index: i, into: model)
                        if let difference = block.indices.first(where: { block[$0] != model[$0] }) {
                            firstProblem = "\(at): byte \(difference) differs from the deterministic block"
                            return
                        }
                        running = FNV1a64.hash(word: DownloadBlock.checksum(of: block), into: running)
                    }
                }
            }
            index += count
        }
        if firstProblem == nil && blocksInFile != Int(clamping: blockCount) {
            firstProblem = blocksInFile > Int(clamping: blockCount)
                ? "the file holds \(blocksInFile) whole blocks, \(UInt64(blocksInFile) - blockCount) more than recorded"
                : "the file holds \(blocksInFile) whole blocks, \(blockCount - UInt64(blocksInFile)) fewer than recorded"
        }
        report.record("blocks", firstProblem == nil, firstProblem ?? "\(blocksInFile) blocks in order, each intact and deterministic")
        report.record(
            "running checksum", firstProblem == nil && running == runningChecksum,
            running == runningChecksum
                ? "0x\(String(running, radix: 16))"
                : "recomputed 0x\(String(running, radix: 16)) from the file, the region records 0x\(String(runningChecksum, radix: 16))")
    }
}
