import FerryTestSupport
import Foundation
import Testing

/// Programs Ferry's code knows nothing about, linked against `libFerry.so` through `ferry.h`: the README's
/// example, `demo/c/wordfreq` and `demo/lua/ferry-lua` (the system's Lua 5.4), each hopping between real
/// processes while it runs, and ending with exactly what it computes without any migration.
@Suite struct EmbeddingTests {
    /// The package's root folder.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    /// Where `libFerry.so` and `ferry` were built (beside the test bundle).
    static let binDirectory = ferryExecutableURL().deletingLastPathComponent().path

    /// Runs a shell command line in `directory` with `environment`, returning its status and output.
    static func shell(_ line: String, in directory: String = root, environment: [String: String] = [:]) -> NamespaceLab.Result {
        NamespaceLab.run("/bin/bash", ["-c", "cd '\(directory)' && \(line)"], environment: environment, deadline: 300)
    }

    /// Each demo built once per test process (tests run in parallel; the build scripts write a fixed path).
    static let builtLua = shell("demo/lua/build.sh", environment: ["FERRY_LIB_DIR": binDirectory])
    static let builtC = shell("demo/c/build.sh", environment: ["FERRY_LIB_DIR": binDirectory])

    /// Builds a demo with its build script against the libFerry.so of this build; returns the binary's path.
    static func buildDemo(_ script: String) throws -> String {
        let result = script.hasPrefix("lua/") ? builtLua : builtC
        try #require(result.status == 0, "\(script): \(result.output)")
        return try #require(result.output.split(separator: "\n").last.map(String.init), "\(result.output)")
    }

    /// Moves the workload of `first` (control socket name) `hops` times, each to a fresh receiver started with
    /// `receive(port, name)`, running `ferry verify` on each new owner. Returns the last owner's name and process.
    static func hop(_ lab: Lab, from first: String, hops: Int, receive: (Int, String) throws -> Process) throws -> (name: String, process: Process) {
        var current = first
        var process: Process?
        for hop in 1...hops {
            let port = Lab.freePort()
            let name = "hop\(hop)"
            process = try receive(port, name)
            try lab.waitForSocket(lab.socket(name))
            let migrate = try runFerry(["migrate", "--control", lab.socket(current), "--to", "127.0.0.1:\(port)"])
            try #require(migrate.status == 0, "hop \(hop): \(migrate.standardOutput) \(migrate.standardError)\n\(lab.log(current))\n\(lab.log(name))")
            #expect(migrate.standardOutput.contains("verified yes"), "hop \(hop): \(migrate.standardOutput)")
            let verify = try runFerry(["verify", "--control", lab.socket(name)])
            #expect(verify.status == 0, "hop \(hop): \(verify.standardOutput) \(verify.standardError)")
            #expect(verify.standardOutput.contains("heap"), "Ferry's heap check runs after every hop: \(verify.standardOutput)")
            current = name
        }
        return (current, process!)
    }

