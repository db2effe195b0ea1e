#if canImport(Glibc)
import Glibc
#endif
public import CFerry
import FerryMigration
import FerryRegion
import FerrySystem
import FerryTransport

// The C API of `ferry.h`: thin `@_cdecl` functions over `MigratableProgram`. A `ferry_t *` is a retained
// `MigratableProgram` (released by `ferry_close`). Nothing here keeps state of its own except the per-thread
// last error.

// MARK: Errors

/// The `FERRY_E_*` code of an error, and the message `ferry_last_error` gives.
private func code(of error: AgentError) -> Int32 {
    switch error {
    case .usage: Int32(FERRY_E_INVALID)
    case .alreadyOwned: Int32(FERRY_E_OWNED)
    case .cannotResume, .state: Int32(FERRY_E_STATE)
    case .sharedMount: Int32(FERRY_E_SHARED)
    case .control: Int32(FERRY_E_SYSTEM)
    case .key: Int32(FERRY_E_KEY)
    case .listen: Int32(FERRY_E_LISTEN)
    case .region(let error):
        switch error {
        case .insufficientMemory, .reservationTaken: Int32(FERRY_E_MEMORY)
        case .addressInUse, .reservationMismatch: Int32(FERRY_E_ADDRESS)
        case .invalidLayout: Int32(FERRY_E_INVALID)
        case .notARegion, .unsupportedLayoutVersion, .malformedHeader: Int32(FERRY_E_CORRUPT)
        case .mapFailed, .populateFailed: Int32(FERRY_E_SYSTEM)
        }
    case .workload(let error):
        switch error {
        case .invalidOptions, .regionTooSmall: Int32(FERRY_E_INVALID)
        case .wrongWorkload, .unknownWorkload: Int32(FERRY_E_STATE)
        default: Int32(FERRY_E_CORRUPT)
        }
    }
}

/// The calling thread's last error message, kept as a malloc'd C string freed when replaced or when the thread ends.
private let lastErrorKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key) { free($0) }
    return key
}()

private func fail(_ code: Int32, _ message: String) -> Int32 {
    free(pthread_getspecific(lastErrorKey))
    pthread_setspecific(lastErrorKey, strdup(message))
    return code
}

private func fail(_ error: AgentError) -> Int32 { fail(code(of: error), "\(error)") }

private func program(_ handle: OpaquePointer?) -> MigratableProgram? {
    guard let handle else { return nil }
    return Unmanaged<MigratableProgram>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
}

private func string(_ pointer: UnsafePointer<CChar>?) -> String? { pointer.map { String(cString: $0) } }

/// `ferry_options` as `ProgramOptions`, with every zeroed field at its default.
private func programOptions(_ pointer: UnsafePointer<ferry_options>?, receiving: Bool) throws(AgentError) -> ProgramOptions {
    guard let raw = pointer?.pointee else { throw .usage("options: a ferry_options pointer is required") }
    guard let name = string(raw.name) else { throw .usage("options.name: the workload's name is required") }
    guard let shared = string(raw.shared_dir) else { throw .usage("options.shared_dir: the shared directory is required") }
    guard let control = string(raw.control) else { throw .usage("options.control: a control socket path is required") }
    var options = ProgramOptions(name: name, sharedDirectory: shared, control: control)
    if raw.base != 0 { options.base = UInt(raw.base) }
    if raw.size != 0 { options.size = Int(raw.size) }
    options.keyPath = string(raw.key)
    options.nextKeyPath = string(raw.next_key)
    options.reserve = Int(raw.reserve)
    if receiving {
        guard let text = string(raw.listen) else { throw .usage("options.listen: ferry_receive needs ADDR:PORT to listen on") }
        guard let endpoint = Endpoint(text) else { throw .usage("options.listen \(text): expected ADDR:PORT, e.g. 10.0.1.2:7000") }
        options.listen = endpoint
    }
    return options
}

// MARK: Starting and ending

