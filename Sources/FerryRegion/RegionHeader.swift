public import FerrySystem

/// What a region's header says, as plain values (see `RegionHeader` for the byte layout).
public struct RegionHeaderInfo: Hashable, Sendable, CustomStringConvertible {
    public var layoutVersion: UInt32
    /// The workload that owns the region, e.g. `download`.
    public var workloadName: String
    /// Steps completed so far.
    public var stepCount: UInt64
    public var regionSize: UInt64
    public var pageSize: UInt32
    /// The seed the workload was created with; it determines all of its deterministic content.
    public var seed: UInt64
    /// Offset of the workload's data area (page-aligned).
    public var dataOffset: UInt64
    /// How the free data area was filled at creation.
    public var fill: RegionFill
    /// The workload's parameters, fixed at creation (their meaning is the workload's).
    public var parameters: [UInt64]
    /// The pace the workload runs at, in steps per second (0 idle, `.infinity` flat out, nil: the program's own).
    public var stepsPerSecond: Double?

    public var description: String {
        "\(workloadName) (layout \(layoutVersion)): \(stepCount) steps, seed 0x\(String(seed, radix: 16)), "
            + "\(ByteCount(Int(regionSize))) in \(pageSize)-byte pages, fill \(fill)"
    }
}

/// A view of the region header at offset 0 of a region.
///
/// Byte layout (native byte order, which is little-endian on every architecture ferry supports; both
/// hosts of a migration must share the architecture):
///
/// Layout version 2 added the pace and the root.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0x00 | 8 | magic, the ASCII bytes `FERRYRG1` |
/// | 0x08 | 4 | layout version, `UInt32` (`currentLayoutVersion` = 1) |
/// | 0x0C | 4 | page size, `UInt32` |
/// | 0x10 | 32 | workload name, UTF-8, NUL padded (at most 31 bytes, so always NUL terminated) |
/// | 0x30 | 8 | step counter, `UInt64` (incremented last in every step) |
/// | 0x38 | 8 | region size in bytes, `UInt64` |
/// | 0x40 | 8 | creation seed, `UInt64` |
/// | 0x48 | 8 | data offset, `UInt64`: where the workload's data area starts (page-aligned) |
/// | 0x50 | 4 | fill, `UInt32`: 0 none, 1 zero, 2 random |
/// | 0x54 | 4 | reserved, 0 |
/// | 0x58 | 64 | 8 workload parameters, `UInt64` each, fixed at creation (independent of the dirty rate) |
/// | 0x98 | 8 | pace: steps per second as a `Double`'s bits; NaN (all ones) = the program paces itself |
/// | 0xA0 | 8 | root: an absolute address inside the region chosen by the program (`ferry_root`), 0 = none |
/// | 0xA8 | 88 | reserved, 0 |
/// | 0x100 | to the end of page 0 | workload state (`stateOffset`), laid out by the workload |
///
/// The view does not own the memory; the region must stay mapped while it is used.
public struct RegionHeader {
    public static let magic: [UInt8] = Array("FERRYRG1".utf8)
    public static let currentLayoutVersion: UInt32 = 2
    /// Longest workload name, in UTF-8 bytes.
    public static let maximumNameLength = 31
    public static let parameterCount = 8
    /// Offset of the workload's state inside the header page.
    public static let stateOffset = 0x100

    enum Offset {
        static let magic = 0x00
        static let layoutVersion = 0x08
        static let pageSize = 0x0C
        static let name = 0x10
        static let nameSize = 32
        static let stepCount = 0x30
        static let regionSize = 0x38
        static let seed = 0x40
        static let dataOffset = 0x48
        static let fill = 0x50
        static let parameters = 0x58
        static let pace = 0x98
        static let root = 0xA0
    }

    /// The bytes of the whole region the header heads.
    public let bytes: RegionBytes
    /// The page size of the mapping the header lies in.
    public let pageSize: Int

    /// A view of the header of the region mapped at `range`.
    public init(range: MemoryRange) {
        precondition(range.byteCount >= range.pageSize, "a region holds at least its header page")
        bytes = RegionBytes(range)
        pageSize = range.pageSize
    }

    /// Steps completed so far.
    public var stepCount: UInt64 {
        get { bytes.load(at: Offset.stepCount) }
        nonmutating set { bytes.store(newValue, at: Offset.stepCount) }
    }

    /// Parameter `index` (0 ..< `parameterCount`).
    public func parameter(_ index: Int) -> UInt64 {
        precondition((0..<Self.parameterCount).contains(index))
        return bytes.load(at: Offset.parameters + 8 * index)
    }

    /// The pace the workload runs at, in steps per second; nil when the program paces itself.
    public var stepsPerSecond: Double? {
        get {
            let value = Double(bitPattern: bytes.load(at: Offset.pace))
            return value.isNaN ? nil : value
        }
        nonmutating set { bytes.store((newValue ?? .nan).bitPattern, at: Offset.pace) }
    }

