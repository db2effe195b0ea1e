#if canImport(Glibc)
import Glibc
#endif
import CShims
import Foundation
import FerrySystem
import Synchronization

/// The control socket of a process that runs a migratable workload (`ferry run`, `ferry receive`, or a
/// program embedding Ferry): a Unix stream socket carrying one JSON request per connection and JSON-line
/// replies (`{"event": "progress", ...}` lines, then one `{"event": "result", ...}`).
///
/// Only the serving process's owner (its effective uid) and root may use it. Every process that serves one
/// does so through ``serve(at:handle:)`` (`ferry run`, `ferry receive`, and the programs embedding Ferry
/// through `MigratableProgram` or the C API's `ferry_start`/`ferry_receive`), so two guards hold for all:
/// - The file system. The socket the user names `PATH` is a symbolic link, `NAME -> NAME.d/control`, to the
///   real socket inside `PATH.d`, a directory the serving process creates mode 0700 (it refuses one owned by
///   another user or open to its group or others); the socket is made mode 0600 before it listens, and the
///   link appears last, once requests are served. Another user cannot enter the directory, so it cannot
///   reach the socket at all, and at no moment could it: the directory was private before the socket was
///   bound. (Not a umask of 0177 around `bind` at `PATH`: the umask belongs to the whole process, and a
///   program embedding Ferry may be creating files on other threads at that moment.)
/// - The kernel's word on the peer. Before anything is read from an accepted connection, its credentials
///   (`SO_PEERCRED`) are checked: a peer whose uid is neither the owner's nor 0 gets one line,
///   `{"event": "result", "ok": false, "refused": true, "error": "..."}` naming both uids, and the
///   connection is closed with nothing of its request acted on. This holds even where the directory or the
///   socket were opened up by hand.
///
/// ``request(_:at:onReply:)`` takes the same `PATH`.
public enum ControlChannel {
    public typealias Message = [String: any Sendable]

