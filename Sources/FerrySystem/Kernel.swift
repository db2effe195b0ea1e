#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Facts about the running kernel and machine.
public enum Kernel {
    /// The base page size (`sysconf(_SC_PAGESIZE)`).
    public static let pageSize: Int = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// The kernel release string, e.g. `6.18.44`.
    public static let release: String = unameField { cString(&$0.release) }

    /// The machine architecture, e.g. `x86_64`.
    public static let architecture: String = unameField { cString(&$0.machine) }

    /// The kernel release as (major, minor), e.g. (6, 18); (0, 0) if it cannot be parsed.
    public static var version: (major: Int, minor: Int) {
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return (parts.first ?? 0, parts.count > 1 ? parts[1] : 0)
    }

    /// Whether the running kernel is at least `major.minor`.
    public static func isAtLeast(_ major: Int, _ minor: Int) -> Bool {
        version.major > major || (version.major == major && version.minor >= minor)
    }

    /// Whether the process runs as root (effective uid 0).
    public static var isRoot: Bool { geteuid() == 0 }

    /// The first line of a small file under /proc or /sys, without its newline; nil if unreadable.
    public static func firstLine(of path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return String(decoding: buffer[..<count].prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }

    /// An integer read from a file under /proc or /sys, e.g. `/proc/sys/vm/max_map_count`.
    public static func integer(at path: String) -> Int? {
        firstLine(of: path).flatMap { Int($0.filter { !$0.isWhitespace }) }
    }

    /// The memory this host can still give a process without swapping (`MemAvailable` of /proc/meminfo), in
    /// bytes; nil if it cannot be read.
    public static func availableMemory() -> Int? {
        guard let text = try? readSmallFile("/proc/meminfo") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kib = Int(fields[1]) { return kib * 1024 }
        }
        return nil
    }

    /// The whole text of a small file under /proc or /sys (at most 1 MiB).
    static func readSmallFile(_ path: String) throws(SystemCallError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError("open", errno: .current, subject: path) }
        defer { close(fd) }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 16384)
        while data.count < 1 << 20 {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && Errno.current == .interrupted { continue }
            guard count > 0 else { break }
            data += buffer[..<count]
        }
        return String(decoding: data, as: UTF8.self)
    }

    private static func unameField(_ field: (inout utsname) -> String) -> String {
        var name = utsname()
        return uname(&name) == 0 ? field(&name) : "unknown"
    }

    private static func cString<T>(_ tuple: inout T) -> String {
        withUnsafeBytes(of: &tuple) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}
