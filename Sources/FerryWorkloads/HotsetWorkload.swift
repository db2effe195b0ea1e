import FerrySystem
public import FerryRegion

/// A memory-consistency workload: random writes to a working set of versioned pages, a ledger that must
/// equal the sum of the versions, and a linked list whose nodes point at each other by absolute address.
///
/// **Region** (page 0 is the header, `RegionHeader`):
/// - the list area starts at page 1: `listNodes` nodes of 16 bytes, node slot s at
///   `listOffset + 16 s`: next node's absolute address (`UInt64`, 0 ends the list), then a value
///   (`UInt64`). The nodes are linked in a seeded, shuffled order, starting at the head address;
/// - the working set starts at `dataOffset` (the page after the list area): W pages, page p at
///   `dataOffset + p × pageSize`, each holding version (`UInt64`), page index p (`UInt64`), checksum
///   (`UInt64`: FNV-1a 64 over the little-endian bytes of version, index and body) and a body of
///   SplitMix64 words seeded with `RegionRandom.mix(seed, p, version)`. A page at version 0 is all
///   zeros, unless it was created with fill `.random` or `.text`, which write every page's version-0 content;
///   data pages past the working set are free data area. With fill `.text` the bodies are `RegionText`
///   seeded the same way instead of SplitMix64 words. With few-byte writes, a page keeps its version-0 body
///   at every version (only version and checksum change).
///
/// | state offset | field |
/// |---|---|
/// | +0x00 | ledger total (`UInt64`): 1 added per step |
/// | +0x08 | generator state (`UInt64`, SplitMix64) |
/// | +0x10 | list head: absolute address of the first node (`UInt64`) |
/// | +0x18 | list aggregate: wrapping sum of the node values (`UInt64`) |
/// | +0x20 | page written by the last step (`UInt64`) |
///
/// Parameters: 0 working-set pages W, 1 list nodes, 2 list offset, 3 version-0 content: 0 none (zeros),
/// 1 random bodies (fill `.random`), 2 text bodies (fill `.text`); 4 1 if a step writes only a few bytes
/// of its page (`WorkloadOptions.fewByteWrites`) else 0.
///
/// **Step** (dirties 3 pages with 4 KiB pages: one working-set page, the list page and the header page):
/// draw a page, bump its version and rewrite it; draw a node and give it a new value, adjusting the
/// aggregate; add 1 to the ledger; store the generator state; increment the step counter last.
///
/// **Invariants** (`verify()`): ledger = Σ versions = step count; every page matches (page, version);
/// walking the list from the head visits exactly `listNodes` nodes, every pointer inside the list area,
/// and their values sum to the aggregate.
public final class HotsetWorkload: Workload {
    public static let name = "hotset"
    /// Nodes in the linked list.
    public static let listNodes = 64
    static let nodeSize = 16
    static let pageHeaderSize = 24

    public let region: MigratableRegion
    /// Pages in the working set.
    public let workingSetPages: Int
    /// Offset of the first working-set page.
    public let dataOffset: Int
    /// Offset of the list area.
    public let listOffset: Int
    /// Nodes in the list.
    public let nodeCount: Int
    public let seed: UInt64
    private let versionZeroHasContent: Bool
    private let textBodies: Bool
    /// Whether a step changes only a page's version and checksum (16 bytes), its body staying version 0's.
    public let fewByteWrites: Bool

    enum State {
        static let ledger = 0x00
        static let random = 0x08
        static let head = 0x10
        static let aggregate = 0x18
        static let lastPage = 0x20
    }

    static func listBytes(pageSize: Int) -> Int {
        (listNodes * nodeSize + pageSize - 1) / pageSize * pageSize
    }

    public static func minimumRegionSize(pageSize: Int) -> Int { pageSize + listBytes(pageSize: pageSize) + pageSize }

