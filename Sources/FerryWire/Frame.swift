/// The version of the migration protocol this build speaks; the first field of every ``Hello``.
///
/// Version 2 added the loaded objects (``Hello/images``) and ``Hello/fixedLayout`` at the end of the hello;
/// version 3 the post-copy frames (`discardPages`, `postCopy`, `urgentChannel`, `pageRequest`, `pageEnRoute`,
/// `postCopyDone`, `pagesHeld`); version 4 `encodedPages` (compressed pages and deltas).
public let wireProtocolVersion: UInt16 = 4

/// One object loaded in the source process, the executable or a shared library, as the hello reports it.
///
/// A decoded image has a valid UTF-8 `path` of at most ``Frame/maximumPathLength`` bytes and a `buildID`
/// of at most ``Frame/maximumDigestLength`` bytes.
public struct ImageIdentity: Hashable, Sendable {
    /// The object's path on the source: the executable's real path, or a library's path as the dynamic
    /// linker names it.
    public var path: String
    /// The object's ELF build id (`NT_GNU_BUILD_ID`), empty if it has none.
    public var buildID: [UInt8]
    /// The object's load bias on the source: the address a shared library or a position-independent
    /// executable is loaded at, 0 for a fixed-address executable.
    public var loadAddress: UInt64

    public init(path: String, buildID: [UInt8], loadAddress: UInt64) {
        self.path = path
        self.buildID = buildID
        self.loadAddress = loadAddress
    }
}

/// Everything the source says about itself and the region in its first frame.
///
/// The codec guarantees only the shape of the fields: every string is valid UTF-8 within
/// ``Frame/maximumNameLength`` bytes, and `images` holds at most ``Frame/maximumImages`` entries, each
/// within the limits ``ImageIdentity`` states (the encoder sends only the first ``Frame/maximumImages``).
/// Whether the values are acceptable (same architecture, page size,
/// a mappable address, a plain file name for the token) is the destination's decision, answered with a
/// ``Refusal`` a person can act on.
///
/// The body, in version 2: `u16 protocolVersion | buildIdentity | architecture | u32 pageSize |
/// u64 regionBase | u64 regionSize | workloadName | u32 layoutVersion | sharedMountToken |
/// sharedMountTokenValue | u64 generation | u8 auditVerification | u16 imageCount |
/// imageCount × (path | buildID | u64 loadAddress) | u8 fixedLayout`.
public struct Hello: Hashable, Sendable {
    /// The protocol version the source speaks; a destination that does not speak it refuses with
    /// ``Refusal/Code-swift.enum/protocolVersion``.
    public var protocolVersion: UInt16
    /// The build of the source, e.g. `"ferry 0.1 (git abc123)"`.
    public var buildIdentity: String
    /// The source's machine architecture, e.g. `"x86_64"`.
    public var architecture: String
    /// The source's page size in bytes; page indices in later frames count pages of this size.
    public var pageSize: UInt32
    /// The address the region is mapped at on the source; the destination must map it at the same address.
    public var regionBase: UInt64
    /// The size of the region in bytes.
    public var regionSize: UInt64
    /// The name of the workload that lives in the region.
    public var workloadName: String
    /// The version of the workload's layout inside the region.
    public var layoutVersion: UInt32
    /// The name of a one-time token file the source wrote on the shared mount. Only its length and
    /// encoding are checked here: the destination must make sure it is a plain file name before opening it.
    public var sharedMountToken: String
    /// The token file's content, which the destination must read back and match.
    public var sharedMountTokenValue: String
    /// The ownership generation the source currently holds.
    public var generation: UInt64
    /// Whether the destination resumes before the digests are compared (`audit`): it must then keep
    /// per-page hashes as pages arrive. `false` is `strict`: digests are compared before the handoff.
    public var auditVerification: Bool
    /// The objects loaded in the source process, the executable first: the destination must run the
    /// same builds. Empty when the source does not say.
    public var images: [ImageIdentity]
    /// Whether the program asked for the same load addresses on both hosts (it keeps pointers outside
    /// its region): the destination must then have every object of `images` at the same `loadAddress`.
    public var fixedLayout: Bool

