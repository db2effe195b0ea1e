#if canImport(Glibc)
import Glibc
#endif
public import FerrySystem

/// A TCP endpoint written `HOST:PORT` (`10.0.0.2:7000`, `[fd00::2]:7000`, `localhost:7000`).
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: UInt16

    /// Parses `HOST:PORT`; IPv6 hosts go in brackets.
    public init?(_ text: String) {
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            hostPart = text[text.index(after: text.startIndex)..<close]
            portPart = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        }
        guard !hostPart.isEmpty, let port = UInt16(portPart) else { return nil }
        host = String(hostPart)
        self.port = port
    }

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Resolves to socket addresses (numeric hosts need no lookup).
    func resolve() throws(TransportError) -> [(family: CInt, address: [UInt8])] {
        var hints = addrinfo()
        hints.ai_socktype = CInt(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let first = result else {
            throw .resolve(self, String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(first) }
        var addresses: [(CInt, [UInt8])] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            let bytes = UnsafeRawBufferPointer(start: info.pointee.ai_addr, count: Int(info.pointee.ai_addrlen))
            addresses.append((info.pointee.ai_family, Array(bytes)))
            cursor = info.pointee.ai_next
        }
        return addresses
    }
}

/// Why a connection could not be made or went wrong, and with whom.
public enum TransportError: Error, Hashable, Sendable, CustomStringConvertible {
    case resolve(Endpoint, String)
    case connect(Endpoint, Errno)
    case listen(Endpoint, SystemCallError)
    case io(peer: String, SystemCallError)
    /// The peer sent nothing for `seconds` while we waited to receive (SO_RCVTIMEO).
    case timedOut(peer: String, what: String, seconds: Double)
    /// The peer took none of our bytes for `seconds` while we sent (SO_SNDTIMEO: its window stayed full).
    case sendTimedOut(peer: String, what: String, seconds: Double)
    /// No connection arrived at a listener within `seconds`.
    case noConnection(Endpoint, seconds: Double)
    case closed(peer: String, what: String)
    case malformed(peer: String, String)
    case unexpected(peer: String, expected: String, got: String)
    /// A sealed record did not authenticate: changed, dropped, replayed, reordered or injected on the way.
    case tampered(peer: String, record: UInt64, String)
    /// libcrypto failed (not the peer's doing).
    case crypto(peer: String, String)

    public var description: String {
        switch self {
        case .resolve(let endpoint, let reason):
            "cannot resolve \(endpoint): \(reason)"
        case .connect(let endpoint, let errno):
            "cannot connect to \(endpoint): \(errno); is 'ferry receive' listening there, and is the address on the migration network?"
        case .listen(let endpoint, let error):
            "cannot listen on \(endpoint): \(error); pick a free port or an address of this host"
        case .io(let peer, let error):
            "connection with \(peer): \(error)"
        case .timedOut(let peer, let what, let seconds):
            "the peer \(peer) sent nothing for \(Self.format(seconds)) s while \(what) (timeout); it may have stalled or the link is down"
        case .sendTimedOut(let peer, let what, let seconds):
            "the peer \(peer) took none of our data for \(Self.format(seconds)) s while \(what) (timeout); it may have stalled or the link is down"
        case .noConnection(let endpoint, let seconds):
            "no connection came to \(endpoint) within \(Self.format(seconds)) s (timeout)"
        case .closed(let peer, let what):
            "\(peer) closed the connection while \(what)"
        case .malformed(let peer, let reason):
            "\(peer) sent a malformed frame: \(reason)"
        case .unexpected(let peer, let expected, let got):
            "\(peer) sent \(got) where \(expected) was expected"
        case .tampered(let peer, let record, let reason):
            "sealed record \(record) from \(peer) failed authentication (\(reason)): the stream was changed, cut, replayed, reordered or injected on the way; nothing of it is used"
        case .crypto(let peer, let reason):
            "connection with \(peer): \(reason)"
        }
    }

    /// `1.0`, `30.0`, `0.25`: tenths from a second up, milliseconds below.
    private static func format(_ seconds: Double) -> String {
        "\(seconds >= 1 ? (seconds * 10).rounded() / 10 : (seconds * 1000).rounded() / 1000)"
    }
}