    public init(creating region: MigratableRegion, options: WorkloadOptions) throws(WorkloadError) {
        let range = region.range
        let pageSize = range.pageSize
        let required = Self.minimumRegionSize(pageSize: pageSize)
        guard range.byteCount >= required else {
            throw .regionTooSmall(workload: Self.name, required: required, actual: range.byteCount)
        }
        listOffset = pageSize
        dataOffset = listOffset + Self.listBytes(pageSize: pageSize)
        let available = (range.byteCount - dataOffset) / pageSize
        let workingSet = options.workingSetPages ?? available
        guard workingSet >= 1 && workingSet <= available else {
            throw .invalidOptions("the working set must be 1 to \(available) pages in this region, not \(workingSet)")
        }
        self.region = region
        workingSetPages = workingSet
        nodeCount = Self.listNodes
        seed = options.seed
        versionZeroHasContent = options.fill == .random || options.fill == .text
        textBodies = options.fill == .text
        fewByteWrites = options.fewByteWrites

        let header = region.header
        header.initialize(
            workloadName: Self.name, seed: seed, dataOffset: dataOffset, fill: options.fill,
            parameters: [UInt64(workingSet), UInt64(nodeCount), UInt64(listOffset), textBodies ? 2 : versionZeroHasContent ? 1 : 0,
                         fewByteWrites ? 1 : 0],
            stepsPerSecond: options.stepsPerSecond)
        header.setState(State.ledger, 0)
        header.setState(State.random, RegionRandom.mix(seed, 0x5E7))
        header.setState(State.lastPage, 0)

        // The list: slots linked in a shuffled order.
        let bytes = region.bytes
        var random = RegionRandom(state: RegionRandom.mix(seed, 0x115))
        var order = Array(0..<nodeCount)
        for i in stride(from: nodeCount - 1, to: 0, by: -1) {
            order.swapAt(i, Int(random.next() % UInt64(i + 1)))
        }
        var aggregate: UInt64 = 0
        for (position, slot) in order.enumerated() {
            let next = position + 1 < nodeCount ? bytes.address(at: listOffset + order[position + 1] * Self.nodeSize) : 0
            let value = random.next()
            bytes.store(UInt64(next), at: listOffset + slot * Self.nodeSize)
            bytes.store(value, at: listOffset + slot * Self.nodeSize + 8)
            aggregate &+= value
        }
        header.setState(State.head, UInt64(bytes.address(at: listOffset + order[0] * Self.nodeSize)))
        header.setState(State.aggregate, aggregate)

        do {
            switch options.fill {
            case .none:
                break
            case .zero:
                try region.fill(.zero, offset: dataOffset, count: range.byteCount - dataOffset, seed: seed)
            case .random, .text:
                for page in 0..<workingSet { writePage(page, version: 0) }
                let free = dataOffset + workingSet * pageSize
                try region.fill(options.fill, offset: free, count: range.byteCount - free, seed: seed)
            }
        } catch { throw .region(error) }
    }

    public init(attaching region: MigratableRegion, sharedDirectory: String) throws(WorkloadError) {
        let info = try attachHeader(region, workload: Self.name)
        let pageSize = region.range.pageSize
        let listOffset = Int(clamping: info.parameters[2])
        let dataOffset = Int(info.dataOffset)
        let workingSet = Int(clamping: info.parameters[0])
        guard info.parameters[1] == UInt64(Self.listNodes), listOffset == pageSize,
            dataOffset == listOffset + Self.listBytes(pageSize: pageSize),
            workingSet >= 1, workingSet <= (region.range.byteCount - dataOffset) / pageSize,
            info.parameters[3] <= 2, info.parameters[4] <= 1
        else { throw .corruptState("the workload parameters \(info.parameters[0..<5]) are impossible for this region") }
        self.region = region
        self.listOffset = listOffset
        self.dataOffset = dataOffset
        workingSetPages = workingSet
        nodeCount = Self.listNodes
        seed = info.seed
        versionZeroHasContent = info.parameters[3] >= 1
        textBodies = info.parameters[3] == 2
        fewByteWrites = info.parameters[4] == 1
    }