    public init(
        protocolVersion: UInt16 = wireProtocolVersion,
        buildIdentity: String,
        architecture: String,
        pageSize: UInt32,
        regionBase: UInt64,
        regionSize: UInt64,
        workloadName: String,
        layoutVersion: UInt32,
        sharedMountToken: String,
        sharedMountTokenValue: String,
        generation: UInt64,
        auditVerification: Bool = false,
        images: [ImageIdentity] = [],
        fixedLayout: Bool = false
    ) {
        self.protocolVersion = protocolVersion
        self.buildIdentity = buildIdentity
        self.architecture = architecture
        self.pageSize = pageSize
        self.regionBase = regionBase
        self.regionSize = regionSize
        self.workloadName = workloadName
        self.layoutVersion = layoutVersion
        self.sharedMountToken = sharedMountToken
        self.sharedMountTokenValue = sharedMountTokenValue
        self.generation = generation
        self.auditVerification = auditVerification
        self.images = images
        self.fixedLayout = fixedLayout
    }
}

/// The destination's answer to ``Hello``.
///
/// A decoded `accepted` always carries a finite, non-negative `setupSeconds` (the encoder writes 0 for
/// anything else).
public enum HelloReply: Hashable, Sendable {
    /// The region is mapped (and populated) at the same address; `setupSeconds` is how long that took.
    case accepted(setupSeconds: Double)
    /// The destination will not take the workload; the source keeps running it.
    case refused(Refusal)
}

/// Why a destination refused, with a message a person can act on.
///
/// A decoded refusal always has a known ``Code-swift.enum`` and a valid UTF-8 reason of at most
/// ``Frame/maximumReasonLength`` bytes (the encoder truncates a longer one at a character boundary).
public struct Refusal: Hashable, Sendable, Error, CustomStringConvertible {
    /// The kind of refusal, stable on the wire so the source can react to it. Never renumber: add new
    /// codes at the end.
    public enum Code: UInt16, Sendable {
        case protocolVersion = 1, architecture, pageSize, memory, address, sharedMount, workload, layoutVersion,
            busy, authentication, other
        /// The destination runs another build of the program or of a library in ``Hello/images``, or, with
        /// ``Hello/fixedLayout``, loads one at another address (since protocol version 2).
        case build = 12
    }

    /// The kind of refusal.
    public var code: Code
    /// What happened and what to do.
    public var reason: String

    public init(code: Code, reason: String) {
        self.code = code
        self.reason = reason
    }

    public var description: String { "destination refused (\(code)): \(reason)" }
}

/// How the bytes that follow an ``Frame/encodedPages(firstPage:pageCount:encoding:byteCount:)`` frame encode
/// its pages. Never renumber: add new encodings at the end.
public enum PageEncoding: UInt8, Sendable, CaseIterable {
    /// One zstd frame that decompresses to exactly the pages' bytes.
    case zstd = 1
    /// One lz4 block that decompresses to exactly the pages' bytes.
    case lz4 = 2
    /// Per page in order, the page's changes against the copy the receiver holds (the one sent last time):
    /// runs of `varint unchanged | varint changed | changed bytes`, covering the page exactly.
    case delta = 3
}

/// Per-round statistics the source sends at the end of each round.
public struct RoundSummary: Hashable, Sendable {
    /// The round number: 0 is the full copy, then one per dirty round.
    public var round: UInt32
    /// Pages sent as data in this round.
    public var pages: UInt64
    /// Pages sent as zero ranges in this round.
    public var zeroPages: UInt64
    /// Bytes of page data sent in this round.
    public var bytes: UInt64
    /// Whether this was the stop-and-copy round.
    public var final: Bool

