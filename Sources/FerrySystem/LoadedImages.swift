#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShims

/// One object mapped into this process: the executable or a shared library.
///
/// Two processes that load the same objects (same paths, same build ids) at the same load addresses have
/// every function and every piece of library data at the same address.
public struct LoadedImage: Hashable, Sendable, CustomStringConvertible {
    /// The path as the dynamic linker knows it; for the main program, the executable's real path
    /// (`/proc/self/exe` resolved).
    public var path: String
    /// The content of the ELF `NT_GNU_BUILD_ID` note, usually 20 bytes; empty if the object has none.
    public var buildID: [UInt8]
    /// The load bias (`dlpi_addr`): what is added to the object's link-time addresses. For a shared
    /// library and for a position-independent executable it is the address the object is loaded at; for
    /// a fixed-address executable it is 0.
    public var loadAddress: UInt64
    /// Whether this is the main program rather than a shared object.
    public var isExecutable: Bool

    public init(path: String, buildID: [UInt8], loadAddress: UInt64, isExecutable: Bool) {
        self.path = path
        self.buildID = buildID
        self.loadAddress = loadAddress
        self.isExecutable = isExecutable
    }

    /// The build id in lower-case hexadecimal, as `readelf -n` and `file` print it; empty if there is none.
    public var buildIDHex: String {
        buildID.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    public var description: String {
        "\(isExecutable ? "executable " : "")\(path) at 0x\(String(loadAddress, radix: 16)), build id "
            + (buildID.isEmpty ? "none" : buildIDHex)
    }
}

/// The objects this process has loaded, and the address-space layout randomisation that decides where.
public enum ProcessImage {
    /// The executable first, then every loaded shared object in the dynamic linker's order, the dynamic
    /// loader included (`dl_iterate_phdr(3)`). The vdso and objects without a name are left out.
    ///
    /// Build ids are read from the objects' `PT_NOTE` segments in memory (the `"GNU"` note of type
    /// `NT_GNU_BUILD_ID`), not from their files, so they describe what is loaded even if a file was replaced.
    /// - Returns: At least the executable.
    public static func loadedImages() -> [LoadedImage] {
        var walk = Walk(vdsoProgramHeaders: vdsoProgramHeaders)
        withUnsafeMutablePointer(to: &walk) { pointer in
            _ = CShims_dl_iterate_phdr(
                { name, loadBias, phdrs, phnum, context in
                    let walk = context!.assumingMemoryBound(to: Walk.self)
                    walk.pointee.visit(
                        name: name.map { String(cString: $0) } ?? "", loadBias: UInt64(loadBias),
                        programHeaders: phdrs, count: Int(phnum))
                    return 0
                },
                pointer
            )
        }
        return walk.images
    }

    /// Whether address-space layout randomisation is off for this process: its persona has
    /// `ADDR_NO_RANDOMIZE` (`personality(0xffffffff)`, as `setarch -R` sets it), or the system turned it off
    /// (`/proc/sys/kernel/randomize_va_space` is 0). When it is off, the same executable started with the
    /// same libraries loads every object at the same address each time, on every host.
    public static var addressRandomizationDisabled: Bool {
        let persona = CShims_personality(queryPersona)
        if persona != -1 && UInt(bitPattern: Int(persona)) & addressNoRandomize != 0 { return true }
        return Kernel.integer(at: "/proc/sys/kernel/randomize_va_space") == 0
    }

    /// Makes sure this process runs without address-space layout randomisation: if it is on, sets
    /// `ADDR_NO_RANDOMIZE` in the persona (`personality(2)`, kept across `execve`) and re-executes the
    /// running program (`execv` of `/proc/self/exe`), so that this call returns in the new process image.
    ///
    /// Call it first thing in `main`, before any thread is started or any state is built: on success the
    /// current process image is replaced and nothing after the call runs in it.
    /// - Parameter arguments: The new program's `argv`, `argv[0]` included; usually `CommandLine.arguments`.
    /// - Returns: Only when randomisation is already off (in the re-executed process, or when it was never on).
    /// - Throws: `SystemCallError` naming `personality` or `execv` when the call fails (the persona is then
    ///   restored); `personality(ADDR_NO_RANDOMIZE)` with `EPERM` for a set-user-ID or otherwise secure-exec
    ///   program, whose persona loses the flag at `execve` (re-executing would loop forever).
    public static func reexecuteWithoutRandomization(arguments: [String]) throws(SystemCallError) {
        guard !addressRandomizationDisabled else { return }
        guard CShims_getauxval(UInt(AT_SECURE)) == 0 else {
            throw SystemCallError(
                "personality(ADDR_NO_RANDOMIZE)", errno: .notPermitted,
                subject: "a secure-exec (set-user-ID) program, which loses it at execve")
        }
        let persona = try systemCall("personality") { CShims_personality(queryPersona) }
        let original = UInt(bitPattern: Int(persona))
        _ = try systemCall("personality(ADDR_NO_RANDOMIZE)") {
            CShims_personality(original | addressNoRandomize)
        }
        let executable = "/proc/self/exe"
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        argv.append(nil)
        execv(executable, argv)
        let error = Errno.current
        for argument in argv { free(argument) }
        _ = CShims_personality(original)
        throw SystemCallError("execv", errno: error, subject: executable)
    }