    /// The ledger total.
    public var ledger: UInt64 { region.header.state(State.ledger) }
    /// The absolute address of working-set page `page`.
    public func address(ofPage page: Int) -> UInt { region.bytes.address(at: pageOffset(page)) }
    /// The absolute address of list node slot `slot` (slots are not in list order).
    public func address(ofNodeSlot slot: Int) -> UInt { region.bytes.address(at: listOffset + slot * Self.nodeSize) }
    /// The version of working-set page `page`.
    public func version(ofPage page: Int) -> UInt64 { region.bytes.load(at: pageOffset(page)) }

    private func pageOffset(_ page: Int) -> Int {
        precondition(page >= 0 && page < workingSetPages)
        return dataOffset + page * region.range.pageSize
    }

    /// Writes page `page`'s content for `version`.
    private func writePage(_ page: Int, version: UInt64) {
        var body = BodyWords(seed: seed, page: page, version: fewByteWrites ? 0 : version, text: textBodies)
        region.bytes.withBytes(at: pageOffset(page), count: region.range.pageSize) { buffer in
            var checksum = FNV1a64.hash(word: UInt64(page), into: FNV1a64.hash(word: version))
            for offset in stride(from: Self.pageHeaderSize, to: buffer.count - 7, by: 8) {
                let word = body.next()
                buffer.storeBytes(of: word, toByteOffset: offset, as: UInt64.self)
                checksum = FNV1a64.hash(word: word, into: checksum)
            }
            buffer.storeBytes(of: UInt64(page), toByteOffset: 8, as: UInt64.self)
            buffer.storeBytes(of: checksum, toByteOffset: 16, as: UInt64.self)
            buffer.storeBytes(of: version, toByteOffset: 0, as: UInt64.self)
        }
    }

    /// What is wrong with page `page`, or nil; also returns its version.
    private func checkPage(_ page: Int) -> (version: UInt64, problem: String?) {
        let seed = seed
        let versionZeroHasContent = versionZeroHasContent
        let (fewByteWrites, textBodies) = (fewByteWrites, textBodies)
        return region.bytes.withBytes(at: pageOffset(page), count: region.range.pageSize) { buffer in
            let version = buffer.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
            if version == 0 && !versionZeroHasContent {
                if let nonZero = buffer.firstIndex(where: { $0 != 0 }) {
                    return (0, "it is at version 0 (never written) but byte \(nonZero) is not zero")
                }
                return (0, nil)
            }
            let index = buffer.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            let stored = buffer.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
            guard index == UInt64(page) else { return (version, "its header names page \(index)") }
            var checksum = FNV1a64.hash(word: index, into: FNV1a64.hash(word: version))
            var body = BodyWords(seed: seed, page: page, version: fewByteWrites ? 0 : version, text: textBodies)
            var firstDifference: Int?
            for offset in stride(from: Self.pageHeaderSize, to: buffer.count - 7, by: 8) {
                let word = buffer.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                checksum = FNV1a64.hash(word: word, into: checksum)
                if word != body.next() && firstDifference == nil { firstDifference = offset }
            }
            if checksum != stored {
                return (version, "its checksum field 0x\(String(stored, radix: 16)) does not match its contents "
                    + "(0x\(String(checksum, radix: 16)))" + (firstDifference.map { ", body differs from version \(version) at byte \($0)" } ?? ""))
            }
            if let firstDifference {
                return (version, "its body differs from version \(version)'s content at byte \(firstDifference)")
            }
            return (version, nil)
        }
    }

    /// Rewrites one random page at its next version, updates one list node and the ledger.
    public func step() throws(WorkloadError) {
        let header = region.header
        let bytes = region.bytes
        var random = RegionRandom(state: header.state(State.random))
        let page = Int(random.next() % UInt64(workingSetPages))
        let version = bytes.load(UInt64.self, at: pageOffset(page)) &+ 1
        writePage(page, version: version)

        let slot = Int(random.next() % UInt64(nodeCount))
        let valueOffset = listOffset + slot * Self.nodeSize + 8
        let old: UInt64 = bytes.load(at: valueOffset)
        let new = random.next()
        bytes.store(new, at: valueOffset)
        header.setState(State.aggregate, header.state(State.aggregate) &- old &+ new)

        header.setState(State.random, random.state)
        header.setState(State.lastPage, UInt64(page))
        header.setState(State.ledger, header.state(State.ledger) &+ 1)
        header.stepCount += 1
    }

