import FerrySystem
import Foundation
import Testing

/// The loaded objects of the test runner itself, checked against what binutils and the kernel say.
@Suite struct LoadedImageTests {
    let images = ProcessImage.loadedImages()

    @Test func theExecutableComesFirstUnderItsRealPath() throws {
        let first = try #require(images.first)
        #expect(first.isExecutable)
        #expect(images.dropFirst().allSatisfy { !$0.isExecutable })
        #expect(first.path == resolved("/proc/self/exe"))
        #expect(!first.buildID.isEmpty, "swift build links with --build-id")
        if let expected = try buildIDFromTools(of: first.path) { #expect(first.buildIDHex == expected) }
    }

    @Test func libcAndTheLoaderAreListedButNotTheVdso() throws {
        let libc = try #require(images.first { ($0.path as NSString).lastPathComponent == "libc.so.6" }, "\(images)")
        #expect(libc.buildID.count == 20)
        #expect(libc.loadAddress != 0)
        if let expected = try buildIDFromTools(of: libc.path) { #expect(libc.buildIDHex == expected) }
        #expect(images.contains { $0.path.contains("ld-linux") }, "the dynamic loader is an object like any other")
        #expect(!images.contains { $0.path.isEmpty || $0.path.contains("vdso") }, "\(images)")
        #expect(Set(images.map(\.path)).count == images.count, "each object once")
    }

    @Test func everyBuildIDIsTheOneInTheFile() throws {
        for image in images {
            guard let expected = try buildIDFromTools(of: image.path) else { continue }
            #expect(image.buildIDHex == expected, "\(image)")
        }
    }

    /// A library's load bias is where its first mapping starts (its first PT_LOAD is at address 0, as for
    /// every library of this system); so is a position-independent executable's.
    @Test func loadAddressesAreWhereTheKernelMappedTheFiles() throws {
        var firstMapping: [String: UInt64] = [:]
        // String(contentsOfFile:) stops after one page of a /proc file; read to the end.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/maps"))
        let maps = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        try handle.close()
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count == 6, let dash = fields[0].firstIndex(of: "-"),
                let start = UInt64(fields[0][..<dash], radix: 16)
            else { continue }
            let path = fields[5].trimmingCharacters(in: .whitespaces)
            guard path.hasPrefix("/") else { continue }
            firstMapping[path] = min(firstMapping[path] ?? .max, start)
        }
        for image in images where !(image.isExecutable && image.loadAddress == 0) {
            #expect(firstMapping[resolved(image.path)] == image.loadAddress, "\(image)")
        }
    }

    @Test func buildIDsPrintAsReadelfPrintsThem() {
        let image = LoadedImage(path: "/x", buildID: [0x00, 0x0A, 0xFF, 0x10], loadAddress: 0x7F00_0000_1000, isExecutable: false)
        #expect(image.buildIDHex == "000aff10")
        #expect("\(image)" == "/x at 0x7f0000001000, build id 000aff10")
        #expect(LoadedImage(path: "/y", buildID: [], loadAddress: 0, isExecutable: true).description == "executable /y at 0x0, build id none")
    }

    @Test func randomizationStateAgreesWithTheKernel() throws {
        let persona = try #require(UInt32(try String(contentsOfFile: "/proc/self/personality", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines), radix: 16))
        let sysctl = try String(contentsOfFile: "/proc/sys/kernel/randomize_va_space", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(ProcessImage.addressRandomizationDisabled == (persona & 0x0040000 != 0 || sysctl == "0"))
    }

    /// The flag `reexecuteWithoutRandomization` sets is the one `setarch -R` sets, and it survives `execve`.
    @Test func setarchDashRSetsTheSameFlag() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/setarch") else {
            print("skipped: /usr/bin/setarch is not installed")
            return
        }
        let withFlag = try run("/usr/bin/setarch", ["x86_64", "-R", "/bin/sh", "-c", "cat /proc/self/personality"])
        #expect(UInt32(withFlag.trimmingCharacters(in: .whitespacesAndNewlines), radix: 16).map { $0 & 0x0040000 != 0 } == true)
    }

    // The re-execution itself (`reexecuteWithoutRandomization`) is exercised by the programs that call
    // `ferry_fixed_layout`: EmbeddingTests checks the personality of a running `ferry-lua`, and its migrations
    // would be refused if two processes loaded their libraries at different addresses.

    // MARK: Helpers

    private func resolved(_ path: String) -> String {
        guard let real = realpath(path, nil) else { return path }
        defer { free(real) }
        return String(cString: real)
    }

    /// The build id `readelf -n` (or else `file`) prints for `path`; nil, with the reason printed, when
    /// neither tool is installed.
    private func buildIDFromTools(of path: String) throws -> String? {
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/readelf") {
            let output = try run("/usr/bin/readelf", ["-n", path])
            guard let line = output.split(separator: "\n").first(where: { $0.contains("Build ID:") }) else { return "" }
            return line.split(separator: ":").last.map { $0.trimmingCharacters(in: .whitespaces) }
        }
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/file") {
            let output = try run("/usr/bin/file", ["-L", path])
            guard let range = output.range(of: "BuildID[sha1]=") else { return "" }
            return String(output[range.upperBound...].prefix { $0.isHexDigit })
        }
        print("skipped the build-id comparison: neither readelf nor file is installed")
        return nil
    }

    private func run(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}
