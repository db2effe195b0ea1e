import Foundation
import Synchronization

/// Two hosts with a real network file system between them: three network namespaces (a server, host A, host B)
/// wired like `demo/two-hosts.sh` (business veths server<->A 10.77.1.0/24 and server<->B 10.77.2.0/24, a
/// migration veth A<->B 10.77.3.0/24), a GlusterFS volume served by glusterd in the server namespace and mounted
/// over FUSE twice, from A at `mountA` and from B at `mountB`, each with its own client and cache
/// (`demo/gluster-lab.sh`, with Ferry's strict volume and client options).
///
/// One volume may serve many tests: each takes a fresh folder on it with `folder(_:)`.
public final class GlusterLab: Sendable {
    /// Everything the lab owns: glusterd's state, logs, the brick, the mount points.
    public let directory: String
    public let serverNamespace: String
    public let namespaceA: String
    public let namespaceB: String
    /// The volume as host A sees it (its own FUSE mount, through A's business link).
    public let mountA: String
    /// The volume as host B sees it (its own FUSE mount, through B's business link).
    public let mountB: String
    /// Host A's and host B's addresses on the migration network.
    public let addressA = "10.77.3.1"
    public let addressB = "10.77.3.2"
    /// How long the volume took to come up (glusterd, volume create, options, start, both mounts), in seconds.
    public let upSeconds: Double
    private let tornDown = Atomic<Bool>(false)

    static let scriptPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("demo/gluster-lab.sh").path
    private static let counter = Atomic<Int>(0)

    /// Why the GlusterFS lab cannot run here (not root, no `ip`, GlusterFS not installed), or nil when it can.
    public static let missingPrerequisite: String? = {
        if let reason = NamespaceLab.missingPrerequisite { return reason }
        let check = script("check", deadline: 30)
        return check.status == 0 ? nil : check.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }()

    /// True when the lab can run; prints the reason when it cannot, so a skipped test says why.
    public static func available(_ test: String) -> Bool {
        guard let reason = missingPrerequisite else { return true }
        print("\(test) skipped: \(reason)")
        return false
    }