    public init(round: UInt32, pages: UInt64, zeroPages: UInt64, bytes: UInt64, final: Bool) {
        self.round = round
        self.pages = pages
        self.zeroPages = zeroPages
        self.bytes = bytes
        self.final = final
    }
}

/// One message of the migration protocol.
///
/// On the stream every frame is `u32 length (big-endian) | u8 type | body`, where the length counts the
/// type byte and the body and is between 1 and ``maximumLength``. Integers are big-endian; strings and byte
/// strings are a `u16` byte count followed by the bytes.
///
/// Guarantees of every frame ``FrameCodec`` or ``FrameDecoder`` returns: strings are valid UTF-8 within
/// their limit, byte strings are within ``maximumDigestLength``, page counts are at least 1 and
/// `firstPage + pageCount` does not overflow `UInt64`. Decoding is canonical: re-encoding a decoded frame
/// gives back exactly the bytes it came from.
public enum Frame: Hashable, Sendable {
    /// The source's first frame: who it is and what region it wants to move.
    case hello(Hello)
    /// The destination's answer to `hello`.
    case helloReply(HelloReply)
    /// Announces `pageCount * pageSize` raw page bytes that follow this frame on the stream, outside any
    /// frame, for pages `firstPage ..< firstPage + pageCount`.
    case pageData(firstPage: UInt64, pageCount: UInt32)
    /// Announces `byteCount` bytes (at least 1) that follow this frame on the stream, outside any frame, and
    /// hold pages `firstPage ..< firstPage + pageCount` in `encoding`. Whether they decode to exactly those
    /// pages is the receiver's check.
    case encodedPages(firstPage: UInt64, pageCount: UInt32, encoding: PageEncoding, byteCount: UInt32)
    /// Pages `firstPage ..< firstPage + pageCount` are all zero.
    case zeroPages(firstPage: UInt64, pageCount: UInt64)
    /// The source has sent everything of one round.
    case roundEnd(RoundSummary)
    /// The destination has applied the round.
    case roundAck(round: UInt32)
    /// The source has sent all pages; the destination computes the digest of the whole region.
    case digestRequest
    /// The digest of the destination's region; `value` is at most ``maximumDigestLength`` bytes.
    case digest(algorithm: String, value: [UInt8])
    /// The source committed the ownership record with this generation; the destination resumes.
    case commit(generation: UInt64)
    /// The destination runs the workload, at this step.
    case running(step: UInt64)
    /// Either side gives up; the source keeps running.
    case abort(reason: String)
    /// Challenge-response authentication; `nonce` and `mac` are at most ``maximumDigestLength`` bytes each.
    case auth(nonce: [UInt8], mac: [UInt8])
    /// Post-copy: the destination's copies of these pages are stale; it drops them, and they arrive again on
    /// demand or in the background.
    case discardPages(firstPage: UInt64, pageCount: UInt64)
    /// Post-copy switch-over: the source committed `generation` (the record says post-copy); the destination
    /// runs the workload now and fetches what it lacks. `token` (at most ``maximumDigestLength`` bytes) names
    /// the urgent channel the source opens next.
    case postCopy(generation: UInt64, token: [UInt8])
    /// The first frame on a second connection: it is the urgent channel of the migration `token` names.
    case urgentChannel(token: [UInt8])
    /// Post-copy, destination to source on the urgent channel: a thread waits for these pages.
    case pageRequest(firstPage: UInt64, pageCount: UInt32)
    /// Post-copy, on the urgent channel: these requested pages were already sent on the background stream.
    case pageEnRoute(firstPage: UInt64, pageCount: UInt32)
    /// Post-copy, destination to source: every page is here. `demandPages` were fetched on demand;
    /// `latencyBuckets[i]` counts demand faults served in [2^i, 2^(i+1)) microseconds (at most
    /// ``maximumLatencyBuckets`` buckets).
    case postCopyDone(demandPages: UInt64, latencyBuckets: [UInt64])
    /// Post-copy recovery, destination to source on a new main connection: which of `pageCount` pages the
    /// destination holds (bit i is bit `i % 8` of byte `i / 8`); the source sends the others. At most
    /// ``maximumBitmapPages`` pages.
    case pagesHeld(pageCount: UInt64, bitmap: [UInt8])

