import Foundation

/// A small tmpfs mounted by a test at a directory of its own (root only), to make the shared mount full or
/// read-only for real. `unmount()` (also on deinit) takes it down again, lazily if a process still holds it.
public final class SmallFileSystem {
    public let path: String
    private var mounted = false

    /// Whether this process may mount file systems (the tests that need it are enabled only then).
    public static var canMount: Bool { getuid() == 0 }

    /// Mounts a tmpfs of `bytes` at `path` (created if needed), read-only if `readOnly`.
    public init(at path: String, bytes: Int = 256 << 10, readOnly: Bool = false) throws {
        self.path = path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try Self.run(["mount", "-t", "tmpfs", "-o", "size=\(bytes)\(readOnly ? ",ro" : ""),mode=0755", "tmpfs", path])
        mounted = true
    }

    deinit { unmount() }

    /// Fills the file system up: writes `filler` until the next write fails with ENOSPC. Returns the errno of the
    /// write that failed (ENOSPC when it is full).
    @discardableResult
    public func fill() -> Int32 {
        let fd = open(path + "/filler", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0xA5, count: 4096)
        while true {
            let written = write(fd, chunk, chunk.count)
            if written < 0 { return errno }
            if written < chunk.count { continue }  // the last partial page; the next write says why it stopped
        }
    }

    /// Remounts it read-only or read-write.
    public func remount(readOnly: Bool) throws {
        try Self.run(["mount", "-o", "remount,\(readOnly ? "ro" : "rw")", path])
    }

    /// Unmounts it (lazily if something still holds it) and removes the directory.
    public func unmount() {
        guard mounted else { return }
        mounted = false
        if (try? Self.run(["umount", path])) == nil { try? Self.run(["umount", "-l", path]) }
        try? FileManager.default.removeItem(atPath: path)
    }

    static func run(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw SmallFileSystemError.command(arguments.joined(separator: " "), text)
        }
    }
}

public enum SmallFileSystemError: Error { case command(String, String) }