@_cdecl("ferry_start")
public func ferryStart(_ options: UnsafePointer<ferry_options>?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let out else { return fail(Int32(FERRY_E_INVALID), "out: a ferry_t ** to store the handle in is required") }
    do {
        let started = try MigratableProgram.start(try programOptions(options, receiving: false))
        out.pointee = OpaquePointer(Unmanaged.passRetained(started).toOpaque())
        return 0
    } catch {
        return fail(error)
    }
}

@_cdecl("ferry_receive")
public func ferryReceive(_ options: UnsafePointer<ferry_options>?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let out else { return fail(Int32(FERRY_E_INVALID), "out: a ferry_t ** to store the handle in is required") }
    do {
        guard let received = try MigratableProgram.receive(try programOptions(options, receiving: true)) else {
            out.pointee = nil
            return Int32(FERRY_STOPPED)
        }
        out.pointee = OpaquePointer(Unmanaged.passRetained(received).toOpaque())
        return 0
    } catch {
        return fail(error)
    }
}

@_cdecl("ferry_close")
public func ferryClose(_ handle: OpaquePointer?) -> Int32 {
    guard let handle else { return fail(Int32(FERRY_E_INVALID), "ferry_close: the handle is NULL") }
    let unmanaged = Unmanaged<MigratableProgram>.fromOpaque(UnsafeRawPointer(handle))
    unmanaged.takeUnretainedValue().close()
    unmanaged.release()
    return 0
}

@_cdecl("ferry_safe_point")
public func ferrySafePoint(_ handle: OpaquePointer?) -> Int32 {
    guard let program = program(handle) else { return fail(Int32(FERRY_E_INVALID), "ferry_safe_point: the handle is NULL") }
    switch program.safePoint() {
    case .proceed: return Int32(FERRY_CONTINUE)
    case .moved: return Int32(FERRY_MOVED)
    case .stopped: return Int32(FERRY_STOPPED)
    case .fenced:
        return fail(Int32(FERRY_E_FENCED), program.agent.lastMigration ?? "another process owns the workload now")
    }
}

// MARK: The region

@_cdecl("ferry_alloc")
public func ferryAlloc(_ handle: OpaquePointer?, _ byteCount: Int) -> UnsafeMutableRawPointer? {
    program(handle)?.workload.allocate(byteCount)
}

@_cdecl("ferry_realloc")
public func ferryRealloc(_ handle: OpaquePointer?, _ pointer: UnsafeMutableRawPointer?, _ byteCount: Int) -> UnsafeMutableRawPointer? {
    program(handle)?.workload.reallocate(pointer, to: byteCount)
}

@_cdecl("ferry_free")
public func ferryFree(_ handle: OpaquePointer?, _ pointer: UnsafeMutableRawPointer?) {
    program(handle)?.workload.free(pointer)
}

@_cdecl("ferry_root")
public func ferryRoot(_ handle: OpaquePointer?) -> UnsafeMutableRawPointer? { program(handle)?.workload.root }

@_cdecl("ferry_set_root")
public func ferrySetRoot(_ handle: OpaquePointer?, _ pointer: UnsafeMutableRawPointer?) { program(handle)?.workload.root = pointer }

@_cdecl("ferry_region_base")
public func ferryRegionBase(_ handle: OpaquePointer?) -> UnsafeMutableRawPointer? { program(handle)?.workload.region.baseAddress }

@_cdecl("ferry_region_size")
public func ferryRegionSize(_ handle: OpaquePointer?) -> Int { program(handle)?.workload.region.range.byteCount ?? 0 }

@_cdecl("ferry_generation")
public func ferryGeneration(_ handle: OpaquePointer?) -> UInt64 { program(handle)?.generation ?? 0 }

@_cdecl("ferry_steps")
public func ferrySteps(_ handle: OpaquePointer?) -> UInt64 { program(handle)?.workload.stepCount ?? 0 }

// MARK: Callbacks

/// A C context pointer carried into the callbacks; the program promises it stays valid while registered.
private struct Context: @unchecked Sendable { let pointer: UnsafeMutableRawPointer? }

