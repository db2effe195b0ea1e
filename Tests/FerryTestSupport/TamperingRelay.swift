import Foundation
import Synchronization

/// An attacker on the migration network: a TCP relay on 127.0.0.1 between a source and a destination that
/// forwards everything, records what the source sent, and can break one unit of the source's stream.
///
/// The source's stream is a sequence of units of the same shape, `u32 length (big-endian) | payload`: its
/// authentication frame first, then (sealed) one record per unit, or (plain) one frame per unit, page bytes
/// following their `pageData` frame unframed (so, plain, only the first few units are meaningful).
public final class TamperingRelay: Sendable {
    /// What the relay does to unit `unit` of the source's stream.
    public enum Attack: String, Sendable, CaseIterable {
        /// Flips one bit in the middle of the unit's payload.
        case flipBit = "flip-bit"
        /// Leaves the unit out.
        case drop
        /// Sends the unit twice.
        case replay
        /// Sends a made-up unit of the same length before it.
        case inject
        /// Swaps the unit with the next one.
        case reorder
        /// Sends half of the unit, then cuts both connections.
        case cutMidUnit = "cut-mid-unit"
    }

    public let port: Int
    private let listener: CInt
    private let captured = Mutex<[UInt8]>([])
    private let attacked = Atomic<Bool>(false)

    /// Relays connections to 127.0.0.1:`targetPort`, applying `attack` to unit `unit` of each connection's
    /// source stream (nil: an honest relay that only records).
    public init(targetPort: Int, attack: Attack?, unit: Int = 6) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard ok, listen(fd, 4) == 0 else { close(fd); throw LabError.notReady("relay") }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread { [self] in
            while true {
                let client = accept(fd, nil, nil)
                if client < 0 { return }
                let server = Self.connect(to: targetPort)
                guard server >= 0 else { close(client); continue }
                Thread.detachNewThread { Self.pump(from: server, to: client) }
                if attack == nil {
                    // Honest: forward as it comes (a plain stream's page bytes are not units), recording it.
                    Thread.detachNewThread { [self] in Self.pump(from: client, to: server) { bytes in captured.withLock { $0 += bytes } } }
                } else {
                    Thread.detachNewThread { [self] in forwardSource(from: client, to: server, attack: attack, unit: unit) }
                }
            }
        }
    }

    deinit { shutdown(listener, Int32(SHUT_RDWR)); close(listener) }

    /// Everything the source sent through the relay so far.
    public var capturedBytes: [UInt8] { captured.withLock { $0 } }

    /// Whether the attack was carried out (the stream reached its unit).
    public var didAttack: Bool { attacked.load(ordering: .relaxed) }

    private static func connect(to port: Int) -> CInt {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            Glibc.connect(fd, UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), socklen_t(MemoryLayout<sockaddr_in>.size))
        }
        if connected != 0 { close(fd); return -1 }
        return fd
    }

    private static func pump(from: CInt, to: CInt, record: (ArraySlice<UInt8>) -> Void = { _ in }) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let got = read(from, &buffer, buffer.count)
            if got <= 0 { break }
            record(buffer[..<got])
            if !writeAll(to, buffer[..<got]) { break }
        }
        shutdown(to, Int32(SHUT_RDWR))
        shutdown(from, Int32(SHUT_RDWR))
    }

    @discardableResult
    private static func writeAll(_ fd: CInt, _ bytes: ArraySlice<UInt8>) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if written <= 0 { return false }
                offset += written
            }
            return true
        }
    }

    private static func readExactly(_ fd: CInt, _ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + offset, count - offset) }
            if got <= 0 { return nil }
            offset += got
        }
        return bytes
    }

    /// Forwards the source's stream unit by unit, recording it, and breaks unit `unit`.
    private func forwardSource(from client: CInt, to server: CInt, attack: Attack?, unit: Int) {
        defer {
            shutdown(server, Int32(SHUT_RDWR))
            shutdown(client, Int32(SHUT_RDWR))
        }
        var index = 0
        var held: [UInt8]?
        while let header = Self.readExactly(client, 4) {
            let length = Int(UInt32(header[0]) << 24 | UInt32(header[1]) << 16 | UInt32(header[2]) << 8 | UInt32(header[3]))
            guard length <= 64 << 20, let payload = Self.readExactly(client, length) else { return }
            let whole = header + payload
            captured.withLock { $0 += whole }
            defer { index += 1 }
            if let unitHeld = held {
                // reorder: the next unit goes first, then the held one.
                held = nil
                guard Self.writeAll(server, whole[...]), Self.writeAll(server, unitHeld[...]) else { return }
                continue
            }
            guard let attack, index == unit else {
                if !Self.writeAll(server, whole[...]) { return }
                continue
            }
            attacked.store(true, ordering: .relaxed)
            switch attack {
            case .flipBit:
                var changed = whole
                changed[4 + length / 2] ^= 0x10
                if !Self.writeAll(server, changed[...]) { return }
            case .drop:
                continue
            case .replay:
                if !Self.writeAll(server, whole[...]) || !Self.writeAll(server, whole[...]) { return }
            case .inject:
                let forged = header + (0..<length).map { _ in UInt8.random(in: 0...255) }
                if !Self.writeAll(server, forged[...]) || !Self.writeAll(server, whole[...]) { return }
            case .reorder:
                held = whole
            case .cutMidUnit:
                Self.writeAll(server, whole[..<(4 + length / 2)])
                return
            }
        }
    }
}
