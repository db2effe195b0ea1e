#if canImport(Glibc)
public import Glibc
#endif

/// A file operation on the shared mount that failed: which operation, on which path, the `errno` it left, and
/// how many times it was tried (more than one when the failure looked transient and was retried).
public struct SharedFileError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The operation as a person would name it: `open`, `write`, `fsync`, `rename`, `close`, `fsync (directory)`.
    public let operation: String
    /// The file (or directory) it acted on; for a rename, `from -> to`.
    public let path: String
    public let errno: Errno
    /// 1 unless the failure was retried as transient (`SharedFile.retrying`).
    public let attempts: Int

    public init(_ operation: String, path: String, errno: Errno, attempts: Int = 1) {
        self.operation = operation
        self.path = path
        self.errno = errno
        self.attempts = attempts
    }

    public var description: String {
        "\(operation) \(path): \(errno)" + (attempts > 1 ? ", still after \(attempts) attempts" : "")
    }

    /// The same failure as a `SystemCallError` (what the workloads' errors carry).
    public var systemCallError: SystemCallError {
        SystemCallError(attempts > 1 ? "\(operation) (\(attempts) attempts)" : operation, errno: errno, subject: path)
    }

    /// The same failure, counted as the last of `attempts`.
    func after(_ attempts: Int) -> SharedFileError { SharedFileError(operation, path: path, errno: errno, attempts: attempts) }
}

/// A directory on the shared mount held open, so that files in it can be named relative to it. On a network file
/// system mounted without name caching (Ferry's GlusterFS options), a path is looked up on the server again, one
/// directory at a time, at every call; relative to an open directory only the file's own name is. Measured on the
/// lab's volume, in a folder one level below the mount point: a rename 3.0–3.5 ms by path, 1.8 ms relative; an
/// exclusive create 2.2–2.6 ms against 1.6–1.7 ms; a read 1.6–1.9 ms against 1.2–1.3 ms.
public final class SharedDirectory: Sendable {
    /// The directory's path, as errors name it.
    public let path: String
    let fd: CInt

    /// Opens `path` (`ESTALE` retried).
    public init(_ path: String) throws(SharedFileError) {
        self.path = path
        fd = try SharedFile.retrying { () throws(SharedFileError) in
            try SharedFile.call("open (directory)", path) { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        }
    }

    deinit { _ = Glibc.close(fd) }

    /// The path of the file `name` in this directory.
    public func path(of name: String) -> String { path + "/" + name }
}

/// Every file operation of the ownership path and of the workloads' files on the shared mount goes through
/// here: each result is checked and a failure names the operation, the path and the `errno`; what a network
/// file system may fail transiently is retried with a bound (`retrying`).
///
/// Transient on a network file system (measured on GlusterFS 10 with strict settings, `SHARED-STORAGE.md`):
/// `ESTALE` when a file is renamed over while another client opens or reads it (about 1 open in 1,500), and
/// `ENOENT` for the name of a file that is being renamed over. `ENOENT` is retried only where the caller says
/// the file is renamed over (`missingIsTransient`): elsewhere a missing file is an answer, not a fault.
public enum SharedFile {
    /// How often a transient failure is tried in all, and the pauses between the tries (38 ms in all).
    public static let maximumAttempts = 6
    static let pausesMicroseconds: [UInt32] = [1_000, 2_000, 5_000, 10_000, 20_000]

    /// Whether `errno` may go away when the operation is repeated.
    public static func isTransient(_ errno: Errno, missingIsTransient: Bool) -> Bool {
        errno.rawValue == ESTALE || (missingIsTransient && errno.rawValue == ENOENT)
    }

    /// Runs `body` (a whole operation: open, read, close) again while it fails transiently, at most
    /// `maximumAttempts` times; the error of the last try says how many there were.
    public static func retrying<T>(
        missingIsTransient: Bool = false, _ body: () throws(SharedFileError) -> T
    ) throws(SharedFileError) -> T {
        var attempt = 1
        while true {
            do {
                return try body()
            } catch {
                guard isTransient(error.errno, missingIsTransient: missingIsTransient), attempt < maximumAttempts else {
                    throw error.after(attempt)
                }
                usleep(pausesMicroseconds[min(attempt - 1, pausesMicroseconds.count - 1)])
                attempt += 1
            }
        }
    }

    /// One system call returning -1 with `errno` on failure, repeated on `EINTR`.
    @discardableResult
    public static func call<Result: FixedWidthInteger>(
        _ operation: @autoclosure () -> String, _ path: @autoclosure () -> String, _ body: () -> Result
    ) throws(SharedFileError) -> Result {
        while true {
            let result = body()
            if result != -1 { return result }
            let error = Errno.current
            if error == .interrupted { continue }
            throw SharedFileError(operation(), path: path(), errno: error)
        }
    }

    /// Closes `fd`, reporting a failure (NFS and FUSE report deferred write errors at close). Not repeated on
    /// `EINTR`: Linux has closed the descriptor by then.
    public static func close(_ fd: CInt, path: String) throws(SharedFileError) {
        if Glibc.close(fd) != 0 { throw SharedFileError("close", path: path, errno: .current) }
    }

    /// Writes all of `bytes` at `offset` (the current position when nil).
    public static func writeAll(_ fd: CInt, _ bytes: UnsafeRawBufferPointer, at offset: off_t? = nil, path: String) throws(SharedFileError) {
        var done = 0
        while done < bytes.count {
            let pointer = bytes.baseAddress! + done
            let remaining = bytes.count - done
            let written = try call("write", path) {
                if let offset { pwrite(fd, pointer, remaining, offset + off_t(done)) } else { Glibc.write(fd, pointer, remaining) }
            }
            if written == 0 { throw SharedFileError("write", path: path, errno: Errno(rawValue: EIO)) }
            done += written
        }
    }