@_cdecl("ferry_on_flush")
public func ferryOnFlush(_ handle: OpaquePointer?, _ flush: (@convention(c) (UnsafeMutableRawPointer?) -> Int32)?, _ context: UnsafeMutableRawPointer?) {
    guard let program = program(handle) else { return }
    let context = Context(pointer: context)
    program.workload.setCallbacks { callbacks in
        callbacks.flush = flush.map { flush in
            { @Sendable in
                let status = flush(context.pointer)
                return status == 0 ? nil : "its flush callback returned \(status)"
            }
        }
    }
}

@_cdecl("ferry_on_verify")
public func ferryOnVerify(
    _ handle: OpaquePointer?,
    _ verify: (@convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<CChar>?, Int) -> Int32)?,
    _ context: UnsafeMutableRawPointer?
) {
    guard let program = program(handle) else { return }
    let context = Context(pointer: context)
    program.workload.setCallbacks { callbacks in
        callbacks.verify = verify.map { verify in
            { @Sendable in
                var detail = [CChar](repeating: 0, count: 1024)
                let status = detail.withUnsafeMutableBufferPointer { verify(context.pointer, $0.baseAddress, $0.count - 1) }
                let text = String(decoding: detail.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                return (status == 0, text.isEmpty ? (status == 0 ? "holds" : "failed (\(status))") : text)
            }
        }
    }
}

// MARK: Messages

@_cdecl("ferry_strerror")
public func ferryStrerror(_ code: Int32) -> UnsafePointer<CChar> {
    let text: StaticString = switch code {
    case 0: "success"
    case Int32(FERRY_E_INVALID): "an option is missing or malformed: check the ferry_options fields (name, shared_dir, control, listen)"
    case Int32(FERRY_E_SYSTEM): "a system call failed: see ferry_last_error() for which one and why"
    case Int32(FERRY_E_MEMORY): "the region is larger than the memory this host can give it: make options.size smaller or free memory"
    case Int32(FERRY_E_ADDRESS): "the region's address range is already in use in this process: choose another options.base (page-aligned, the same on both hosts)"
    case Int32(FERRY_E_SHARED): "the shared directory is missing, unwritable, or its ownership files are unreadable: check that options.shared_dir is mounted and writable"
    case Int32(FERRY_E_OWNED): "the shared directory already holds a workload: use another shared directory, or remove ferry-owner.json if no host runs it"
    case Int32(FERRY_E_KEY): "the pre-shared key file is unusable: it must be a regular file of 16 to 4096 bytes with mode 0600, the same on both hosts"
    case Int32(FERRY_E_LISTEN): "cannot listen on options.listen: pick a free ADDR:PORT on this host's migration network"
    case Int32(FERRY_E_FENCED): "another process owns the workload now: stop without touching the region"
    case Int32(FERRY_E_STATE): "the call does not fit the workload's state (it moved away, was stopped, or the region holds another workload)"
    case Int32(FERRY_E_CORRUPT): "the region's header or heap is damaged: migrate it again from the source"
    default: "unknown ferry error code"
    }
    return UnsafeRawPointer(text.utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("ferry_last_error")
public func ferryLastError() -> UnsafePointer<CChar> {
    if let message = pthread_getspecific(lastErrorKey) { return UnsafePointer(message.assumingMemoryBound(to: CChar.self)) }
    let empty: StaticString = ""
    return UnsafeRawPointer(empty.utf8Start).assumingMemoryBound(to: CChar.self)
}

// MARK: Layout

@_cdecl("ferry_fixed_layout")
public func ferryFixedLayout(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var arguments: [String] = []
    if let argv {
        for index in 0..<Int(argc) { if let argument = argv[index] { arguments.append(String(cString: argument)) } }
    }
    do {
        try ProcessImage.reexecuteWithoutRandomization(arguments: arguments)
    } catch {
        return fail(Int32(FERRY_E_SYSTEM), "cannot re-execute the program with address-space randomisation off: \(error)")
    }
    ProgramIdentity.requestFixedLayout()
    return 0
}