    /// Nothing to flush: the hotset has no files.
    public func flush() throws(WorkloadError) {}

    /// Checks every page against its version, the ledger against the versions and the step count, and
    /// walks the list from its head.
    public func verify() -> VerificationReport {
        var report = headerVerification()
        let header = region.header

        var sum: UInt64 = 0
        var badPages: [(Int, String)] = []
        for page in 0..<workingSetPages {
            let (version, problem) = checkPage(page)
            sum &+= version
            if let problem { badPages.append((page, problem)) }
        }
        if let (page, problem) = badPages.first {
            let others = badPages.count > 1 ? " (and \(badPages.count - 1) more bad pages)" : ""
            report.record("pages", false, "page \(page) at 0x\(String(address(ofPage: page), radix: 16)): \(problem)\(others)")
        } else {
            report.record("pages", true, "\(workingSetPages) pages match their versions, which sum to \(sum)")
        }
        let ledger = header.state(State.ledger)
        report.record(
            "ledger", ledger == sum,
            ledger == sum ? "ledger total \(ledger) = sum of page versions"
                : "ledger total \(ledger) but the page versions sum to \(sum)")
        report.record(
            "steps", header.stepCount == ledger,
            "step counter \(header.stepCount)" + (header.stepCount == ledger ? " = ledger" : ", ledger \(ledger)"))
        verifyList(into: &report)
        return report
    }

    private func verifyList(into report: inout VerificationReport) {
        let bytes = region.bytes
        let header = region.header
        let listStart = bytes.address(at: listOffset)
        let listEnd = listStart + UInt(nodeCount * Self.nodeSize)
        var address = UInt(header.state(State.head))
        var visited = Set<UInt>()
        var sum: UInt64 = 0
        var problem: String?
        var previous = "the list head"
        while address != 0 {
            let count = visited.count
            if bytes.offset(ofAddress: address, length: Self.nodeSize) == nil {
                problem = "\(previous) points to 0x\(String(address, radix: 16)), outside the region \(region.range)"
            } else if address < listStart || address >= listEnd || (address - listStart) % UInt(Self.nodeSize) != 0 {
                problem = "\(previous) points to 0x\(String(address, radix: 16)), which is not a node slot of the list area"
            } else if visited.contains(address) {
                problem = "\(previous) points back to node 0x\(String(address, radix: 16)): the list has a cycle"
            } else if count >= nodeCount {
                problem = "the list has more than \(nodeCount) nodes"
            }
            if problem != nil { break }
            visited.insert(address)
            let offset = Int(address - bytes.start)
            sum &+= bytes.load(UInt64.self, at: offset + 8)
            previous = "node #\(count) (slot \((address - listStart) / UInt(Self.nodeSize)) at 0x\(String(address, radix: 16)))"
            address = UInt(bytes.load(UInt64.self, at: offset))
        }
        if problem == nil && visited.count != nodeCount {
            problem = "the walk from the head ends after \(visited.count) nodes, not \(nodeCount)"
        }
        report.record("list", problem == nil, problem ?? "\(nodeCount) nodes reached from the head, every pointer inside the list area")
        let aggregate = header.state(State.aggregate)
        report.record(
            "list aggregate", problem == nil && sum == aggregate,
            sum == aggregate ? "node values sum to the aggregate 0x\(String(aggregate, radix: 16))"
                : "node values sum to 0x\(String(sum, radix: 16)) but the aggregate is 0x\(String(aggregate, radix: 16))")
    }
}

/// The body words of a working-set page at a version: SplitMix64 words, or text (`RegionText`) with fill `.text`.
private struct BodyWords {
    private var random: RegionRandom
    private var text: RegionText?

    init(seed: UInt64, page: Int, version: UInt64, text: Bool) {
        let pageSeed = RegionRandom.mix(seed, UInt64(page), version)
        random = RegionRandom(state: pageSeed)
        self.text = text ? RegionText(seed: pageSeed) : nil
    }

    mutating func next() -> UInt64 {
        if text != nil { return text!.next().littleEndian }
        return random.next()
    }
}
