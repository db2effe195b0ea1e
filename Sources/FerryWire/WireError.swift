/// Why bytes from a peer are not a valid frame.
///
/// Every case names what was wrong and where, so the message can be logged or shown as is. Field names
/// have the form `frame.field`, e.g. `hello.workloadName`.
public enum WireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The header announces a frame longer than the limit.
    case frameTooLarge(length: UInt32, limit: UInt32)
    /// The header announces a length of zero (every frame has at least its type byte).
    case emptyFrame
    /// The type byte is not a frame this build knows.
    case unknownFrameType(UInt8)
    /// The body is shorter than its fields: they need at least `needed` bytes, the body has `available`.
    /// `type` 0 means the frame header itself is short (from ``FrameCodec/decodeHeader(_:maximumLength:)``).
    case truncated(type: UInt8, needed: Int, available: Int)
    /// The body is longer than its fields by `count` bytes.
    case trailingBytes(type: UInt8, count: Int)
    /// A string or byte string is longer than its limit.
    case stringTooLong(field: String, length: Int, limit: Int)
    /// A string is not valid UTF-8.
    case invalidUTF8(field: String)
    /// A field holds a value it may not have: a page count of 0, a page range past `UInt64.max`, an
    /// unknown refusal code, a bool that is not 0 or 1, a negative or non-finite duration (given as its
    /// bit pattern), or a ``Hello`` of another protocol version whose body this build cannot read.
    case fieldOutOfRange(field: String, value: UInt64)

    /// The field name ``fieldOutOfRange(field:value:)`` uses for a `Hello` of an unknown protocol version.
    public static let protocolVersionField = "hello.protocolVersion"

    /// The peer's protocol version, when this error is a `Hello` of a version this build cannot read;
    /// the destination answers that with ``Refusal/Code-swift.enum/protocolVersion`` rather than an abort.
    public var unsupportedProtocolVersion: UInt16? {
        if case .fieldOutOfRange(WireError.protocolVersionField, let value) = self { UInt16(exactly: value) } else { nil }
    }

    public var description: String {
        switch self {
        case .frameTooLarge(let length, let limit):
            "frame length \(length) is over the limit of \(limit) bytes"
        case .emptyFrame:
            "frame length is 0; a frame holds at least its type byte"
        case .unknownFrameType(let type):
            "unknown frame type \(type)"
        case .truncated(0, let needed, let available):
            "frame header is \(available) bytes, it needs \(needed)"
        case .truncated(let type, let needed, let available):
            "frame type \(type) (\(FrameCodec.name(ofType: type))) is \(available) bytes, its fields need at least \(needed)"
        case .trailingBytes(let type, let count):
            "frame type \(type) (\(FrameCodec.name(ofType: type))) has \(count) bytes after its last field"
        case .stringTooLong(let field, let length, let limit):
            "\(field) is \(length) bytes, the limit is \(limit)"
        case .invalidUTF8(let field):
            "\(field) is not valid UTF-8"
        case .fieldOutOfRange(WireError.protocolVersionField, let value):
            "hello is protocol version \(value), this build speaks version \(wireProtocolVersion)"
        case .fieldOutOfRange(let field, let value):
            "\(field) has a value out of range: \(value)"
        }
    }
}
