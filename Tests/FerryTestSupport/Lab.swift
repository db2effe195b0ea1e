public import Foundation
public import FerryWire
import FerryAuth
public import FerryTransport

/// A temporary directory with a shared folder, control sockets and logs for processes a test starts.
public final class Lab {
    public let directory: String
    public var shared: String { directory + "/shared" }
    private var processes: [Process] = []

    /// Where a process the lab starts runs: a network namespace, the address it listens on there, and its own
    /// shared directory (each host's mount of one network file system).
    public struct Placement: Sendable {
        public let namespace: String
        public let address: String
        public let shared: String
        public init(namespace: String, address: String, shared: String) {
            self.namespace = namespace
            self.address = address
            self.shared = shared
        }
    }

    /// Processes started under these names (their log and control socket names) run in the placement's
    /// namespace (`ip netns exec`) with its shared directory; the others run here on loopback with `shared`.
    public var placements: [String: Placement] = [:]

    /// The shared directory the process `name` uses.
    public func shared(for name: String) -> String { placements[name]?.shared ?? shared }

    /// The address the process `name` listens on.
    public func address(of name: String) -> String { placements[name]?.address ?? "127.0.0.1" }

    public init() throws {
        directory = "/tmp/ferry-lab-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory + "/shared", withIntermediateDirectories: true)
    }

    public func socket(_ name: String) -> String { directory + "/\(name).sock" }

    /// A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it).
    public static func freePort() -> Int {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                _ = bind(fd, $0, length)
                _ = getsockname(fd, $0, &length)
            }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// The text a process started with `start(_:log:)` has written so far.
    public func log(_ name: String) -> String {
        (try? String(contentsOfFile: directory + "/\(name).log", encoding: .utf8)) ?? ""
    }

    /// Starts `ferry` with `arguments`, its output going to `<directory>/<log>.log`.
    /// With a placement for `log`, it runs in that namespace.
    public func start(_ arguments: [String], log: String, environment: [String: String] = [:]) throws -> Process {
        if let placement = placements[log] {
            // `ip netns exec` execs the program: the process is ferry itself, and sees the lab's mounts.
            return try startProgram(NamespaceLab.executablePath("ip") ?? "/usr/sbin/ip",
                                    ["netns", "exec", placement.namespace, ferryExecutableURL().path] + arguments,
                                    log: log, environment: environment)
        }
        return try startProgram(ferryExecutableURL().path, arguments, log: log, environment: environment)
    }

    /// Starts any program (one embedding Ferry, `ip netns exec …`) with `arguments`, its output going to
    /// `<directory>/<log>.log`; it is killed by `tearDown()` if it still runs.
    public func startProgram(_ executable: String, _ arguments: [String], log: String, environment: [String: String] = [:]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let path = directory + "/\(log).log"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        processes.append(process)
        return process
    }

    /// Waits until a control socket exists (the process is ready), at most 30 s.
    public func waitForSocket(_ path: String) throws {
        for _ in 0..<600 {
            if FileManager.default.fileExists(atPath: path) { return }
            usleep(50_000)
        }
        throw LabError.notReady(path)
    }

    /// Starts `ferry run` with this workload and region size, the lab's shared directory and the control
    /// socket and log `name`, then `extra`; returns once its control socket exists.
    @discardableResult
    public func startSource(workload: String = "hotset", regionSize: String = "16MiB", _ extra: [String] = [],
                            name: String = "a", environment: [String: String] = [:]) throws -> Process {
        try startAndWait(["run", "--workload", workload, "--region-size", regionSize], extra, name: name, environment: environment)
    }

    /// Starts `ferry receive` on 127.0.0.1:`port` (or its placement's address), with the lab's shared directory and the control socket and
    /// log `name`, then `extra`; returns once its control socket exists.
    public func startReceiver(port: Int, _ extra: [String] = [], name: String = "b",
                              environment: [String: String] = [:]) throws -> Process {
        try startAndWait(["receive", "--listen", "\(address(of: name)):\(port)"], extra, name: name, environment: environment)
    }

    /// A `--shared-dir` in `extra` takes the place of the lab's.
    private func startAndWait(_ command: [String], _ extra: [String], name: String, environment: [String: String]) throws -> Process {
        let shared = extra.contains("--shared-dir") ? [] : ["--shared-dir", shared(for: name)]
        let process = try start(command + shared + ["--control", socket(name)] + extra, log: name, environment: environment)
        try waitForSocket(socket(name))
        return process
    }

    /// The receiver takes the next real migration: starts a fresh 16 MiB hotset source (`fresh`), migrates it
    /// to `port` with `options`, waits for it to exit, and runs `ferry verify` on the receiver.
    public func migrateAFreshWorkload(toReceiverOn port: Int, receiver: String = "b",
                                      _ options: [String] = []) throws -> (migrate: FerryRun, verify: FerryRun) {
        let source = try startSource(name: "fresh")
        let migrate = try runFerry(["migrate", "--control", socket("fresh"), "--to", "127.0.0.1:\(port)"] + options)
        source.waitUntilExit()
        return (migrate, try runFerry(["verify", "--control", socket(receiver)]))
    }

    /// Kills whatever still runs and removes the directory.
    public func tearDown() {
        for process in processes where process.isRunning {
            process.terminate()
            // A child may have inherited a signal mask that blocks SIGTERM from the test runner's thread.
            let deadline = Date().addingTimeInterval(2)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

public enum LabError: Error { case notReady(String), closed }

/// A hand-driven source: sends one hello to a `ferry receive` and returns its answer.
public enum RawPeer {
    public static func exchange(port: Int, hello: Hello, keyPath: String) throws -> Frame {
        // Authenticate like a real source, then speak raw frames.
        let key = try PresharedKey.createIfAbsent(at: keyPath)
        let connection = try Connection.connect(to: Endpoint(host: "127.0.0.1", port: UInt16(port)))
        try PeerAuthentication.proveToDestination(on: connection, key: key)
        try connection.send(.hello(hello))
        return try connection.receive(while: "waiting for the reply to hello")
    }

    /// Connects and authenticates like a real source, and hands over the connection for raw frames.
    public static func authenticatedSession(port: Int, keyPath: String) throws -> Connection {
        let key = try PresharedKey.createIfAbsent(at: keyPath)
        let connection = try Connection.connect(to: Endpoint(host: "127.0.0.1", port: UInt16(port)))
        try PeerAuthentication.proveToDestination(on: connection, key: key)
        return connection
    }

    /// Sends one hello without authenticating first, and returns the answer.
    public static func exchangeWithoutKey(port: Int, hello: Hello) throws -> Frame {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            connect(fd, UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), socklen_t(MemoryLayout<sockaddr_in>.size))
        }
        guard connected == 0 else { throw LabError.notReady("127.0.0.1:\(port)") }
        let bytes = FrameCodec.encode(.hello(hello))
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var decoder = FrameDecoder()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            if let frame = try decoder.next() {
                if case .auth = frame { continue }  // the destination's challenge, which we cannot answer
                return frame
            }
            let got = read(fd, &buffer, buffer.count)
            guard got > 0 else { throw LabError.closed }
            decoder.append(buffer[..<got])
        }
    }
}