    // MARK: Internals

    /// `personality(0xffffffff)` changes nothing and returns the current persona.
    private static let queryPersona: UInt = 0xffff_ffff
    /// `ADDR_NO_RANDOMIZE` of <sys/personality.h>.
    private static let addressNoRandomize: UInt = 0x004_0000
    /// `NT_GNU_BUILD_ID` of <elf.h>.
    private static let buildIDNoteType: UInt32 = 3

    /// Where the vdso's program headers are (its ELF header is at `AT_SYSINFO_EHDR`), to recognise it; 0
    /// when there is no vdso.
    private static var vdsoProgramHeaders: UInt {
        let header = UInt(CShims_getauxval(UInt(AT_SYSINFO_EHDR)))
        guard let pointer = UnsafeRawPointer(bitPattern: header) else { return 0 }
        return header + UInt(pointer.loadUnaligned(as: Elf64_Ehdr.self).e_phoff)
    }

    /// The state of one `dl_iterate_phdr` walk.
    private struct Walk {
        let vdsoProgramHeaders: UInt
        var images: [LoadedImage] = []
        var visited = 0

        init(vdsoProgramHeaders: UInt) { self.vdsoProgramHeaders = vdsoProgramHeaders }

        mutating func visit(name: String, loadBias: UInt64, programHeaders: UnsafeRawPointer?, count: Int) {
            defer { visited += 1 }
            let isExecutable = visited == 0
            guard let programHeaders, UInt(bitPattern: programHeaders) != vdsoProgramHeaders else { return }
            let path: String
            if isExecutable {
                path = ProcessImage.executablePath ?? name
            } else {
                guard !name.isEmpty else { return }
                path = name
            }
            let headers = UnsafeBufferPointer(start: programHeaders.assumingMemoryBound(to: Elf64_Phdr.self), count: count)
            images.append(
                LoadedImage(
                    path: path, buildID: ProcessImage.buildID(in: headers, loadBias: loadBias),
                    loadAddress: loadBias, isExecutable: isExecutable)
            )
        }
    }

    /// `/proc/self/exe` resolved; nil if it cannot be read.
    private static var executablePath: String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.withUnsafeMutableBufferPointer { readlink("/proc/self/exe", $0.baseAddress!, $0.count - 1) }
        guard count > 0 else { return nil }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The descriptor of the first `"GNU"` note of type `NT_GNU_BUILD_ID` in the loaded `PT_NOTE`
    /// segments; empty when there is none.
    private static func buildID(in headers: UnsafeBufferPointer<Elf64_Phdr>, loadBias: UInt64) -> [UInt8] {
        for header in headers where header.p_type == PT_NOTE {
            guard let start = UnsafeRawPointer(bitPattern: UInt(truncatingIfNeeded: loadBias &+ header.p_vaddr)) else {
                continue
            }
            let notes = UnsafeRawBufferPointer(start: start, count: Int(header.p_memsz))
            // Notes are padded to 4 bytes, or to 8 in a segment aligned to 8 (.note.gnu.property).
            let alignment = header.p_align == 8 ? 8 : 4
            if let id = buildID(inNotes: notes, alignment: alignment) { return id }
        }
        return []
    }

    /// Walks `namesz | descsz | type | name | desc` records, each part padded to `alignment`.
    private static func buildID(inNotes notes: UnsafeRawBufferPointer, alignment: Int) -> [UInt8]? {
        func padded(_ size: Int) -> Int { (size + alignment - 1) / alignment * alignment }
        let gnu: [UInt8] = Array("GNU\0".utf8)
        var offset = 0
        while notes.count - offset >= 12 {
            let nameSize = Int(notes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            let descriptorSize = Int(notes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
            let type = notes.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self)
            let name = offset + 12
            let descriptor = name + padded(nameSize)
            guard descriptor <= notes.count, descriptorSize <= notes.count - descriptor else { return nil }
            if type == buildIDNoteType && Array(notes[name..<(name + nameSize)]) == gnu {
                return Array(notes[descriptor..<(descriptor + descriptorSize)])
            }
            offset = descriptor + padded(descriptorSize)
        }
        return nil
    }
}