    /// The most buckets of a ``postCopyDone`` latency histogram (2^32 µs is over an hour).
    public static let maximumLatencyBuckets = 32
    /// The most pages a ``pagesHeld`` bitmap covers within ``maximumLength`` (32 GiB of 4 KiB pages).
    public static let maximumBitmapPages: UInt64 = UInt64(maximumLength - 1 - 8) * 8
    /// The largest frame length (type byte plus body) a peer may send: 1 MiB.
    public static let maximumLength: UInt32 = 1 << 20
    /// The limit, in UTF-8 bytes, of names and identities: build identity, architecture, workload name,
    /// token name and value, digest algorithm.
    public static let maximumNameLength = 256
    /// The limit, in UTF-8 bytes, of reasons (refusals and aborts).
    public static let maximumReasonLength = 4096
    /// The limit, in bytes, of a digest value, an authentication nonce, a MAC, and a build id.
    public static let maximumDigestLength = 64
    /// The limit, in UTF-8 bytes, of the path of an ``ImageIdentity``.
    public static let maximumPathLength = maximumNameLength * 4
    /// The most ``Hello/images`` a hello carries. A hello with this many images of the longest paths and
    /// build ids stays within ``maximumLength`` (512 × 1,100 bytes, about 550 KB).
    public static let maximumImages = 512

    /// The type byte of this frame on the wire.
    public var typeCode: UInt8 { kind.rawValue }

    var kind: FrameType {
        switch self {
        case .hello: .hello
        case .helloReply: .helloReply
        case .pageData: .pageData
        case .zeroPages: .zeroPages
        case .roundEnd: .roundEnd
        case .roundAck: .roundAck
        case .digestRequest: .digestRequest
        case .digest: .digest
        case .commit: .commit
        case .running: .running
        case .abort: .abort
        case .auth: .auth
        case .discardPages: .discardPages
        case .postCopy: .postCopy
        case .urgentChannel: .urgentChannel
        case .pageRequest: .pageRequest
        case .pageEnRoute: .pageEnRoute
        case .postCopyDone: .postCopyDone
        case .pagesHeld: .pagesHeld
        case .encodedPages: .encodedPages
        }
    }
}

/// The type byte of each frame. Never reuse a number: add new types at the end.
enum FrameType: UInt8, CaseIterable {
    case hello = 1
    case helloReply = 2
    case pageData = 3
    case zeroPages = 4
    case roundEnd = 5
    case roundAck = 6
    case digestRequest = 7
    case digest = 8
    case commit = 9
    case running = 10
    case abort = 11
    case auth = 12
    case discardPages = 13
    case postCopy = 14
    case urgentChannel = 15
    case pageRequest = 16
    case pageEnRoute = 17
    case postCopyDone = 18
    case pagesHeld = 19
    case encodedPages = 20

    /// The body size of frames whose body is fixed, nil for variable-size bodies.
    var fixedBodySize: Int? {
        switch self {
        case .pageData: 8 + 4
        case .zeroPages: 8 + 8
        case .roundEnd: 4 + 8 + 8 + 8 + 1
        case .roundAck: 4
        case .digestRequest: 0
        case .commit, .running: 8
        case .discardPages: 8 + 8
        case .pageRequest, .pageEnRoute: 8 + 4
        case .encodedPages: 8 + 4 + 1 + 4
        case .hello, .helloReply, .digest, .abort, .auth, .postCopy, .urgentChannel, .postCopyDone, .pagesHeld: nil
        }
    }
}