    static func waitForExit(_ process: Process, seconds: Double = 120) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        return !process.isRunning
    }

    /// The README's example, compiled with the README's own `cc` line, hops 5 times and prints the right sum.
    @Test func theReadmeExampleCompilesWithTheReadmeLineAndHopsFiveTimes() throws {
        let readme = try String(contentsOfFile: Self.root + "/README.md", encoding: .utf8)
        let section = try #require(readme.range(of: "## Embed Ferry in your program").map { String(readme[$0.upperBound...]) })
        func block(_ language: String) throws -> String {
            let start = try #require(section.range(of: "```\(language)\n"))
            let end = try #require(section[start.upperBound...].range(of: "```"))
            return String(section[start.upperBound..<end.lowerBound])
        }
        let source = try block("c")
        let ccLine = try #require(try block("sh").split(separator: "\n").first { $0.hasPrefix("cc ") }.map(String.init))
        let lab = try Lab()
        defer { lab.tearDown() }
        try source.write(toFile: lab.directory + "/squares.c", atomically: true, encoding: .utf8)
        let line = ccLine.replacingOccurrences(of: "Sources/CFerry/include", with: Self.root + "/Sources/CFerry/include")
        let compiled = Self.shell(line + " -Wall -Wextra -Werror", in: lab.directory, environment: ["BIN": Self.binDirectory])
        try #require(compiled.status == 0, "\(line): \(compiled.output)")
        let program = lab.directory + "/squares"

        let source0 = try lab.startProgram(program, ["start", lab.shared, lab.socket("a")], log: "a")
        try lab.waitForSocket(lab.socket("a"))
        let (last, lastProcess) = try Self.hop(lab, from: "a", hops: 5) { port, name in
            try lab.startProgram(program, ["receive", lab.shared, lab.socket(name), "127.0.0.1:\(port)"], log: name)
        }
        #expect(Self.waitForExit(source0))
        #expect(Self.waitForExit(lastProcess), "the last owner finishes")
        let processes = (1...5).map { "hop\($0)" }
        #expect(lab.log(last).contains("50000 numbers, sum 41665416675000, generation 6"), "\(lab.log(last))")
        for name in processes.dropLast() { #expect(!lab.log(name).contains("numbers, sum"), "only the last owner finishes: \(name)") }
    }

    /// wordfreq (hash table, LRU list, frees and reallocs in the region) moved 5 times mid-run ends with exactly
    /// the result of `wordfreq plain`, which computes the same with malloc and no Ferry.
    @Test func wordfreqHopsFiveTimesAndEndsWithThePlainResult() throws {
        let binary = try Self.buildDemo("c/build.sh")
        let lab = try Lab()
        defer { lab.tearDown() }
        let steps = "6000"
        let plain = Self.shell("'\(binary)' plain --steps \(steps) --output '\(lab.directory)/plain.txt'")
        try #require(plain.status == 0, "\(plain.output)")
        let first = try lab.startProgram(binary, ["start", "--steps", steps, "--output", lab.shared + "/moved.txt", "--shared-dir", lab.shared,
                                                  "--control", lab.socket("a"), "--region-size", "64MiB", "--step-delay-us", "1000"], log: "a")
        try lab.waitForSocket(lab.socket("a"))
        let (last, lastProcess) = try Self.hop(lab, from: "a", hops: 5) { port, name in
            try lab.startProgram(binary, ["receive", "--listen", "127.0.0.1:\(port)", "--shared-dir", lab.shared, "--control", lab.socket(name)], log: name)
        }
        #expect(Self.waitForExit(first))
        #expect(Self.waitForExit(lastProcess), "the last owner finishes")
        #expect(lastProcess.terminationStatus == 0, "\(lab.log(last))")
        let moved = (try? String(contentsOfFile: lab.shared + "/moved.txt", encoding: .utf8)) ?? ""
        let reference = try String(contentsOfFile: lab.directory + "/plain.txt", encoding: .utf8)
        #expect(!reference.isEmpty)
        #expect(moved == reference, "moved:\n\(moved)\nplain:\n\(reference)\n\(lab.log(last))")
    }

    /// A Lua script of each kind, scaled so it runs for a few seconds, moved 5 times mid-run, prints byte for
    /// byte what `lua5.4` prints for it.
    @Test(arguments: ["closures", "coroutines", "metatables", "strings", "bigtables", "gc"])
    func aLuaScriptHopsFiveTimesAndPrintsWhatLuaPrints(script: String) throws {
        guard let lua = Self.luaAvailable("aLuaScriptHopsFiveTimes") else { return }
        let lab = try Lab()
        defer { lab.tearDown() }
        let run = try LuaRun(script, lua: lua, in: lab)
        let binary = run.binary
        let (last, lastProcess) = try Self.hop(lab, from: "a", hops: 5) { port, name in
            try lab.startProgram(binary, ["receive", "--listen", "127.0.0.1:\(port)", "--shared-dir", lab.shared, "--control", lab.socket(name)], log: name)
        }
        run.expectPrintsWhatLuaPrints(last: lastProcess, named: last, in: lab)
    }

    /// A Lua script moved by post-copy (the interpreter resumes on the destination at once and its heap
    /// follows), then on by pre-copy, prints byte for byte what `lua5.4` prints for it.
    @Test(arguments: ["bigtables", "gc"])
    func aLuaScriptMovedByPostCopyPrintsWhatLuaPrints(script: String) throws {
        guard let lua = Self.luaAvailable("aLuaScriptMovedByPostCopy") else { return }
        let lab = try Lab()
        defer { lab.tearDown() }
        let run = try LuaRun(script, lua: lua, in: lab)
        let binary = run.binary
        usleep(300_000)
        var current = "a"
        var last: Process = run.first
        for (hop, mode) in ["post-copy", "pre-copy"].enumerated() {
            let port = Lab.freePort()
            let name = "hop\(hop + 1)"
            last = try lab.startProgram(binary, ["receive", "--listen", "127.0.0.1:\(port)", "--shared-dir", lab.shared, "--control", lab.socket(name)], log: name)
            try lab.waitForSocket(lab.socket(name))
            // A move while pages are still arriving is refused; wait until post-copy completed.
            var migrate = try runFerry(["migrate", "--control", lab.socket(current), "--to", "127.0.0.1:\(port)", "--mode", mode])
            for _ in 0..<100 where migrate.status != 0 && migrate.standardError.contains("still arriving by post-copy") {
                usleep(100_000)
                migrate = try runFerry(["migrate", "--control", lab.socket(current), "--to", "127.0.0.1:\(port)", "--mode", mode])
            }
            try #require(migrate.status == 0, "\(mode): \(migrate.standardOutput) \(migrate.standardError)\n\(lab.log(current))\n\(lab.log(name))")
            #expect(migrate.standardOutput.contains(mode == "post-copy" ? "post-copy from round 0" : "verified yes"), "\(migrate.standardOutput)")
            current = name
        }
        run.expectPrintsWhatLuaPrints(last: last, named: current, in: lab)
    }

    /// A Lua script of `demo/lua/scripts`, scaled, run once by `lua5.4` for reference and once started by
    /// `ferry-lua` in `lab` (socket and log "a"), writing its output to the shared mount.
    struct LuaRun {
        let script: String
        let binary: String
        let reference: String
        let output: String
        let first: Process

        init(_ script: String, lua: String, in lab: Lab) throws {
            self.script = script
            binary = try EmbeddingTests.buildDemo("lua/build.sh")
            let scriptPath = try EmbeddingTests.scaledScript(script, in: lab.directory)
            let reference = NamespaceLab.run(lua, [scriptPath], deadline: 120)
            try #require(reference.status == 0, "\(reference.output)")
            self.reference = reference.output
            output = lab.shared + "/\(script).txt"
            first = try lab.startProgram(binary, ["start", "--script", scriptPath, "--output", output, "--shared-dir", lab.shared,
                                                  "--control", lab.socket("a"), "--region-size", "256MiB"], log: "a")
            try lab.waitForSocket(lab.socket("a"))
        }

        /// Both the first and the last owner finish, and the script printed byte for byte what lua5.4 printed.
        func expectPrintsWhatLuaPrints(last: Process, named name: String, in lab: Lab) {
            #expect(EmbeddingTests.waitForExit(first))
            #expect(EmbeddingTests.waitForExit(last, seconds: 300), "the last owner finishes")
            #expect(last.terminationStatus == 0, "\(lab.log(name))")
            let printed = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            #expect(printed == reference, "\(script): \(printed.count) bytes against lua5.4's \(reference.count)\n\(lab.log(name))")
        }
    }

    /// The `lua5.4` interpreter when Lua 5.4 (interpreter, headers, pkg-config) is installed; otherwise prints
    /// why the test is skipped and returns nil.
    static func luaAvailable(_ test: String) -> String? {
        guard let lua = NamespaceLab.executablePath("lua5.4"), NamespaceLab.executablePath("pkg-config") != nil,
              FileManager.default.fileExists(atPath: "/usr/include/lua5.4/lua.h") else {
            print("\(test) skipped: needs Lua 5.4 (apt-get install liblua5.4-dev lua5.4 pkg-config; .ci/run does)")
            return nil
        }
        return lua
    }

    /// The script at twice its own size, so that it runs long enough for five hops on a loaded machine.
    static func scaledScript(_ name: String, in directory: String) throws -> String {
        let path = root + "/demo/lua/scripts/\(name).lua"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        guard let match = text.range(of: #"N = N or (\d+)"#, options: .regularExpression),
              let number = Int(text[match].split(separator: " ").last ?? "") else { return path }
        let wrapper = directory + "/\(name)-scaled.lua"
        try "N = \(number * 2)\ndofile('\(path)')\n".write(toFile: wrapper, atomically: true, encoding: .utf8)
        return wrapper
    }

    /// A destination running another build of the program is refused (exit 2) and the source runs on, verified.
    @Test func aReceiverOfAnotherBuildIsRefusedAndTheSourceRunsOn() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let readme = try String(contentsOfFile: Self.root + "/README.md", encoding: .utf8)
        let section = try #require(readme.range(of: "## Embed Ferry in your program").map { String(readme[$0.upperBound...]) })
        let start = try #require(section.range(of: "```c\n"))
        let end = try #require(section[start.upperBound...].range(of: "```"))
        try String(section[start.upperBound..<end.lowerBound]).write(toFile: lab.directory + "/squares.c", atomically: true, encoding: .utf8)
        // Two builds of the same source: optimised and not. Their build ids differ.
        for (name, flags) in [("squares", "-O2"), ("squares-other", "-O0")] {
            let built = Self.shell("cc \(flags) -o \(name) squares.c -I '\(Self.root)/Sources/CFerry/include' -L '\(Self.binDirectory)' -lFerry -Wl,-rpath,'\(Self.binDirectory)'",
                                   in: lab.directory)
            try #require(built.status == 0, "\(built.output)")
        }
        let source = try lab.startProgram(lab.directory + "/squares", ["start", lab.shared, lab.socket("a")], log: "a")
        try lab.waitForSocket(lab.socket("a"))
        let port = Lab.freePort()
        let other = try lab.startProgram(lab.directory + "/squares-other", ["receive", lab.shared, lab.socket("b"), "127.0.0.1:\(port)"], log: "b")
        try lab.waitForSocket(lab.socket("b"))
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)"])
        #expect(migrate.status == 2, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(migrate.standardError.contains("another build"), "\(migrate.standardError)")
        #expect(lab.log("b").contains("another build"), "the refusal is logged by the receiver")
        #expect(source.isRunning && other.isRunning, "the source runs on, the receiver waits for the next migration")
        let verify = try runFerry(["verify", "--control", lab.socket("a")])
        #expect(verify.status == 0, "\(verify.standardOutput)")
        _ = try runFerry(["stop", "--control", lab.socket("a")])
        _ = try runFerry(["stop", "--control", lab.socket("b")])
        #expect(Self.waitForExit(source) && Self.waitForExit(other))
        #expect(other.terminationStatus == 0, "a receiver stopped while it waits exits cleanly")
    }

    /// A program that asked for a fixed layout is refused by a receiver whose libraries are loaded elsewhere
    /// (here: a preloaded library shifts them), and runs on at the source.
    @Test func aReceiverWithOtherLoadAddressesIsRefusedWhenTheProgramAskedForAFixedLayout() throws {
        guard Self.luaAvailable("aReceiverWithOtherLoadAddresses") != nil else { return }
        let binary = try Self.buildDemo("lua/build.sh")
        let lab = try Lab()
        defer { lab.tearDown() }
        // A library present on this machine that ferry-lua does not load itself.
        let candidates = ["/lib/x86_64-linux-gnu/libutil.so.1", "/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libcrypt.so.1"]
        let preload = try #require(candidates.first { FileManager.default.fileExists(atPath: $0) }, "no library to preload")
        let script = lab.directory + "/loop.lua"
        try "local n = 0\nfor i = 1, 3e8 do n = n + i % 7 end\nprint(n)\n".write(toFile: script, atomically: true, encoding: .utf8)
        let source = try lab.startProgram(binary, ["start", "--script", script, "--output", lab.shared + "/out.txt", "--shared-dir", lab.shared,
                                                   "--control", lab.socket("a"), "--region-size", "32MiB"], log: "a")
        try lab.waitForSocket(lab.socket("a"))
        // ferry_fixed_layout re-executed it with address-space randomisation off (ADDR_NO_RANDOMIZE, 0x0040000).
        let personality = try String(contentsOfFile: "/proc/\(source.processIdentifier)/personality", encoding: .utf8)
        #expect((UInt32(personality.trimmingCharacters(in: .whitespacesAndNewlines), radix: 16) ?? 0) & 0x0040000 != 0, "\(personality)")
        let port = Lab.freePort()
        _ = try lab.startProgram(binary, ["receive", "--listen", "127.0.0.1:\(port)", "--shared-dir", lab.shared, "--control", lab.socket("b")],
                                 log: "b", environment: ["LD_PRELOAD": preload])
        try lab.waitForSocket(lab.socket("b"))
        let migrate = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(port)"])
        #expect(migrate.status == 2, "\(migrate.standardOutput) \(migrate.standardError)")
        #expect(migrate.standardError.contains("fixed layout"), "\(migrate.standardError)")
        #expect(source.isRunning)
        #expect(try runFerry(["verify", "--control", lab.socket("a")]).status == 0)
        // The same receiver without the preload takes it.
        let good = Lab.freePort()
        _ = try lab.startProgram(binary, ["receive", "--listen", "127.0.0.1:\(good)", "--shared-dir", lab.shared, "--control", lab.socket("c")], log: "c")
        try lab.waitForSocket(lab.socket("c"))
        let second = try runFerry(["migrate", "--control", lab.socket("a"), "--to", "127.0.0.1:\(good)"])
        #expect(second.status == 0, "\(second.standardError)")
        _ = try runFerry(["stop", "--control", lab.socket("c")])
    }

    /// ferry-lua moved 5 times across two hosts (network namespaces A and B that the test builds, joined by one
    /// veth pair with addresses only on its own ends): A → B → A → B → A → B, printing what lua5.4 prints.
    @Test(.enabled(if: NamespaceLab.available("EmbeddingTests.aLuaScriptCrossesTwoHostsFiveTimes"), "needs root, ip, tc and jq"))
    func aLuaScriptCrossesTwoHostsFiveTimes() throws {
        guard let lua = Self.luaAvailable("aLuaScriptCrossesTwoHostsFiveTimes") else { return }
        let binary = try Self.buildDemo("lua/build.sh")
        let lab = try Lab()
        defer { lab.tearDown() }
        let suffix = "\(getpid() % 100_000)"
        let (nsA, nsB) = ("ferry-emb-a-\(suffix)", "ferry-emb-b-\(suffix)")
        let addresses = [nsA: "10.77.8.1", nsB: "10.77.8.2"]
        func ip(_ command: String) -> NamespaceLab.Result { NamespaceLab.run("/bin/sh", ["-c", "ip " + command], deadline: 10) }
        defer {
            for ns in [nsA, nsB] {
                for line in ip("netns pids \(ns)").output.split(separator: "\n") { if let pid = Int32(line) { kill(pid, SIGKILL) } }
                _ = ip("netns del \(ns)")
            }
        }
        for command in [
            "netns add \(nsA)", "netns add \(nsB)",
            "-n \(nsA) link set lo up", "-n \(nsB) link set lo up",
            "link add mig netns \(nsA) type veth peer name mig netns \(nsB)",
            "-n \(nsA) addr add 10.77.8.1/24 dev mig", "-n \(nsB) addr add 10.77.8.2/24 dev mig",
            "-n \(nsA) link set mig up", "-n \(nsB) link set mig up",
        ] {
            let result = ip(command)
            try #require(result.status == 0, "ip \(command): \(result.output)")
        }
        let scriptPath = try Self.scaledScript("metatables", in: lab.directory)
        let reference = NamespaceLab.run(lua, [scriptPath], deadline: 120)
        try #require(reference.status == 0, "\(reference.output)")
        let output = lab.shared + "/out.txt"
        let first = try lab.startProgram("/usr/bin/env", ["ip", "netns", "exec", nsA, binary, "start", "--script", scriptPath, "--output", output,
                                                          "--shared-dir", lab.shared, "--control", lab.socket("a"), "--region-size", "256MiB"], log: "a")
        try lab.waitForSocket(lab.socket("a"))
        var current = "a"
        var last: Process = first
        for hop in 1...5 {
            let ns = hop % 2 == 1 ? nsB : nsA
            let address = addresses[ns]!
            let port = 7800 + hop
            let name = "hop\(hop)"
            last = try lab.startProgram("/usr/bin/env", ["ip", "netns", "exec", ns, binary, "receive", "--listen", "\(address):\(port)",
                                                         "--shared-dir", lab.shared, "--control", lab.socket(name)], log: name)
            try lab.waitForSocket(lab.socket(name))
            let migrate = try runFerry(["migrate", "--control", lab.socket(current), "--to", "\(address):\(port)"])
            try #require(migrate.status == 0, "hop \(hop) to \(ns): \(migrate.standardOutput) \(migrate.standardError)\n\(lab.log(name))")
            #expect(try runFerry(["verify", "--control", lab.socket(name)]).status == 0, "hop \(hop)")
            #expect(lab.log(name).contains("accepted ferry-lua from \(addresses[ns == nsA ? nsB : nsA]!):"), "the stream crossed the veth: \(lab.log(name))")
            current = name
        }
        #expect(Self.waitForExit(last, seconds: 300), "the last owner finishes")
        let printed = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        #expect(printed == reference.output, "\(printed.count) bytes against lua5.4's \(reference.output.count)\n\(lab.log(current))")
    }
}
