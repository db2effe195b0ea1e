#if canImport(Glibc)
import Glibc
#endif
import FerrySystem

/// A listening TCP socket on an address the user chose.
public final class Listener: Sendable {
    public let endpoint: Endpoint
    private let socket: CInt

    /// Binds and listens on `endpoint` (port 0 picks a free port; `boundPort` tells which).
    public init(on endpoint: Endpoint) throws(TransportError) {
        guard let (family, address) = try endpoint.resolve().first else { throw .resolve(endpoint, "no address") }
        let fd = Glibc.socket(family, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .listen(endpoint, SystemCallError("socket", errno: .current)) }
        var one: CInt = 1
        guard setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size)) == 0 else {
            let error = SystemCallError("setsockopt(SO_REUSEADDR)", errno: .current, subject: endpoint.description)
            close(fd)
            throw .listen(endpoint, error)
        }
        let bound = address.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count)) }
        guard bound == 0, Glibc.listen(fd, 8) == 0 else {
            let error = SystemCallError(bound == 0 ? "listen" : "bind", errno: .current, subject: endpoint.description)
            close(fd)
            throw .listen(endpoint, error)
        }
        socket = fd
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) { getsockname(fd, UnsafeMutableRawPointer($0).assumingMemoryBound(to: sockaddr.self), &length) }
        let port = withUnsafeBytes(of: &storage) { raw -> UInt16 in
            UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self))  // sin_port and sin6_port share offset 2
        }
        self.endpoint = Endpoint(host: endpoint.host, port: port)
    }

    deinit { close(socket) }

    /// Waits for the next connection (at most `timeoutSeconds`, nil: forever). The connection's reads and
    /// writes give up after `connectionTimeoutSeconds` of silence from the peer.
    public func accept(timeoutSeconds: Double? = nil, maximumBytesPerSecond: Double? = nil, connectionTimeoutSeconds: Double = 30) throws(TransportError) -> Connection {
        var pollDescriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        while true {
            let ready = poll(&pollDescriptor, 1, timeoutSeconds.map { CInt($0 * 1000) } ?? -1)
            if ready < 0 && Errno.current == .interrupted { continue }
            if ready == 0 { throw .noConnection(endpoint, seconds: timeoutSeconds ?? 0) }
            break
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &storage) { Glibc.accept(socket, UnsafeMutableRawPointer($0).assumingMemoryBound(to: sockaddr.self), &length) }
        guard fd >= 0 else { throw .listen(endpoint, SystemCallError("accept", errno: .current)) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return try Connection(socket: fd, peer: Self.describe(storage), maximumBytesPerSecond: maximumBytesPerSecond, timeoutSeconds: connectionTimeoutSeconds)
    }

    static func describe(_ storage: sockaddr_storage) -> String {
        var storage = storage
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let status = withUnsafePointer(to: &storage) {
            getnameinfo(UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), socklen_t(MemoryLayout<sockaddr_storage>.size),
                        &host, socklen_t(host.count), &service, socklen_t(service.count), NI_NUMERICHOST | NI_NUMERICSERV)
        }
        guard status == 0 else { return "unknown peer" }
        let hostText = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let serviceText = String(decoding: service.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return hostText.contains(":") ? "[\(hostText)]:\(serviceText)" : "\(hostText):\(serviceText)"
    }
}
