import FerrySystem
import Foundation
public import FerryWire
import Synchronization

/// Which program a migration moves between: the build of the executable and of every shared object it has
/// loaded, with their load addresses. The source sends it in the hello; the destination refuses another
/// build, and, when the program asked for a fixed layout (`requestFixedLayout`), other load addresses.
public enum ProgramIdentity {
    private static let fixedLayout = Atomic<Bool>(false)

    /// Whether this program keeps pointers outside its region (function pointers, library data) and so needs
    /// the same load addresses on both hosts; set by `ferry_fixed_layout`.
    public static var fixedLayoutRequested: Bool { fixedLayout.load(ordering: .relaxed) }

    /// Records that this program needs the same load addresses on both hosts.
    public static func requestFixedLayout() { fixedLayout.store(true, ordering: .relaxed) }

    /// The objects loaded in this process, the executable first, as the hello carries them.
    public static func currentImages() -> [ImageIdentity] {
        ProcessImage.loadedImages().map { ImageIdentity(path: $0.path, buildID: $0.buildID, loadAddress: $0.loadAddress) }
    }

    /// The build identity the hello names: the executable's file name and build id.
    public static func buildIdentity() -> String {
        guard let executable = ProcessImage.loadedImages().first else { return "unknown" }
        return "\(fileName(executable.path)) \(executable.buildIDHex)"
    }

    /// Why this process must not take over a program described by `sourceImages`, or nil when it may.
    ///
    /// The executables must have the same build id; every shared object loaded on both sides (matched by file
    /// name, since library directories differ between distributions) must too. With `fixedLayout`, each of them
    /// must also be loaded at the same address. Objects loaded on one side only are not compared: a library
    /// that the program never reached on one host (one loaded on demand) cannot hold its pointers.
    public static func refusal(sourceImages: [ImageIdentity], fixedLayout: Bool, local: [ImageIdentity] = currentImages()) -> Refusal? {
        guard let theirs = sourceImages.first, let ours = local.first else { return nil }
        if !theirs.buildID.isEmpty, theirs.buildID != ours.buildID {
            return Refusal(code: .build, reason: "the source runs \(theirs.path) with build id \(hex(theirs.buildID)), this process runs \(ours.path) with build id \(hex(ours.buildID)): another build; start the receiver from the same build as the source")
        }
        var localByName: [String: ImageIdentity] = [:]
        for image in local.dropFirst() { localByName[fileName(image.path)] = image }
        for image in sourceImages.dropFirst() {
            guard let mine = localByName[fileName(image.path)] else { continue }
            if !image.buildID.isEmpty, !mine.buildID.isEmpty, image.buildID != mine.buildID {
                return Refusal(code: .build, reason: "the library \(fileName(image.path)) differs: build id \(hex(image.buildID)) on the source, \(hex(mine.buildID)) here (\(mine.path)); install the same version on both hosts")
            }
        }
        guard fixedLayout else { return nil }
        if theirs.loadAddress != ours.loadAddress {
            return Refusal(code: .build, reason: "the program asked for a fixed layout but is loaded at \(address(ours.loadAddress)) here and \(address(theirs.loadAddress)) on the source; start it through ferry_fixed_layout on both hosts (address-space randomisation off) with the same libraries and environment (no LD_PRELOAD)")
        }
        for image in sourceImages.dropFirst() {
            guard let mine = localByName[fileName(image.path)], mine.loadAddress != image.loadAddress else { continue }
            return Refusal(code: .build, reason: "the program asked for a fixed layout but \(fileName(image.path)) is loaded at \(address(mine.loadAddress)) here and \(address(image.loadAddress)) on the source, so pointers into it would break; start the program through ferry_fixed_layout on both hosts with the same libraries and environment (no LD_PRELOAD)")
        }
        return nil
    }

    private static func fileName(_ path: String) -> String { path.split(separator: "/").last.map(String.init) ?? path }
    private static func hex(_ bytes: [UInt8]) -> String { bytes.isEmpty ? "(none)" : bytes.map { String(format: "%02x", $0) }.joined() }
    private static func address(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}
