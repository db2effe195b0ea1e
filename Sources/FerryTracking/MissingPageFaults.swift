#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
internal import CShims
public import FerrySystem

/// A range registered with userfaultfd in missing mode, for a post-copy destination: a thread that touches a
/// page that is not there yet blocks in the kernel until the page is installed.
///
/// Guarantees: a blocked thread never sees a page that was not installed (it does not run on until
/// `install` or `installZero` put the whole page there atomically, `UFFDIO_COPY` / `UFFDIO_ZEROPAGE`);
/// installing over a page that is present changes nothing and wakes whoever waits there, so a page
/// installed twice (on demand and in the background) keeps the first copy. Faults the kernel takes on the
/// process's behalf (a `read(2)` into the range) block the same way. After `unregister()` the range is an
/// ordinary mapping again.
public final class MissingPageFaults: Sendable {
    /// The registered range.
    public let range: MemoryRange
    private let uffd: Userfaultfd
    private let stopEvent: CInt

    /// Registers `range` (all of its pages should be absent: present pages never fault).
    /// - Throws: `TrackingError.unavailable` when this kernel or process cannot use userfaultfd in missing
    ///   mode, `.systemCall` when a call fails.
    public init(range: MemoryRange) throws(TrackingError) {
        self.range = range
        let opened: Userfaultfd
        do {
            // Kernel-mode faults too (root or vm.unprivileged_userfaultfd); else user-mode only.
            opened = try (try? Userfaultfd(features: 0, userModeOnly: false)) ?? Userfaultfd(features: 0, userModeOnly: true)
        } catch {
            throw .unavailable(.uffdSync, reason: "userfaultfd: \(error)")
        }
        var register = uffdio_register(
            range: uffdio_range(start: UInt64(range.start), len: UInt64(range.byteCount)),
            mode: UInt64(UFFDIO_REGISTER_MODE_MISSING), ioctls: 0)
        let fd = opened.rawValue
        guard CShims_ioctl(fd, CShims_UFFDIO_REGISTER, &register) == 0 else {
            let error = SystemCallError("ioctl(UFFDIO_REGISTER missing)", errno: .current, subject: "\(range)")
            opened.close()
            throw .systemCall(error)
        }
        let event = eventfd(0, CInt(EFD_CLOEXEC))
        guard event >= 0 else {
            let error = SystemCallError("eventfd", errno: .current)
            opened.close()
            throw .systemCall(error)
        }
        uffd = opened
        stopEvent = event
    }

    deinit {
        uffd.close()
        close(stopEvent)
    }

    /// Waits for the next fault; returns the faulting page's index, or nil once `stopWaiting()` was called.
    public func nextFault() throws(SystemCallError) -> Int? {
        var address: UInt64 = 0
        switch CShims_uffd_next_fault(uffd.rawValue, stopEvent, &address) {
        case 1:
            guard let page = range.pageIndex(of: UInt(address)) else { return try nextFault() }
            return page
        case 0: return nil
        default: throw SystemCallError("read(userfaultfd)", errno: .current, subject: "\(range)")
        }
    }

    /// Makes `nextFault()` return nil from now on (also when it is blocked in another thread).
    public func stopWaiting() {
        var one: UInt64 = 1
        _ = write(stopEvent, &one, 8)
    }

    /// Installs `count` pages from `source` at page `first`, atomically per page, and wakes the threads
    /// waiting there. Returns how many pages were installed; pages already present are left as they are.
    @discardableResult
    public func install(first: Int, count: Int, from source: UnsafeRawPointer) throws(SystemCallError) -> Int {
        let pageSize = range.pageSize
        var copied = 0
        if CShims_uffd_copy(uffd.rawValue, range.address(ofPage: first), source, count * pageSize, &copied) == 0 { return count }
        // Some page is present already: the ones before it are in; the rest one by one, keeping what is there.
        var installed = copied / pageSize
        for index in installed..<count {
            let address = range.address(ofPage: first + index)
            let result = CShims_uffd_copy(uffd.rawValue, address, source + index * pageSize, pageSize, &copied)
            if result == 0 {
                installed += 1
            } else if result == -EEXIST {
                _ = CShims_uffd_wake(uffd.rawValue, address, pageSize)
            } else {
                throw SystemCallError("ioctl(UFFDIO_COPY)", errno: Errno(rawValue: -result), subject: "page \(first + index) of \(range)")
            }
        }
        return installed
    }

    /// Installs zero pages at `first ..< first + count` (pages already present are left as they are) and
    /// wakes the waiters; returns how many were installed.
    @discardableResult
    public func installZero(first: Int, count: Int) throws(SystemCallError) -> Int {
        let pageSize = range.pageSize
        if CShims_uffd_zeropage(uffd.rawValue, range.address(ofPage: first), count * pageSize) == 0 { return count }
        var installed = 0
        for index in 0..<count {
            let address = range.address(ofPage: first + index)
            let result = CShims_uffd_zeropage(uffd.rawValue, address, pageSize)
            if result == 0 {
                installed += 1
            } else if result == -EEXIST {
                _ = CShims_uffd_wake(uffd.rawValue, address, pageSize)
            } else {
                throw SystemCallError("ioctl(UFFDIO_ZEROPAGE)", errno: Errno(rawValue: -result), subject: "page \(first + index) of \(range)")
            }
        }
        return installed
    }

    /// Wakes the threads waiting on page `page` (after another thread installed it).
    public func wake(page: Int) {
        _ = CShims_uffd_wake(uffd.rawValue, range.address(ofPage: page), range.pageSize)
    }

    /// Ends missing mode on the range: it is an ordinary mapping again (write tracking may be armed on it).
    public func unregister() throws(SystemCallError) {
        var whole = uffdio_range(start: UInt64(range.start), len: UInt64(range.byteCount))
        let fd = uffd.rawValue
        _ = try systemCall("ioctl(UFFDIO_UNREGISTER)", subject: "\(range)") { CShims_ioctl(fd, CShims_UFFDIO_UNREGISTER, &whole) }
    }
}
