import CShims
import Dispatch
import Synchronization

/// The two keys of a sealed connection, one per direction, each 32 bytes (AES-256-GCM).
public struct SealingKeys: Sendable {
    /// Seals what this side sends.
    public var send: [UInt8]
    /// Opens what this side receives.
    public var receive: [UInt8]

    public init(send: [UInt8], receive: [UInt8]) {
        precondition(send.count == 32 && receive.count == 32, "AES-256-GCM keys are 32 bytes")
        self.send = send
        self.receive = receive
    }
}

/// How a sealed stream is laid out: a sequence of records, each `u32 length (big-endian) | ciphertext |
/// 16-byte tag`, where `length` counts ciphertext and tag. Record n of a direction is sealed with
/// AES-256-GCM under that direction's key, the nonce being n (96 bits, big-endian), and the 4 length bytes
/// as additional data: a changed byte, a dropped, replayed, reordered or injected record fails its tag; a
/// stream cut inside a record is a closed connection. The plaintext of the records, in order, is exactly
/// the plain stream (frames and page bytes).
enum SealedRecord {
    static let tagLength = 16
    static let headerLength = 4
    /// The most plaintext one record carries: small enough that sealing one record overlaps sending the
    /// previous one many times per page frame, large enough that the per-record cost does not show.
    static let maximumPlaintext = 256 << 10

    static func nonce(_ counter: UInt64) -> [UInt8] {
        [0, 0, 0, 0] + withUnsafeBytes(of: counter.bigEndian) { Array($0) }
    }
}

/// One direction's AES-256-GCM state: its context, its record counter, and a staging buffer. Used by one
/// thread at a time (the connection's sender, or its receiver), which the connection's lock ensures.
final class SealingDirection: @unchecked Sendable {
    private let aead: OpaquePointer
    private(set) var counter: UInt64 = 0
    /// Sender: header + ciphertext + tag of one record. Receiver: plaintext of a record larger than the
    /// caller's buffer, served from `pendingStart ..< pendingEnd`.
    let staging: UnsafeMutableRawBufferPointer
    var pendingStart = 0
    var pendingEnd = 0
    /// Sender: a second buffer, so one record is sealed while the previous one is on the wire.
    let spare: UnsafeMutableRawBufferPointer
    /// Held by the one thread that sends (or receives) through this direction at a time.
    let lock = Mutex(())
    /// Sender: sends sealed records in order while the caller seals the next one; at most two are in flight
    /// (`slots`), one per buffer.
    let sendQueue = DispatchQueue(label: "ferry-sealed-send")
    let slots = DispatchSemaphore(value: 2)
    /// Sender: the first error a queued send met, thrown by the caller's next step.
    let failure = Mutex<TransportError?>(nil)

    init?(key: [UInt8], sealing: Bool) {
        guard let context = key.withUnsafeBufferPointer({ CShims_aead_new($0.baseAddress, sealing ? 1 : 0) }) else { return nil }
        aead = context
        let size = SealedRecord.headerLength + SealedRecord.maximumPlaintext + SealedRecord.tagLength
        staging = .allocate(byteCount: size, alignment: 64)
        spare = .allocate(byteCount: sealing ? size : 0, alignment: 64)
    }

    deinit {
        CShims_aead_free(aead)
        staging.deallocate()
        spare.deallocate()
    }

    /// Waits until every queued record is on the wire; returns the first error a send met.
    func finishSends() -> TransportError? {
        slots.wait()
        slots.wait()
        slots.signal()
        slots.signal()
        return failure.withLock { $0 }
    }

    /// Seals `plaintext` (at most `maximumPlaintext` bytes) into `buffer` (`staging` or `spare`) as one whole
    /// record; returns its bytes.
    func seal(_ plaintext: UnsafeRawBufferPointer, into buffer: UnsafeMutableRawBufferPointer) -> UnsafeRawBufferPointer? {
        let length = plaintext.count
        let base = buffer.baseAddress!
        base.storeBytes(of: UInt32(length + SealedRecord.tagLength).bigEndian, as: UInt32.self)
        let nonce = SealedRecord.nonce(counter)
        let status = nonce.withUnsafeBufferPointer { nonce in
            CShims_aead_seal(
                aead, nonce.baseAddress, base, SealedRecord.headerLength, plaintext.baseAddress, base + SealedRecord.headerLength, length,
                (base + SealedRecord.headerLength + length).assumingMemoryBound(to: UInt8.self))
        }
        guard status == 0 else { return nil }
        counter += 1
        return UnsafeRawBufferPointer(start: base, count: SealedRecord.headerLength + length + SealedRecord.tagLength)
    }

    /// Opens `length` bytes of ciphertext in place at `bytes`, with the record's header and tag.
    /// Returns 0 when authentic, 1 when not, -1 when libcrypto failed.
    func open(_ bytes: UnsafeMutableRawPointer, length: Int, header: UnsafeRawPointer, tag: UnsafeRawPointer) -> Int32 {
        let nonce = SealedRecord.nonce(counter)
        let status = nonce.withUnsafeBufferPointer { nonce in
            CShims_aead_open(aead, nonce.baseAddress, header, SealedRecord.headerLength, bytes, bytes, length, tag.assumingMemoryBound(to: UInt8.self))
        }
        if status == 0 { counter += 1 }
        return status
    }
}
