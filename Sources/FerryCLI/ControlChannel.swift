#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerrySystem

/// The control socket of a running `ferry` process: a Unix stream socket carrying one JSON request per
/// connection and JSON-line replies (`{"event": "progress", ...}` lines, then one `{"event": "result", ...}`).
enum ControlChannel {
    typealias Message = [String: any Sendable]

    /// Serves requests on `path` on a thread of its own; `handle` gets each request and a way to reply.
    static func serve(at path: String, handle: @escaping @Sendable (Message, @escaping @Sendable (Message) -> Void) -> Void) throws {
        unlink(path)
        let fd = try makeSocket(path: path) { fd, address, length in bind(fd, address, length) == 0 && listen(fd, 8) == 0 }
        let thread = Thread {
            while true {
                let client = accept(fd, nil, nil)
                if client < 0 { if Errno.current == .interrupted { continue } else { return } }
                Thread.detachNewThread {
                    defer { close(client) }
                    guard let line = readLine(client), let request = decode(line) else { return }
                    handle(request) { reply in writeLine(client, reply) }
                }
            }
        }
        thread.start()
    }

    /// Sends `request` to the process at `path` and calls `onReply` for each reply line until the result.
    static func request(_ request: Message, at path: String, onReply: (Message) -> Void) throws -> Message {
        let fd = try makeSocket(path: path) { fd, address, length in connect(fd, address, length) == 0 }
        defer { close(fd) }
        writeLine(fd, request)
        while let line = readLine(fd) {
            guard let reply = decode(line) else { continue }
            if reply["event"] as? String == "result" { return reply }
            onReply(reply)
        }
        throw CommandFailure(status: .failure, message: "the ferry process at \(path) closed the control connection without a result; it may have exited (see its log)")
    }

    private static func makeSocket(path: String, _ body: (CInt, UnsafePointer<sockaddr>, socklen_t) -> Bool) throws -> CInt {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw CommandFailure(status: .usage, message: "control socket path \(path) is too long (at most 107 bytes)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: bytes) }
        let fd = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw CommandFailure(status: .failure, message: "socket: \(Errno.current)") }
        let ok = withUnsafePointer(to: &address) {
            body(fd, UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), socklen_t(MemoryLayout<sockaddr_un>.size))
        }
        guard ok else {
            let error = Errno.current
            close(fd)
            throw CommandFailure(status: .failure, message: "control socket \(path): \(error); is a 'ferry run' or 'ferry receive' process using it?")
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