    /// Serves requests on `path` on a thread of its own; `handle` gets each request from the owner or root
    /// and a way to reply. Serving ends when the returned server is closed.
    ///
    /// Creates `path.d` (mode 0700; an existing one must be this user's with no access for others), binds
    /// `path.d/control` (mode 0600) and makes `path` a link to it. A link or socket a former process left at
    /// `path`, and a socket it left in `path.d`, are replaced; a process still serving there is not.
    /// - Throws: `AgentError.usage` for a path that cannot name a socket (at most 97 bytes: the socket
    ///   itself is 10 bytes longer), `AgentError.control` when something else is at `path`, `path.d` is
    ///   not private, another process serves `path`, or the socket cannot be created, bound or linked.
    public static func serve(at path: String, handle: @escaping @Sendable (Message, @escaping @Sendable (Message) -> Void) -> Void) throws(AgentError) -> ControlServer {
        let files = try ControlSocketFiles(path)
        var address = try socketAddress(files.socket, shownAs: path)
        let owner = geteuid()
        try files.prepare(owner: owner)
        let fd = try makeSocket(path: path)
        var identity = stat()
        var bound = false
        do {
            _ = try systemCall("bind", subject: files.socket) { withSocketAddress(&address) { bind(fd, $0, $1) } }
            bound = true
            _ = try systemCall("chmod 0600", subject: files.socket) { chmod(files.socket, 0o600) }
            _ = try systemCall("lstat", subject: files.socket) { lstat(files.socket, &identity) }
            _ = try systemCall("listen", subject: files.socket) { listen(fd, 8) }
            _ = try systemCall("symlink", subject: "\(path) -> \(files.linkTarget)") { symlink(files.linkTarget, path) }
        } catch {
            close(fd)
            if bound { unlink(files.socket) }
            rmdir(files.directory)
            throw .control("cannot serve the control socket \(path): \(error)")
        }
        let server = ControlServer(fd: fd, files: files, socket: FileIdentity(identity))
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
                    // Checked before a byte of the request is read.
                    if let refusal = refusal(of: client, owner: owner) {
                        writeLine(client, refusal)
                        return
                    }
                    guard let line = try? readLine(client), let request = decode(line) else { return }
                    handle(request) { reply in writeLine(client, reply) }
                }
            }
        }
        thread.name = "ferry-control"
        thread.start()
        return server
    }

    /// Sends `request` to the process at `path` and calls `onReply` for each reply line until the result.
    /// - Throws: `AgentError.control` when nothing answers at `path`, this user may not use it (the file
    ///   system's refusal, or the process's own, whose message names the uids), or the process closed the
    ///   connection early or was killed before it answered (within a second, even while it has not finished exiting).
    public static func request(_ request: Message, at path: String, onReply: (Message) -> Void) throws(AgentError) -> Message {
        var address = try socketAddress(ControlSocketFiles.connectPath(for: path), shownAs: path)
        let fd = try makeSocket(path: path)
        defer { close(fd) }
        guard withSocketAddress(&address, { connect(fd, $0, $1) }) == 0 else {
            throw .control(connectFailure(path, Errno.current))
        }
        writeLine(fd, request)
        // A process killed while one of its calls waits in the kernel (on a shared mount whose server it cannot
        // reach, say) keeps its sockets open until that call returns, which may take minutes: the connection then
        // neither answers nor closes. So reads time out each second, and then check whether it is being killed.
        var second = timeval(tv_sec: 1, tv_usec: 0)
        guard setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &second, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            throw .control("control socket \(path): setsockopt(SO_RCVTIMEO): \(Errno.current)")
        }
        var peer: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        let killedPeer: Int32? = CShims_peer_credentials(fd, &peer, &uid, &gid) == 0 && peer > 0 ? peer : nil
        let check = { () throws(AgentError) in
            guard let pid = killedPeer, isBeingKilled(pid) else { return }
            throw .control("the ferry process at \(path) (pid \(pid)) was killed (SIGKILL) before it answered; it has not finished exiting because a call it made is still waiting, typically on a shared mount whose server it cannot reach (see its log: its lease enforcer or watchdog says why it was killed)")
        }
        while let line = try readLine(fd, whileWaiting: check) {
            guard let reply = decode(line) else { continue }
            if reply["event"] as? String == "result" {
                if reply["refused"] as? Bool == true {
                    throw .control(reply["error"] as? String ?? "the ferry process at \(path) refused this user")
                }
                return reply
            }
            onReply(reply)
        }
        throw .control("the ferry process at \(path) closed the control connection without a result; it may have exited (see its log)")
    }

    /// The refusal for the peer of `client`, or nil when it is `owner` or root.
    static func refusal(of client: CInt, owner: uid_t) -> Message? {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        guard CShims_peer_credentials(client, &pid, &uid, &gid) == 0 else {
            let error = Errno.current
            return refused("the control socket of this ferry process (pid \(getpid())) cannot tell who connected (SO_PEERCRED: \(error)); nothing was done")
        }
        if uid == 0 || uid == owner { return nil }
        return refused(
            "the control socket of this ferry process (pid \(getpid()), owned by uid \(owner)) accepts only its owner and root; "
                + "you are uid \(uid): run the command as uid \(owner) or as root")
    }

    private static func refused(_ error: String) -> Message {
        ["event": "result", "ok": false, "refused": true, "error": error]
    }

    /// What a failed `connect` to `path` means for the person who ran the command.
    private static func connectFailure(_ path: String, _ error: Errno) -> String {
        guard error == .accessDenied || error == .notPermitted else {
            return "control socket \(path): \(error); is a 'ferry run' or 'ferry receive' process (or a program embedding Ferry) using it?"
        }
        var status = stat()
        let owner = (try? ControlSocketFiles(path)).flatMap { stat($0.directory, &status) == 0 ? status.st_uid : nil }
        let named = owner.map { "uid \($0)" } ?? "its owner"
        return "control socket \(path): \(error): the control socket of a ferry process accepts only its owner"
            + (owner.map { " (uid \($0))" } ?? "") + " and root; you are uid \(geteuid()): run the command as \(named) or as root"
    }

    private static func socketAddress(_ path: String, shownAs shown: String) throws(AgentError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else {
            let limit = capacity - 1 - (path.utf8.count - shown.utf8.count)
            throw .usage("control socket path \(shown) is too long (at most \(limit) bytes); use a shorter path")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: bytes) }
        return address
    }

    private static func withSocketAddress<Result>(_ address: inout sockaddr_un, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result {
        withUnsafePointer(to: &address) {
            body(UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }

    private static func makeSocket(path: String, flags: CInt = 0) throws(AgentError) -> CInt {
        let fd = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue) | flags, 0)
        guard fd >= 0 else { throw .control("control socket \(path): socket(AF_UNIX): \(Errno.current)") }
        return fd
    }

    /// Whether a process accepts connections on the socket at `socketPath` (a full backlog counts as yes).
    fileprivate static func answers(_ socketPath: String) -> Bool {
        guard var address = try? socketAddress(socketPath, shownAs: socketPath),
            let fd = try? makeSocket(path: socketPath, flags: CInt(SOCK_NONBLOCK.rawValue))
        else { return false }
        defer { close(fd) }
        if withSocketAddress(&address, { connect(fd, $0, $1) }) == 0 { return true }
        return Errno.current == .wouldBlock
    }

    /// Writes `message` as one line; a peer that went away ends the write quietly (`MSG_NOSIGNAL`: never a
    /// SIGPIPE, which would kill a program embedding Ferry that does not ignore it).
    private static func writeLine(_ fd: CInt, _ message: Message) {
        guard var data = try? JSONSerialization.data(withJSONObject: message, options: [.sortedKeys]) else { return }
        data.append(0x0A)
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = send(fd, raw.baseAddress! + offset, raw.count - offset, CInt(MSG_NOSIGNAL))
                if written <= 0 { if Errno.current == .interrupted { continue } else { return } }
                offset += written
            }
        }
    }

    /// Whether process `pid` is being killed: SIGKILL is pending for the whole process (`ShdPnd` in
    /// /proc/PID/status). Nothing can block or catch it: the process never runs its own code again, even while
    /// one of its threads still waits in the kernel.
    static func isBeingKilled(_ pid: Int32) -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("ShdPnd:") }),
              let pending = UInt64(line.dropFirst("ShdPnd:".count).trimmingCharacters(in: .whitespaces), radix: 16) else { return false }
        return pending & (1 << UInt64(SIGKILL - 1)) != 0
    }

    /// Reads one line. On a socket with a receive timeout (`SO_RCVTIMEO`), `whileWaiting` runs each time a read
    /// times out, and may end the wait by throwing.
    private static func readLine(_ fd: CInt, whileWaiting: () throws(AgentError) -> Void = {}) throws(AgentError) -> Data? {
        var line = Data()
        var byte: UInt8 = 0
        while true {
            let got = read(fd, &byte, 1)
            if got == 1 {
                if byte == 0x0A { return line }
                line.append(byte)
            } else if got < 0 && Errno.current == .interrupted {
                continue
            } else if got < 0 && Errno.current == .wouldBlock {
                try whileWaiting()
            } else {
                return line.isEmpty ? nil : line
            }
        }
    }

    private static func decode(_ line: Data) -> Message? {
        (try? JSONSerialization.jsonObject(with: line)) as? [String: any Sendable]
    }
}

