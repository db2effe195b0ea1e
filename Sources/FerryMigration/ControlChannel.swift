#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerrySystem
import Synchronization

/// The control socket of a process that runs a migratable workload (`ferry run`, `ferry receive`, or a
/// program embedding Ferry): a Unix stream socket carrying one JSON request per connection and JSON-line
/// replies (`{"event": "progress", ...}` lines, then one `{"event": "result", ...}`).
public enum ControlChannel {
    public typealias Message = [String: any Sendable]

    /// Serves requests on `path` on a thread of its own; `handle` gets each request and a way to reply.
    /// Serving ends when the returned server is closed.
    /// - Throws: `AgentError.control` when the socket cannot be created or bound.
    public static func serve(at path: String, handle: @escaping @Sendable (Message, @escaping @Sendable (Message) -> Void) -> Void) throws(AgentError) -> ControlServer {
        unlink(path)
        let fd = try makeSocket(path: path) { fd, address, length in bind(fd, address, length) == 0 && listen(fd, 8) == 0 }
        let server = ControlServer(fd: fd, path: path)
        let thread = Thread {
            while true {
                let client = accept(fd, nil, nil)
                if client < 0 {
                    if Errno.current == .interrupted { continue }
                    server.release()
                    return
                }
                Thread.detachNewThread {
                    defer { close(client) }
                    guard let line = readLine(client), let request = decode(line) else { return }
                    handle(request) { reply in writeLine(client, reply) }
                }
            }
        }
        thread.name = "ferry-control"
        thread.start()
        return server
    }

    /// Sends `request` to the process at `path` and calls `onReply` for each reply line until the result.
    /// - Throws: `AgentError.control` when nothing answers at `path` or the process closed the connection early.
    public static func request(_ request: Message, at path: String, onReply: (Message) -> Void) throws(AgentError) -> Message {
        let fd = try makeSocket(path: path) { fd, address, length in connect(fd, address, length) == 0 }
        defer { close(fd) }
        writeLine(fd, request)
        while let line = readLine(fd) {
            guard let reply = decode(line) else { continue }
            if reply["event"] as? String == "result" { return reply }
            onReply(reply)
        }
        throw .control("the ferry process at \(path) closed the control connection without a result; it may have exited (see its log)")
    }

    private static func makeSocket(path: String, _ body: (CInt, UnsafePointer<sockaddr>, socklen_t) -> Bool) throws(AgentError) -> CInt {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw .usage("control socket path \(path) is too long (at most 107 bytes); use a shorter path")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: bytes) }
        let fd = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .control("socket(AF_UNIX): \(Errno.current)") }
        let ok = withUnsafePointer(to: &address) {
            body(fd, UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), socklen_t(MemoryLayout<sockaddr_un>.size))
        }
        guard ok else {
            let error = Errno.current
            close(fd)
            throw .control("control socket \(path): \(error); is a 'ferry run' or 'ferry receive' process (or a program embedding Ferry) using it?")
        }
        return fd
    }

    private static func writeLine(_ fd: CInt, _ message: Message) {
        guard var data = try? JSONSerialization.data(withJSONObject: message, options: [.sortedKeys]) else { return }
        data.append(0x0A)
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written <= 0 { if Errno.current == .interrupted { continue } else { return } }
                offset += written
            }
        }
    }

    private static func readLine(_ fd: CInt) -> Data? {
        var line = Data()
        var byte: UInt8 = 0
        while true {
            let got = read(fd, &byte, 1)
            if got == 1 {
                if byte == 0x0A { return line }
                line.append(byte)
            } else if got < 0 && Errno.current == .interrupted {
                continue
            } else {
                return line.isEmpty ? nil : line
            }
        }
    }

    private static func decode(_ line: Data) -> Message? {
        (try? JSONSerialization.jsonObject(with: line)) as? [String: any Sendable]
    }
}

/// A control socket being served; `close()` stops accepting and removes the socket file.
public final class ControlServer: Sendable {
    private let fd: CInt
    public let path: String
    private let closed = Mutex(false)
    private let released = Mutex(false)

    init(fd: CInt, path: String) {
        self.fd = fd
        self.path = path
    }

    /// Stops serving: requests already accepted finish; the socket file is removed.
    public func close() {
        let first = closed.withLock { closed -> Bool in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        unlink(path)
        shutdown(fd, CInt(SHUT_RDWR))  // wakes the accepting thread, which closes the descriptor
    }

    /// Called by the accepting thread when accept fails: closes the descriptor once.
    func release() {
        let first = released.withLock { released -> Bool in
            defer { released = true }
            return !released
        }
        if first { Glibc.close(fd) }
    }
}
