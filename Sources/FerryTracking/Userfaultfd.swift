#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
internal import CShims
import FerrySystem

/// The userfaultfd calls both uffd backends share. Each wraps one ioctl and names it in its error.
///
/// A plain value: the backend that opened it owns the descriptor and calls `close()` exactly once.
struct Userfaultfd: Sendable {
    let rawValue: CInt
    /// The features the kernel confirmed in `UFFDIO_API`.
    let features: UInt64

    /// Opens a userfaultfd and negotiates `features` with `UFFDIO_API`.
    /// - Parameter userModeOnly: `UFFD_USER_MODE_ONLY`: works unprivileged, but faults the kernel takes
    ///   on the process's behalf are not delivered (those writes fail with EFAULT).
    /// - Throws: the failing call; `EOPNOTSUPP` if the kernel did not confirm every requested feature.
    init(features requested: UInt64, userModeOnly: Bool) throws(SystemCallError) {
        let flags = O_CLOEXEC | O_NONBLOCK | (userModeOnly ? CInt(UFFD_USER_MODE_ONLY) : 0)
        let fd = try systemCall("userfaultfd") { CShims_userfaultfd(flags) }
        var descriptor = Optional(OwnedDescriptor(taking: fd))  // closes it if negotiation fails
        var api = uffdio_api(api: UInt64(UFFD_API), features: requested, ioctls: 0)
        _ = try systemCall("ioctl(UFFDIO_API)") { CShims_ioctl(fd, CShims_UFFDIO_API, &api) }
        // Check the bits we asked for came back; bit 15 is WP_ASYNC (1 << 16 is FEATURE_MOVE, a known mix-up).
        guard api.features & requested == requested else {
            let missing = requested & ~api.features
            throw SystemCallError(
                "ioctl(UFFDIO_API)", errno: .notSupported, subject: "features 0x\(String(missing, radix: 16))")
        }
        rawValue = descriptor.take()!.release()
        self.features = api.features
    }

    /// Closes the descriptor: every protection it set is lifted and blocked writers are woken.
    func close() { _ = Glibc.close(rawValue) }

    /// The features this kernel offers (asked on a throwaway userfaultfd: `UFFDIO_API` works once per fd).
    static func supportedFeatures(userModeOnly: Bool) throws(SystemCallError) -> UInt64 {
        let probe = try Userfaultfd(features: 0, userModeOnly: userModeOnly)
        defer { probe.close() }
        return probe.features
    }

    /// Registers `range` for write-protect faults (`UFFDIO_REGISTER` with `MODE_WP`).
    func registerWriteProtect(_ range: MemoryRange) throws(SystemCallError) {
        var register = uffdio_register(
            range: uffdio_range(start: UInt64(range.start), len: UInt64(range.byteCount)),
            mode: UInt64(UFFDIO_REGISTER_MODE_WP), ioctls: 0)
        let fd = rawValue
        _ = try systemCall("ioctl(UFFDIO_REGISTER)", subject: "\(range)") {
            CShims_ioctl(fd, CShims_UFFDIO_REGISTER, &register)
        }
        guard register.ioctls & CShims_UFFDIO_WRITEPROTECT_AVAILABLE != 0 else {
            throw SystemCallError("ioctl(UFFDIO_REGISTER)", errno: .notSupported, subject: "\(range): no UFFDIO_WRITEPROTECT")
        }
    }

    /// Sets or clears write protection on `byteCount` bytes at `start` (`UFFDIO_WRITEPROTECT`).
    /// Clearing also wakes threads blocked on a fault there.
    func writeProtect(start: UInt, byteCount: Int, enabled: Bool) throws(SystemCallError) {
        var request = uffdio_writeprotect(
            range: uffdio_range(start: UInt64(start), len: UInt64(byteCount)),
            mode: enabled ? UInt64(UFFDIO_WRITEPROTECT_MODE_WP) : 0)
        let fd = rawValue
        while CShims_ioctl(fd, CShims_UFFDIO_WRITEPROTECT, &request) != 0 {
            let error = Errno.current
            if error == .interrupted || error == .wouldBlock { continue }
            throw SystemCallError(
                "ioctl(UFFDIO_WRITEPROTECT)", errno: error, subject: "0x\(String(start, radix: 16))+\(ByteCount(byteCount))")
        }
    }

    /// Write-protects (or un-protects) the pages of `runs` within `range`, one call per run.
    func writeProtect(_ runs: [PageRun], in range: MemoryRange, enabled: Bool) throws(SystemCallError) {
        for run in runs {
            try writeProtect(start: range.address(ofPage: run.first), byteCount: run.count * range.pageSize, enabled: enabled)
        }
    }
}

/// A scratch page for probes, unmapped when done.
func withScratchPages<T>(_ count: Int = 4, _ body: (MemoryRange) throws(SystemCallError) -> T) throws(SystemCallError) -> T {
    let mapping = try AnonymousMapping(byteCount: count * Kernel.pageSize)
    memset(mapping.range.baseAddress, 1, mapping.range.byteCount)
    return try body(mapping.range)
}