/// A file as the kernel identifies it: device and inode.
struct FileIdentity: Hashable, Sendable {
    let device: UInt64
    let inode: UInt64

    init(_ status: stat) {
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
    }
}

/// The files behind the control socket a user names `path`: the private directory `path.d`, the socket
/// `path.d/control` in it, and `path` itself, a link to the socket by a relative name (`NAME.d/control`).
struct ControlSocketFiles: Sendable {
    /// What the user named (`--control PATH`).
    let path: String
    /// `path.d`, mode 0700.
    let directory: String
    /// `path.d/control`, mode 0600.
    let socket: String
    /// What the link at `path` says: `NAME.d/control`, relative to the link's own directory.
    let linkTarget: String

    /// - Throws: `AgentError.usage` when `path` does not end in a file name.
    init(_ path: String) throws(AgentError) {
        let name = path.split(separator: "/", omittingEmptySubsequences: false).last.map(String.init) ?? ""
        guard !name.isEmpty, name != ".", name != ".." else {
            throw .usage("control socket path '\(path)' does not end in a file name; give one like /run/ferry-a.sock")
        }
        self.path = path
        directory = path + ".d"
        socket = directory + "/control"
        linkTarget = name + ".d/control"
    }

    /// The path a client connects to for `path`: the socket itself when `path` is a link Ferry made, so that
    /// root still reaches another user's socket through a link in a sticky directory such as /tmp, which
    /// the kernel would not let it follow (`fs.protected_symlinks`). `path` otherwise.
    static func connectPath(for path: String) -> String {
        guard let files = try? ControlSocketFiles(path), files.isOurLink() else { return path }
        return files.socket
    }

