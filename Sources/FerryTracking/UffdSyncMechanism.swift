#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
internal import CShims
import FerrySystem
import Synchronization

/// `uffd-sync`: userfaultfd write-protection whose faults a handler thread resolves: it lifts the page's
/// protection (waking the writer) and then sets the page's dirty bit. The collector takes the bits and
/// re-protects those pages before returning.
final class UffdSyncMechanism: TrackingMechanism {
    /// Above this many runs, one call re-protects the whole range instead of one call per run.
    static let wholeRangeThreshold = 64

    let range: MemoryRange
    let kernelWrites: KernelWriteBehavior
    private let bitmap: DirtyBitmap
    private let uffd: Userfaultfd
    private let stopEvent: CInt
    private struct State {
        var handler: HandlerThread?
        var closed = false
    }
    private let state = Mutex(State())
    private let handlerStatus = HandlerStatus()

    static func probe() throws(SystemCallError) {
        try withScratchPages { range throws(SystemCallError) in
            let mechanism = try UffdSyncMechanism(range: range)
            defer { mechanism.stop() }
            try mechanism.arm()
            range.baseAddress.storeBytes(of: 7, toByteOffset: range.pageSize, as: UInt8.self)
            let dirty = try mechanism.collect()
            guard dirty.runs == [PageRun(first: 1, count: 1)] else {
                throw SystemCallError("ioctl(UFFDIO_WRITEPROTECT)", errno: .notSupported, subject: "probe reported \(dirty.runs)")
            }
        }
    }

    init(range: MemoryRange) throws(SystemCallError) {
        self.range = range
        // A full userfaultfd (root, or vm.unprivileged_userfaultfd=1) also sees the kernel's own writes
        // into the range; a user-mode-only one works for everybody but those writes then fail with EFAULT.
        let uffd: Userfaultfd
        let userModeOnly: Bool
        do {
            uffd = try Self.open(userModeOnly: false)
            userModeOnly = false
        } catch where error.errno == .notPermitted || error.errno == .accessDenied {
            uffd = try Self.open(userModeOnly: true)
            userModeOnly = true
        }
        kernelWrites = userModeOnly ? .failsWithEFAULT : .tracked
        try uffd.registerWriteProtect(range)
        if uffd.features & UInt64(UFFD_FEATURE_WP_UNPOPULATED) == 0 {
            // Without WP_UNPOPULATED a first write to a never-touched page is a missing fault, not a WP
            // fault, and would go unseen: populate the range so every page can be protected.
            _ = madvise(range.baseAddress, range.byteCount, MADV_POPULATE_WRITE)
        }
        bitmap = DirtyBitmap(pageCount: range.pageCount)
        do {
            stopEvent = try systemCall("eventfd") { eventfd(0, CInt(EFD_CLOEXEC)) }
        } catch {
            uffd.close()
            throw error
        }
        self.uffd = uffd
    }

    private static func open(userModeOnly: Bool) throws(SystemCallError) -> Userfaultfd {
        let wanted = try Userfaultfd.supportedFeatures(userModeOnly: userModeOnly) & UInt64(UFFD_FEATURE_WP_UNPOPULATED)
        return try Userfaultfd(features: wanted, userModeOnly: userModeOnly)
    }

    deinit { stop() }

    func arm() throws(SystemCallError) {
        try state.withLock { state throws(SystemCallError) in
            guard !state.closed else { return }
            if state.handler == nil {
                let context = HandlerContext(
                    uffd: uffd.rawValue, stopFD: stopEvent, range: range, bitmap: bitmap, status: handlerStatus)
                state.handler = try HandlerThread(context)
            }
            try uffd.writeProtect(start: range.start, byteCount: range.byteCount, enabled: true)
        }
    }

    func collect() throws(SystemCallError) -> DirtyPages {
        let status = handlerStatus
        let finished = bitmap.waitForStartedFaults { status.error.withLock { $0 } != nil }
        if let error = status.error.withLock({ $0 }) {
            throw SystemCallError("userfaultfd handler thread", errno: error, subject: "\(range)")
        }
        assert(finished)
        let dirty = bitmap.take()
        try state.withLock { state throws(SystemCallError) in
            guard !state.closed else { return }
            if dirty.runs.count > Self.wholeRangeThreshold {
                try uffd.writeProtect(start: range.start, byteCount: range.byteCount, enabled: true)
            } else {
                try uffd.writeProtect(dirty.runs, in: range, enabled: true)
            }
        }
        return dirty
    }

    func prepareForKernelWrite(_ run: PageRun) throws(SystemCallError) {
        guard kernelWrites == .failsWithEFAULT else { return }
        try state.withLock { state throws(SystemCallError) in
            guard !state.closed else { return }
            try uffd.writeProtect([run], in: range, enabled: false)
        }
        bitmap.set(run)  // after un-protecting, as the handler does
    }

    func stop() {
        state.withLock { state in
            guard !state.closed else { return }
            state.closed = true
            if let handler = state.handler {
                var one: UInt64 = 1
                _ = write(stopEvent, &one, 8)
                handler.join()
            }
            // Closing the uffd lifts every protection and wakes any writer still blocked on a fault.
            uffd.close()
            _ = close(stopEvent)
        }
    }

    var faultCount: UInt64? { bitmap.faults }
    var fallbackCount: Int { 0 }
}

/// The handler thread's last error, if it stopped on one.
private final class HandlerStatus: Sendable {
    let error = Mutex<Errno?>(nil)
}

/// What the handler thread needs; plain values so it can cross into the thread.
private struct HandlerContext: Sendable {
    let uffd: CInt
    let stopFD: CInt
    let range: MemoryRange
    let bitmap: DirtyBitmap
    let status: HandlerStatus

    func run() {
        let result = CShims_uffd_wp_serve(
            uffd, stopFD, range.start, range.byteCount, UInt32(range.pageShift), bitmap.words,
            bitmap.counters)
        if result != 0 {
            let code = Errno.current
            status.error.withLock { $0 = code }
        }
    }
}

/// A joinable pthread running a `HandlerContext`.
private struct HandlerThread: Sendable {
    private let thread: pthread_t

    init(_ context: HandlerContext) throws(SystemCallError) {
        final class Box { let context: HandlerContext; init(_ c: HandlerContext) { context = c } }
        let box = Unmanaged.passRetained(Box(context)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.context.run()
            return nil
        }, box)
        guard result == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemCallError("pthread_create", errno: Errno(rawValue: result), subject: "uffd handler")
        }
        self.thread = thread
    }

    func join() { pthread_join(thread, nil) }
}