    /// Writes all of `bytes` at `offset` (the current position when nil).
    public static func writeAll(_ fd: CInt, _ bytes: [UInt8], at offset: off_t? = nil, path: String) throws(SharedFileError) {
        try bytes.withUnsafeBytes { raw in
            Result { () throws(SharedFileError) in try writeAll(fd, raw, at: offset, path: path) }
        }.get()
    }

    /// The whole contents of `name` (a path, or a name in `directory`), nil if it does not exist (after the
    /// retries, when `missingIsTransient`).
    public static func contents(
        of name: String, in directory: SharedDirectory? = nil, missingIsTransient: Bool = false
    ) throws(SharedFileError) -> [UInt8]? {
        let path = directory?.path(of: name) ?? name
        let base = directory?.fd ?? AT_FDCWD
        do throws(SharedFileError) {
            return try retrying(missingIsTransient: missingIsTransient) { () throws(SharedFileError) -> [UInt8] in
                let fd = try call("open", path) { openat(base, name, O_RDONLY | O_CLOEXEC) }
                var bytes: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 4096)
                do throws(SharedFileError) {
                    while true {
                        let count = chunk.count
                        let got = try chunk.withUnsafeMutableBytes { raw in
                            Result { () throws(SharedFileError) in try call("read", path) { read(fd, raw.baseAddress, count) } }
                        }.get()
                        if got == 0 { break }
                        bytes += chunk[0..<got]
                    }
                } catch {
                    _ = Glibc.close(fd)
                    throw error
                }
                try close(fd, path: path)
                return bytes
            }
        } catch where error.errno.rawValue == ENOENT {
            return nil
        }
    }

    /// Creates `name` (a path, or a name in `directory`) only if nothing has that name (`O_EXCL`: of concurrent
    /// creators exactly one wins), with `bytes` in it, durably (file and directory synced) unless `durable` is
    /// false (then `makeDurable` later). False if it existed. A failure after the file was created removes it
    /// again, so a failed create leaves nothing behind.
    public static func createExclusive(
        _ name: String, in directory: SharedDirectory? = nil, contents bytes: [UInt8], mode: mode_t = 0o644, durable: Bool = true
    ) throws(SharedFileError) -> Bool {
        let path = directory?.path(of: name) ?? name
        let base = directory?.fd ?? AT_FDCWD
        let fd: CInt
        do throws(SharedFileError) {
            fd = try call("create", path) { openat(base, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode) }
        } catch where error.errno == .exists {
            return false
        }
        do throws(SharedFileError) {
            try finish(fd, bytes, path: path, durable: durable)
            if durable { try syncDirectory(containing: path) }
        } catch {
            unlinkat(base, name, 0)
            throw error
        }
        return true
    }

    /// Makes a file created with `durable: false` durable: fsyncs it and its directory.
    public static func makeDurable(_ path: String) throws(SharedFileError) {
        let fd = try retrying { () throws(SharedFileError) in try call("open", path) { open(path, O_RDONLY | O_CLOEXEC) } }
        do throws(SharedFileError) { try call("fsync", path) { fsync(fd) } } catch {
            _ = Glibc.close(fd)
            throw error
        }
        try close(fd, path: path)
        try syncDirectory(containing: path)
    }

    /// Writes `bytes` into a new file `path` (replacing any), durably unless `durable` is false (fsync, close);
    /// removes it on failure.
    public static func writeNew(_ path: String, contents bytes: [UInt8], mode: mode_t = 0o644, durable: Bool = true) throws(SharedFileError) {
        let fd = try call("create", path) { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        do throws(SharedFileError) { try finish(fd, bytes, path: path, durable: durable) } catch {
            unlink(path)
            throw error
        }
    }

    /// Writes, fsyncs and closes `fd`; closes it on failure too.
    private static func finish(_ fd: CInt, _ bytes: [UInt8], path: String, durable: Bool = true) throws(SharedFileError) {
        do throws(SharedFileError) {
            try writeAll(fd, bytes, path: path)
            if durable { try call("fsync", path) { fsync(fd) } }
        } catch {
            _ = Glibc.close(fd)
            throw error
        }
        try close(fd, path: path)
    }

    /// Removes the name `path` (`ESTALE` retried; a missing file is an error with `ENOENT`, for the caller to judge).
    public static func remove(_ path: String) throws(SharedFileError) {
        _ = try retrying { () throws(SharedFileError) in try call("unlink", path) { unlink(path) } }
    }

    /// Renames `from` over `to` (atomic): two paths, or two names in `directory`.
    public static func rename(_ from: String, over to: String, in directory: SharedDirectory? = nil) throws(SharedFileError) {
        let base = directory?.fd ?? AT_FDCWD
        try call("rename", "\(directory?.path(of: from) ?? from) -> \(directory?.path(of: to) ?? to)") { renameat(base, from, base, to) }
    }

    /// fsyncs the directory `directory`, so a rename or a new file in it survives a crash.
    public static func syncDirectory(_ directory: String) throws(SharedFileError) {
        let fd = try retrying { () throws(SharedFileError) in
            try call("open (directory)", directory) { open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        }
        do throws(SharedFileError) { try call("fsync (directory)", directory) { fsync(fd) } } catch {
            _ = Glibc.close(fd)
            throw error
        }
        try close(fd, path: directory)
    }

    /// fsyncs the directory holding `path`.
    public static func syncDirectory(containing path: String) throws(SharedFileError) {
        let slash = path.lastIndex(of: "/")
        try syncDirectory(slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? ".")
    }
}
