/// Appends the fields of frames to a byte array, big-endian, and fills in each frame's length once its
/// body is written. Writing is total: a string or byte string over its limit is cut to the limit (a
/// string at a character boundary), so whatever is written decodes.
struct ByteWriter {
    var bytes: [UInt8]

    /// Writes a frame header with a placeholder length; returns where the frame starts.
    mutating func beginFrame(_ type: FrameType) -> Int {
        let start = bytes.count
        write(UInt32(0))
        write(type.rawValue)
        return start
    }

    /// Fills in the length of the frame that starts at `start`.
    mutating func endFrame(startingAt start: Int) {
        let length = UInt32(bytes.count - start - 4)
        for index in 0..<4 { bytes[start + index] = UInt8(truncatingIfNeeded: length >> (24 - 8 * index)) }
    }

    mutating func write<T: FixedWidthInteger & UnsignedInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func write(_ value: Bool) {
        write(UInt8(value ? 1 : 0))
    }

    mutating func write(bytes value: [UInt8], limit: Int) {
        let count = min(value.count, limit, Int(UInt16.max))
        write(UInt16(count))
        bytes.append(contentsOf: value[..<count])
    }

    mutating func write(_ value: String, limit: Int) {
        let utf8 = value.utf8
        var count = min(utf8.count, limit, Int(UInt16.max))
        if count < utf8.count {
            // Cut before the scalar that would cross the limit: back off over continuation bytes.
            var index = utf8.index(utf8.startIndex, offsetBy: count)
            while count > 0 && utf8[index] & 0xC0 == 0x80 {
                utf8.formIndex(before: &index)
                count -= 1
            }
        }
        write(UInt16(count))
        bytes.append(contentsOf: utf8.prefix(count))
    }
}
