/// Reads the fields of one frame body in order, checking every length against the bytes that are there
/// before touching them. Errors name the frame type and, for strings, the field.
struct ByteReader {
    private let bytes: UnsafeRawBufferPointer
    private let type: UInt8
    private var offset = 0

    init(_ bytes: UnsafeRawBufferPointer, type: UInt8) {
        self.bytes = bytes
        self.type = type
    }

    /// Bytes not read yet.
    var remaining: Int { bytes.count - offset }

    /// Throws `truncated` unless `count` more bytes are there.
    func require(_ count: Int) throws(WireError) {
        guard count <= remaining else {
            throw .truncated(type: type, needed: offset + count, available: bytes.count)
        }
    }

    /// Throws `trailingBytes` unless every byte has been read.
    func finish() throws(WireError) {
        guard remaining == 0 else { throw .trailingBytes(type: type, count: remaining) }
    }

    mutating func read<T: FixedWidthInteger & UnsignedInteger>(_: T.Type) throws(WireError) -> T {
        let size = MemoryLayout<T>.size
        try require(size)
        var value: T = 0
        for index in offset..<(offset + size) { value = value << 8 | T(bytes[index]) }
        offset += size
        return value
    }

    mutating func readBool(field: String) throws(WireError) -> Bool {
        switch try read(UInt8.self) {
        case 0: return false
        case 1: return true
        case let other: throw .fieldOutOfRange(field: field, value: UInt64(other))
        }
    }

    /// A `u16` byte count and that many bytes, at most `limit`.
    mutating func readByteString(field: String, limit: Int) throws(WireError) -> UnsafeRawBufferPointer {
        let count = Int(try read(UInt16.self))
        guard count <= limit else { throw .stringTooLong(field: field, length: count, limit: limit) }
        try require(count)
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    /// Exactly `count` bytes, with no length before them.
    mutating func readRaw(count: Int) throws(WireError) -> [UInt8] {
        try require(count)
        defer { offset += count }
        return Array(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)]))
    }

    mutating func readBytes(field: String, limit: Int) throws(WireError) -> [UInt8] {
        Array(try readByteString(field: field, limit: limit))
    }

    mutating func readString(field: String, limit: Int) throws(WireError) -> String {
        let raw = try readByteString(field: field, limit: limit)
        guard let string = String(validating: raw, as: UTF8.self) else { throw .invalidUTF8(field: field) }
        return string
    }
}