    /// Builds the namespaces and brings the volume up; everything is removed again if any step fails.
    /// - Throws: `GlusterLabError.failed` with the failing command's output.
    public init() throws {
        let tag = "\(getpid())-\(Self.counter.add(1, ordering: .relaxed).newValue)"
        directory = "/tmp/ferry-gluster-\(tag)-\(UInt32.random(in: 0...UInt32.max))"
        serverNamespace = "ferry-gsrv-\(tag)"
        namespaceA = "ferry-ga-\(tag)"
        namespaceB = "ferry-gb-\(tag)"
        mountA = directory + "/mnt-a"
        mountB = directory + "/mnt-b"
        let (srv, a, b) = (serverNamespace, namespaceA, namespaceB)
        // Addresses only on the namespaces' own veth ends; the root namespace gets none.
        let network = """
            set -e
            for ns in \(srv) \(a) \(b); do ip netns add $ns; ip -n $ns link set lo up; done
            veth() {
              ip link add "$1" netns "$2" type veth peer name "$4" netns "$5"
              ip -n "$2" addr add "$3" dev "$1"; ip -n "$2" link set "$1" up
              ip -n "$5" addr add "$6" dev "$4"; ip -n "$5" link set "$4" up
            }
            veth biz-a \(srv) 10.77.1.1/24 biz \(a) 10.77.1.2/24
            veth biz-b \(srv) 10.77.2.1/24 biz \(b) 10.77.2.2/24
            veth mig \(a) 10.77.3.1/24 mig \(b) 10.77.3.2/24
            ip -n \(b) route add 10.77.1.0/24 via 10.77.2.1 dev biz
            """
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try Self.check(NamespaceLab.run("/bin/bash", ["-c", network], deadline: 30), "building the namespaces")
            let start = ContinuousClock.now
            try Self.check(Self.script("up", directory + "/gluster", srv, "10.77.1.1",
                                                          "\(a)=\(mountA)", "\(b)=\(mountB)", deadline: 90), "bringing GlusterFS up")
            upSeconds = (ContinuousClock.now - start) / .seconds(1)
        } catch {
            Self.remove(directory: directory, namespaces: [srv, a, b])
            throw error
        }
    }

    /// Runs `demo/gluster-lab.sh VERB ARGUMENTS`, output and errors to a temporary file; SIGTERM at `deadline`
    /// seconds, SIGKILL five seconds later. Spawned and reaped here with `posix_spawn` and `waitpid`, not
    /// Foundation's `Process`: the script starts daemons, and a `Process` that started them was seen never to
    /// notice the script's exit (it stayed a zombie and `waitUntilExit` hung).
    static func script(_ verb: String, _ arguments: String..., deadline: Double) -> NamespaceLab.Result {
        let output = "/tmp/ferry-gluster-script-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
        defer { unlink(output) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The runner's threads block most signals; the script and what it starts get a clean mask.
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv = ["/bin/bash", scriptPath, verb] + arguments
        var cArguments = argv.map { strdup($0) } + [nil]
        defer { for argument in cArguments { free(argument) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, "/bin/bash", &actions, &attributes, &cArguments, environ)
        guard spawned == 0 else { return NamespaceLab.Result(status: -1, output: "posix_spawn: \(spawned)", timedOut: false) }
        let start = ContinuousClock.now
        var status: Int32 = 0
        var timedOut = false
        var killed = false
        while waitpid(pid, &status, WNOHANG) == 0 {
            let elapsed = (ContinuousClock.now - start) / .seconds(1)
            if elapsed > deadline && !timedOut { timedOut = true; kill(pid, SIGTERM) }
            if elapsed > deadline + 5 && !killed { killed = true; kill(pid, SIGKILL) }
            usleep(20_000)
        }
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        // WIFEXITED / WEXITSTATUS, which Swift cannot import (macros).
        let exited = status & 0x7f == 0
        return NamespaceLab.Result(status: exited ? (status >> 8) & 0xff : -1, output: text, timedOut: timedOut)
    }

    private static func check(_ result: NamespaceLab.Result, _ step: String) throws {
        guard result.status == 0, !result.timedOut else {
            throw GlusterLabError.failed("\(step): exit \(result.status)\(result.timedOut ? " (timed out)" : ""): \(result.output)")
        }
    }

    /// A fresh, empty folder on the volume, created through A's mount: (A's path to it, B's path to it).
    public func folder(_ name: String) throws -> (a: String, b: String) {
        try FileManager.default.createDirectory(atPath: mountA + "/" + name, withIntermediateDirectories: true)
        return (mountA + "/" + name, mountB + "/" + name)
    }

    /// The file server dies: `kill -9` of the brick process (glusterfsd) and of glusterd.
    public func killFileServer() throws {
        try Self.check(Self.script("stop-server", directory + "/gluster", deadline: 30), "killing the file server")
    }

    /// The file server comes back: glusterd restarts the brick; returns once both mounts can write again.
    public func restartFileServer() throws {
        try Self.check(Self.script("start-server", directory + "/gluster", deadline: 60),
                       "restarting the file server")
    }

    /// One of the lab's two client hosts.
    public enum Host: String, Sendable, CaseIterable {
        case a, b
    }

    /// The network namespace of `host`.
    public func namespace(of host: Host) -> String { host == .a ? namespaceA : namespaceB }

    /// The volume as `host` sees it (its own FUSE mount).
    public func mount(of host: Host) -> String { host == .a ? mountA : mountB }

    /// Cuts `host` off the file server, and from nothing else: its business link (`biz`, the only way its GlusterFS
    /// client reaches the server) goes down in its namespace, while the migration link and the other host's mount
    /// stay up. The host's client keeps its TCP connection, so every call on that host's mount (a write, an fsync, an
    /// `open`) waits in the kernel until the link is back or the client gives up on the server (with the link kept
    /// down, a process killed meanwhile finished dying about 80 s after the cut here). A process waiting in such a
    /// call cannot finish dying of SIGKILL before that call returns. Never touch `mount(of: host)` from the test's
    /// own process while `host` is cut: read through the other host's mount. Undo it with
    /// `reconnectToFileServer(host:)` on every exit path (later tests share the volume).
    public func cutFromFileServer(host: Host) throws {
        try Self.check(Self.script("cut", namespace(of: host), "biz", deadline: 30), "cutting host \(host.rawValue) from the file server")
    }

    /// Brings `host`'s link to the file server back and returns once its mount writes again, with the seconds that
    /// took (a few hundredths after cuts of up to 25 s: the calls the cut left waiting go on at once). Harmless on a
    /// host that is not cut.
    @discardableResult
    public func reconnectToFileServer(host: Host) throws -> Double {
        let start = ContinuousClock.now
        try Self.check(Self.script("reconnect", directory + "/gluster", namespace(of: host), "biz", deadline: 120),
                       "reconnecting host \(host.rawValue) to the file server")
        return (ContinuousClock.now - start) / .seconds(1)
    }

    /// Where a `Lab`'s processes run on this lab: `a` (the source) in host A with A's mount of `folder`, `b`
    /// (the destination) and `r` (a resume after a fault) in host B with B's mount of it.
    public func placements(_ folder: (a: String, b: String)) -> [String: Lab.Placement] {
        let a = Lab.Placement(namespace: namespaceA, address: addressA, shared: folder.a)
        let b = Lab.Placement(namespace: namespaceB, address: addressB, shared: folder.b)
        return ["a": a, "b": b, "r": b]
    }

    /// How long the last `tearDown()` took, in seconds.
    public var downSeconds: Double? {
        (try? String(contentsOfFile: directory + "/gluster/down-seconds", encoding: .utf8))
            .flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// Unmounts, stops the volume, kills what the lab started and removes the namespaces and the directory;
    /// the second call does nothing.
    public func tearDown() {
        guard !tornDown.exchange(true, ordering: .relaxed) else { return }
        _ = Self.script("down", directory + "/gluster", deadline: 60)
        if let down = downSeconds { print("GlusterLab: volume torn down in \(down) s") }
        Self.remove(directory: directory, namespaces: [serverNamespace, namespaceA, namespaceB], down: false)
    }

    private static func remove(directory: String, namespaces: [String], down: Bool = true) {
        // What a failed bring-up may have left: processes in the namespaces (by pid), stale mounts, files.
        if down { _ = script("down", directory + "/gluster", deadline: 60) }
        let existing = NamespaceLab.run("/bin/sh", ["-c", "ip netns list"], deadline: 10).output
        for name in namespaces where existing.contains(name) {
            let pids = NamespaceLab.run("/bin/sh", ["-c", "ip netns pids \(name)"], deadline: 10).output
            for line in pids.split(separator: "\n") { if let child = Int32(line) { kill(child, SIGKILL) } }
            _ = NamespaceLab.run("/bin/sh", ["-c", "ip netns del \(name)"], deadline: 10)
        }
        for mount in [directory + "/mnt-a", directory + "/mnt-b"] {
            _ = NamespaceLab.run("/bin/sh", ["-c", "grep -q ' \(mount) ' /proc/mounts && umount -l \(mount); true"], deadline: 10)
        }
        _ = NamespaceLab.run("/bin/rm", ["-rf", "--one-file-system", directory], deadline: 30)
    }
}

public enum GlusterLabError: Error, CustomStringConvertible {
    case failed(String)
    public var description: String { if case .failed(let text) = self { return text }; return "" }
}
