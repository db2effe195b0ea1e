import CFuzzDriver
import FerryWire

/// libFuzzer's entry point: every input goes through `FrameCodec.fuzzOneInput`, which traps only on a
/// codec bug (two decoding paths disagreeing, or a frame that does not re-encode to its bytes). A
/// malformed input is not a bug; a crash, a trap, an out-of-bounds read or a leak is.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FrameCodec.fuzzOneInput(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
