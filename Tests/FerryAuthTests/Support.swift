#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import FerrySystem
import FerryTransport
import Foundation
import Synchronization

/// Runs `body` on a thread of its own (both sides of a handshake block in socket calls) and hands back
/// its result on `join()`.
final class Spawned<T: Sendable>: Sendable {
    private let result = Mutex<T?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> T) {
        Thread.detachNewThread { [self] in
            let value = body()
            result.withLock { $0 = value }
            done.signal()
        }
    }

    func join() -> T {
        done.wait()
        return result.withLock { $0! }
    }
}

/// A TCP socket driven byte by byte, to play a peer that misbehaves at exact offsets.
final class RawSocket {
    let fd: CInt

    private init(fd: CInt) { self.fd = fd }
    deinit { close(fd) }

    /// Connects to 127.0.0.1:`port`.
    static func connect(port: UInt16) throws -> RawSocket {
        let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError("socket", errno: .current) }
        let raw = RawSocket(fd: fd)
        var address = loopback(port: port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { throw SystemCallError("connect", errno: .current) }
        raw.setTimeout(seconds: 10)
        return raw
    }

    /// A listening socket on 127.0.0.1 and the port it got.
    static func listen() throws -> (RawSocket, UInt16) {
        let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError("socket", errno: .current) }
        let raw = RawSocket(fd: fd)
        var address = loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, 8) == 0 else { throw SystemCallError("bind/listen", errno: .current) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return (raw, UInt16(bigEndian: address.sin_port))
    }

    func accept() throws -> RawSocket {
        let client = Glibc.accept(fd, nil, nil)
        guard client >= 0 else { throw SystemCallError("accept", errno: .current) }
        let raw = RawSocket(fd: client)
        raw.setTimeout(seconds: 10)
        return raw
    }

    func send(_ bytes: some Collection<UInt8>) throws {
        let array = Array(bytes)
        var offset = 0
        while offset < array.count {
            let sent = array.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, CInt(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw SystemCallError("send", errno: .current) }
            offset += sent
        }
    }

    /// Reads exactly `count` bytes.
    func receive(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let got = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, count - offset, 0) }
            guard got > 0 else { throw SystemCallError("recv", errno: got == 0 ? .invalidArgument : .current, subject: "end of stream") }
            offset += got
        }
        return bytes
    }

    /// Reads one whole frame (header and body) as raw bytes.
    func receiveFrameBytes() throws -> [UInt8] {
        let header = try receive(5)
        let length = header.prefix(4).reduce(0) { $0 << 8 | Int($1) }
        return header + (try receive(length - 1))
    }

    private func setTimeout(seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }
}

/// Runs `body` with a fresh directory under /tmp, removed afterwards.
func withTemporaryDirectory<R>(_ body: (String) throws -> R) throws -> R {
    var template = Array("/tmp/ferry-auth-test-XXXXXX".utf8CString)
    let path = try template.withUnsafeMutableBufferPointer { buffer -> String in
        guard let result = mkdtemp(buffer.baseAddress!) else { throw SystemCallError("mkdtemp", errno: .current, subject: "/tmp") }
        return String(cString: result)
    }
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

/// Writes `bytes` to `path` with permission bits `mode` (exactly, whatever the umask).
func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw SystemCallError("open", errno: .current, subject: path) }
    defer { close(fd) }
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    guard written == bytes.count, fchmod(fd, mode) == 0 else { throw SystemCallError("write", errno: .current, subject: path) }
}

func fileMode(_ path: String) -> mode_t {
    var status = stat()
    precondition(stat(path, &status) == 0, "stat \(path): \(Errno.current)")
    return status.st_mode & 0o7777
}
