#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A POSIX error number, as a system call leaves it in `errno`.
///
/// Its description is the C library's message followed by the symbolic name, e.g.
/// `Cannot allocate memory (ENOMEM)`.
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
    /// The raw `errno` value.
    public let rawValue: CInt

    public init(rawValue: CInt) { self.rawValue = rawValue }

    /// The calling thread's current `errno`. Read it before any other call can change it.
    public static var current: Errno { Errno(rawValue: errno) }

    public static let interrupted = Errno(rawValue: EINTR)
    public static let wouldBlock = Errno(rawValue: EAGAIN)
    public static let noMemory = Errno(rawValue: ENOMEM)
    public static let invalidArgument = Errno(rawValue: EINVAL)
    public static let notPermitted = Errno(rawValue: EPERM)
    public static let badAddress = Errno(rawValue: EFAULT)
    public static let exists = Errno(rawValue: EEXIST)
    public static let notSupported = Errno(rawValue: EOPNOTSUPP)
    public static let noSuchSystemCall = Errno(rawValue: ENOSYS)
    public static let inappropriateIoctl = Errno(rawValue: ENOTTY)
    public static let accessDenied = Errno(rawValue: EACCES)

    /// The symbolic name (`ENOMEM`), or `errno N` for a value this table does not know.
    public var name: String {
        switch rawValue {
        case EPERM: "EPERM"
        case ENOENT: "ENOENT"
        case EINTR: "EINTR"
        case EIO: "EIO"
        case EBADF: "EBADF"
        case EAGAIN: "EAGAIN"
        case ENOMEM: "ENOMEM"
        case EACCES: "EACCES"
        case EFAULT: "EFAULT"
        case EBUSY: "EBUSY"
        case EEXIST: "EEXIST"
        case EINVAL: "EINVAL"
        case ENOSPC: "ENOSPC"
        case EPIPE: "EPIPE"
        case ENOSYS: "ENOSYS"
        case ENOTTY: "ENOTTY"
        case EOPNOTSUPP: "EOPNOTSUPP"
        case ECONNREFUSED: "ECONNREFUSED"
        case ECONNRESET: "ECONNRESET"
        case ETIMEDOUT: "ETIMEDOUT"
        case EADDRINUSE: "EADDRINUSE"
        case EADDRNOTAVAIL: "EADDRNOTAVAIL"
        case ENETUNREACH: "ENETUNREACH"
        case EHOSTUNREACH: "EHOSTUNREACH"
        case EROFS: "EROFS"
        case ESTALE: "ESTALE"
        case EDQUOT: "EDQUOT"
        case ENOTDIR: "ENOTDIR"
        case EISDIR: "EISDIR"
        case ENOTCONN: "ENOTCONN"
        case ENOTSOCK: "ENOTSOCK"
        case ENOPROTOOPT: "ENOPROTOOPT"
        default: "errno \(rawValue)"
        }
    }

    public var description: String { "\(String(cString: strerror(rawValue))) (\(name))" }
}

/// A failed system call: which call, on what, and the `errno` it left.
public struct SystemCallError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The call as a person would name it, e.g. `ioctl(UFFDIO_REGISTER)` or `mmap`.
    public let call: String
    /// The error number the call left.
    public let errno: Errno
    /// What the call was acting on, e.g. `0x7f0000000000+1 GiB` or a path; empty when nothing useful.
    public let subject: String

    public init(_ call: String, errno: Errno, subject: String = "") {
        self.call = call
        self.errno = errno
        self.subject = subject
    }

    public var description: String {
        subject.isEmpty ? "\(call) failed: \(errno)" : "\(call) on \(subject) failed: \(errno)"
    }
}

/// Runs a system call that returns -1 and sets `errno` on failure, retrying on `EINTR`.
///
/// - Parameters:
///   - call: the name used in the error, e.g. `ioctl(PAGEMAP_SCAN)`.
///   - subject: what the call acts on, for the error message.
///   - body: the call itself.
/// - Returns: the call's non-negative result.
/// - Throws: `SystemCallError` with the `errno` read right after the failing call.
@inlinable
public func systemCall<Result: FixedWidthInteger>(
    _ call: @autoclosure () -> String,
    subject: @autoclosure () -> String = "",
    retryOnInterrupt: Bool = true,
    _ body: () -> Result
) throws(SystemCallError) -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno.current
        if retryOnInterrupt && error == .interrupted { continue }
        throw SystemCallError(call(), errno: error, subject: subject())
    }
}
