#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An open file descriptor that closes itself exactly once, when its owner is done with it.
public struct OwnedDescriptor: ~Copyable, Sendable {
    /// The raw descriptor; valid while `self` lives.
    public let rawValue: CInt

    /// Takes ownership of `rawValue`.
    public init(taking rawValue: CInt) { self.rawValue = rawValue }

    /// Opens `path` with `flags` (`O_CLOEXEC` is always added).
    /// - Throws: `SystemCallError` naming `open` and the path.
    public init(opening path: String, flags: Int32, mode: UInt32 = 0o600) throws(SystemCallError) {
        let fd = try systemCall("open", subject: path) { open(path, flags | O_CLOEXEC, mode) }
        self.init(taking: fd)
    }

    /// Gives the descriptor up without closing it.
    public consuming func release() -> CInt {
        let fd = rawValue
        discard self
        return fd
    }

    deinit {
        // Never retried: after EINTR the descriptor is already closed on Linux.
        _ = close(rawValue)
    }
}