    /// The program's root pointer (an absolute address inside the region), 0 when none was set.
    public var root: UInt64 {
        get { bytes.load(at: Offset.root) }
        nonmutating set { bytes.store(newValue, at: Offset.root) }
    }

    /// The workload-state word at `offset` bytes past `stateOffset`.
    public func state(_ offset: Int) -> UInt64 { bytes.load(at: Self.stateOffset + offset) }
    public func setState(_ offset: Int, _ value: UInt64) { bytes.store(value, at: Self.stateOffset + offset) }

    /// Whether `name` can be a workload name: 1 to `maximumNameLength` UTF-8 bytes, no NUL.
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return !bytes.isEmpty && bytes.count <= maximumNameLength && !bytes.contains(0)
    }

    /// Writes a fresh header (step counter 0, empty state, no root).
    /// - Parameters:
    ///   - workloadName: 1 to `maximumNameLength` UTF-8 bytes (check with `isValidName`).
    ///   - dataOffset: where the workload's data area starts, a page boundary past the header page.
    ///   - stepsPerSecond: the workload's pace (nil: the program paces itself).
    public func initialize(
        workloadName: String, seed: UInt64, dataOffset: Int, fill: RegionFill, parameters: [UInt64],
        stepsPerSecond: Double? = nil
    ) {
        let name = Array(workloadName.utf8)
        precondition(Self.isValidName(workloadName), "bad workload name")
        precondition(parameters.count <= Self.parameterCount)
        bytes.withBytes(at: 0, count: Self.stateOffset) { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
        for (index, byte) in Self.magic.enumerated() { bytes.store(byte, at: Offset.magic + index) }
        bytes.store(Self.currentLayoutVersion, at: Offset.layoutVersion)
        bytes.store(UInt32(pageSize), at: Offset.pageSize)
        for (index, byte) in name.enumerated() { bytes.store(byte, at: Offset.name + index) }
        bytes.store(UInt64(0), at: Offset.stepCount)
        bytes.store(UInt64(bytes.count), at: Offset.regionSize)
        bytes.store(seed, at: Offset.seed)
        bytes.store(UInt64(dataOffset), at: Offset.dataOffset)
        bytes.store(fill.code, at: Offset.fill)
        for (index, value) in parameters.enumerated() { bytes.store(value, at: Offset.parameters + 8 * index) }
        self.stepsPerSecond = stepsPerSecond
    }

    /// The header's fields, validated against the mapping it lies in.
    /// - Throws: `RegionError.notARegion`, `.unsupportedLayoutVersion` or `.malformedHeader`.
    public func read() throws(RegionError) -> RegionHeaderInfo {
        let magic = (0..<8).map { bytes.load(UInt8.self, at: Offset.magic + $0) }
        guard magic == Self.magic else { throw .notARegion(found: magic) }
        let version: UInt32 = bytes.load(at: Offset.layoutVersion)
        guard version == Self.currentLayoutVersion else {
            throw .unsupportedLayoutVersion(found: version, supported: Self.currentLayoutVersion)
        }
        let nameBytes = (0..<Offset.nameSize).map { bytes.load(UInt8.self, at: Offset.name + $0) }
        let nameLength = nameBytes.firstIndex(of: 0) ?? nameBytes.count
        guard nameLength > 0, nameLength <= Self.maximumNameLength,
            nameBytes[nameLength...].allSatisfy({ $0 == 0 }),
            let name = String(validating: nameBytes[..<nameLength], as: UTF8.self)
        else { throw .malformedHeader("the workload name field is not a NUL-padded UTF-8 name") }
        let headerPageSize: UInt32 = bytes.load(at: Offset.pageSize)
        guard headerPageSize == pageSize else {
            throw .malformedHeader("it was created with \(headerPageSize)-byte pages but this host uses \(pageSize)")
        }
        let regionSize: UInt64 = bytes.load(at: Offset.regionSize)
        guard regionSize == UInt64(bytes.count) else {
            throw .malformedHeader(
                "it records a \(ByteCount(Int(clamping: regionSize))) region but \(ByteCount(bytes.count)) is mapped")
        }
        let dataOffset: UInt64 = bytes.load(at: Offset.dataOffset)
        guard dataOffset >= UInt64(pageSize), dataOffset % UInt64(pageSize) == 0, dataOffset <= regionSize else {
            throw .malformedHeader("its data offset \(dataOffset) is not a page boundary inside the region")
        }
        guard let fill = RegionFill(code: bytes.load(at: Offset.fill)) else {
            throw .malformedHeader("its fill code \(bytes.load(UInt32.self, at: Offset.fill)) is unknown")
        }
        return RegionHeaderInfo(
            layoutVersion: version, workloadName: name, stepCount: stepCount, regionSize: regionSize,
            pageSize: headerPageSize, seed: bytes.load(at: Offset.seed), dataOffset: dataOffset, fill: fill,
            parameters: (0..<Self.parameterCount).map(parameter), stepsPerSecond: stepsPerSecond)
    }
}