    /// Whether `path` is a link saying exactly ``linkTarget``.
    func isOurLink() -> Bool {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count >= 0 else { return false }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) == linkTarget
    }

    /// Makes the place ready for a new socket owned by `owner`: the private directory exists, and what a
    /// former process left (the link at `path`, the socket in the directory) is gone.
    /// - Throws: `AgentError.control` when something other than a link or socket is at `path`, the
    ///   directory cannot be created or is not private to `owner`, or a process still serves there.
    func prepare(owner: uid_t) throws(AgentError) {
        var status = stat()
        if lstat(path, &status) == 0 {
            let kind = status.st_mode & S_IFMT
            guard kind == S_IFLNK || kind == S_IFSOCK else {
                throw .control("\(path) exists and is not a control socket; remove it or give --control another path")
            }
        }
        if mkdir(directory, 0o700) == 0 {
            chmod(directory, 0o700)  // ours since a moment ago: whatever the umask took, the owner may enter
        } else {
            let error = Errno.current
            guard error == .exists else {
                throw .control("cannot create \(directory), the private directory of the control socket \(path): \(error)")
            }
        }
        guard lstat(directory, &status) == 0 else {
            throw .control("cannot examine \(directory), the private directory of the control socket \(path): \(Errno.current)")
        }
        let mode = UInt32(status.st_mode) & 0o7777
        guard status.st_mode & S_IFMT == S_IFDIR, status.st_uid == owner, mode & 0o077 == 0 else {
            let what = status.st_mode & S_IFMT == S_IFDIR ? "a directory of uid \(status.st_uid) with mode 0\(String(mode, radix: 8))" : "not a directory"
            throw .control(
                "\(directory) is \(what): the control socket lives in a directory only its owner (uid \(owner)) can enter; "
                    + "remove \(directory) or give --control another path")
        }
        if ControlChannel.answers(socket) {
            throw .control("another process serves the control socket \(path); stop it ('ferry stop --control \(path)') or give --control another path")
        }
        unlink(socket)
        unlink(path)
    }

    /// Removes the link, the socket and the directory, if the socket is still `identity` (the one bound).
    func remove(socket identity: FileIdentity) {
        var status = stat()
        guard lstat(socket, &status) == 0, FileIdentity(status) == identity else { return }
        if isOurLink() { unlink(path) }
        unlink(socket)
        rmdir(directory)
    }
}

/// A control socket being served; `close()` stops accepting and removes what ``ControlChannel/serve(at:handle:)``
/// created: the link at ``path``, the socket and its private directory.
public final class ControlServer: Sendable {
    private let fd: CInt
    private let files: ControlSocketFiles
    private let socket: FileIdentity
    /// The path the socket was served at (`--control PATH`).
    public var path: String { files.path }
    private let closed = Mutex(false)
    private let released = Mutex(false)

    init(fd: CInt, files: ControlSocketFiles, socket: FileIdentity) {
        self.fd = fd
        self.files = files
        self.socket = socket
    }

    /// Stops serving: requests already accepted finish; the link, the socket and its directory are removed
    /// (left alone if another socket has taken the place).
    public func close() {
        let first = closed.withLock { closed -> Bool in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        files.remove(socket: socket)
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
